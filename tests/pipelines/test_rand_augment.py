"""RandAugment drawn once per sample, the same pixels from the numpy (PyAV) and torch (DALI)
executors: colour ops exact, the affine warp within 1/255 (maedfer.pipelines.rand_augment)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import rand_augment
from tests.pipelines.media import marker_frames

# ------------------------------------------------------------ the pinned reference executor
# apply_numpy as it was before its fast paths (timm's PIL functions frame by frame or on the
# stacked clip, one cv2.warpAffine per frame): the new executor must give exactly these bytes.


def _reference_warp(frames: list[np.ndarray], matrix: tuple[float, ...],
                    fill: tuple[int, ...]) -> list[np.ndarray]:
    a, b, c, d, e, f = matrix
    m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]])
    h, w = frames[0].shape[:2]
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return [cv2.warpAffine(frame, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=fill) for frame in frames]  # fmt: skip


_REFERENCE_POINTWISE = frozenset({"invert", "posterize", "solarize", "solarize_add",
                                  "brightness", "color"})  # fmt: skip


def _reference_apply_numpy(frames: np.ndarray, ops: tuple[rand_augment.RandAugmentOp, ...],
                           policy: rand_augment.RandAugmentPolicy) -> np.ndarray:
    from PIL import Image

    clip = np.ascontiguousarray(frames)
    t, h, w, c = clip.shape
    for op in ops:
        if op.kind == "affine":
            clip = np.stack(_reference_warp(list(clip), op.matrix, policy.fill))
            continue
        timm_op = policy._ops[op.name]
        kwargs = dict(timm_op.kwargs)
        if op.kind in _REFERENCE_POINTWISE:
            tall = Image.fromarray(clip.reshape(t * h, w, c))
            clip = np.asarray(timm_op.aug_fn(tall, *op.args, **kwargs)).reshape(t, h, w, c)
        else:
            clip = np.stack([np.asarray(timm_op.aug_fn(Image.fromarray(image), *op.args,
                                                       **kwargs))
                             for image in clip])  # fmt: skip
    return clip if clip.flags.writeable else clip.copy()


def images() -> dict[str, np.ndarray]:
    noise = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3)).astype(np.uint8)
    return {"markers": marker_frames(4, 48), "noise": noise,
            "smooth": np.stack([cv2.GaussianBlur(f, (0, 0), 2) for f in noise])}


def test_torch_executor_matches_numpy_op_by_op() -> None:
    policy = rand_augment.RandAugmentPolicy(size=48)
    kinds: set[str] = set()
    for frames in images().values():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        for seed in range(120):
            for op in policy.draw(seed):
                kinds.add(op.kind)
                want = policy.apply_numpy(frames, (op,)).astype(np.float32)
                got = rand_augment.apply_torch(x, (op,), policy.fill).permute(0, 2, 3, 1)
                diff = np.abs(got.numpy() - want)
                limit = 1 if op.kind == "affine" else 0  # measured: 1 and 0
                assert diff.max() <= limit, (op, diff.max())
    assert len(kinds) == 11  # every kind of the inc1 policy was met


def test_numpy_executor_on_the_clip_equals_frame_by_frame() -> None:
    # pointwise colour ops run once on the stacked clip: the same values as on each frame alone
    policy = rand_augment.RandAugmentPolicy(size=48)
    kinds: set[str] = set()
    for frames in images().values():
        for seed in range(60):
            ops = policy.draw(seed)
            kinds.update(op.kind for op in ops)
            alone = np.concatenate([policy.apply_numpy(frames[k : k + 1], ops)
                                    for k in range(len(frames))])
            clip = policy.apply_numpy(frames, ops)
            assert clip.dtype == np.uint8 and clip.flags.writeable
            assert np.array_equal(clip, alone), ops
    assert kinds >= rand_augment._POINTWISE


def test_draws_are_timm_s_and_leave_the_global_generators_alone() -> None:
    import random

    policy = rand_augment.policy_for(rand_augment.RAND_AUGMENT, 32)
    random.seed(5)
    np.random.seed(5)
    before = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    ops = policy.draw(11)
    assert (random.random(), np.random.random()) == before
    assert ops == policy.draw(11) and len(ops) <= 4
    assert all(op.name in {o.name for o in policy.transform.ops} for op in ops)
    assert any(policy.draw(s) != ops for s in range(5))


def test_unknown_policy_is_one_line() -> None:
    with pytest.raises(MaedferError, match="RandAugment policy 'augmix-m5'"):
        rand_augment.RandAugmentPolicy("augmix-m5", size=32)


@pytest.mark.gpu
def test_torch_executor_on_cuda_matches_cpu() -> None:
    policy = rand_augment.RandAugmentPolicy(size=48)
    x = torch.from_numpy(images()["smooth"]).permute(0, 3, 1, 2).float()
    for seed in range(40):
        ops = policy.draw(seed)
        cpu = rand_augment.apply_torch(x, ops, policy.fill)
        gpu = rand_augment.apply_torch(x.cuda(), ops, policy.fill).cpu()
        assert (cpu - gpu).abs().float().mean() <= 0.25
