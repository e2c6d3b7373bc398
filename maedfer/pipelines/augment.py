"""Spatial augmentation and normalisation of clips (docs/recipe.md).

Random parameters (crop boxes, flips, erasing boxes, seeds) are drawn on the CPU from a numpy
``Generator`` by pure functions, so the DALI pipeline and the PyAV loader apply the same
augmentation to the same sample; the pixels are then changed by whichever backend runs.

- :func:`random_resized_crop_box` — fine-tuning crop (area 0.08–1, aspect 3/4–4/3), the
  torchvision ``RandomResizedCrop`` rule; the same box for every frame.
- :func:`multi_scale_crop_box` — pre-training crop: TSN ``GroupMultiScaleCrop`` with scales
  (1, .875, .75, .66), ``max_distort`` 1 and the 13 fixed offsets ("more_fix_crop").
- :class:`VideoRandAugment` — timm RandAugment ``rand-m7-n4-mstd0.5-inc1`` (bicubic, translate
  72 px at 160), with the same ops and magnitudes on every frame; the draws and both executors
  (numpy/PIL for PyAV, torch for DALI) are in :mod:`maedfer.pipelines.rand_augment`.
- :func:`normalise` — the ImageNet normalisation of every backend; :func:`clip_from_frames` —
  frames to a normalised model input (inference).
- :func:`finish_clip` — after ImageNet normalisation: the optional clip-mean subtraction
  (docs/design.md) and random erasing (p 0.25, pixel mode, one box, the same box on every frame).
- :func:`make_mixup` — timm Mixup/CutMix with the official fine-tuning defaults, for 5-D video
  batches; the train loop applies it (the loader does not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD, RAND_AUGMENT
from maedfer.errors import MaedferError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RAND_AUGMENT"]  # theirs: maedfer.constants
MULTI_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
ERASE_PROB = 0.25
FLIP_PROB = 0.5


class Box(NamedTuple):
    """An axis-aligned box in pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int


def random_resized_crop_box(
    height: int,
    width: int,
    *,
    generator: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """A random crop covering ``scale`` of the area with aspect in ``ratio`` (log-uniform).

    Ten tries at a box that fits; failing that, the largest centred box whose aspect is clamped
    into ``ratio`` (the rule of torchvision's ``RandomResizedCrop.get_params``).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * generator.uniform(scale[0], scale[1])
        aspect = math.exp(generator.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y = int(generator.integers(0, height - h + 1))
            x = int(generator.integers(0, width - w + 1))
            return Box(x, y, w, h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return Box((width - w) // 2, (height - h) // 2, w, h)


def _fixed_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 offsets of TSN's "more_fix_crop": corners, centre, edge centres, quarter points."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0)]
    grid += [(1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def multi_scale_crop_box(
    height: int,
    width: int,
    *,
    out_size: int,
    generator: np.random.Generator,
    scales: Sequence[float] = MULTI_SCALES,
    max_distort: int = 1,
) -> Box:
    """TSN multi-scale crop (docs/recipe.md): a (w, h) pair of scaled sides, then a fixed offset.

    Sides are ``int(min(height, width) * s)`` for each scale, snapped to ``out_size`` when within
    2 px; (w, h) pairs whose scale ranks differ by at most ``max_distort`` are equally likely.
    At 160 px the sides are 160, 140, 120, 105 (10 pairs); the offset is one of 13 fixed points.
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [out_size if abs(s - out_size) < 3 else s for s in sides]
    pairs = [
        (sides[j], sides[i])
        for i in range(len(sides))
        for j in range(len(sides))
        if abs(i - j) <= max_distort
    ]
    crop_w, crop_h = pairs[int(generator.integers(len(pairs)))]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    offsets = _fixed_offsets(width, height, crop_w, crop_h)
    x, y = offsets[int(generator.integers(len(offsets)))]
    return Box(x, y, crop_w, crop_h)


def random_erasing_box(
    height: int,
    width: int,
    *,
    generator: np.random.Generator,
    area: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> Box | None:
    """The box of timm-style random erasing (one box, ten tries; ``None`` if none fits)."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = height * width * generator.uniform(*area)
        aspect = math.exp(generator.uniform(*log_ratio))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            y = int(generator.integers(0, height - h + 1))
            x = int(generator.integers(0, width - w + 1))
            return Box(x, y, w, h)
    return None


class VideoRandAugment:
    """timm RandAugment with the same ops and magnitudes on every frame of a clip (the PyAV
    executor of :mod:`maedfer.pipelines.rand_augment`): ``ra(frames, seed)``."""

    def __init__(self, config: str = RAND_AUGMENT, *, size: int = 160) -> None:
        from maedfer.pipelines.rand_augment import policy_for

        self.config = config
        self.policy = policy_for(config, size)
        self.transform = self.policy.transform

    def __call__(self, frames: np.ndarray, seed: int) -> np.ndarray:
        """``frames`` (T, H, W, 3) uint8 RGB → the augmented frames, same shape and dtype."""
        return self.policy.apply_numpy(frames, self.policy.draw(seed))


def resize_frames(frames: torch.Tensor, box: Box | None, size: int) -> torch.Tensor:
    """Crop ``box`` from float frames ``(T, 3, H, W)`` and resize to ``size`` (bilinear).

    Bilinear without antialiasing, half-pixel centres (``align_corners=False``): the resize
    the reference's video transforms use, and DALI's ``INTERP_LINEAR`` with ``antialias=False``.
    """
    if box is not None:
        frames = frames[:, :, box.y : box.y + box.h, box.x : box.x + box.w]
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames


def normalise(video: torch.Tensor, *, channel_dim: int = -3, inplace: bool = False) -> torch.Tensor:
    """ImageNet normalisation of values in [0, 255] → float32: ``(x - 255·mean) / (255·std)``.

    The one normalisation of every backend and of inference. ``channel_dim`` is the axis of
    the 3 colour channels: -3 for frames ``(T, 3, H, W)``, -4 for clips ``(3, T, H, W)`` and
    batches ``(B, 3, T, H, W)``. ``inplace`` reuses ``video`` (float32) for the result.
    """
    shape = [1] * (-channel_dim)
    shape[0] = 3
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(shape) * 255
    std = torch.tensor(IMAGENET_STD, device=video.device).view(shape) * 255
    if inplace and video.dtype == torch.float32:
        return video.sub_(mean).div_(std)
    return (video.float() - mean) / std


def normalised_clip(video: np.ndarray, *, flip: bool = False) -> torch.Tensor:
    """:func:`normalise` of float32 frames laid out ``(H, W, 3, T)`` (values 0..255), as the clip
    ``(3, T, H, W)``, mirrored left-right with ``flip``: the same values, in one cache-sized pass.

    The CPU loader's frames have channels and time last (one OpenCV call resizes them all);
    transposing them whole to ``(3, T, H, W)`` strides through memory, so a band of rows at a
    time is transposed and normalised while it is in cache (3x faster on 16×160×160 clips).
    """
    height, width, channels, frames = video.shape
    mean = (torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255).numpy()
    std = (torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255).numpy()
    out = np.empty((channels, frames, height, width), dtype=np.float32)
    source = video[:, ::-1] if flip else video
    for row in range(0, height, _BAND_ROWS):
        band = out[:, :, row : row + _BAND_ROWS]
        np.subtract(source[row : row + _BAND_ROWS].transpose(2, 3, 0, 1), mean, out=band)
        band /= std
    return torch.from_numpy(out)


_BAND_ROWS = 32  # 32 rows of a 160-wide clip of 16 frames: 1 MB, in cache


def clip_from_frames(
    frames: np.ndarray | torch.Tensor, *, subtract_mean: bool = False
) -> torch.Tensor:
    """Model input ``(3, T, H, W)`` float32 from ``(T, H, W, 3)`` uint8 RGB frames, normalised as
    the loaders' clips are (:func:`normalise`, then :func:`finish_clip`'s mean-frame subtraction).
    What inference (``predict``) feeds the model for one window."""
    clip = torch.as_tensor(np.asarray(frames) if isinstance(frames, np.ndarray) else frames)
    clip = clip.permute(3, 0, 1, 2).float()
    return finish_clip(normalise(clip, channel_dim=-4, inplace=True), subtract_mean=subtract_mean)


def finish_clip(
    video: torch.Tensor,
    *,
    subtract_mean: bool,
    erase: Box | None = None,
    erase_seed: int = 0,
    negate: bool = False,
) -> torch.Tensor:
    """The last steps on a normalised clip ``(3, T, H, W)``, the same on every backend.

    ``subtract_mean`` removes the clip's mean frame (over T) from every frame (docs/design.md):
    the result is ``(x - mean_t x) / (255 · std)``, i.e. ImageNet scaling with the clip's own
    mean in place of the ImageNet mean. ``erase`` fills that box with standard-normal noise in
    every frame (timm "pixel" mode, the same box in all frames); the noise comes from a CPU
    generator seeded with ``erase_seed``, so both backends erase with the same values.
    ``negate`` flips the sign of the clip (the ``random_sign`` augmentation: on a clip minus its
    mean frame, the sign of a change depends on the face's colours, not on the movement).
    """
    if subtract_mean:
        video = video - video.mean(dim=1, keepdim=True)
    if negate:
        video = -video
    if erase is not None:
        video = erased(video, erase, erase_seed)
    return video


def erase_noise(erase: Box, frames: int, seed: int) -> torch.Tensor:
    """The noise random erasing writes into ``erase`` on ``frames`` frames: standard normal
    ``(3, frames, h, w)`` float32 from a CPU generator seeded with ``seed`` (every backend, on any
    device, writes these same values)."""
    return torch.randn((3, frames, erase.h, erase.w), generator=torch.Generator().manual_seed(seed))


def erased(video: torch.Tensor, erase: Box, seed: int) -> torch.Tensor:
    """A copy of the clip ``(3, T, H, W)`` with ``erase`` filled with :func:`erase_noise`."""
    noise = erase_noise(erase, video.shape[1], seed)
    video = video.clone()
    video[:, :, erase.y : erase.y + erase.h, erase.x : erase.x + erase.w] = noise.to(
        video.device, video.dtype
    )
    return video


class VideoMixup:
    """timm ``Mixup`` for video batches ``(B, C, T, H, W)``: one box for all frames.

    timm's batch mode cuts ``x[:, :, y0:y1, x0:x1]``, which on a 5-D tensor would cut time and
    height; folding T into C (``(B, C·T, H, W)``) makes the box apply to height and width of
    every frame. Mixing uses numpy's global generator (timm's choice): seed it in the train loop.
    """

    def __init__(self, mixup) -> None:  # noqa: ANN001 (a timm Mixup)
        self.mixup = mixup

    def __call__(
        self, video: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the mixed video (same shape) and soft targets ``(B, num_classes)``."""
        if video.ndim != 5:
            raise MaedferError(f"mixup expects video (B, C, T, H, W), got shape {video.shape}")
        b, c, t, h, w = video.shape
        if b % 2:
            raise MaedferError(f"mixup needs an even batch size, got {b} (use drop_last)")
        mixed, soft = self.mixup(video.reshape(b, c * t, h, w).contiguous(), target)
        return mixed.reshape(b, c, t, h, w), soft


def make_mixup(
    num_classes: int,
    *,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    label_smoothing: float = 0.1,
) -> VideoMixup | None:
    """Mixup/CutMix with docs/recipe.md's defaults (α 0.8 / 1.0, prob 1, switch 0.5, batch mode,
    label smoothing 0.1 folded into the soft targets); use with ``SoftTargetCrossEntropy``.

    Returns ``None`` when both alphas are 0 (no mixing: use plain label-smoothed cross-entropy).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return VideoMixup(
        Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
    )
