"""``Predictor.stream(frames, fps)``: window results as an iterator, each as soon as it is scored.

The frames are aligned and windowed as :meth:`~maedfer.inference.Predictor.predict_frames`
does (segments of up to 256 frames located and warped together, windows cut as they arrive),
and each window is scored alone the moment its last frame is aligned, so the values are
``predict_frames``'s on the same frames (and ``predict``'s, for a video shorter than a
segment). A window is yielded as a :class:`WindowResult`: its row of the windows table, and
with ``explain`` its relevance maps.

``low_latency=True`` (what ``maedfer predict --camera/--stream/--realtime`` uses) ends each
alignment segment at the last frame of a window instead, so a window is scored as soon as its
last frame is in rather than when a 256-frame segment fills; landmark smoothing and the
search for the face's size then restart every window hop, which changes the crops slightly.

Documented in docs/inference.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.inference.explain import explain_batch, frame_relevance
from maedfer.inference.predictor import SEGMENT_BYTES, SEGMENT_FRAMES, Predictor, prob_columns
from maedfer.inference.windows import stream_windows, window_batch
from maedfer.preprocess.faces import FaceAligner


@dataclass
class WindowResult:
    """One scored window of a stream.

    Attributes:
        row: the window's row of :attr:`Prediction.windows` (``window``, ``start_frame``,
            ``end_frame``, ``start_s``, ``end_s``, ``face``, ``face_share``, ``prob_<class>``...,
            ``top_class``, ``top_p``; with ``explain`` ``frame_relevance`` and ``peak_frame``),
            None where there is no value.
        probabilities: ``(C,)`` or None without a face.
        gradcam, attention: ``(T', H', W')`` relevance maps with ``explain`` (attention None
            for models without representative tokens), else None.
        frame_indices: ``(num_frames,)`` the frames the window samples.
    """

    row: dict[str, Any]
    probabilities: np.ndarray | None
    frame_indices: np.ndarray
    gradcam: np.ndarray | None = None
    attention: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row, JSON-ready."""
        return dict(self.row)


def window_ends(num_frames: int, stride: int, hop: int) -> Callable[[int], bool]:
    """Whether frame ``t`` (counted from the stream's start) is the last frame of a regular
    window: ``t = (s + num_frames - 1) * stride`` for a window start ``s`` of ``0, hop, ...``."""

    def ends(t: int) -> bool:
        if t % stride:
            return False
        past = t // stride - (num_frames - 1)
        return past >= 0 and past % hop == 0

    return ends


def _aligned_low_latency(
    predictor: Predictor, frames: Iterator[np.ndarray]
) -> Iterator[tuple[np.ndarray, bool]]:
    """``(crop, has face)`` per frame, each alignment segment ending at a window's last frame
    (or at the segment limit of :meth:`Predictor._segments`)."""
    s = predictor.settings
    ends = window_ends(s.num_frames, s.stride, predictor.hop)
    parts: dict[str, list[np.ndarray]] = {"valid": [], "landmarks": [], "transforms": []}
    buffer: list[np.ndarray] = []
    limit = None
    for t, frame in enumerate(frames):
        if limit is None:
            frame = FaceAligner._check_frame(frame, None)
            limit = max(1, min(SEGMENT_FRAMES, SEGMENT_BYTES // max(1, frame.nbytes)))
        buffer.append(frame)
        if len(buffer) >= limit or ends(t):
            yield from predictor._align_segment(buffer, parts)
            buffer = []
            for kept in parts.values():  # only the crops are needed: memory stays flat
                kept.clear()
    if buffer:
        yield from predictor._align_segment(buffer, parts)
    if limit is None:
        raise MaedferError("no frames given")


def score_window(predictor: Predictor, clip: np.ndarray, explain: bool) -> dict[str, Any]:
    """Probabilities (and with ``explain`` the maps) of one aligned window ``(T, S, S, 3)``."""
    batch = window_batch([clip], predictor.settings.subtract_mean).to(predictor.device)
    device = predictor.device
    # as Predictor._classify: a model drawing random numbers in evaluation (S4D's router noise)
    # draws the same ones for every window, the caller's generator untouched
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        if explain:
            found = explain_batch(predictor.model, batch)
            return {k: (v[0] if v is not None else None) for k, v in found.items()}
        with torch.inference_mode():
            logits = predictor.model(batch)
            return {"probs": torch.softmax(logits.float(), dim=1)[0].cpu().numpy()}


def _row(
    predictor: Predictor,
    number: int,
    indices: np.ndarray,
    share: float,
    fps: float,
    scored: dict[str, Any] | None,
    explain: bool,
    offset: int,
) -> dict[str, Any]:
    names = predictor.class_names
    start, end = int(indices[0]) + offset, int(indices[-1]) + offset
    row: dict[str, Any] = {
        "window": number,
        "start_frame": start,
        "end_frame": end,
        "start_s": round(start / fps, 3),
        "end_s": round((end + 1) / fps, 3),
        "face": scored is not None,
        "face_share": round(share, 4),
    }
    probs = None if scored is None else scored["probs"].astype(np.float64)
    for name, column in zip(names, prob_columns(names), strict=True):
        row[column] = None if probs is None else float(probs[names.index(name)])
    row["top_class"] = None if probs is None else names[int(np.argmax(probs))]
    row["top_p"] = None if probs is None else float(np.max(probs))
    if explain:
        curve = None if scored is None else frame_relevance(scored["gradcam"])
        row["frame_relevance"] = None if curve is None else [round(float(v), 4) for v in curve]
        if curve is None or not curve.any():
            row["peak_frame"] = None
        else:
            tubelet = len(indices) // len(curve)
            row["peak_frame"] = min(
                end, start + int(np.argmax(curve)) * tubelet * predictor.settings.stride
            )
    return row


def stream_windows_of(
    predictor: Predictor,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    explain: bool = False,
    low_latency: bool = False,
    start_frame: int = 0,
) -> Iterator[WindowResult]:
    """The windows of ``frames`` (``(H, W, 3)`` uint8 RGB), each scored as soon as it is in.

    Args:
        predictor: the model and the face pipeline.
        frames: any iterable (a camera, a generator); read once.
        fps: their frame rate (times in the rows).
        explain: also the relevance maps (:mod:`maedfer.inference.explain`).
        low_latency: end alignment segments at window ends (module docstring).
        start_frame: the number of the first frame (a live source restarted after dropped
            frames); the rows' frames and times count from it.

    Raises:
        MaedferError: ``fps`` not positive, no frames, a frame that is not ``(H, W, 3)``
            uint8 or sizes that change.
    """
    if not fps or not math.isfinite(float(fps)) or fps <= 0:
        raise MaedferError(f"fps ({fps}) must be a positive number")
    s = predictor.settings
    if low_latency:
        items = _aligned_low_latency(predictor, iter(frames))
    else:
        parts: dict[str, list[np.ndarray]] = {"valid": [], "landmarks": [], "transforms": []}
        items = predictor._segments(iter(frames), parts, [])
    windows = stream_windows(items, num_frames=s.num_frames, stride=s.stride, hop=predictor.hop)
    for number, (indices, window) in enumerate(windows):
        share = float(np.mean([has_face for _, has_face in window]))
        scored = None
        if share >= predictor.min_window_face and share > 0:
            scored = score_window(predictor, np.stack([crop for crop, _ in window]), explain)
        row = _row(predictor, number, indices, share, float(fps), scored, explain, start_frame)
        yield WindowResult(
            row=row,
            probabilities=None if scored is None else scored["probs"],
            frame_indices=np.asarray(indices) + start_frame,
            gradcam=None if scored is None else scored.get("gradcam"),
            attention=None if scored is None else scored.get("attention"),
        )


__all__ = ["WindowResult", "score_window", "stream_windows_of", "window_ends"]
