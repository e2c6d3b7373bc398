"""``maedfer prepare``: index a raw dataset, prepare its face clips, write the manifest
(:func:`maedfer.preprocess.driver.run`).

Every flag's default and help line are the options' own: :class:`PrepareConfig` for what any
dataset takes, and the dataset registry's ``options`` class for a dataset's own (``folder``:
:class:`maedfer.manifests.folder.FolderArgs`).

Documented in docs/datasets.md and docs/design.md, "The command line".
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import Device, PrepareDataset, failures, opt_device
from maedfer.config import field_default, help_of
from maedfer.manifests.folder import FolderArgs
from maedfer.preprocess.options import PrepareConfig

P, F = PrepareConfig, FolderArgs


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
    workers: Annotated[int, typer.Option(min=1, help=help_of(P, "workers"))] = field_default(
        P, "workers"
    ),
    size: Annotated[int, typer.Option(min=16, help=help_of(P, "size"))] = field_default(P, "size"),
    index_only: Annotated[bool, typer.Option(help=help_of(P, "index_only"))] = field_default(
        P, "index_only"
    ),
    codec: Annotated[Codec, typer.Option(help=help_of(P, "codec"))] = Codec(
        field_default(P, "codec")
    ),
    from_video: Annotated[bool, typer.Option(help=help_of(P, "from_video"))] = field_default(
        P, "from_video"
    ),
    reencode: Annotated[bool, typer.Option(help=help_of(P, "reencode"))] = field_default(
        P, "reencode"
    ),
    shard: Annotated[str | None, typer.Option(help=help_of(P, "shard"))] = field_default(
        P, "shard"
    ),
    merge: Annotated[bool, typer.Option(help=help_of(P, "merge"))] = field_default(P, "merge"),
    device: Annotated[Device, typer.Option(help=help_of(P, "device"))] = Device.auto,
    detect_every: Annotated[
        int, typer.Option(min=1, help=help_of(P, "detect_every"))
    ] = field_default(P, "detect_every"),
    limit: Annotated[int | None, typer.Option(min=1, help=help_of(P, "limit"))] = field_default(
        P, "limit"
    ),
    min_frames: Annotated[int, typer.Option(min=1, help=help_of(P, "min_frames"))] = (
        field_default(P, "min_frames")
    ),
    min_face_ratio: Annotated[
        float, typer.Option(min=0.0, max=1.0, help=help_of(P, "min_face_ratio"))
    ] = field_default(P, "min_face_ratio"),
    retry_rejects: Annotated[bool, typer.Option(help=help_of(P, "retry_rejects"))] = (
        field_default(P, "retry_rejects")
    ),
    labels: Annotated[Path | None, typer.Option(help=help_of(F, "labels"))] = None,
    subject_from: Annotated[str | None, typer.Option(help=help_of(F, "subject_from"))] = None,
    unlabeled: Annotated[bool, typer.Option(help=help_of(F, "unlabeled"))] = False,
    classes: Annotated[str | None, typer.Option(help=help_of(F, "classes"))] = None,
    folds: Annotated[int | None, typer.Option(min=2, help=help_of(F, "folds"))] = None,
    seed: Annotated[int | None, typer.Option(help=help_of(F, "seed"))] = None,
    in_place: Annotated[bool, typer.Option(help=help_of(F, "in_place"))] = False,
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
            show=typer.echo,
        )
