"""``maedfer prepare``: index a raw dataset, prepare its face clips, write the manifest
(:func:`maedfer.preprocess.driver.run`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import Device, PrepareDataset, failures, opt_device
from maedfer.preprocess import MIN_FACE_RATIO, MIN_FRAMES


class Codec(str, enum.Enum):
    h264 = "h264"
    vp9 = "vp9"


def prepare(
    dataset: Annotated[
        PrepareDataset,
        typer.Argument(
            help="Which dataset's raw layout to read; folder: your own videos "
            "(README 'Bring your own dataset')."
        ),
    ],
    raw: Annotated[Path, typer.Option(help="The dataset as downloaded (its root folder).")],
    out: Annotated[Path, typer.Option(help="Where manifest.parquet and clips/ go.")],
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    size: Annotated[int, typer.Option(min=16, help="Side of the square face clips.")] = 160,
    index_only: Annotated[
        bool, typer.Option(help="Write the manifest from the layout alone, touch no pixels.")
    ] = False,
    codec: Annotated[Codec, typer.Option(help="Clip codec: H.264 MP4 or VP9 WebM.")] = Codec.h264,
    from_video: Annotated[
        bool, typer.Option(help="DFEW/FERV39k/MAFW: detect faces in the original clips.")
    ] = False,
    reencode: Annotated[
        bool, typer.Option(help="VoxCeleb2: write cropped clips instead of reading in place.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/N: prepare the i-th of N shards (1-based), balanced by file size; "
            "auto: this Slurm array task's (SLURM_ARRAY_TASK_ID/_MIN/_COUNT)."
        ),
    ] = None,
    merge: Annotated[bool, typer.Option(help="Combine the shard manifests in --out.")] = False,
    device: Annotated[
        Device, typer.Option(help="Face detection device: cuda, cpu, or auto (CUDA when present).")
    ] = Device.auto,
    detect_every: Annotated[
        int, typer.Option(min=1, help="Detect faces on every k-th frame, track in between.")
    ] = 4,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Prepare only the first N clips (a trial run).")
    ] = None,
    min_frames: Annotated[
        int,
        typer.Option(
            min=1,
            help="Reject videos with fewer frames ('too short'); official "
            "face-frame folders are exempt.",
        ),
    ] = MIN_FRAMES,
    min_face_ratio: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Reject face-detected clips with a face in fewer of their frames ('face_ratio').",
        ),
    ] = MIN_FACE_RATIO,
    retry_rejects: Annotated[
        bool, typer.Option(help="Judge every reject of an earlier run in --out again.")
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="folder: labels table (.csv/.tsv/.parquet): path (relative to --raw), "
            "label, optionally subject, split or fold; other columns are kept."
        ),
    ] = None,
    subject_from: Annotated[
        str | None,
        typer.Option(
            help="folder: regex taking the subject from each file name (its "
            "'subject' group, else group 1, else the match), e.g. '^(P\\d+)_'."
        ),
    ] = None,
    unlabeled: Annotated[
        bool,
        typer.Option(help="folder: a pre-training corpus: every video, label -1, split pretrain."),
    ] = False,
    classes: Annotated[
        str | None,
        typer.Option(
            help="folder: class names in label order, comma-separated (default: "
            "the labels found, sorted)."
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="folder, no split/fold column: build K subject-independent, "
            "stratified folds (default 5).",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="folder: seed of the built folds (default 0).")
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            help="folder: the videos are face crops already: read them in place "
            "(centred square crop), no face detection; --reencode writes the crops."
        ),
    ] = False,
) -> None:
    """Index a raw dataset, detect and align faces, encode clips, write the manifest."""
    own = {
        "labels": labels,
        "subject_from": subject_from,
        "unlabeled": unlabeled,
        "classes": classes,
        "folds": folds,
        "seed": seed,
        "in_place": in_place,
    }
    with failures():
        from maedfer.preprocess.driver import run

        run(
            dataset=dataset.value,
            raw=raw,
            out=out,
            workers=workers,
            size=size,
            index_only=index_only,
            codec=codec.value,
            from_video=from_video,
            reencode=reencode,
            shard=shard,
            merge=merge,
            device=opt_device(device),
            detect_every=detect_every,
            limit=limit,
            min_frames=min_frames,
            min_face_ratio=min_face_ratio,
            retry_rejects=retry_rejects,
            dataset_options={k: v for k, v in own.items() if v not in (None, False)},
        )
