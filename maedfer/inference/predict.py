"""``maedfer predict VIDEO|DIR|GLOB ...``: many videos, one model load (docs/inference.md).

Every input is a video file, a folder (its videos, recursively, in name order) or a glob
pattern. One :class:`~maedfer.inference.predictor.Predictor` serves them all, behind one tqdm
bar over the videos. A video that fails (unreadable, no face) is recorded with its reason
and the rest go on.

Outputs (``--out``): a table with one row per window of every video (``video`` first, then
the columns of :attr:`Prediction.windows`), and a per-video table (``status`` ``ok`` or
``failed``, ``reason``, frames, rate, ``face_ratio``, windows, ``top_class`` and the mean
probability of each class over the face windows). ``results.parquet`` / ``results.csv`` get
the per-video table beside them as ``results.videos.parquet`` / ``results.videos.csv``;
``results.json`` holds both (``videos``, ``windows``; NaN as null).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from maedfer.atomic import atomic_path, check_writable, write_text
from maedfer.errors import MaedferError
from maedfer.inference.predictor import Prediction, Predictor, prob_columns

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (
    ".mp4",
    ".mov",
    ".m4v",
    ".avi",
    ".mkv",
    ".webm",
    ".flv",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".ts",
    ".3gp",
)
OUT_SUFFIXES = (".parquet", ".csv", ".json")


def find_videos(inputs: Sequence[str | Path]) -> list[Path]:
    """The videos named by files, folders (recursively) and glob patterns, each once.

    Raises:
        MaedferError: an input that is no file, folder or matching pattern; no video at all.
    """
    found: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            videos = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
            )
            if not videos:
                raise MaedferError(f"folder {path} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
            found += videos
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(given), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise MaedferError(f"{given} is no file, folder or matching pattern")
            found += matches
    seen, unique = set(), []
    for video in found:
        key = video.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(video)
    return unique


@dataclass
class BatchResult:
    """The tables of a batch: ``windows`` (one row per window) and ``videos`` (one per video),
    and the :class:`Prediction` of every video that worked, by its path."""

    windows: pd.DataFrame
    videos: pd.DataFrame
    predictions: dict[str, Prediction]


def _video_row(
    video: Path, prediction: Prediction | None, reason: str | None, class_names: list[str]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "video": str(video),
        "status": "ok" if prediction else "failed",
        "reason": reason,
    }
    if prediction is None:
        return row
    s = prediction.summary
    row.update(
        num_frames=prediction.num_frames,
        fps=prediction.fps,
        duration_s=prediction.duration_s,
        face_ratio=s["face_ratio"],
        num_windows=s["num_windows"],
        face_windows=s["face_windows"],
        top_class=s["top_class"],
    )
    for name, column in zip(class_names, prob_columns(class_names), strict=True):
        value = s["mean_probabilities"][name]
        row[f"mean_{column}"] = math.nan if value is None else value
    return row


def predict_many(
    predictor: Predictor,
    videos: Sequence[Path],
    *,
    progress: bool = True,
    keep: bool = False,
    on_result=None,
    isolate: bool = True,
    explain: bool = False,
) -> BatchResult:
    """Predict every video with one predictor; failures become rows with their reason
    (with ``isolate=False`` the first failure is raised instead).

    ``on_result(video, prediction)`` is called after each video that worked (plots,
    overlays); ``keep`` keeps every :class:`Prediction` in the result (memory grows with the
    number of videos, by the per-frame faces of each); ``explain``: relevance maps too
    (:meth:`Predictor.predict`).
    """
    names = predictor.class_names
    window_tables, rows, kept = [], [], {}
    bar = tqdm(videos, desc="videos", unit="video", disable=not progress)
    for video in bar:
        bar.set_postfix_str(video.name[-30:])
        try:
            prediction = predictor.predict(video, explain=explain)
        except MaedferError as exc:  # unreadable, no face: recorded, the rest go on
            if not isolate:
                raise
            logger.info("%s failed: %s", video, exc)
            rows.append(_video_row(video, None, _short_reason(str(exc), video), names))
            continue
        table = prediction.windows.copy()
        table.insert(0, "video", str(video))
        window_tables.append(table)
        rows.append(_video_row(video, prediction, None, names))
        if on_result is not None:
            on_result(video, prediction)
        if keep:
            kept[str(video)] = prediction
    columns = [
        "video",
        "window",
        "start_frame",
        "end_frame",
        "start_s",
        "end_s",
        "face",
        "face_share",
        *prob_columns(names),
        "top_class",
        "top_p",
    ]
    windows = (
        pd.concat(window_tables, ignore_index=True)
        if window_tables
        else pd.DataFrame(columns=columns)
    )
    table = pd.DataFrame(rows)
    for column in ("num_frames", "num_windows", "face_windows"):
        if column in table:
            table[column] = table[column].astype("Int64")  # counts stay integers beside nulls
    return BatchResult(windows, table, kept)


def _short_reason(message: str, video: Path) -> str:
    """The reason without the file name (the row has it): ``no face found``, ``unreadable: ...``."""
    for prefix in (f"cannot read video {video}: ", f"no face found in {video}"):
        if message.startswith(prefix):
            rest = message[len(prefix) :]
            return rest if rest else "no face found"
    return message


def write_tables(result: BatchResult, out: Path) -> list[Path]:
    """Write the batch's tables (see the module docstring); returns the files written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".json":

        def records(frame: pd.DataFrame) -> list[dict]:
            return json.loads(frame.to_json(orient="records"))  # NaN -> null

        document = {"videos": records(result.videos), "windows": records(result.windows)}
        write_text(out, json.dumps(document, indent=2) + "\n")
        return [out]
    videos_path = out.with_name(f"{out.stem}.videos{out.suffix}")
    for frame, path in ((result.windows, out), (result.videos, videos_path)):
        with atomic_path(path) as tmp:
            if suffix == ".parquet":
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_csv(tmp, index=False)
    return [out, videos_path]


def _target(base: Path, video: Path, many: bool, suffix: str, used: set[str]) -> Path:
    """``base`` for one video; ``base/<stem><suffix>`` (made unique) for several."""
    if not many:
        return base
    name = video.stem + suffix
    k = 1
    while name in used:
        k += 1
        name = f"{video.stem}-{k}{suffix}"
    used.add(name)
    return base / name


def format_single(prediction: Prediction) -> str:
    """The window table and summary of one video, for the terminal."""
    names = prediction.class_names
    width = max(7, *(len(n) for n in names))
    explained = prediction.explain is not None
    lines = [
        f"{'window':>6} {'start_s':>8} {'end_s':>8}  {'top class':<{width}}  top p"
        + ("  which frames mattered" if explained else "")
    ]
    for row in prediction.windows.itertuples():
        top = row.top_class if row.face else "(no face)"
        p = f"{row.top_p:.3f}" if row.face else "  -"
        line = f"{row.window:>6} {row.start_s:>8.2f} {row.end_s:>8.2f}  {top:<{width}}  {p}"
        if explained and row.face:
            from maedfer.inference.explain_render import sparkline

            line += f"  {sparkline(row.frame_relevance)} peak f{row.peak_frame}"
        lines.append(line)
    lines.append("")
    s = prediction.summary
    lines.append(
        f"{Path(prediction.video).name}: {prediction.num_frames} frames at "
        f"{prediction.fps:.2f} fps, face in {s['face_ratio']:.0%} of the frames, "
        f"{s['num_windows']} windows ({s['face_windows']} with a face)"
    )
    if s["top_class"] is None:
        lines.append("no window has a face: no class probabilities")
        return "\n".join(lines)
    lines.append(f"top class (mean probability over face windows): {s['top_class']}")
    lines.append(f"  {'class':<{width}}  mean p  share of windows")
    for name in names:
        lines.append(
            f"  {name:<{width}}  {s['mean_probabilities'][name]:.3f}  "
            f"{s['window_share'][name]:>6.1%}"
        )
    return "\n".join(lines)


def format_batch(result: BatchResult, seconds: float) -> str:
    videos = result.videos
    ok = videos[videos["status"] == "ok"]
    lines = [f"{'video':<40} {'status':<7} {'face':>5} {'windows':>7}  top class / reason"]
    for row in videos.to_dict(orient="records"):
        name = Path(row["video"]).name[-40:]
        if row["status"] == "ok":
            lines.append(
                f"{name:<40} ok      {row['face_ratio']:>5.0%} {row['num_windows']:>7}  "
                f"{row['top_class'] or '(no face window)'}"
            )
        else:
            lines.append(f"{name:<40} failed  {'':>5} {'':>7}  {row['reason']}")
    lines.append(
        f"{len(ok)} of {len(videos)} videos predicted, {len(videos) - len(ok)} failed, "
        f"{len(result.windows)} windows, {seconds:.1f} s"
    )
    return "\n".join(lines)


def run(
    videos: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    overlay: str | Path | None = None,
    device: str | None = None,
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    hop: int | None = None,
    model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    explain: bool = False,
    progress: bool = True,
    show: Callable[[str], None] | None = None,
) -> BatchResult:
    """Predict every video; write the tables, plots and overlays asked for; the summary goes to
    ``show`` (the command line prints it; nothing is printed here).

    Args:
        videos: files, folders and glob patterns.
        checkpoint: ``last.pt``, ``final.pt`` or an official MAE-DFER fine-tuned ``.pth``.
        out: ``.parquet``, ``.csv`` or ``.json`` (module docstring).
        plot: timeline PNG; with several videos a folder of ``<stem>.png``.
        overlay: overlay MP4; with several videos a folder of ``<stem>.overlay.mp4``.
        device, dataset, classes, hop, model_overrides: see :class:`Predictor`.
        explain: where each window's evidence lies: ``frame_relevance`` and ``peak_frame`` in
            the table, heat maps in the overlay, strips in the plot.

    Raises:
        MaedferError: bad inputs or outputs, a checkpoint that cannot be used, or a single
            video that fails (with several, failures are rows of the table).
    """
    started, emit = time.perf_counter(), show or (lambda _line: None)
    if out is not None and Path(out).suffix.lower() not in OUT_SUFFIXES:
        raise MaedferError(f"--out {out} must end in {', '.join(OUT_SUFFIXES)}")
    found = find_videos(videos)
    many = len(found) > 1
    if overlay is not None and not many and Path(overlay).suffix.lower() != ".mp4":
        raise MaedferError(f"--overlay {overlay} must end in .mp4")
    # where results go is checked before any video is read (not after all the work)
    for flag, target, several in (
        ("--out", out, False),
        ("--plot", plot, many),
        ("--overlay", overlay, many),
    ):
        if target is not None:
            check_writable(target, what=flag, folder=several)
    predictor = Predictor(
        checkpoint,
        device=device,
        dataset=dataset,
        classes=classes,
        hop=hop,
        model_overrides=model_overrides,
        progress=not many and progress,
    )
    used_plot: set[str] = set()
    used_overlay: set[str] = set()
    written: list[Path] = []

    def outputs(video: Path, prediction: Prediction) -> None:
        from maedfer.inference.render import plot_timeline, render_overlay

        if plot is not None:
            written.append(
                plot_timeline(prediction, _target(Path(plot), video, many, ".png", used_plot))
            )
        if overlay is not None:
            target = _target(Path(overlay), video, many, ".overlay.mp4", used_overlay)
            written.append(render_overlay(prediction, target))

    result = predict_many(
        predictor,
        found,
        progress=progress and many,
        keep=not many,
        on_result=outputs,
        isolate=many,
        explain=explain,
    )
    if not many:
        prediction = next(iter(result.predictions.values()))
        text = format_single(prediction)
        if out is not None:  # the table goes to the file; the summary alone here
            text = text.split("\n\n", 1)[1]
        emit(text)
    else:
        emit(format_batch(result, time.perf_counter() - started))
    if out is not None:
        written = write_tables(result, Path(out)) + written
    for path in written:
        emit(f"wrote {path}")
    return result
