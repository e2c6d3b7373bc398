"""Which frames a clip gives: temporal sampling shared by every backend (docs/recipe.md).

Pure, keyword-only functions from (frame count, frames per clip, stride, generator) to frame
indices, arguments checked first, no decoder inside: the DALI pipeline and the PyAV loader call
the same function, so both pick the same frames for the same seed.

Rules:

- :func:`stride_window` — 16 frames at stride exactly 4, random start uniform in
  ``[0, n - num_frames * stride]``; a clip shorter than the span starts at 0 and repeats the last
  frame the stride reaches. This is the pre-training rule of docs/recipe.md and maedfer's default
  training window.
- :func:`reference_train_window` — the fine-tuning rule of the reference code (docs/recipe.md,
  quirk 5): 16 indices spread by ``linspace`` over a 64-frame window (effective stride 64/15).
- :func:`test_window` — the test views of docs/recipe.md: every ``stride``-th frame of the whole
  clip, padded with the last to ``num_frames``, view ``k`` of ``V`` starts at
  ``int(k * (len - num_frames) / (V - 1))`` (2 views = the first and the last window).
- :func:`sliding_windows` — inference's windows over a whole video, cut from the same padded
  list (:func:`subsampled_frames`).

Worked example (``num_frames=16, stride=4``): a 30-frame clip in :func:`stride_window` gives
``0, 4, …, 28`` (8 frames) then ``28`` eight more times; in :func:`test_window` the subsampled list
is ``0, 4, …, 28`` padded with ``28`` to 16, so both views are that list.
"""

from __future__ import annotations

import numpy as np

from maedfer.constants import TEMPORAL_RULES, TemporalRule
from maedfer.errors import MaedferError


def _check(num_video_frames: int, num_frames: int, stride: int) -> None:
    if int(num_video_frames) < 1:
        raise MaedferError(f"a clip needs at least 1 frame to sample from, got {num_video_frames}")
    if int(num_frames) < 1:
        raise MaedferError(f"num_frames ({num_frames}) must be >= 1")
    if int(stride) < 1:
        raise MaedferError(f"stride ({stride}) must be >= 1")


def stride_window(
    num_video_frames: int,
    *,
    num_frames: int = 16,
    stride: int = 4,
    generator: np.random.Generator,
) -> np.ndarray:
    """A window of ``num_frames`` frames at exactly ``stride`` apart, at a random start.

    The start is uniform in ``[0, n - num_frames * stride]`` (docs/recipe.md: the reference draws
    from ``n - 64 + 1`` starts). When ``n < num_frames * stride`` the window starts at 0 and the
    frames past the end are replaced by the last frame the stride reaches (``n=30`` → ``0..28``
    then ``28`` repeated), as the reference's pre-training loader does.

    Returns:
        ``int64`` array of shape ``(num_frames,)``, non-decreasing, all in ``[0, n - 1]``.
    """
    _check(num_video_frames, num_frames, stride)
    n = int(num_video_frames)
    span = num_frames * stride
    start = int(generator.integers(0, n - span + 1)) if n >= span else 0
    indices = start + stride * np.arange(num_frames, dtype=np.int64)
    last_reachable = start + stride * ((n - 1 - start) // stride)
    return np.minimum(indices, last_reachable)


def reference_train_window(
    num_video_frames: int,
    *,
    num_frames: int = 16,
    stride: int = 4,
    generator: np.random.Generator,
) -> np.ndarray:
    """The reference fine-tuning window (docs/recipe.md; effective stride 64/15, not 4).

    With ``span = num_frames * stride``: if ``n > span``, ``end`` is uniform in ``[span, n - 1]``,
    ``start = end - span`` and the indices are ``int(linspace(start, end, num_frames))`` clipped
    to ``end - 1``. Otherwise ``int(linspace(0, n, n // stride))`` padded with ``n`` to
    ``num_frames`` entries and clipped to ``n - 1`` (the tail repeats the last frame).
    Example: ``n=100`` and ``end=80`` gives ``16, 20, 24, …, 75, 79``.
    """
    _check(num_video_frames, num_frames, stride)
    n = int(num_video_frames)
    span = num_frames * stride
    if n > span:
        end = int(generator.integers(span, n))
        start = end - span
        index = np.linspace(start, end, num=num_frames)
        return np.clip(index, start, end - 1).astype(np.int64)
    head = np.linspace(0, n, num=n // stride)
    index = np.concatenate([head, np.full(num_frames - len(head), float(n))])
    return np.clip(index, 0, n - 1).astype(np.int64)


def subsampled_frames(
    num_video_frames: int, *, num_frames: int = 16, stride: int = 4
) -> np.ndarray:
    """Every ``stride``-th frame of the clip (``0, 4, 8, …``), padded with the last of those to
    at least ``num_frames`` entries: the list the test views and inference windows cut from
    (the one window padding of docs/recipe.md)."""
    _check(num_video_frames, num_frames, stride)
    every = np.arange(0, int(num_video_frames), stride, dtype=np.int64)
    if len(every) < num_frames:
        every = np.concatenate([every, np.full(num_frames - len(every), every[-1])])
    return every


def test_window(
    num_video_frames: int,
    *,
    view: int,
    views: int = 2,
    num_frames: int = 16,
    stride: int = 4,
) -> np.ndarray:
    """View ``view`` of ``views`` deterministic test windows (docs/recipe.md).

    Cut from :func:`subsampled_frames`; view ``k`` starts at ``int(k * (len - num_frames) /
    (views - 1))`` in that list. With one view (where the reference divides by zero, quirk 3)
    the middle window is used.
    Example: ``n=100`` subsamples to 25 frames; view 0 = ``0..60``, view 1 = ``36..96``.
    """
    _check(num_video_frames, num_frames, stride)
    if views < 1 or not 0 <= view < views:
        raise MaedferError(f"test view {view} must be in 0..{views - 1} (views={views} >= 1)")
    every = subsampled_frames(num_video_frames, num_frames=num_frames, stride=stride)
    room = len(every) - num_frames
    start = int(view * room / (views - 1)) if views > 1 else room // 2
    return every[start : start + num_frames]


def sliding_windows(
    num_video_frames: int, *, num_frames: int = 16, stride: int = 4, hop: int | None = None
) -> np.ndarray:
    """Every inference window of a video, ``(W, num_frames)`` int64 frame indices.

    Windows of :func:`subsampled_frames` (the test views' list) starting every ``hop``
    subsampled frames (default ``num_frames // 2``), the last one flush with the end, so the
    first and last windows are the two test views. E.g. ``n=100``: 25 subsampled frames
    ``0..96``, windows start at 0, 8 and 9 → frames ``0..60``, ``32..92``, ``36..96``.
    """
    hop = max(1, num_frames // 2) if hop is None else hop
    if hop < 1:
        raise MaedferError(f"window hop ({hop}) must be >= 1 subsampled frame")
    every = subsampled_frames(num_video_frames, num_frames=num_frames, stride=stride)
    last = len(every) - num_frames
    starts = list(range(0, last + 1, hop))
    if starts[-1] != last:
        starts.append(last)
    return np.stack([every[s : s + num_frames] for s in starts])


def train_window(
    num_video_frames: int,
    *,
    num_frames: int = 16,
    stride: int = 4,
    rule: TemporalRule = "stride",
    generator: np.random.Generator,
) -> np.ndarray:
    """The training window by ``rule``: ``"stride"`` (default) or ``"reference"``
    (docs/recipe.md)."""
    if rule == "stride":
        return stride_window(
            num_video_frames, num_frames=num_frames, stride=stride, generator=generator
        )
    if rule == "reference":
        return reference_train_window(
            num_video_frames, num_frames=num_frames, stride=stride, generator=generator
        )
    raise MaedferError(f"temporal rule {rule!r} is unknown; expected one of {TEMPORAL_RULES}")
