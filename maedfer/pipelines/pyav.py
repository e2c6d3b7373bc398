"""The CPU backend: PyAV decoding in torch ``DataLoader`` workers (every codec of docs/design.md).

Output contract of one sample (the DALI backend honours the same): ``video`` float32
``(3, T, size, size)``, RGB, ImageNet-normalised (minus the clip's mean frame when asked),
frames ``spec.frame_indices`` of the clip in that order; ``label`` int; ``clip_id`` str; ``view``
int. Steps: decode the needed frames → manifest crop → resize to ``size`` (rounded to uint8, as
DALI's resize gives) → RandAugment (train, optional) → augmentation box + resize → flip →
normalise → mean-frame subtraction → random erasing (:mod:`maedfer.pipelines.augment`).

A file that cannot be decoded is replaced by another sample (``plan.spec(i, attempt=k)``, the
contract's :func:`~maedfer.pipelines.backend.sample_with_retries`); the sample carries the faults
back from its worker process, and :class:`PyAVBackend` notes them in the loader's
:class:`~maedfer.pipelines.backend.Faults`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from maedfer.pipelines import augment, rand_augment, steps
from maedfer.pipelines.backend import (
    MAX_ATTEMPTS,  # noqa: F401 (re-exported: the contract's)
    BadClipError,
    Faults,
    probe_num_frames,  # (also re-exported: the contract's)
    sample_with_retries,
)
from maedfer.pipelines.cpu_augment import CpuFrames, resize_hw  # noqa: F401 (re-exported)
from maedfer.pipelines.plan import EpochPlan, SampleConfig, SampleSpec
from maedfer.pipelines.rand_augment import policy_for

log = logging.getLogger(__name__)

#: Seek (to the keyframe before the window) when the window starts this far in: prepared clips
#: have a keyframe every 16 frames (``encode.KEYFRAME_INTERVAL``), so from frame 16 on a seek
#: skips decoding at least the first keyframe interval. Measured (bench, loaded 2-core machine,
#: interleaved rounds): 16 against the former 48 gave +5 % clips/cpu-s in train and pretrain
#: modes, +2 % in test mode; the frames are the same (tests/pipelines/test_pyav.py).
SEEK_MIN_FRAME = 16


def _pts_indexer(stream: Any) -> Callable[[int], int] | None:
    """Timestamp → frame index at the stream's constant rate, in integers (``None`` without a
    rate or time base)."""
    rate, time_base = stream.average_rate, stream.time_base
    if not rate or not time_base:
        return None
    start = stream.start_time or 0
    num = 2 * time_base.numerator * rate.numerator
    den = time_base.denominator * rate.denominator
    return lambda pts: ((pts - start) * num + den) // (2 * den)  # round half up


def decode_frames(path: str, indices: np.ndarray) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) of ``path`` as ``(T, H, W, 3)`` uint8 RGB.

    See :func:`decode_window`, which this wraps for callers that want images.
    """
    return decode_window(path, indices).astype(np.uint8).transpose(3, 0, 1, 2)


def decode_window(path: str, indices: np.ndarray, crop: augment.Box | None = None) -> np.ndarray:
    """Frames ``indices`` of ``path`` as float32 ``(H, W, 3, T)`` RGB, whole numbers in 0..255.

    ``crop`` (the manifest crop, clipped to the frame) is cut before colour conversion, so only
    its pixels are converted; the values are those of converting the whole frame, then cropping
    (chroma is cut with a margin for the bilinear upsampling; tests/pipelines/test_pyav.py).

    Indices past the last frame get the last frame (DALI's ``pad_mode="edge"``). Frame ``k`` is
    the ``k``-th frame in presentation order; a window deep in a long clip seeks to the preceding
    keyframe and recovers indices from timestamps (constant frame rate, docs/design.md). Values
    are rounded like the uint8 frames DALI decodes, but kept as floats for the next steps;
    channels and time are the last axes, so one OpenCV call resizes every frame at once, and
    time is innermost, so per-channel arithmetic runs over contiguous memory.

    Raises:
        BadClipError: the file cannot be opened, has no video stream, or no frame decodes.
    """
    have, rgb = decode_found(path, np.unique(indices), crop)
    return pick(have, rgb, indices)


def pick(have: np.ndarray, rgb: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Frames ``indices`` out of ``rgb`` (frames ``have``, sorted, on the last axis): an index
    the file does not reach (the clip ended early) takes the nearest earlier frame."""
    return rgb[..., _positions(have, indices)]


def _positions(have: np.ndarray, indices: np.ndarray) -> slice | np.ndarray:
    """Where ``indices`` (or the nearest earlier frame) lie in sorted ``have``: a slice when they
    are consecutive (a test view: a view of the frames, no copy), else their positions."""
    nearest = np.maximum(np.searchsorted(have, indices, side="right") - 1, 0)
    if (np.diff(nearest) == 1).all():
        return slice(int(nearest[0]), int(nearest[-1]) + 1)
    return nearest


def decode_found(
    path: str,
    wanted: np.ndarray,
    crop: augment.Box | None = None,
    *,
    within: Callable[[int, int], augment.Box | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames of sorted unique ``wanted`` that decode: their indices, ``(H, W, 3, K)`` RGB.

    ``within(height, width)``, told the size of the decoded frames after ``crop``, may name the
    part of them that is needed (a box in their coordinates): only that part is converted.
    """
    try:
        have, frames = _found_frames(path, wanted)
        if within is not None:
            crop = _narrowed(crop, frames[0].height, frames[0].width, within)
        return have, frames_to_rgb(frames, crop)
    except (OSError, av.FFmpegError, IndexError) as exc:
        raise BadClipError(path, f"cannot decode it ({exc})") from None


def decode_planes(
    path: str,
    wanted: np.ndarray,
    crop: augment.Box | None = None,
) -> tuple[np.ndarray, Planes]:
    """:func:`decode_found` without the colour conversion: the frames' planes as decoded
    (:class:`Planes`), for a device to convert (the hybrid backend)."""
    try:
        have, frames = _found_frames(path, wanted)
        return have, frames_to_planes(frames, crop)
    except (OSError, av.FFmpegError, IndexError) as exc:
        raise BadClipError(path, f"cannot decode it ({exc})") from None


def _found_frames(path: str, wanted: np.ndarray) -> tuple[np.ndarray, list[av.VideoFrame]]:
    try:
        found = _decode_file(path, wanted, seek=int(wanted[0]) >= SEEK_MIN_FRAME)
    except _SeekMissError:
        found = _decode_file(path, wanted, seek=False, skip=False)
    if not found:
        raise BadClipError(path, "no frame decodes")
    have = np.array(sorted(found))
    return have, [found[int(k)] for k in have]


def _narrowed(
    crop: augment.Box | None,
    height: int,
    width: int,
    within: Callable[[int, int], augment.Box | None],
) -> augment.Box | None:
    """``crop`` (clipped to the frame) narrowed to the part ``within`` names, in frame pixels."""
    y0, y1, x0, x1 = _clipped(crop, height, width) if crop is not None else (0, height, 0, width)
    part = within(y1 - y0, x1 - x0)
    return crop if part is None else augment.Box(x0 + part.x, y0 + part.y, part.w, part.h)


class _SeekMissError(Exception):
    """Seeking or skipping did not give usable timestamps: decode every frame from the start,
    counting them, instead."""


def _decode_file(
    path: str, wanted: np.ndarray, *, seek: bool, skip: bool = True
) -> dict[int, av.VideoFrame]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        # one decoding thread: loader workers are the parallelism, and a thread pool per
        # opened file costs more than it saves on small clips (and frame threads would decode
        # ahead of the per-packet skipping below)
        stream.thread_count = 1
        return _decode_wanted(container, stream, wanted, seek=seek, skip=skip)


def _decode_wanted(
    container: Any, stream: Any, wanted: np.ndarray, *, seek: bool, skip: bool
) -> dict[int, av.VideoFrame]:
    """The wanted frames that decode, by index. With ``skip``, a packet of a frame no other
    frame references (the codec's ``NONREF``: B-frames of prepared clips, the non-reference
    B-frames of most H.264) and no index wants is not decoded at all; the frames decoded are
    bit-identical either way, since no decoded frame reads a skipped one."""
    first, last = int(wanted[0]), int(wanted[-1])
    index_of = _pts_indexer(stream)
    seek, skip = bool(seek and index_of), bool(skip and index_of)
    if seek:
        rate, time_base = stream.average_rate, stream.time_base
        target = (stream.start_time or 0) + int(
            Fraction(first) / Fraction(rate) / Fraction(time_base)
        )
        container.seek(target, stream=stream, backward=True, any_frame=False)
    found: dict[int, av.VideoFrame] = {}  # decoded frames hold their own buffers
    wanted_set = {int(k) for k in wanted}
    previous: tuple[int, av.VideoFrame] | None = None
    for count, frame in enumerate(_frames(container, stream, wanted_set, index_of, skip)):
        if seek or skip:
            if frame.pts is None:
                raise _SeekMissError
            index = index_of(frame.pts)
            if count == 0 and index > (first if seek else 0):
                raise _SeekMissError  # landed after the window: no keyframe before
            if previous is not None and index <= previous[0]:
                raise _SeekMissError  # timestamps out of order: count frames instead
        else:
            index = count
        if index in wanted_set:
            found[index] = frame
        previous = (index, frame)
        if index >= last:
            break
    if not found and previous is not None:  # the window lies past the end: the last frame
        if skip:
            raise _SeekMissError  # the last frame may have been skipped: decode them all
        found[previous[0]] = previous[1]
    return found


def _frames(
    container: Any, stream: Any, wanted: set[int], index_of: Callable[[int], int] | None, skip: bool
) -> Iterator[av.VideoFrame]:
    """The stream's decoded frames in presentation order; with ``skip``, not those of packets
    that are unwanted and that no other frame references."""
    if not skip:
        yield from container.decode(stream)
        return
    codec = stream.codec_context
    for packet in container.demux(stream):  # ends with the flushing empty packet
        if packet.pts is None and packet.size:
            raise _SeekMissError  # no timestamps to tell the frames apart by
        keep = packet.pts is None or index_of(packet.pts) in wanted
        codec.skip_frame = "DEFAULT" if keep else "NONREF"
        yield from codec.decode(packet)


# Kr, Kb of the YCbCr matrices: BT.709 where the stream says so, else BT.601 (SD and untagged)
_MATRICES = {1: (0.2126, 0.0722)}
_BT601 = (0.299, 0.114)
_YUV420 = ("yuv420p", "yuvj420p")


def _plane(frame: av.VideoFrame, i: int) -> np.ndarray:
    plane = frame.planes[i]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def _clipped(crop: augment.Box, h: int, w: int) -> tuple[int, int, int, int]:
    """``crop`` clipped to an ``h``×``w`` frame: rows ``y0:y1``, columns ``x0:x1``."""
    return max(0, crop.y), min(h, crop.y + crop.h), max(0, crop.x), min(w, crop.x + crop.w)


# uint8 → float32 tables: studio-range luma ``(Y - 16) · 255/219`` (the float32 operations of
# scaling the frame) and full-range luma; chroma centred on 0
_LUMA = {
    False: (np.arange(256, dtype=np.float32) - 16) * np.float32(255 / 219),
    True: np.arange(256, dtype=np.float32),
}
_CENTRED = np.arange(256, dtype=np.float32) - 128


def _lookup(planes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[planes]`` for uint8 ``planes`` of any shape, in one OpenCV pass."""
    flat = planes.reshape(planes.shape[0], -1)
    return cv2.LUT(flat, table).reshape(planes.shape)


def frames_to_rgb(frames: list[av.VideoFrame], crop: augment.Box | None = None) -> np.ndarray:
    """Decoded frames as float32 ``(H, W, 3, T)`` RGB, rounded to whole numbers in 0..255.

    4:2:0 frames are converted here, all at once: chroma upsampled bilinearly at half-pixel
    centres, then the YCbCr matrix (BT.601 unless tagged BT.709) in the frames' range. That is
    what DALI's decoder gives (measured: within 1/255 of DALI 2.4's CPU decoder on VP9, mean
    0.005/255, where swscale's ``to_ndarray("rgb24")`` differs by up to 59/255 at colour edges),
    and it is closer to the encoded source too. Other pixel formats go through swscale.
    """
    first, count = frames[0], len(frames)
    name = first.format.name
    h, w = first.height, first.width
    if name not in _YUV420 or any(f.format.name != name for f in frames) or h % 2 or w % 2:
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in frames], axis=-1)
        if crop is not None:
            y0, y1, x0, x1 = _clipped(crop, *rgb.shape[:2])
            rgb = rgb[y0:y1, x0:x1]
        return rgb.astype(np.float32)
    full = name == "yuvj420p" or int(first.color_range or 0) == 2
    kr, kb = _MATRICES.get(int(first.colorspace or 2), _BT601)
    y0, y1, x0, x1 = _clipped(crop, h, w) if crop is not None else (0, h, 0, w)
    # chroma rows/columns the bilinear 2x upsampling of the kept pixels reads (one of margin,
    # edges repeated at the frame's border as for the whole frame)
    cy0, cy1 = max(0, y0 // 2 - 1), min(h // 2, (y1 + 1) // 2 + 1)
    cx0, cx1 = max(0, x0 // 2 - 1), min(w // 2, (x1 + 1) // 2 + 1)
    y = _lookup(np.stack([_plane(f, 0)[y0:y1, x0:x1] for f in frames], axis=-1), _LUMA[full])
    chroma = np.stack([_plane(f, i)[cy0:cy1, cx0:cx1] for i in (1, 2) for f in frames], axis=-1)
    # centred before upsampling: 2x bilinear weights (1/4, 3/4) on whole numbers are exact in
    # float32, so this equals upsampling first, then subtracting 128
    chroma = resize_hw(_lookup(chroma, _CENTRED), 2 * (cy1 - cy0), 2 * (cx1 - cx0))
    oy, ox = y0 - 2 * cy0, x0 - 2 * cx0
    chroma = chroma[oy : oy + y1 - y0, ox : ox + x1 - x0]  # (h, w, 2T): Cb…, Cr…
    if not full:
        chroma *= 255 / 224
    rgb = np.empty((*y.shape[:2], 3, count), dtype=np.float32)
    for row in range(0, y.shape[0], _BAND_ROWS):  # a band of rows at a time: in cache
        band = slice(row, row + _BAND_ROWS)
        _ycbcr_to_rgb(y[band], chroma[band, :, :count], chroma[band, :, count:], rgb[band], kr, kb)
    return rgb


_BAND_ROWS = 16  # 16 rows of 160-pixel frames, 16 frames: the band's planes fit in L2


@dataclass(frozen=True)
class Planes:
    """Decoded frames as they come out of the decoder, cut to the crop: 4:2:0 planes (``y``
    ``(T, h, w)``, ``u``/``v`` ``(T, ch, cw)`` uint8, the chroma with the margin its bilinear
    upsampling reads; the crop starts at ``(oy, ox)`` of the upsampled chroma), or, for other
    pixel formats, RGB already converted (``rgb`` ``(T, h, w, 3)`` uint8)."""

    y: np.ndarray | None = None
    u: np.ndarray | None = None
    v: np.ndarray | None = None
    oy: int = 0
    ox: int = 0
    full_range: bool = False
    kr: float = _BT601[0]
    kb: float = _BT601[1]
    rgb: np.ndarray | None = None

    def take(self, positions: slice | np.ndarray) -> Planes:
        """The frames at ``positions`` (on the time axis)."""
        picked = {
            k: None if a is None else a[positions]
            for k, a in (("y", self.y), ("u", self.u), ("v", self.v), ("rgb", self.rgb))
        }
        return replace(self, **picked)


def frames_to_planes(frames: list[av.VideoFrame], crop: augment.Box | None = None) -> Planes:
    """The planes :func:`frames_to_rgb` would convert, unconverted (:class:`Planes`)."""
    first = frames[0]
    name, h, w = first.format.name, first.height, first.width
    if name not in _YUV420 or any(f.format.name != name for f in frames) or h % 2 or w % 2:
        rgb = frames_to_rgb(frames, crop)  # (h, w, 3, T) whole numbers
        return Planes(rgb=np.ascontiguousarray(rgb.astype(np.uint8).transpose(3, 0, 1, 2)))
    y0, y1, x0, x1 = _clipped(crop, h, w) if crop is not None else (0, h, 0, w)
    cy0, cy1 = max(0, y0 // 2 - 1), min(h // 2, (y1 + 1) // 2 + 1)
    cx0, cx1 = max(0, x0 // 2 - 1), min(w // 2, (x1 + 1) // 2 + 1)
    kr, kb = _MATRICES.get(int(first.colorspace or 2), _BT601)
    return Planes(
        y=np.stack([_plane(f, 0)[y0:y1, x0:x1] for f in frames]),
        u=np.stack([_plane(f, 1)[cy0:cy1, cx0:cx1] for f in frames]),
        v=np.stack([_plane(f, 2)[cy0:cy1, cx0:cx1] for f in frames]),
        oy=y0 - 2 * cy0,
        ox=x0 - 2 * cx0,
        full_range=name == "yuvj420p" or int(first.color_range or 0) == 2,
        kr=kr,
        kb=kb,
    )


def _ycbcr_to_rgb(
    y: np.ndarray, cb: np.ndarray, cr: np.ndarray, rgb: np.ndarray, kr: float, kb: float
) -> None:
    """``rgb`` (h, w, 3, T) ← the YCbCr matrix on planes (h, w, T), rounded, in 0..255."""
    kg = 1 - kr - kb
    # planar arithmetic, written straight into each channel (no interleaving pass), through two
    # reused buffers: the same float32 operations in the same order as ``y + c·cr`` etc.
    tmp, tmp2 = np.empty_like(y), np.empty_like(y)
    np.add(y, np.multiply(cr, 2 * (1 - kr), out=tmp), out=rgb[:, :, 0])
    np.multiply(cb, 2 * kb * (1 - kb) / kg, out=tmp)
    tmp += np.multiply(cr, 2 * kr * (1 - kr) / kg, out=tmp2)
    np.subtract(y, tmp, out=rgb[:, :, 1])
    np.add(y, np.multiply(cb, 2 * (1 - kb), out=tmp), out=rgb[:, :, 2])
    np.clip(np.rint(rgb, out=rgb), 0, 255, out=rgb)


def _crop_resize(video: np.ndarray, crop: augment.Box | None, size: int) -> np.ndarray:
    """Manifest crop + resize to ``size``, rounded as DALI's uint8 resize output is."""
    if crop is not None:
        h, w = video.shape[:2]
        x0, y0 = max(0, crop.x), max(0, crop.y)
        video = video[y0 : min(h, crop.y + crop.h), x0 : min(w, crop.x + crop.w)]
    if video.shape[:2] == (size, size):
        return video
    out = resize_hw(video, size, size)
    return np.clip(np.rint(out, out=out), 0, 255, out=out)


def load_sample(
    spec: SampleSpec, config: SampleConfig, video: np.ndarray | None = None
) -> torch.Tensor:
    """Decode and transform one sample → float32 ``(3, T, size, size)`` (module contract).

    ``video``: the sample's frames already decoded (``decode_window``'s output), if at hand.
    The augmentation steps run with their CPU executors (:mod:`maedfer.pipelines.steps`).
    """
    source = None  # the part of the size×size frames that ``video`` holds (None: all)
    if video is None:  # the manifest crop is cut before colour conversion
        video, source = _decode_needed(spec, config)
    if source is None:
        video = _crop_resize(video, None, config.size)
    frames = CpuFrames(video, source, spec.box)
    for step in steps.applied(config, steps.FRAME_STAGES):
        frames = step.cpu(frames, spec, config)
    clip = augment.normalised_clip(frames.video, flip=frames.flip)  # (3, T, H, W)
    clip = augment.finish_clip(clip, subtract_mean=config.subtract_mean)
    for step in steps.applied(config, _CLIP_STAGES):
        clip = step.cpu(clip, spec, config)
    return clip


_CLIP_STAGES = frozenset(steps.STAGES) - steps.FRAME_STAGES


def _decode_needed(
    spec: SampleSpec,
    config: SampleConfig,
) -> tuple[np.ndarray, augment.Box | None]:
    """The sample's frames, converted only where its augmentation box will look, when the
    decoded frames are already ``size``×``size``: the box itself, or with RandAugment the part
    of the frame its ops read to make the box (``rand_augment.source_region``: the whole frame
    for a per-frame statistic). Returns the frames and the part of the frame they hold."""
    source: list[augment.Box] = []

    def within(height: int, width: int) -> augment.Box | None:
        size = config.size
        if spec.box is None or (height, width) != (size, size):
            return None
        part = spec.box
        if spec.rand_augment:
            part = rand_augment.source_region(spec.rand_augment, spec.box, size)
            if part == augment.Box(0, 0, size, size):
                return None
        source.append(part)
        return part

    have, rgb = decode_found(spec.path, np.unique(spec.frame_indices), spec.crop, within=within)
    return pick(have, rgb, spec.frame_indices), (source[0] if source else None)


class ClipDataset(Dataset):
    """Map-style dataset over one :class:`EpochPlan`: item ``i`` is sample ``i`` decoded."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan
        self.config = plan.config
        if self.config.rand_augment:
            # built here, in the parent: forked workers inherit timm already imported (seconds)
            policy_for(self.config.rand_augment_policy, self.config.size)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, Any]:
        keep_heap_memory()
        spec, video, faults = sample_with_retries(self.plan, i, lambda s: self._read(i, s))
        return {
            "video": video,
            "label": spec.label,
            "clip_id": spec.clip_id,
            "view": spec.view,
            "bad": faults,
        }

    _views: tuple[tuple[str, int], np.ndarray, np.ndarray] | None = None
    _normalised: tuple[tuple[str, int], torch.Tensor] | None = None

    def _read(self, i: int, spec: SampleSpec) -> torch.Tensor:
        video = self._from_views(i, spec)
        if video is None or self.config.mode != "test":
            return load_sample(spec, self.config, video)
        return self._test_view(spec)

    def _test_view(self, spec: SampleSpec) -> torch.Tensor:
        """A test view cut from the clip's views' frames resized and normalised once (test mode
        has no augmentation: each frame's values are those of the view made alone)."""
        key, have, rgb = self._views
        if self._normalised is None or self._normalised[0] != key:
            self._normalised = (
                key,
                augment.normalised_clip(_crop_resize(rgb, None, self.config.size)),
            )
        where = _positions(have, spec.frame_indices)
        frames = self._normalised[1]
        clip = frames[:, where if isinstance(where, slice) else torch.from_numpy(where)]
        if self.config.subtract_mean:  # the mean over time of the same memory layout
            clip = clip.contiguous()
        return augment.finish_clip(clip, subtract_mean=self.config.subtract_mean)

    def _from_views(self, i: int, spec: SampleSpec) -> np.ndarray | None:
        """Test mode: the frames of view ``spec.view``, cut from one decode of all the clip's
        views (the union of their frames, kept for the next view; one clip at a time).

        ``None`` (decode the view alone) for one view, for a replacement sample, and where the
        file ends before the frames asked for: there a view decoded alone may fall back to
        another frame than the union's (the values are otherwise the same: each frame decodes
        and converts the same whatever else is decoded with it; tests/pipelines/test_pyav.py).
        """
        key = views_key(self.plan, i, spec)
        if key is None:
            return None
        if self._views is None or self._views[0] != key:
            wanted = views_frames(self.plan, i, spec)
            have, rgb = decode_found(spec.path, wanted, spec.crop)
            if len(have) != len(wanted):  # the file ends early
                self._views = None
                return None
            self._views = (key, have, rgb)
        _, have, rgb = self._views
        return pick(have, rgb, spec.frame_indices)


def views_key(plan: EpochPlan, i: int, spec: SampleSpec) -> tuple[str, int] | None:
    """``(path, first sample)`` naming the row of sample ``i`` whose views (test views,
    ``num_sample`` repeats) one decode can serve; ``None`` for one view per row or a replacement
    sample (another row's clip)."""
    views = plan.views
    if views < 2 or spec.row != int(plan.rows[i // views]):
        return None
    return spec.path, i - spec.view


def views_frames(plan: EpochPlan, i: int, spec: SampleSpec) -> np.ndarray:
    """The sorted union of the frame indices of every view of sample ``i``'s row."""
    first = i - spec.view
    siblings = [
        spec if k == spec.view else plan.spec(first + k, probe=probe_num_frames)
        for k in range(plan.views)
    ]
    return np.unique(np.concatenate([s.frame_indices for s in siblings]))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: ``video`` (B, 3, T, H, W), ``label`` and ``view`` long, lists otherwise."""
    return {
        # torch's collate stacks straight into shared memory in a worker process (saving the
        # batch's copy into it on the way to the main process)
        "video": default_collate([s["video"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "clip_id": [s["clip_id"] for s in samples],
        "view": torch.tensor([s["view"] for s in samples], dtype=torch.long),
        "bad": [fault for s in samples for fault in s["bad"]],  # (position, path, reason)
    }


@contextlib.contextmanager
def fork_safe_opencv() -> Iterator[None]:
    """Fork loader workers while OpenCV has no worker threads.

    OpenCV's pthreads pool does not survive ``fork``: a worker forked after the parent ran a
    parallel OpenCV call (face alignment, a blur) hangs at its first one. Setting one thread
    joins the pool's threads; the parent's setting comes back once the workers exist.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def worker_init(_: int) -> None:
    """One thread per worker: the workers are the parallelism (one core each)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    keep_heap_memory()


_TUNED = False


def keep_heap_memory() -> None:
    """Let glibc serve the decoder's few-MB arrays from the heap, once per process.

    By default glibc maps every allocation over its (adaptive) threshold afresh and unmaps it
    on free, so each clip's frame arrays page-fault in again: measured on 16-frame 160×160
    clips, that doubled the time of colour conversion. Raising the mmap and trim thresholds
    (64 MiB, 256 MiB) keeps that memory in the process for reuse. No-op outside glibc.
    """
    global _TUNED
    if _TUNED:
        return
    _TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        log.debug("mallopt unavailable (not glibc): default allocator settings kept")


class PyAVBackend:
    """The CPU backend of the table (:class:`maedfer.pipelines.backend.Backend`)."""

    name = "pyav"

    def default_workers(self) -> int:
        """One worker process per core but one (the main process feeds the model), at most 8."""
        return max(1, min(8, (os.cpu_count() or 2) - 1))

    def unsupported(self, config: SampleConfig) -> dict[str, str]:
        return {}  # every option of SampleConfig

    def decodes(self, spec: SampleSpec) -> bool:
        try:
            decode_window(spec.path, spec.frame_indices)
        except BadClipError:
            return False
        return True

    def epoch(
        self,
        plan: EpochPlan,
        *,
        batch_size: int,
        drop_last: bool,
        workers: int,
        device: torch.device | None,
        faults: Faults,
        session: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        from torch.utils.data import DataLoader

        on_cuda = device is not None and device.type == "cuda"
        loader = DataLoader(
            ClipDataset(plan),
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=on_cuda,
            worker_init_fn=worker_init,
            prefetch_factor=2 if workers else None,
        )
        with fork_safe_opencv():
            batches = iter(loader)  # forks the workers
        for batch in batches:
            for position, path, reason in batch.pop("bad"):
                faults.note(position, path, reason)
            if device is not None:
                for key in ("video", "label", "view"):
                    batch[key] = batch[key].to(device, non_blocking=True)
            yield batch


BACKEND = PyAVBackend()
