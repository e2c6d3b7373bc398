"""``maedfer reconstruct VIDEO|MANIFEST --checkpoint PRETRAIN --out DIR`` (docs/inference.md).

Inputs: video files, folders and globs (faces found and aligned as ``predict`` does), or one
``manifest.parquet`` of prepared clips (read as they are; ``--fold``/``--split`` select rows as
the loaders do, ``--limit`` the first N). One :class:`~maedfer.inference.reconstruct.Reconstructor`
serves them all.

Outputs, for each input ``NAME`` (a video's stem, a clip's id; made unique):
``DIR/NAME/window_KKK.png`` (the grid of each window with a face) and
``DIR/NAME/reconstruction.mp4`` (every window side by side, at the video's pace), and one table
for everything, ``DIR/losses.csv``: ``input``, ``window``, ``start_frame``, ``end_frame``,
``start_s``, ``end_s``, ``face``, ``face_share``, ``masked_share``, ``loss``,
``loss_appearance``, ``loss_motion``, ``png``. A video that fails (unreadable, no face) is a row
with ``reason`` and the rest go on; a single input that fails is an error.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from maedfer.atomic import atomic_path
from maedfer.errors import MaedferError
from maedfer.inference.reconstruct import Reconstructor, WindowReconstruction
from maedfer.inference.reconstruct_render import ReconstructionVideo, grid_title, write_grid

logger = logging.getLogger(__name__)

TABLE = "losses.csv"
COLUMNS = [
    "input",
    "window",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "face",
    "face_share",
    "masked_share",
    "loss",
    "loss_appearance",
    "loss_motion",
    "png",
    "reason",
]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "clip"


def _inputs(
    rec: Reconstructor,
    inputs: Sequence[str | Path],
    fold: int | None,
    split: str | None,
    limit: int | None,
) -> list[tuple[str, Any]]:
    """``(name, windows thunk)`` per input, in order."""
    manifests = [i for i in inputs if str(i).endswith(".parquet")]
    if manifests:
        if len(inputs) > 1:
            raise MaedferError("give one manifest, or videos; not both or several manifests")
        return _manifest_inputs(rec, Path(manifests[0]), fold, split, limit)
    if fold is not None or split is not None:
        raise MaedferError("--fold and --split select manifest rows; they do not apply to videos")
    from maedfer.inference.predict import find_videos

    videos = find_videos(inputs)[:limit]
    return [(v.stem, lambda v=v: rec.iter_video(v)) for v in videos]


def _manifest_inputs(
    rec: Reconstructor, manifest: Path, fold: int | None, split: str | None, limit: int | None
) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    from maedfer.pipelines.select import load_clip_table

    # a fold's own clips are its test rows (mode test); otherwise every row, labelled or not
    mode = "test" if fold is not None else "pretrain"
    table = load_clip_table(manifest, mode=mode, fold=fold, split=split)
    rows = range(min(len(table), limit) if limit else len(table))
    fps_column = None
    names = pq.read_schema(manifest).names
    if "fps" in names:
        fps_column = pq.read_table(manifest, columns=["clip_id", "fps"]).to_pandas()
        fps_column = dict(zip(fps_column["clip_id"], fps_column["fps"], strict=True))
    out = []
    for row in rows:
        clip_id = table.row_clip_id(row)
        crop = table.crop[row] if (table.crop[row] >= 0).all() else None
        fps = float((fps_column or {}).get(clip_id) or 25.0)
        path = table.clip_path(row)
        out.append((clip_id, lambda p=path, f=fps, c=crop: rec.iter_clip(p, f, c)))
    return out


def _reconstruct_one(
    name: str, windows: Iterator[WindowReconstruction], folder: Path, stride: int
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Write one input's grids and MP4 as its windows come; its table rows."""
    rows, written = [], []
    movie = ReconstructionVideo(folder / "reconstruction.mp4", stride)
    try:
        for window in windows:
            row = {"input": name, **window.row(), "png": None, "reason": None}
            if window.face:
                png = write_grid(
                    window, folder / f"window_{window.window:03d}.png", grid_title(name, window)
                )
                row["png"] = str(png)
                written.append(png)
                movie.add(window)
            rows.append(row)
    except BaseException:
        movie.close(keep=False)
        raise
    path = movie.close()
    if path is not None:
        written.append(path)
    return rows, written


def format_table(table: pd.DataFrame) -> str:
    lines = [
        f"{'input':<24} {'window':>6} {'frames':>11}  {'loss':>7} {'appear.':>7} {'motion':>7}"
    ]
    for row in table.itertuples():
        span = f"{row.start_frame}-{row.end_frame}" if pd.notna(row.start_frame) else ""
        if isinstance(row.reason, str):
            lines.append(f"{str(row.input)[-24:]:<24} {'':>6} {'':>11}  failed: {row.reason}")
        elif not row.face:
            lines.append(f"{str(row.input)[-24:]:<24} {row.window:>6} {span:>11}  (no face)")
        else:
            lines.append(
                f"{str(row.input)[-24:]:<24} {row.window:>6} {span:>11}  "
                f"{row.loss:7.4f} {row.loss_appearance:7.4f} {row.loss_motion:7.4f}"
            )
    return "\n".join(lines)


def run(
    inputs: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    out: str | Path,
    mask_ratio: float | None = None,
    seed: int = 0,
    hop: int | None = None,
    device: str | None = None,
    fold: int | None = None,
    split: str | None = None,
    limit: int | None = None,
    model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    progress: bool = True,
    show: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Reconstruct every window of every input; write the grids, the MP4s and ``losses.csv``;
    the table and the summary go to ``show`` (the command line prints them).

    Args:
        inputs: videos (files, folders, globs) or one ``manifest.parquet``.
        checkpoint: a pre-training checkpoint, ours or official (a classifier is refused).
        out: the folder (module docstring).
        mask_ratio, seed, hop, device, model_overrides: see :class:`Reconstructor`.
        fold, split: manifest rows; limit: only the first N inputs.

    Returns:
        The table written to ``out/losses.csv``.

    Raises:
        MaedferError: bad inputs, a checkpoint that cannot be used, or a single input that
            fails.
    """
    started = time.perf_counter()
    if limit is not None and limit < 1:
        raise MaedferError(f"--limit ({limit}) must be >= 1")
    rec = Reconstructor(
        checkpoint,
        device=device,
        mask_ratio=mask_ratio,
        seed=seed,
        hop=hop,
        model_overrides=model_overrides,
    )
    items = _inputs(rec, inputs, fold, split, limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    written: list[Path] = []
    for name, windows in tqdm(
        items, desc="reconstruct", unit="input", disable=not progress or len(items) < 2
    ):
        folder_name, k = _safe(name), 1
        while folder_name in used:
            k += 1
            folder_name = f"{_safe(name)}-{k}"
        used.add(folder_name)
        try:
            got, files = _reconstruct_one(name, windows(), out / folder_name, rec.settings.stride)
        except MaedferError as exc:
            if len(items) == 1:
                raise
            logger.info("%s failed: %s", name, exc)
            rows.append({"input": name, "reason": str(exc)})
            continue
        rows += got
        written += files
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("window", "start_frame", "end_frame"):
        table[column] = table[column].astype("Int64")
    with atomic_path(out / TABLE) as tmp:
        table.to_csv(tmp, index=False)
    emit = show or (lambda _line: None)
    emit(format_table(table))
    faces = table[table["face"] == True]  # noqa: E712 (a nullable column)
    emit(
        f"\nreconstruct: {len(faces)} windows of {len(items)} input(s) at mask ratio "
        f"{rec.mask_ratio:g} (seed {rec.seed}), {time.perf_counter() - started:.1f} s"
    )
    if len(faces):
        emit(
            f"mean loss {faces['loss'].mean():.4f} (appearance "
            f"{faces['loss_appearance'].mean():.4f}, motion {faces['loss_motion'].mean():.4f})"
        )
    emit(f"wrote {out / TABLE}, {len(written)} pictures and videos under {out}")
    return table
