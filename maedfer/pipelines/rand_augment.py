"""Video RandAugment (timm ``rand-m7-n4-mstd0.5-inc1``, MODEL.md §4.2), drawn once, run anywhere.

The draw and the pixels are separate:

- :meth:`RandAugmentPolicy.draw` turns a sample's seed (chosen by the
  :class:`~maedfer.pipelines.plan.EpochPlan`) into the ops timm would apply — which ops, each op's
  coin, magnitude and sign, resolved to the op's arguments (and, for rotate/shear/translate, the
  affine matrix at the clip's size). It uses timm's own RandAugment objects, so the draws are
  timm's; the same ops then go to every frame of the clip.
- :func:`apply_numpy` runs them on ``(T, H, W, 3)`` uint8 frames with timm's PIL functions and one
  OpenCV affine warp per frame (the PyAV backend, in its worker processes).
- :func:`apply_torch` runs them on a ``(T, 3, H, W)`` float tensor of whole numbers 0..255 on any
  device (the DALI backend, on the decoded CUDA frames; CPU in the tests). Each op is written
  after Pillow's C code (integer grey level, truncating blend, per-frame statistics for
  autocontrast, equalize and contrast, borders kept by the smoothing of sharpness); the affine
  warp is torch's bicubic ``grid_sample`` (kernel a = -0.75, OpenCV's) with the fill colour.

Tolerance (measured, ``tests/pipelines/test_rand_augment.py`` and ``test_dali.py``): on the same
frames and ops, :func:`apply_torch` equals :func:`apply_numpy` exactly for every colour op and
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

from maedfer.errors import MaedferError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"

#: timm op names -> what the pixels undergo (the ``Increasing`` variants differ in their draws
#: only, which timm's level functions make before the op runs)
_KINDS = {
    "AutoContrast": "autocontrast", "Equalize": "equalize", "Invert": "invert",
    "Rotate": "affine", "ShearX": "affine", "ShearY": "affine", "TranslateX": "affine",
    "TranslateY": "affine", "TranslateXRel": "affine", "TranslateYRel": "affine",
    "Posterize": "posterize", "PosterizeIncreasing": "posterize",
    "PosterizeOriginal": "posterize", "Solarize": "solarize",
    "SolarizeIncreasing": "solarize", "SolarizeAdd": "solarize_add", "Color": "color",
    "ColorIncreasing": "color", "Contrast": "contrast", "ContrastIncreasing": "contrast",
    "Brightness": "brightness", "BrightnessIncreasing": "brightness",
    "Sharpness": "sharpness", "SharpnessIncreasing": "sharpness",
}  # fmt: skip

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
        hparams = {"translate_const": int(size * 0.45), "img_mean": self.fill,
                   "interpolation": Image.Resampling.BICUBIC}
        try:
            self.transform = rand_augment_transform(policy, hparams)
        except (AssertionError, ValueError, KeyError) as exc:
            raise MaedferError(f"RandAugment policy {policy!r} is not one timm reads: "
                               f"{exc or type(exc).__name__}") from None
        unknown = sorted({op.name for op in self.transform.ops} - set(_KINDS))
        if unknown:
            raise MaedferError(f"RandAugment policy {policy!r} uses op(s) {', '.join(unknown)}, "
                               "which maedfer does not implement")
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
                chosen = np.random.choice(ra.ops, ra.num_layers,
                                          replace=ra.choice_weights is None,
                                          p=ra.choice_weights)  # fmt: skip
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

    def apply_numpy(self, frames: np.ndarray, ops: tuple[RandAugmentOp, ...]) -> np.ndarray:
        """See :func:`apply_numpy` (with this policy's timm functions and fill)."""
        return apply_numpy(frames, ops, self)


@lru_cache(maxsize=8)
def policy_for(policy: str, size: int) -> RandAugmentPolicy:
    """One :class:`RandAugmentPolicy` per (policy, size) and process (timm imports take seconds)."""
    return RandAugmentPolicy(policy, size=size)


def _warp_cv2(frames: list[np.ndarray], matrix: tuple[float, ...],
              fill: tuple[int, ...]) -> list[np.ndarray]:
    """A PIL-style affine (output → input map, pixel centres at +0.5) on every frame, OpenCV's
    bicubic (a = -0.75 where PIL's is -0.5: mean difference 0.5/255 from PIL on smooth images,
    at a third of PIL's time per frame)."""
    import cv2

    a, b, c, d, e, f = matrix
    m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]])
    h, w = frames[0].shape[:2]
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return [cv2.warpAffine(frame, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=fill) for frame in frames]  # fmt: skip


#: colour ops that map each pixel on its own (no per-frame statistic, no neighbourhood): run
#: once on the clip's frames stacked into one tall image, the same values as frame by frame
_POINTWISE = frozenset({"invert", "posterize", "solarize", "solarize_add", "brightness", "color"})


def apply_numpy(frames: np.ndarray, ops: tuple[RandAugmentOp, ...],
                policy: RandAugmentPolicy) -> np.ndarray:
    """``frames`` (T, H, W, 3) uint8 RGB → the augmented frames, same shape and dtype.

    Colour ops are timm's PIL functions with the same arguments: pointwise ones in one call on
    the whole clip (frames stacked into one ``(T·H, W)`` image), the others (autocontrast,
    equalize, contrast, sharpness: per-frame statistics or a 3×3 filter) frame by frame;
    geometric ops one OpenCV affine warp per frame (PIL's bicubic affine was 90 % of
    RandAugment's time).
    """
    from PIL import Image

    clip = np.ascontiguousarray(frames)
    t, h, w, c = clip.shape
    for op in ops:
        if op.kind == "affine":
            clip = np.stack(_warp_cv2(list(clip), op.matrix, policy.fill))
            continue
        timm_op = policy._ops[op.name]
        kwargs = dict(timm_op.kwargs)
        if op.kind in _POINTWISE:
            tall = Image.fromarray(clip.reshape(t * h, w, c))
            clip = np.asarray(timm_op.aug_fn(tall, *op.args, **kwargs)).reshape(t, h, w, c)
        else:
            clip = np.stack([np.asarray(timm_op.aug_fn(Image.fromarray(image), *op.args,
                                                       **kwargs))
                             for image in clip])  # fmt: skip
    return clip if clip.flags.writeable else clip.copy()


# ------------------------------------------------------------------------ torch executor


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB → L: ``(R·19595 + G·38470 + B·7471 + 2^15) >> 16``, (T, 1, H, W) int32."""
    q = x.to(torch.int32)
    return ((q[:, 0:1] * 19595 + q[:, 1:2] * 38470 + q[:, 2:3] * 7471 + 32768) >> 16)


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


_EQUALIZE_DIV = _equalize_divisor()


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` per frame and channel (Pillow's lut: ``(step//2 + Σ h[<i]) // step``,
    ``step = (N - h[last non-empty]) // 255``; identity where ``step`` is 0)."""
    hist = _histogram(x)  # (T, 3, 256)
    ramp = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, ramp, -1).amax(dim=2, keepdim=True)  # last non-empty bin
    top = torch.gather(hist, 2, last.clamp(min=0))
    step = (hist.sum(dim=2, keepdim=True) - top) // _EQUALIZE_DIV
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


def _warp_torch(x: torch.Tensor, matrix: tuple[float, ...],
                fill: tuple[int, ...]) -> torch.Tensor:
    """The affine of :func:`_warp_cv2` with ``grid_sample`` (bicubic a = -0.75, constant fill)."""
    t, _, h, w = x.shape
    a, b, c, d, e, f = matrix
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=x.device),
                            torch.arange(w, dtype=torch.float64, device=x.device), indexing="ij")
    # the source of pixel (x, y) in pixel indices: OpenCV's inverse map, as _warp_cv2 builds it,
    # in OpenCV's fixed point: the row and column terms each rounded to 1/1024 pixel, plus half
    # a step, then floored to 1/32 pixel (AB_BITS 10, INTER_BITS 5)
    c, f = c + 0.5 * (a + b) - 0.5, f + 0.5 * (d + e) - 0.5
    sx = torch.round((b * ys + c) * 1024) + torch.round(a * xs * 1024) + 16
    sy = torch.round((e * ys + f) * 1024) + torch.round(d * xs * 1024) + 16
    sx, sy = torch.floor(sx / 32) / 32, torch.floor(sy / 32) / 32
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1).to(x.dtype)
    colour = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out = F.grid_sample(x - colour, grid.expand(t, h, w, 2), mode="bicubic",
                        padding_mode="zeros", align_corners=False) + colour
    return out.round_().clamp_(0, 255)


def apply_torch(frames: torch.Tensor, ops: tuple[RandAugmentOp, ...],
                fill: tuple[int, ...]) -> torch.Tensor:
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
