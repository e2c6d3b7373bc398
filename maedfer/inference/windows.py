"""Prediction windows over a stream of aligned faces, and their model input (docs/inference.md).

Windows: every ``stride``-th frame of the video is taken (``0, 4, 8, …`` at the usual stride 4;
a video with fewer than ``num_frames`` of them is padded with its last, as the test views of
:func:`maedfer.pipelines.sampling.test_window` are). Windows of ``num_frames`` of those frames
start every ``hop`` of them (default half a window, 8 subsampled = 32 video frames at stride 4),
plus one last window ending at the last subsampled frame when the hops leave a tail uncovered.
Worked example (72 frames, 16 frames, stride 4): 18 subsampled frames ``0..68``; windows start
at subsampled 0 and 2, i.e. video frames ``0..60`` and ``8..68``, exactly the two test views. A
window's ``start_s``/``end_s`` are the span from its first frame's start to its last frame's
end, ``start_frame / fps`` and ``(end_frame + 1) / fps``.

:func:`stream_windows` cuts the same windows as :func:`window_indices` from frames arriving one
by one, without knowing the length in advance (a live source): it holds the frames of one
window, never the video. The model input of a window is normalised by the pipelines' own
functions (:func:`maedfer.pipelines.augment.normalise`, then
:func:`~maedfer.pipelines.augment.finish_clip`), so it is what the loaders give for the same
frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines.augment import finish_clip, normalise
from maedfer.pipelines.sampling import sliding_windows

T = TypeVar("T")


def default_hop(num_frames: int) -> int:
    """Half a window, in subsampled frames."""
    return max(1, num_frames // 2)


def window_indices(
    num_video_frames: int, *, num_frames: int = 16, stride: int = 4, hop: int | None = None
) -> np.ndarray:
    """Video frame indices of every prediction window, ``(W, num_frames)`` int64.

    ``hop`` counts subsampled frames (default ``num_frames // 2``). See the module docstring;
    e.g. ``n=100``: 25 subsampled frames ``0..96``, windows start at 0, 8 and 9 → frames
    ``0..60``, ``32..92``, ``36..96``.
    """
    _check(num_video_frames, num_frames, stride, hop)
    # the pipelines' one window rule (the test views' padded every-stride list)
    return sliding_windows(num_video_frames, num_frames=num_frames, stride=stride, hop=hop)


def _check(num_video_frames: int, num_frames: int, stride: int, hop: int | None) -> None:
    if num_video_frames < 1 or num_frames < 1 or stride < 1:
        raise MaedferError(
            f"windows need >= 1 video frame, num_frames and stride >= 1; got "
            f"{num_video_frames}, {num_frames}, {stride}"
        )
    if hop is not None and hop < 1:
        raise MaedferError(f"window hop ({hop}) must be >= 1 subsampled frame")


def stream_windows(
    items: Iterable[T], *, num_frames: int = 16, stride: int = 4, hop: int | None = None
) -> Iterator[tuple[np.ndarray, list[T]]]:
    """``(frame indices, items)`` of each window as soon as its last frame has arrived.

    ``items`` holds one entry per video frame (a crop, or anything else); the windows are
    those of :func:`window_indices` for the number of items that arrive. Only the subsampled
    items a window may still need are kept: ``num_frames`` of them, whatever the length.

    Raises:
        MaedferError: bad arguments, or no items at all.
    """
    _check(1, num_frames, stride, hop)
    hop = default_hop(num_frames) if hop is None else hop
    kept: dict[int, T] = {}  # subsampled position -> item
    next_start, last_start, seen = 0, None, 0
    for t, item in enumerate(items):
        seen = t + 1
        if t % stride:
            continue
        position = t // stride
        kept[position] = item
        while next_start + num_frames - 1 <= position:
            span = range(next_start, next_start + num_frames)
            yield np.asarray(span, np.int64) * stride, [kept[i] for i in span]
            last_start, next_start = next_start, next_start + hop
        # keep what the next regular window needs and the last window's worth (the tail)
        floor = min(next_start, position - num_frames + 1)
        for key in [k for k in kept if k < floor]:
            del kept[key]
    if not seen:
        raise MaedferError("no frames: a window needs at least one")
    count = (seen - 1) // stride + 1  # subsampled frames
    if count < num_frames:  # shorter than a window: pad with the last, as the test views do
        span = list(range(count)) + [count - 1] * (num_frames - count)
        yield np.asarray(span, np.int64) * stride, [kept[i] for i in span]
    elif last_start != count - num_frames:
        span = range(count - num_frames, count)
        yield np.asarray(span, np.int64) * stride, [kept[i] for i in span]


def window_batch(clips: list[np.ndarray], subtract_mean: bool) -> torch.Tensor:
    """``(W, 3, T, S, S)`` float32 model inputs from ``(T, S, S, 3)`` uint8 aligned windows,
    normalised as the loaders do (ImageNet mean/std, then the optional mean-frame removal)."""
    out = []
    for window in clips:
        frames = torch.from_numpy(np.ascontiguousarray(window)).permute(0, 3, 1, 2)  # (T,3,S,S)
        clip = normalise(frames).permute(1, 0, 2, 3)  # (3, T, S, S)
        out.append(finish_clip(clip, subtract_mean=subtract_mean))
    return torch.stack(out)
