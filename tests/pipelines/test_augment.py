"""Augmentation parameters and ops (docs/recipe.md; docs/design.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maedfer.pipelines import augment, rand_augment
from maedfer.pipelines.augment import Box


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_resized_crop_box_within_limits() -> None:
    for seed in range(200):
        box = augment.random_resized_crop_box(160, 160, generator=rng(seed))
        assert 0 <= box.x and box.x + box.w <= 160 and 0 <= box.y and box.y + box.h <= 160
        # area and aspect in range, up to the rounding of the sides to whole pixels
        assert 0.08 * 160 * 160 * 0.9 <= box.w * box.h <= 160 * 160
        assert 3 / 4 * 0.9 <= box.w / box.h <= 4 / 3 * 1.1


def test_random_resized_crop_falls_back_to_the_centre() -> None:
    # a 1-pixel-high image admits no box of aspect 3/4..4/3: the clamped centre box
    box = augment.random_resized_crop_box(1, 100, generator=rng(0))
    assert box == Box(49, 0, 1, 1)


def test_multi_scale_crop_uses_the_tsn_sizes_and_offsets() -> None:
    sizes, offsets = set(), set()
    for seed in range(2000):
        box = augment.multi_scale_crop_box(160, 160, out_size=160, generator=rng(seed))
        sizes.add((box.w, box.h))
        offsets.add((box.x, box.y, box.w, box.h))
        assert box.x + box.w <= 160 and box.y + box.h <= 160
    sides = (160, 140, 120, 105)  # int(160 * s) for s in (1, .875, .75, .66)
    expected = {(sides[j], sides[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert sizes == expected and len(expected) == 10
    corners = {(x, y) for x, y, w, h in offsets if (w, h) == (120, 120)}
    assert corners == {
        (i * 10, j * 10)
        for i, j in [
            (0, 0),
            (4, 0),
            (0, 4),
            (4, 4),
            (2, 2),
            (0, 2),
            (4, 2),
            (2, 4),
            (2, 0),
            (1, 1),
            (3, 1),
            (1, 3),
            (3, 3),
        ]
    }


def test_random_erasing_box_area() -> None:
    for seed in range(100):
        box = augment.random_erasing_box(160, 160, generator=rng(seed))
        assert box is not None
        assert box.w < 160 and box.h < 160 and box.x + box.w <= 160 and box.y + box.h <= 160
        assert 0.015 * 160 * 160 <= box.w * box.h <= 0.36 * 160 * 160


def test_rand_augment_same_ops_on_every_frame() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frames = np.stack([frame] * 4)
    ra = augment.VideoRandAugment(size=32)
    changed = 0
    for seed in range(6):
        out = ra(frames, seed)
        assert out.shape == frames.shape and out.dtype == np.uint8
        assert all((out[t] == out[0]).all() for t in range(4))  # identical frames stay so
        assert (ra(frames, seed) == out).all()  # the seed fixes the result
        changed += int((out != frames).any())
    assert changed >= 4  # and it does change frames


def test_finish_clip_subtract_mean_and_erase() -> None:
    video = torch.randn(3, 8, 16, 16) + 5
    out = augment.finish_clip(video, subtract_mean=True)
    assert out.mean(dim=1).abs().max() < 1e-5  # every pixel's mean over time is 0
    assert torch.allclose(out[:, 1] - out[:, 0], video[:, 1] - video[:, 0], atol=1e-5)
    box = Box(2, 3, 4, 5)
    erased = augment.finish_clip(video, subtract_mean=False, erase=box, erase_seed=1)
    again = augment.finish_clip(video, subtract_mean=False, erase=box, erase_seed=1)
    assert torch.equal(erased, again)
    inside = erased[:, :, 3:8, 2:6]
    assert not torch.equal(inside, video[:, :, 3:8, 2:6]) and inside.abs().mean() < 2
    outside = erased.clone()
    outside[:, :, 3:8, 2:6] = video[:, :, 3:8, 2:6]
    assert torch.equal(outside, video)


def test_normalise_matches_imagenet_constants() -> None:
    frames = torch.full((2, 3, 4, 4), 255.0)  # (T, 3, H, W)
    out = augment.normalise(frames).transpose(0, 1)
    pairs = zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD, strict=True)
    expected = [(1 - m) / s for m, s in pairs]
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor(expected))


def test_mixup_on_video_batches() -> None:
    mixup = augment.make_mixup(num_classes=5)
    assert mixup.mixup.mixup_alpha == 0.8 and mixup.mixup.cutmix_alpha == 1.0
    assert mixup.mixup.label_smoothing == 0.1 and mixup.mixup.mode == "batch"
    np.random.seed(0)
    video = torch.stack([torch.full((3, 4, 16, 16), float(i)) for i in range(4)])
    target = torch.tensor([0, 1, 2, 3])
    seen_cutmix = False
    for _ in range(10):
        mixed, soft = mixup(video.clone(), target)
        assert mixed.shape == video.shape and soft.shape == (4, 5)
        assert torch.allclose(soft.sum(1), torch.ones(4))
        # whatever was mixed, every frame of a clip was mixed the same way (one box, one lam)
        assert all(torch.equal(mixed[:, :, t], mixed[:, :, 0]) for t in range(4))
        seen_cutmix |= bool((mixed[0, 0, 0] != mixed[0, 0, 0, 0, 0]).any())
    assert seen_cutmix
    assert augment.make_mixup(5, mixup_alpha=0, cutmix_alpha=0) is None
    with pytest.raises(augment.MaedferError):
        mixup(video[:3], target[:3])


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_geometric_ops_match_pil(name: str) -> None:
    # the OpenCV warp stands in for PIL's bicubic affine: same geometry, another cubic kernel
    import random

    import cv2
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(noise, (9, 9), 3)  # smooth: kernels differ little on it
    ra = augment.VideoRandAugment(size=64)
    op = AugmentOp(name, prob=1.0, magnitude=9, hparams=ra.transform.ops[0].hparams)
    random.seed(1)
    recorder = op(rand_augment._AffineRecorder(64, 64))
    random.seed(1)
    expected = np.asarray(op(Image.fromarray(image))).astype(int)
    got = rand_augment._warp_cv2([image], recorder.matrix, ra.policy.fill)[0].astype(int)
    assert recorder.matrix is not None and not np.array_equal(expected, image)
    assert np.abs(got - expected).mean() < 1.0  # measured 0.5 at 160 px; a wrong map: >> 1


@pytest.mark.parametrize("shape", [(160, 160, 3, 16), (45, 37, 3, 5), (1, 2, 3, 1)])
@pytest.mark.parametrize("flip", [False, True])
def test_normalised_clip_equals_normalising_the_permuted_clip(shape: tuple, flip: bool) -> None:
    video = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    clip = torch.from_numpy(video).permute(2, 3, 0, 1)
    clip = clip.flip(-1) if flip else clip
    want = augment.normalise(clip.contiguous(), channel_dim=-4)
    got = augment.normalised_clip(video, flip=flip)
    assert got.is_contiguous() and torch.equal(got, want)
