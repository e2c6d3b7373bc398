"""``maedfer predict VIDEO --checkpoint CKPT``: class probabilities over time (DESIGN.md §2).

The video is read, its face detected and aligned by the same code ``prepare`` uses (DESIGN.md
§4), cut into 16-frame windows sampled like the test views (MODEL.md §4.2), normalised like the
pipelines, and classified; each window's logits go through a softmax.

Windows: every ``stride``-th frame of the video is taken (``0, 4, 8, …`` at the usual stride 4;
a video with fewer than ``num_frames`` of them is padded with its last, as the test views are).
Windows of ``num_frames`` of those frames start every ``hop`` of them (default half a window, 8
subsampled = 32 video frames at stride 4), plus one last window ending at the last subsampled
frame when the hops leave a tail uncovered. Worked example (72 frames, 16 frames, stride 4):
18 subsampled frames ``0..68``; windows start at subsampled 0 and 2, i.e. video frames ``0..60``
and ``8..68``, exactly the two test views. A window's ``start_s``/``end_s`` are the time span
from its first frame's start to its last frame's end, ``start_frame / fps`` and
``(end_frame + 1) / fps``.

Every frame is located and aligned with ``prepare``'s aligner and its defaults (detection on
keyframes, O-Net tracking and landmark smoothing between them), so a window sees crops made
exactly as the training clips' frames were. The video is streamed twice, as ``prepare`` does:
once to locate the face (only landmarks are kept), once to warp the frames and classify each
window as soon as its last frame is aligned; memory is bounded by a window, not the video.

The checkpoint is a fine-tuning run's ``checkpoints/last.pt`` (DESIGN.md §6, written by
:mod:`maedfer.train.checkpoint`), loaded with ``weights_only=True``: it names the model, its
classes and the recipe's input settings (frames, stride, size, mean-frame subtraction).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from torch import nn
from tqdm import tqdm

from maedfer.atomic import atomic_path, write_text
from maedfer.errors import MaedferError
from maedfer.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD, finish_clip
from maedfer.preprocess.faces import FaceAligner, NoFaceError
from maedfer.preprocess.video import VideoError, iter_video_frames, prefetched, probe_video
from maedfer.train.checkpoint import load_checkpoint, model_from_checkpoint

logger = logging.getLogger(__name__)

BATCH_WINDOWS = 4  # windows per forward pass: memory stays small on CPU, GPUs are busy enough
DEFAULT_STRIDE = 4  # MODEL.md §4: sampling rate 4, when a checkpoint does not say
OUT_SUFFIXES = (".csv", ".json")


def window_indices(
    num_video_frames: int, *, num_frames: int = 16, stride: int = 4, hop: int | None = None
) -> np.ndarray:
    """Video frame indices of every prediction window, ``(W, num_frames)`` int64.

    ``hop`` counts subsampled frames (default ``num_frames // 2``). See the module docstring;
    e.g. ``n=100``: 25 subsampled frames ``0..96``, windows start at 0, 8 and 9 → frames
    ``0..60``, ``32..92``, ``36..96``.
    """
    if num_video_frames < 1 or num_frames < 1 or stride < 1:
        raise MaedferError(
            f"windows need >= 1 video frame, num_frames and stride >= 1; got "
            f"{num_video_frames}, {num_frames}, {stride}"
        )
    hop = max(1, num_frames // 2) if hop is None else hop
    if hop < 1:
        raise MaedferError(f"window hop ({hop}) must be >= 1 subsampled frame")
    every = np.arange(0, num_video_frames, stride, dtype=np.int64)
    if len(every) < num_frames:
        every = np.concatenate([every, np.full(num_frames - len(every), every[-1])])
    last = len(every) - num_frames
    starts = list(range(0, last + 1, hop))
    if starts[-1] != last:
        starts.append(last)
    return np.stack([every[s : s + num_frames] for s in starts])


def load_classifier(checkpoint: Path, device: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the fine-tuned classifier of a run checkpoint, in eval mode on ``device``.

    The checkpoint is read by :func:`maedfer.train.checkpoint.load_checkpoint`
    (``weights_only=True``); its ``classes`` name the outputs, the recipe's options in its
    ``config`` give the input settings, and the model's own config fills what they leave out.

    Returns:
        ``(model, settings)`` with settings ``model`` (its name), ``class_names``,
        ``num_frames``, ``stride``, ``size`` and ``subtract_mean``.

    Raises:
        MaedferError: unreadable file, not a maedfer checkpoint, a pre-training checkpoint, or
            settings that disagree with the model.
    """
    ckpt = load_checkpoint(checkpoint)
    name = ckpt.get("model_name")
    if not isinstance(name, str) or name.startswith("mae_"):
        raise MaedferError(
            f"{checkpoint} is a pre-training checkpoint ({name}); predict needs a fine-tuned "
            "classifier (a finetune run's checkpoints/last.pt)"
        )
    try:
        model = model_from_checkpoint(ckpt)
    except RuntimeError as exc:  # load_state_dict: missing, unexpected or mis-shaped tensors
        first = str(exc).strip().splitlines()[0]
        raise MaedferError(f"{checkpoint}: the weights do not fit {name}: {first}") from None
    return model.to(device).eval(), _settings(checkpoint, ckpt, model)


def _settings(checkpoint: Path, ckpt: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    # The fine-tuning recipe stores the label names beside its options (``classes``) and its
    # options under ``config``, where None means "the model's own value".
    # Recipe configs are nested (``data.stride``, ``model.img_size``); checkpoints written
    # before them hold one flat dict (``stride``, ``size``): both are read.
    config, built = ckpt.get("config") or {}, model.config
    nested = isinstance(config.get("data"), Mapping)
    data = config["data"] if nested else config
    model_cfg = config.get("model") or {} if nested else config
    size = model_cfg.get("img_size") if nested else config.get("size")
    settings = {
        "model": model.model_name,
        "class_names": list(ckpt.get("classes") or config.get("classes") or []),
        "num_frames": int(model_cfg.get("num_frames") or built["num_frames"]),
        "stride": int(data.get("stride") or DEFAULT_STRIDE),
        "size": int(size or built["img_size"]),
        "subtract_mean": bool(data.get("subtract_mean", False)),
    }
    names = settings["class_names"]
    if len(names) != built["num_classes"]:
        raise MaedferError(
            f"{checkpoint}: the model has {built['num_classes']} outputs but the checkpoint "
            f"names {len(names)} classes {names}"
        )
    for key, field in (("num_frames", "num_frames"), ("size", "img_size")):
        if built[field] != settings[key]:
            raise MaedferError(
                f"{checkpoint}: config {key}={settings[key]} but the model expects "
                f"{field}={built[field]}"
            )
    return settings


def _read_and_align(
    video: Path, settings: dict[str, Any], hop: int | None, device: str
) -> dict[str, Any]:
    """Locate the face in every frame of ``video`` and cut the windows (first decode).

    Only the landmarks are kept (a few bytes a frame), so memory does not grow with the
    video's length; the frames are decoded again, aligned and classified by `_classify`.
    """
    aligner = FaceAligner(size=settings["size"], device=device)
    try:
        fps = float(probe_video(video).fps)
        track = aligner.locate_stream(prefetched(iter_video_frames(video)))
    except VideoError as exc:  # its message is a bare reason: say which file
        raise MaedferError(f"cannot read video {video}: {exc}") from None
    except NoFaceError:
        raise MaedferError(
            f"no face found in {video}: predict needs a visible face"
        ) from None
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise MaedferError(f"{video} reports no usable frame rate ({fps})")
    num_frames = len(track.valid)
    windows = window_indices(
        num_frames, num_frames=settings["num_frames"], stride=settings["stride"], hop=hop
    )
    transforms = aligner.transforms(track)
    return {
        # the second decode: every frame aligned, yielded as it is made
        "crops": lambda: aligner.warp_stream(prefetched(iter_video_frames(video)), transforms),
        "windows": windows,
        "fps": fps,
        "num_frames": num_frames,
        "face_ratio": float(track.face_ratio),
    }


def _window_batch(clips: list[np.ndarray], subtract_mean: bool) -> torch.Tensor:
    """``(W, 3, T, S, S)`` float32 inputs from (T, S, S, 3) aligned windows, normalised as the
    pipelines do."""
    # The PyAV loader's order (maedfer.pipelines.pyav.load_sample): ImageNet mean/std on the
    # 0..255 values, then finish_clip's optional mean-frame subtraction on (3, T, H, W).
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255
    out = []
    for window in clips:
        clip = torch.from_numpy(window).permute(3, 0, 1, 2).float()  # (3, T, S, S)
        out.append(finish_clip((clip - mean) / std, subtract_mean=subtract_mean))
    return torch.stack(out)


def _windows_of(crops: Iterator[np.ndarray], windows: np.ndarray) -> Iterator[np.ndarray]:
    """Each window's (T, S, S, 3) crops, as soon as its last frame has been aligned.

    Only the crops a pending window still needs are kept (a window's span, not the video);
    decoding stops after the last window's last frame.
    """
    needed = set(np.unique(windows).tolist())
    kept: dict[int, np.ndarray] = {}
    w = 0
    for t, crop in enumerate(crops):
        if t in needed:
            kept[t] = crop
        while w < len(windows) and int(windows[w].max()) <= t:
            yield np.stack([kept[int(i)] for i in windows[w]])
            w += 1
            first = int(windows[w].min()) if w < len(windows) else t + 1
            for k in [k for k in kept if k < first]:
                del kept[k]
        if w == len(windows):
            return


@torch.inference_mode()
def _classify(model: nn.Module, video: Path, clip: dict[str, Any], subtract_mean: bool,
              device: str) -> np.ndarray:  # fmt: skip
    """``(W, C)`` softmax probabilities; the second decode streams through the aligner and the
    model a batch of windows at a time."""
    windows = clip["windows"]
    crops = clip["crops"]()
    out, batch = [], []
    bar = tqdm(total=len(windows), desc="windows", unit="window", leave=False, disable=None)
    try:
        for window in _windows_of(crops, windows):
            batch.append(window)
            if len(batch) == BATCH_WINDOWS:
                out.append(_batch_probabilities(model, batch, subtract_mean, device))
                bar.update(len(batch))
                batch = []
        if batch:
            out.append(_batch_probabilities(model, batch, subtract_mean, device))
            bar.update(len(batch))
    except VideoError as exc:
        raise MaedferError(f"cannot read video {video}: {exc}") from None
    finally:
        bar.close()
    return torch.cat(out).numpy()


def _batch_probabilities(model, batch, subtract_mean: bool, device: str) -> torch.Tensor:
    logits = model(_window_batch(batch, subtract_mean).to(device))
    return torch.softmax(logits.float(), dim=1).cpu()


def _rows(
    windows: np.ndarray, probs: np.ndarray, fps: float, class_names: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for i, (window, p) in enumerate(zip(windows, probs, strict=True)):
        start, end = int(window[0]), int(window[-1])
        rows.append(
            {
                "window": i,
                "start_frame": start,
                "end_frame": end,
                "start_s": round(start / fps, 3),
                "end_s": round((end + 1) / fps, 3),
                "probabilities": {n: float(v) for n, v in zip(class_names, p, strict=True)},
                "top_class": class_names[int(p.argmax())],
            }
        )
    return rows


def _summary(probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    mean = probs.mean(axis=0)
    tops = np.bincount(probs.argmax(axis=1), minlength=len(class_names)) / len(probs)
    return {
        "num_windows": len(probs),
        "top_class": class_names[int(mean.argmax())],
        "mean_probabilities": {n: float(v) for n, v in zip(class_names, mean, strict=True)},
        "window_share": {n: float(v) for n, v in zip(class_names, tops, strict=True)},
    }


def _csv_text(rows: list[dict[str, Any]], class_names: list[str]) -> str:
    buffer = io.StringIO()
    fields = ["window", "start_frame", "end_frame", "start_s", "end_s"]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields + [f"prob_{n}" for n in class_names] + ["top_class"])
    for row in rows:
        probs = [f"{row['probabilities'][n]:.6f}" for n in class_names]
        writer.writerow([row[f] for f in fields] + probs + [row["top_class"]])
    return buffer.getvalue()


def plot_timeline(result: dict[str, Any], path: Path) -> None:
    """Save a PNG of each class's probability over time (window centres), atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows, names = result["windows"], result["class_names"]
    centres = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    try:
        for name in names:
            ax.plot(centres, [r["probabilities"][name] for r in rows], marker="o", label=name)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(result["duration_s"], centres[-1]))
        ax.set_xlabel("time (s), window centre")
        ax.set_ylabel("probability")
        ax.set_title(f"{Path(result['video']).name}: {result['summary']['top_class']}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def _format(result: dict[str, Any], with_windows: bool) -> str:
    names = result["class_names"]
    lines = []
    if with_windows:
        width = max(7, *(len(n) for n in names))
        lines.append(f"{'window':>6} {'start_s':>8} {'end_s':>8}  {'top class':<{width}}  top p")
        for row in result["windows"]:
            top = row["top_class"]
            lines.append(
                f"{row['window']:>6} {row['start_s']:>8.2f} {row['end_s']:>8.2f}  "
                f"{top:<{width}}  {row['probabilities'][top]:.3f}"
            )
        lines.append("")
    summary = result["summary"]
    lines.append(
        f"{Path(result['video']).name}: {result['num_frames']} frames at {result['fps']:.2f} fps, "
        f"face in {result['face_ratio']:.0%} of the frames aligned, "
        f"{summary['num_windows']} windows"
    )
    lines.append(f"top class (mean probability): {summary['top_class']}")
    width = max(len(n) for n in names)
    lines.append(f"  {'class':<{width}}  mean p  share of windows")
    for name in names:
        lines.append(
            f"  {name:<{width}}  {summary['mean_probabilities'][name]:.3f}  "
            f"{summary['window_share'][name]:>6.1%}"
        )
    return "\n".join(lines)


def _pick_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MaedferError(f"device {device!r} asked for but CUDA is not available; use cpu")
    return device


def run(
    video: Path,
    checkpoint: Path,
    out: Path | None = None,
    plot: Path | None = None,
    device: str | None = None,
    hop: int | None = None,
) -> dict[str, Any]:
    """Predict class probabilities per window of ``video``; print a summary, write outputs.

    Args:
        video: any video PyAV decodes.
        checkpoint: a fine-tuning run's ``checkpoints/last.pt``.
        out: ``.csv`` (one row per window) or ``.json`` (windows, summary and settings).
        plot: PNG timeline of the class probabilities.
        device: ``cpu``, ``cuda``... ; None picks CUDA when available.
        hop: window hop in subsampled frames (default half a window).

    Returns:
        The JSON document: ``video``, ``fps``, ``num_frames``, ``duration_s``, ``face_ratio``,
        ``class_names``, ``settings``, ``windows`` (rows) and ``summary``.

    Raises:
        MaedferError: no face in the video, a bad checkpoint, or an output suffix other than
            ``.csv``/``.json``.
    """
    video, checkpoint = Path(video), Path(checkpoint)
    if out is not None and Path(out).suffix.lower() not in OUT_SUFFIXES:
        raise MaedferError(f"--out {out} must end in .csv or .json")
    device = _pick_device(device)
    model, settings = load_classifier(checkpoint, device)
    clip = _read_and_align(video, settings, hop, device)
    probs = _classify(model, video, clip, settings["subtract_mean"], device)
    names = settings["class_names"]
    result = {
        "video": str(video),
        "checkpoint": str(checkpoint),
        "fps": clip["fps"],
        "num_frames": clip["num_frames"],
        "duration_s": round(clip["num_frames"] / clip["fps"], 3),
        "face_ratio": clip["face_ratio"],
        "class_names": names,
        "settings": {
            **settings,
            "hop": hop if hop is not None else max(1, settings["num_frames"] // 2),
        },
        "windows": _rows(clip["windows"], probs, clip["fps"], names),
        "summary": _summary(probs, names),
    }
    if clip["face_ratio"] < 0.5:
        logger.warning(
            "a face was found in only %.0f%% of the frames of %s; windows without one reuse "
            "the nearest alignment", 100 * clip["face_ratio"], video,
        )  # fmt: skip
    typer.echo(_format(result, with_windows=out is None))
    if out is not None:
        out = Path(out)
        text = (
            json.dumps(result, indent=2) + "\n"
            if out.suffix.lower() == ".json"
            else _csv_text(result["windows"], names)
        )
        write_text(out, text)
        typer.echo(f"wrote {out}")
    if plot is not None:
        plot_timeline(result, Path(plot))
        typer.echo(f"wrote {plot}")
    return result
