"""Video RandAugment (timm ``rand-m7-n4-mstd0.5-inc1``, docs/recipe.md), drawn once, run anywhere.

The draw and the pixels are separate:

- :meth:`RandAugmentPolicy.draw` turns a sample's seed (chosen by the
  :class:`~maedfer.pipelines.plan.EpochPlan`) into the ops timm would apply — which ops, each op's
  coin, magnitude and sign, resolved to the op's arguments (and, for rotate/shear/translate, the
  affine matrix at the clip's size). It uses timm's own RandAugment objects, so the draws are
  timm's; the same ops then go to every frame of the clip.
- :func:`apply_numpy` runs them on ``(T, H, W, 3)`` uint8 frames (the PyAV backend, in its worker
  processes), byte for byte timm's PIL functions for the colour ops and ``cv2.warpAffine``
  (bicubic) for the affine, much faster than calling them frame by frame: per-value ops become
  one 256-entry table built by timm's own function on a gradient; autocontrast, equalize and
  contrast per-frame tables from histograms or the grey mean, with Pillow's formulas; runs of
  table ops are composed and applied in one ``cv2.LUT`` pass; sharpness is one 3×3 filter and
  one blend on the stacked frames; the affine is ``cv2.remap`` on warpAffine's own fixed-point
  map. It can compute only a region of the output (``keep``, e.g. the random-resized-crop box)
  from a region of the input (:func:`source_region`: the same box through pointwise ops, the
  whole frame through statistic ops, a 1-pixel margin through sharpness, the bicubic footprint
  through an affine), with the same values as augmenting whole frames and cutting ``keep``.
- :func:`apply_torch` runs them on a ``(T, 3, H, W)`` float tensor of whole numbers 0..255 on any
  device (the DALI backend, on the decoded CUDA frames; CPU in the tests). Each op is written
  after Pillow's C code (integer grey level, truncating blend, per-frame statistics for
  autocontrast, equalize and contrast, borders kept by the smoothing of sharpness); the affine
  warp is torch's bicubic ``grid_sample`` (kernel a = -0.75, OpenCV's) with the fill colour.

Tolerance (measured, ``tests/pipelines/test_rand_augment.py`` and ``test_dali.py``):
:func:`apply_numpy`, on whole frames or a region, equals the frame-by-frame PIL and warpAffine
executor it replaced byte for byte (that executor is pinned in the tests). On the same frames and
ops, :func:`apply_torch` equals :func:`apply_numpy` exactly for every colour op and
within 1/255 for the affine warp (OpenCV's 15-bit weights; its fixed-point coordinates are
reproduced). On whole clips, DALI vs PyAV with RandAugment on the same plan (the decoders already
differ by up to 1/255), the stated tolerance is **mean absolute difference ≤ 0.25/255 and at most
0.5 % of values beyond 2/255** (:data:`CLIP_TOLERANCE`). Measured on VP9 clips at 32 and 64 px,
4 seeds: mean 0.005-0.05/255, 0-0.15 % beyond 2/255. There is no useful maximum: where a
threshold op (solarize, posterize, equalize) meets a 1/255 difference at its threshold, isolated
pixels differ by up to 120/255.
"""

from __future__ import annotations

import copy
import math
import random
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from maedfer.constants import IMAGENET_MEAN, RAND_AUGMENT
from maedfer.errors import MaedferError
from maedfer.pipelines.augment import Box

#: timm op names -> what the pixels undergo (the ``Increasing`` variants differ in their draws
#: only, which timm's level functions make before the op runs)
_KINDS = {
    "AutoContrast": "autocontrast",
    "Equalize": "equalize",
    "Invert": "invert",
    "Rotate": "affine",
    "ShearX": "affine",
    "ShearY": "affine",
    "TranslateX": "affine",
    "TranslateY": "affine",
    "TranslateXRel": "affine",
    "TranslateYRel": "affine",
    "Posterize": "posterize",
    "PosterizeIncreasing": "posterize",
    "PosterizeOriginal": "posterize",
    "Solarize": "solarize",
    "SolarizeIncreasing": "solarize",
    "SolarizeAdd": "solarize_add",
    "Color": "color",
    "ColorIncreasing": "color",
    "Contrast": "contrast",
    "ContrastIncreasing": "contrast",
    "Brightness": "brightness",
    "BrightnessIncreasing": "brightness",
    "Sharpness": "sharpness",
    "SharpnessIncreasing": "sharpness",
}

#: DALI vs PyAV with RandAugment, whole clips in 0..255 units: (mean abs, share beyond 2/255)
CLIP_TOLERANCE: tuple[float, float] = (0.25, 0.005)

_DRAW_LOCK = threading.Lock()  # the draws seed Python's and numpy's global generators


@dataclass(frozen=True)
class RandAugmentOp:
    """One applied op: timm's ``name``, its ``kind``, the arguments timm's level function gave,
    and for affine ops the PIL-style output→input matrix ``(a, b, c, d, e, f)``."""

    name: str
    kind: str
    args: tuple
    matrix: tuple[float, ...] | None = None


class _AffineRecorder:
    """Stands in for a PIL image in timm's geometric ops and records the affine they ask for.

    timm's shear/translate ops call ``img.transform(size, AFFINE, data, ...)`` and its rotate
    calls ``img.rotate(degrees, ...)``; PIL's rotate is an affine about the image centre,
    written out here (no expand, as timm calls it).
    """

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.matrix: tuple[float, ...] | None = None

    def transform(self, size, method, data, resample=None, fillcolor=None):  # noqa: ANN001
        self.matrix = tuple(float(v) for v in data[:6])
        return self

    def rotate(self, angle, resample=None, fillcolor=None, **_):  # noqa: ANN001
        cx, cy = self.size[0] / 2, self.size[1] / 2
        rad = -math.radians(angle)
        a, b, d, e = math.cos(rad), math.sin(rad), -math.sin(rad), math.cos(rad)
        data = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
        return self.transform(self.size, None, data, resample, fillcolor)


class RandAugmentPolicy:
    """A timm RandAugment policy string at one clip size: draws ops, knows its fill colour.

    Raises:
        MaedferError: a policy timm does not parse, or one with an op no executor implements.
    """

    def __init__(self, policy: str = RAND_AUGMENT, *, size: int = 160) -> None:
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        self.fill = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)
        hparams = {
            "translate_const": int(size * 0.45),
            "img_mean": self.fill,
            "interpolation": Image.Resampling.BICUBIC,
        }
        try:
            self.transform = rand_augment_transform(policy, hparams)
        except (AssertionError, ValueError, KeyError) as exc:
            raise MaedferError(
                f"RandAugment policy {policy!r} is not one timm reads: {exc or type(exc).__name__}"
            ) from None
        unknown = sorted({op.name for op in self.transform.ops} - set(_KINDS))
        if unknown:
            raise MaedferError(
                f"RandAugment policy {policy!r} uses op(s) {', '.join(unknown)}, "
                "which maedfer does not implement"
            )
        self.policy, self.size = policy, size
        self._ops = {op.name: op for op in self.transform.ops}

    def draw(self, seed: int) -> tuple[RandAugmentOp, ...]:
        """The ops applied to the clip of seed ``seed`` (the skipped ones left out), in order.

        The same draws as timm's ``RandAugment.__call__`` with Python's ``random`` seeded with
        ``seed`` and numpy's with ``seed % 2**32``: the op choice from numpy, then for each op its
        coin, magnitude (Gaussian, std 0.5, clipped to 0..10) and sign from ``random``. Both
        generators' states are restored afterwards (thread-safe: one draw at a time).
        """
        ra = self.transform
        with _DRAW_LOCK:
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                random.seed(seed)
                np.random.seed(seed % 2**32)
                chosen = np.random.choice(
                    ra.ops, ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights
                )
                out = []
                for op in chosen:
                    recorded: list[tuple] = []
                    probe = copy.copy(op)  # timm's op with its pixel function replaced
                    probe.aug_fn = lambda img, *args, _r=recorded, **_: _r.append(args) or img
                    probe(None)
                    if recorded:  # empty: the op's coin said skip
                        out.append(self._resolved(op, recorded[0]))
                return tuple(out)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def _resolved(self, op, args: tuple) -> RandAugmentOp:  # noqa: ANN001 (timm AugmentOp)
        kind = _KINDS[op.name]
        matrix = None
        if kind == "affine":
            recorder = _AffineRecorder(self.size, self.size)
            op.aug_fn(recorder, *args, **dict(op.kwargs))
            matrix = recorder.matrix
        return RandAugmentOp(op.name, kind, tuple(args), matrix)

    def apply_numpy(
        self,
        frames: np.ndarray,
        ops: tuple[RandAugmentOp, ...],
        *,
        keep: Box | None = None,
        source: Box | None = None,
    ) -> np.ndarray:
        """See :func:`apply_numpy` (with this policy's timm functions, fill and size)."""
        return apply_numpy(frames, ops, self, keep=keep, source=source)


@lru_cache(maxsize=8)
def policy_for(policy: str, size: int) -> RandAugmentPolicy:
    """One :class:`RandAugmentPolicy` per (policy, size) and process (timm imports take seconds)."""
    return RandAugmentPolicy(policy, size=size)


# ------------------------------------------------------------------------ numpy executor

#: colour ops that map each value on its own, the same way in every channel: one 256-entry table
#: made by running timm's own function on a gradient (exact by construction)
_LUT_OPS = frozenset({"invert", "posterize", "solarize", "solarize_add", "brightness"})
#: colour ops that map each pixel on its own (no per-frame statistic, no neighbourhood): the same
#: values on any region of the frames as on the whole
_POINTWISE = _LUT_OPS | {"color"}
#: ops whose every output pixel depends on the whole frame (per-frame statistics)
_STATISTIC = frozenset({"autocontrast", "equalize", "contrast"})
#: Pillow's SMOOTH. The exact value S/13 (S the integer weighted sum) is never a half-integer, so
#: any float evaluation of it (error far below 1/26), OpenCV's included, rounds to Pillow's integer
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13
_RAMP = np.arange(256, dtype=np.uint8)


def _box(x0: int, y0: int, x1: int, y1: int, frame: Box) -> Box:
    """Pixels x0..x1, y0..y1 (inclusive) clipped to ``frame``; where nothing is left, one pixel
    at the nearest frame pixel (the caller reads none of it)."""

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        lo, hi = max(lo, 0), min(hi, size - 1)
        if lo > hi:
            lo = hi = min(max(lo, 0), size - 1)
        return lo, hi - lo + 1

    (x, w), (y, h) = span(int(x0), int(x1), frame.w), span(int(y0), int(y1), frame.h)
    return Box(x, y, w, h)


def _contains(outer: Box, inner: Box) -> bool:
    return (
        outer.x <= inner.x
        and outer.y <= inner.y
        and inner.x + inner.w <= outer.x + outer.w
        and inner.y + inner.h <= outer.y + outer.h
    )


def _crop(clip: np.ndarray, want: Box, have: Box) -> np.ndarray:
    """The ``want`` part of ``clip``, whose frames cover ``have`` (a view)."""
    y, x = want.y - have.y, want.x - have.x
    return clip[:, y : y + want.h, x : x + want.w]


def _tall(clip: np.ndarray) -> np.ndarray:
    """The frames stacked into one contiguous ``(T·H, W, 3)`` image."""
    t, h, w, c = clip.shape
    return np.ascontiguousarray(clip).reshape(t * h, w, c)


def _cv2_matrix(matrix: tuple[float, ...]) -> np.ndarray:
    """A PIL-style affine (output → input, pixel centres at +0.5) as OpenCV's inverse map on
    pixel indices."""
    a, b, c, d, e, f = matrix
    return np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]])


def _fixed_point_terms(m: np.ndarray, box: Box) -> tuple[np.ndarray, ...]:
    """warpAffine's source coordinates of ``box``'s pixels in 1/1024 px, as it builds them: a
    column term and a row term per axis, each rounded half to even (``cvRound``), plus half a
    1/32 step in the row term. Returns ``(ax, bx, ay, by)``: X = ax[col] + bx[row], same for Y."""
    xs = np.arange(box.x, box.x + box.w, dtype=np.float64)
    ys = np.arange(box.y, box.y + box.h, dtype=np.float64)
    ax = np.rint(m[0, 0] * xs * 1024).astype(np.int64)
    ay = np.rint(m[1, 0] * xs * 1024).astype(np.int64)
    bx = np.rint((m[0, 1] * ys + m[0, 2]) * 1024).astype(np.int64) + 16
    by = np.rint((m[1, 1] * ys + m[1, 2]) * 1024).astype(np.int64) + 16
    return ax, bx, ay, by


def _affine_footprint(matrix: tuple[float, ...], want: Box, frame: Box) -> Box:
    """The frame pixels the bicubic taps (floor - 1 .. floor + 2 of each source point) of the
    ``want`` output pixels read."""
    ax, bx, ay, by = _fixed_point_terms(_cv2_matrix(matrix), want)
    # each coordinate is a sum of a column and a row term and flooring is monotone: the extremes
    # over the box are the floors of the sums of the terms' extremes
    x0, x1 = (ax.min() + bx.min()) >> 10, (ax.max() + bx.max()) >> 10
    y0, y1 = (ay.min() + by.min()) >> 10, (ay.max() + by.max()) >> 10
    return _box(x0 - 1, y0 - 1, x1 + 2, y1 + 2, frame)


def _warp_region(
    clip: np.ndarray, matrix: tuple[float, ...], fill: tuple[int, ...], have: Box, want: Box
) -> np.ndarray:
    """The ``want`` part of the affine of whole frames, from frames covering ``have`` (which
    contains :func:`_affine_footprint`): byte for byte ``cv2.warpAffine`` (INTER_CUBIC, constant
    fill) on the whole frame, cropped.

    The map is warpAffine's own (int16 source pixel, 1/32-pixel table index), so ``cv2.remap``
    runs the same bicubic sums. Taps outside ``have`` read the fill colour; they are outside the
    frame too, as ``have`` holds every tap inside it.
    """
    import cv2

    ax, bx, ay, by = _fixed_point_terms(_cv2_matrix(matrix), want)
    sx, sy = (ax[None, :] + bx[:, None]) >> 5, (ay[None, :] + by[:, None]) >> 5  # 1/32 px
    xy = np.stack([(sx >> 5) - have.x, (sy >> 5) - have.y], axis=-1).astype(np.int16)
    table = ((sy & 31) << 5 | (sx & 31)).astype(np.uint16)
    out = np.empty((len(clip), want.h, want.w, clip.shape[3]), dtype=np.uint8)
    for frame, dst in zip(clip, out, strict=True):
        cv2.remap(
            frame,
            xy,
            table,
            cv2.INTER_CUBIC,
            dst=dst,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        )
    return out


def _warp_cv2(
    frames: list[np.ndarray], matrix: tuple[float, ...], fill: tuple[int, ...]
) -> list[np.ndarray]:
    """A PIL-style affine on every whole frame, OpenCV's bicubic (a = -0.75 where PIL's is -0.5:
    mean difference 0.5/255 from PIL on smooth images, at a third of PIL's time per frame)."""
    h, w = frames[0].shape[:2]
    whole = Box(0, 0, w, h)
    return list(_warp_region(np.stack(frames), matrix, fill, whole, whole))


def _needs(op: RandAugmentOp, want: Box, frame: Box) -> Box:
    """The part of ``op``'s input that the ``want`` part of its output depends on."""
    if op.kind in _STATISTIC:
        return frame
    if op.kind == "sharpness":  # a 3×3 filter; frame-border pixels are kept, inside the frame
        return _box(want.x - 1, want.y - 1, want.x + want.w, want.y + want.h, frame)
    if op.kind == "affine":
        return _affine_footprint(op.matrix, want, frame)
    return want


def _regions(ops: tuple[RandAugmentOp, ...], keep: Box, frame: Box) -> list[Box]:
    """The region each op reads, then ``keep``: a backward pass from the kept output."""
    boxes = [keep]
    for op in reversed(ops):
        boxes.append(_needs(op, boxes[-1], frame))
    return boxes[::-1]


def source_region(ops: tuple[RandAugmentOp, ...], keep: Box, size: int) -> Box:
    """The part of the size×size input frames that the ``keep`` part of the augmented frames
    depends on: ``keep`` for pointwise ops; the whole frame when a per-frame statistic
    (autocontrast, equalize, contrast) is met; a 1-pixel margin for sharpness; the bicubic
    footprint, in OpenCV's fixed-point coordinates, for an affine."""
    return _regions(ops, keep, Box(0, 0, size, size))[0]


def _gradient_lut(op: RandAugmentOp, policy: RandAugmentPolicy) -> np.ndarray:
    """``(1, 256, 3)`` table of a per-value op: timm's function on a 1×256 gradient."""
    from PIL import Image

    timm_op = policy._ops[op.name]
    ramp = Image.fromarray(np.repeat(_RAMP[None, :, None], 3, axis=2))
    return np.asarray(timm_op.aug_fn(ramp, *op.args, **dict(timm_op.kwargs)))


def _then(first: np.ndarray | None, second: np.ndarray) -> np.ndarray:
    """The table of ``first`` then ``second`` (``(1 or T, 256, 3)`` tables, per frame and
    channel)."""
    if first is None:
        return second
    shape = np.broadcast_shapes(first.shape, second.shape)
    index = np.broadcast_to(first, shape).astype(np.intp)
    return np.take_along_axis(np.broadcast_to(second, shape), index, axis=1)


def _apply_lut(clip: np.ndarray, lut: np.ndarray) -> np.ndarray:
    import cv2

    # (256,) for one table per frame (OpenCV's faster path), (1, 256, 3) for one per channel
    same = (lut == lut[:, :, :1]).all()
    tables = np.ascontiguousarray(lut[:, :, 0]) if same else lut[:, None]
    if len(lut) == 1:  # one table for the clip: one call on the stacked frames
        return cv2.LUT(_tall(clip), tables[0]).reshape(clip.shape)
    out = np.empty(clip.shape, dtype=np.uint8)
    for frame, table, dst in zip(clip, tables, out, strict=True):
        cv2.LUT(frame, table, dst=dst)
    return out


def _histograms(clip: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    """``(T, 256, 3)`` int64 histograms per frame and channel of ``lut`` applied to ``clip``
    (the counts of the clip moved through the table: no pass over the pixels)."""
    import cv2

    t = len(clip)
    hist = np.empty((t, 256, 3), dtype=np.int64)
    for k, frame in enumerate(clip):
        for c in range(3):
            hist[k, :, c] = cv2.calcHist([frame], [c], None, [256], (0, 256))[:, 0]
    if lut is None:
        return hist
    target = np.broadcast_to(lut, hist.shape).astype(np.int64) * 3 + np.arange(3)
    target += (np.arange(t) * 768)[:, None, None]
    moved = np.bincount(target.ravel(), weights=hist.ravel(), minlength=t * 768)
    return moved.reshape(t, 256, 3).astype(np.int64)


def _last_filled(hist: np.ndarray) -> np.ndarray:
    return 255 - np.argmax(hist[:, ::-1] > 0, axis=1)


def _autocontrast_lut(hist: np.ndarray) -> np.ndarray:
    """``ImageOps.autocontrast``'s tables, Pillow's float64 formula, from ``(T, 256, 3)``."""
    lo, hi = np.argmax(hist > 0, axis=1), _last_filled(hist)  # (T, 3)
    spread = hi > lo
    scale = np.where(spread, 255.0 / np.where(spread, hi - lo, 1), 1.0)
    offset = np.where(spread, -lo * scale, 0.0)
    lut = np.arange(256)[None, :, None] * scale[:, None] + offset[:, None]
    return np.clip(np.trunc(lut), 0, 255).astype(np.uint8)


def _equalize_lut(hist: np.ndarray) -> np.ndarray:
    """``ImageOps.equalize``'s tables (see :func:`_equalize`) from ``(T, 256, 3)``."""
    top = np.take_along_axis(hist, _last_filled(hist)[:, None], axis=1)[:, 0]
    step = ((hist.sum(axis=1) - top) // EQUALIZE_DIV)[:, None]  # (T, 1, 3)
    before = np.cumsum(hist, axis=1) - hist
    lut = (step // 2 + before) // np.maximum(step, 1)
    return np.where(step > 0, np.clip(lut, 0, 255), np.arange(256)[:, None]).astype(np.uint8)


def _contrast_lut(clip: np.ndarray, factor: float) -> np.ndarray:
    """``ImageEnhance.Contrast``'s per-frame tables: the blend with the frame's mean grey."""
    from PIL import Image

    t, h, w, _ = clip.shape
    grey = np.asarray(Image.fromarray(_tall(clip)).convert("L"))  # Pillow's integer grey
    # ImageStat's mean (the integer sum over the count), rounded half up as Contrast does
    mean = grey.reshape(t, h * w).sum(axis=1, dtype=np.int64) / (h * w)
    level = np.floor(mean + 0.5).astype(np.uint8)
    degenerate = np.ascontiguousarray(np.broadcast_to(level[:, None, None], (t, 256, 3)))
    ramp = np.ascontiguousarray(np.broadcast_to(_RAMP[None, :, None], (t, 256, 3)))
    return np.asarray(Image.blend(Image.fromarray(degenerate), Image.fromarray(ramp), factor))


def _sharpness(clip: np.ndarray, factor: float) -> np.ndarray:
    """``ImageEnhance.Sharpness`` on each frame of ``clip``, in one filter and one blend on the
    stacked frames."""
    import cv2
    from PIL import Image

    tall = _tall(clip)
    smooth = cv2.filter2D(tall, -1, _SMOOTH).reshape(clip.shape)
    # Pillow's 3×3 filter keeps each image's border pixels; in the stack the first and last row
    # of a frame would mix it with its neighbour
    frames = tall.reshape(clip.shape)
    for edge in (np.s_[:, 0], np.s_[:, -1], np.s_[:, :, 0], np.s_[:, :, -1]):
        smooth[edge] = frames[edge]
    blended = Image.blend(
        Image.fromarray(smooth.reshape(tall.shape)), Image.fromarray(tall), factor
    )
    return np.asarray(blended).reshape(clip.shape)


def _timm_on_stack(clip: np.ndarray, op: RandAugmentOp, policy: RandAugmentPolicy) -> np.ndarray:
    from PIL import Image

    timm_op = policy._ops[op.name]
    out = timm_op.aug_fn(Image.fromarray(_tall(clip)), *op.args, **dict(timm_op.kwargs))
    return np.asarray(out).reshape(clip.shape)


def _step(
    op: RandAugmentOp,
    clip: np.ndarray,
    lut: np.ndarray | None,
    have: Box,
    want: Box,
    policy: RandAugmentPolicy,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One op: ``clip`` covers ``have`` with ``lut`` still to apply → the same for ``want``.

    Tables are composed, not applied, until an op needs the pixels: a run of colour ops costs
    one pass over the clip.
    """
    kind = op.kind
    if kind in _LUT_OPS:
        return clip, _then(lut, _gradient_lut(op, policy))
    if kind in ("autocontrast", "equalize"):
        hist = _histograms(clip, lut)
        table = _autocontrast_lut(hist) if kind == "autocontrast" else _equalize_lut(hist)
        return _crop(clip, want, have), _then(lut, table)
    if lut is not None:
        clip = _apply_lut(clip, lut)
    if kind == "contrast":
        return _crop(clip, want, have), _contrast_lut(clip, op.args[0])
    if kind == "sharpness":
        return _crop(_sharpness(clip, op.args[0]), want, have), None
    if kind == "affine":
        return _warp_region(clip, op.matrix, policy.fill, have, want), None
    if kind == "color":
        return _timm_on_stack(clip, op, policy), None
    raise MaedferError(f"RandAugment op {op.name} has no numpy implementation")  # pragma: no cover


def apply_numpy(
    frames: np.ndarray,
    ops: tuple[RandAugmentOp, ...],
    policy: RandAugmentPolicy,
    *,
    keep: Box | None = None,
    source: Box | None = None,
) -> np.ndarray:
    """``frames`` (T, H, W, 3) uint8 RGB, the ``source`` region of the clip's frames → the
    ``keep`` region of the augmented frames, a new writeable uint8 array: the same values as
    augmenting whole frames and then cutting ``keep``.

    Without ``source``, ``frames`` are whole frames (of any size); with it, the frames are
    ``policy.size`` square and ``source`` must contain :func:`source_region` of ``keep``.
    ``keep`` defaults to the whole frame. Each op computes only the part later ops read.

    Raises:
        MaedferError: ``frames`` are not ``source``'s size, ``keep`` leaves the frame, or
            ``source`` misses part of the region ``keep`` depends on.
    """
    clip = np.asarray(frames)
    _, h, w, _ = clip.shape
    frame = Box(0, 0, w, h) if source is None else Box(0, 0, policy.size, policy.size)
    source = frame if source is None else Box(*source)
    keep = frame if keep is None else Box(*keep)
    if (h, w) != (source.h, source.w) or not _contains(frame, source):
        raise MaedferError(f"RandAugment frames of {w}×{h} px are not the region {source}")
    if not _contains(frame, keep) or keep.w < 1 or keep.h < 1:
        raise MaedferError(f"RandAugment keep box {keep} is not inside the {frame.w} px frame")
    boxes = _regions(ops, keep, frame)
    if not _contains(source, boxes[0]):
        raise MaedferError(
            f"RandAugment source region {source} misses part of {boxes[0]}, "
            "which the kept region depends on"
        )
    clip, lut = _crop(clip, boxes[0], source), None
    for op, have, want in zip(ops, boxes[:-1], boxes[1:], strict=True):
        clip, lut = _step(op, clip, lut, have, want, policy)
    if lut is not None:
        clip = _apply_lut(clip, lut)
    if np.may_share_memory(clip, frames) or not clip.flags.writeable:
        return clip.copy()
    return np.ascontiguousarray(clip)


# ------------------------------------------------------------------------ torch executor


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB → L: ``(R·19595 + G·38470 + B·7471 + 2^15) >> 16``, (T, 1, H, W) int32."""
    q = x.to(torch.int32)
    return (q[:, 0:1] * 19595 + q[:, 1:2] * 38470 + q[:, 2:3] * 7471 + 32768) >> 16


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    """Pillow's ``Image.blend``: ``d + f·(x - d)`` in float32, clipped, truncated to an integer."""
    out = degenerate.float() + np.float32(factor) * (x - degenerate.float())
    return out.clamp_(0, 255).trunc_()


def _lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per (frame, channel) look-up: ``lut`` (T, 3, 256) applied to ``x`` (T, 3, H, W)."""
    t, c, h, w = x.shape
    index = x.to(torch.int64).reshape(t, c, h * w)
    return torch.gather(lut.to(x.dtype), 2, index).reshape(t, c, h, w)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    t, c, h, w = x.shape
    index = x.to(torch.int64).reshape(t * c, h * w)
    hist = torch.zeros(t * c, 256, dtype=torch.int64, device=x.device)
    return hist.scatter_add_(1, index, torch.ones_like(index)).reshape(t, c, 256)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` per frame and channel: lut ``int(i·255/(hi-lo) - lo·255/(hi-lo))``.

    The lut is computed with numpy on the CPU, as Pillow does in Python: torch's division may
    multiply by a reciprocal, which moves ``int()`` across a whole number at some entries.
    """
    flat = x.flatten(2)
    lo = flat.amin(dim=2).cpu().numpy().astype(np.float64)  # (T, 3)
    hi = flat.amax(dim=2).cpu().numpy().astype(np.float64)
    spread = hi > lo
    scale = np.where(spread, 255.0 / np.where(spread, hi - lo, 1.0), 1.0)
    offset = np.where(spread, -lo * scale, 0.0)
    lut = np.arange(256, dtype=np.float64) * scale[..., None] + offset[..., None]
    lut = np.clip(np.trunc(lut), 0, 255)
    return _lut(x, torch.from_numpy(lut).to(x.device))


def _equalize_divisor() -> int:
    """Pillow 10+ divides by 255 in ``equalize`` (older releases by 256): follow the installed."""
    import inspect

    from PIL import ImageOps

    try:
        return 255 if "// 255" in inspect.getsource(ImageOps.equalize) else 256
    except (OSError, TypeError):  # no source shipped: the current rule
        return 255


EQUALIZE_DIV = _equalize_divisor()


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` per frame and channel (Pillow's lut: ``(step//2 + Σ h[<i]) // step``,
    ``step = (N - h[last non-empty]) // 255``; identity where ``step`` is 0)."""
    hist = _histogram(x)  # (T, 3, 256)
    ramp = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, ramp, -1).amax(dim=2, keepdim=True)  # last non-empty bin
    top = torch.gather(hist, 2, last.clamp(min=0))
    step = (hist.sum(dim=2, keepdim=True) - top) // EQUALIZE_DIV
    before = torch.cumsum(hist, dim=2) - hist
    lut = (step // 2 + before) // step.clamp(min=1)
    lut = torch.where(step > 0, lut.clamp(0, 255), ramp)
    return _lut(x, lut)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3×3, centre 5, sum 13, rounded), border pixels kept."""
    kernel = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5
    inner = F.conv2d(x, kernel, groups=3) / 13
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = (inner + 0.5).floor().clamp(0, 255)
    return out


def _warp_torch(x: torch.Tensor, matrix: tuple[float, ...], fill: tuple[int, ...]) -> torch.Tensor:
    """The affine of :func:`_warp_cv2` with ``grid_sample`` (bicubic a = -0.75, constant fill)."""
    t, _, h, w = x.shape
    a, b, c, d, e, f = matrix
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=x.device),
        torch.arange(w, dtype=torch.float64, device=x.device),
        indexing="ij",
    )
    # the source of pixel (x, y) in pixel indices: OpenCV's inverse map, as _warp_cv2 builds it,
    # in OpenCV's fixed point: the row and column terms each rounded to 1/1024 pixel, plus half
    # a step, then floored to 1/32 pixel (AB_BITS 10, INTER_BITS 5)
    c, f = c + 0.5 * (a + b) - 0.5, f + 0.5 * (d + e) - 0.5
    sx = torch.round((b * ys + c) * 1024) + torch.round(a * xs * 1024) + 16
    sy = torch.round((e * ys + f) * 1024) + torch.round(d * xs * 1024) + 16
    sx, sy = torch.floor(sx / 32) / 32, torch.floor(sy / 32) / 32
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1).to(x.dtype)
    colour = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out = (
        F.grid_sample(
            x - colour,
            grid.expand(t, h, w, 2),
            mode="bicubic",
            padding_mode="zeros",
            align_corners=False,
        )
        + colour
    )
    return out.round_().clamp_(0, 255)


def apply_torch(
    frames: torch.Tensor, ops: tuple[RandAugmentOp, ...], fill: tuple[int, ...]
) -> torch.Tensor:
    """``frames`` (T, 3, H, W) float32 whole numbers in 0..255, on any device → augmented, same
    shape, dtype and device (the executor of the DALI backend; tolerance in the module notes)."""
    x = frames.float()
    for op in ops:
        k, args = op.kind, op.args
        if k == "affine":
            x = _warp_torch(x, op.matrix, fill)
        elif k == "invert":
            x = 255 - x
        elif k == "posterize":
            bits = int(args[0])
            if bits < 8:
                step = float(2 ** (8 - bits))
                x = torch.floor(x / step) * step
        elif k == "solarize":
            x = torch.where(x < args[0], x, 255 - x)
        elif k == "solarize_add":
            thresh = args[1] if len(args) > 1 else 128
            x = torch.where(x < thresh, (x + args[0]).clamp(max=255), x)
        elif k == "brightness":
            x = _blend(torch.zeros_like(x), x, args[0])
        elif k == "color":
            x = _blend(_grey(x).float().expand_as(x), x, args[0])
        elif k == "contrast":
            mean = _grey(x).double().mean(dim=(1, 2, 3), keepdim=True)
            x = _blend(torch.floor(mean + 0.5).float().expand_as(x), x, args[0])
        elif k == "sharpness":
            x = _blend(_smooth(x), x, args[0])
        elif k == "autocontrast":
            x = _autocontrast(x)
        elif k == "equalize":
            x = _equalize(x)
        else:  # pragma: no cover - RandAugmentPolicy refuses unknown ops
            raise MaedferError(f"RandAugment op {op.name} has no torch implementation")
    return x
