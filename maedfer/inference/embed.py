"""``maedfer embed VIDEO|MANIFEST --checkpoint CKPT --out features.parquet`` (docs/inference.md).

The features are the classifier's pooled, normalised tokens: ``forward_features`` (region
tokens averaged, then ``fc_norm``), the head's input, ``(C,)`` float32 (512 for
``lgi_former_base``), for downstream models.

- A video (or several: files, folders, globs): one row per window, windows as ``predict``
  cuts them (same faces, alignment and normalisation), ``features`` null where the window has
  no face. Columns: ``video``, ``window``, ``start_frame``, ``end_frame``, ``start_s``,
  ``end_s``, ``face``, ``face_share``, ``features``.
- A manifest (``manifest.parquet`` of ``maedfer prepare``): one row per prepared clip, the
  mean of the features of its test views (the first and the last window, as ``evaluate``
  reads them), decoded by the pipelines. Columns: ``clip_id``, ``label``, ``views``,
  ``features``; ``--fold``/``--split`` select rows as the loaders do (default: every clip).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from maedfer.atomic import atomic_path, check_writable
from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.inference.loading import load_classifier

DEFAULT_BATCH = 8


def _write(frame: pd.DataFrame, out: Path, metadata: Mapping[str, str]) -> None:
    """Parquet with ``features`` as a list<float32> column and the settings as metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if "features" in frame:
        column = pa.array(
            [None if f is None else np.asarray(f, np.float32) for f in frame["features"]],
            type=pa.list_(pa.float32()),
        )
        table = table.set_column(table.schema.get_field_index("features"), "features", column)
    meta = {
        **(table.schema.metadata or {}),
        **{f"maedfer.{k}".encode(): str(v).encode() for k, v in metadata.items()},
    }
    with atomic_path(out) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def embed_videos(
    videos: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    device: str | None = None,
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    hop: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(windows with features, per-video status)`` of every video (failures recorded)."""
    from maedfer.inference.predict import find_videos
    from maedfer.inference.predictor import Predictor

    found = find_videos(videos)
    predictor = Predictor(
        checkpoint,
        device=device,
        dataset=dataset,
        classes=classes,
        hop=hop,
        progress=progress and len(found) == 1,
    )
    tables, rows = [], []
    for video in tqdm(found, desc="videos", unit="video", disable=not progress or len(found) < 2):
        try:
            table = predictor.embed(video)
        except MaedferError as exc:
            if len(found) == 1:
                raise
            rows.append({"video": str(video), "status": "failed", "reason": str(exc)})
            continue
        table.insert(0, "video", str(video))
        tables.append(table)
        rows.append(
            {
                "video": str(video),
                "status": "ok",
                "reason": None,
                "num_windows": len(table),
                "face_windows": int(table["face"].sum()),
            }
        )
    windows = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(
            columns=[
                "video",
                "window",
                "start_frame",
                "end_frame",
                "start_s",
                "end_s",
                "face",
                "face_share",
                "features",
            ]
        )
    )
    return windows, pd.DataFrame(rows)


@torch.inference_mode()
def embed_manifest(
    manifest: str | Path,
    checkpoint: str | Path,
    *,
    device: str | None = None,
    fold: int | None = None,
    split: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    backend: str = "auto",
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per clip of ``manifest``: ``clip_id``, ``label``, ``features`` (view mean)."""
    from maedfer.pipelines import build_loader

    dev = resolve_device(device)
    model, settings = load_classifier(checkpoint, device=dev, dataset=dataset, classes=classes)
    options: dict[str, Any] = {"workers": workers} if workers is not None else {}
    loader = build_loader(
        Path(manifest),
        mode="test",
        fold=fold,
        split=split,
        batch_size=batch_size,
        num_frames=settings.num_frames,
        stride=settings.stride,
        size=settings.size,
        backend=backend,
        seed=0,
        device=str(dev) if dev.type == "cuda" else None,
        subtract_mean=settings.subtract_mean,
        **options,
    )
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    labels: dict[str, int] = {}
    for batch in tqdm(loader, desc="clips", unit="batch", disable=not progress):
        feats = model.forward_features(batch["video"].to(dev)).float().cpu().numpy()
        for clip_id, label, f in zip(batch["clip_id"], batch["label"].tolist(), feats, strict=True):
            sums[clip_id] = sums.get(clip_id, 0) + f.astype(np.float64)
            counts[clip_id] = counts.get(clip_id, 0) + 1
            labels[clip_id] = int(label)
    ids = sorted(sums)
    return pd.DataFrame(
        {
            "clip_id": ids,
            "label": [labels[i] for i in ids],
            "views": [counts[i] for i in ids],
            "features": [(sums[i] / counts[i]).astype(np.float32) for i in ids],
        }
    )


def run(
    inputs: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    out: str | Path,
    device: str | None = None,
    fold: int | None = None,
    split: str | None = None,
    hop: int | None = None,
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    show: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Write the features of videos or of a manifest's clips to ``out`` (``.parquet``); the
    summary goes to ``show`` (the command line prints it; nothing is printed here).

    Raises:
        MaedferError: ``out`` not ``.parquet``, a manifest mixed with videos, a checkpoint
            that cannot be used; a single video that fails.
    """
    emit = show or (lambda _line: None)
    started = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise MaedferError(f"--out {out} must end in .parquet")
    check_writable(out, what="--out")  # before the work, not after it
    manifests = [Path(i) for i in inputs if str(i).endswith(".parquet")]
    if manifests and len(inputs) > 1:
        raise MaedferError("give one manifest, or videos; not both or several manifests")
    if manifests:
        frame = embed_manifest(
            manifests[0],
            checkpoint,
            device=device,
            fold=fold,
            split=split,
            batch_size=batch_size or DEFAULT_BATCH,
            workers=workers,
            dataset=dataset,
            classes=classes,
            progress=progress,
        )
        what = f"{len(frame)} clips of {manifests[0]}"
    else:
        if fold is not None or split is not None:
            raise MaedferError(
                "--fold and --split select manifest rows; they do not apply to videos"
            )
        frame, videos = embed_videos(
            inputs,
            checkpoint,
            device=device,
            dataset=dataset,
            classes=classes,
            hop=hop,
            progress=progress,
        )
        failed = videos[videos["status"] != "ok"]
        for row in failed.itertuples():
            emit(f"failed: {row.video}: {row.reason}")
        what = (
            f"{len(frame)} windows ({int(frame['face'].sum())} with a face) of "
            f"{len(videos) - len(failed)} of {len(videos)} videos"
        )
    width = next((len(f) for f in frame["features"] if f is not None), 0)
    _write(
        frame,
        out,
        {"checkpoint": checkpoint, "features": "forward_features (fc_norm)", "dim": width},
    )
    emit(f"embed: {what}, {width}-dim features, {time.perf_counter() - started:.1f} s")
    emit(f"wrote {out}")
    return frame
