"""The per-sample CPU executors of the augmentation steps (numpy and OpenCV, in PyAV's workers).

Each step of :data:`maedfer.pipelines.steps.STEPS` has one executor here and one batched torch
executor (:mod:`maedfer.pipelines.batch_augment`). The steps before normalisation work on a
:class:`CpuFrames` (the frames as float32 ``(H, W, 3, T)`` of whole numbers, channels and time
last so one OpenCV call covers every frame), the later ones on the normalised clip tensor
``(3, T, H, W)``. Work later steps do not need is not done: RandAugment computes only the part
of the frames the crop box keeps (:func:`maedfer.pipelines.rand_augment.source_region`), and the
flip is folded into the normalisation pass (:func:`maedfer.pipelines.augment.normalised_clip`).

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from maedfer.pipelines import augment
from maedfer.pipelines.augment import Box
from maedfer.pipelines.rand_augment import policy_for

if TYPE_CHECKING:
    from maedfer.pipelines.plan import SampleConfig, SampleSpec


@dataclass
class CpuFrames:
    """One sample's frames between the CPU steps.

    ``video``: float32 ``(H, W, 3, T)``, whole numbers 0..255, the ``source`` part of the
    size×size frames (``None``: all of them); ``box``: the part the crop step keeps (``None``:
    all); ``flip``: a mirror still to do (in the normalisation pass).
    """

    video: np.ndarray
    source: Box | None
    box: Box | None
    flip: bool = False


def resize_hw(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``(H, W, ...)`` float32 over its first two axes, all planes at once.

    OpenCV's ``INTER_LINEAR``: half-pixel centres, no antialiasing, edges repeated — the same
    numbers as torch's ``interpolate(mode="bilinear", align_corners=False)`` (to 1e-4) and
    DALI's linear resize, at a fraction of torch's CPU time.
    """
    if image.shape[:2] == (height, width):
        return image
    planes = image.reshape(*image.shape[:2], -1)
    size = (width, height)
    if planes.shape[2] <= 512:  # OpenCV takes at most 512 channels per call
        out = cv2.resize(planes, size, interpolation=cv2.INTER_LINEAR)
    else:
        out = np.concatenate(
            [
                cv2.resize(
                    np.ascontiguousarray(planes[:, :, i : i + 512]),
                    size,
                    interpolation=cv2.INTER_LINEAR,
                ).reshape(height, width, -1)
                for i in range(0, planes.shape[2], 512)
            ],
            axis=2,
        )
    return out.reshape(height, width, *image.shape[2:])


def as_images(video: np.ndarray) -> np.ndarray:
    """Frames ``(H, W, 3, T)`` of whole numbers 0..255 as contiguous ``(T, H, W, 3)`` uint8
    images (the layout timm's PIL ops and OpenCV take)."""
    # cast first, then transpose the bytes: 4x faster than one casting, transposing copy
    return np.ascontiguousarray(video.astype(np.uint8).transpose(3, 0, 1, 2))


def as_planes(images: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 images back to float32 ``(H, W, 3, T)``, in one pass."""
    video = np.empty((*images.shape[1:], images.shape[0]), dtype=np.float32)
    np.copyto(video, images.transpose(1, 2, 3, 0))
    return video


# ------------------------------------------------------------------ before normalisation


def rand_augment(frames: CpuFrames, spec: SampleSpec, config: SampleConfig) -> CpuFrames:
    """The plan's RandAugment ops, computing only the crop box's pixels (the box then holds
    all of the frames kept)."""
    if not spec.rand_augment:
        return frames
    policy = policy_for(config.rand_augment_policy, config.size)
    images = policy.apply_numpy(
        as_images(frames.video), spec.rand_augment, keep=frames.box, source=frames.source
    )
    return replace(frames, video=as_planes(images), source=frames.box)


def crop(frames: CpuFrames, spec: SampleSpec, config: SampleConfig) -> CpuFrames:
    """The crop box, resized to ``size`` (bilinear; both crops of the table)."""
    box = frames.box
    if box is None:
        return frames
    if frames.source is not None:  # the box, in the coordinates of the part at hand
        box = Box(box.x - frames.source.x, box.y - frames.source.y, box.w, box.h)
    video = resize_hw(
        frames.video[box.y : box.y + box.h, box.x : box.x + box.w], config.size, config.size
    )
    return replace(frames, video=video, source=None, box=None)


def flip(frames: CpuFrames, spec: SampleSpec, config: SampleConfig) -> CpuFrames:
    """The mirror, left to the normalisation pass (it costs nothing there)."""
    return replace(frames, flip=spec.flip) if spec.flip else frames


# ------------------------------------------------------------------ after normalisation


def random_sign(clip: torch.Tensor, spec: SampleSpec, config: SampleConfig) -> torch.Tensor:
    return -clip if spec.negate else clip


def random_erasing(clip: torch.Tensor, spec: SampleSpec, config: SampleConfig) -> torch.Tensor:
    if spec.erase is None:
        return clip
    return augment.erased(clip, spec.erase, spec.erase_seed)
