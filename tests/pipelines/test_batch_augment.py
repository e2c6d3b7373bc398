"""The step table's batched torch executors: the same values as the per-sample executors (CPU
tensors here), every step covered, and nothing read back to the host inside a batch."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from maedfer.pipelines import augment, batch_augment, pyav, rand_augment, rand_augment_batch
from maedfer.pipelines import steps as table
from maedfer.pipelines.options import TrainDataOptions
from maedfer.pipelines.plan import EpochPlan, SampleConfig
from maedfer.pipelines.select import ClipTable

CPU = torch.device("cpu")
STD = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1, 1) * 255  # back to 0..255 units


def smooth_clips(count: int, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``(count, frames, size, size, 3)`` uint8: blurred noise (every op changes it)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count, frames, size, size, 3)).astype(np.uint8)
    return np.stack([[cv2.GaussianBlur(f, (0, 0), 1.5) for f in clip] for clip in noise])


def table_of(rows: int, frames: int = 40) -> ClipTable:
    return ClipTable(
        clip_id=pa.array([f"c{i}" for i in range(rows)]),
        path=pa.array(["x.mp4"] * rows),
        label=np.zeros(rows, np.int64),
        num_frames=np.full(rows, frames, np.int64),
        crop=np.full((rows, 4), -1, np.int64),
        root=Path("/"),
    )


def test_every_step_has_both_executors_and_one_stage() -> None:
    names = [step.name for step in table.STEPS]
    assert len(set(names)) == len(names)
    for step in table.STEPS:
        assert step.stage in table.STAGES and step.modes <= {"pretrain", "train", "test"}
        assert callable(step.cpu) and callable(step.draw) and callable(step.describe)
        assert isinstance(step.batch, batch_augment.BatchExecutor)


def test_batched_rand_augment_equals_the_per_sample_executors() -> None:
    """300 seeds' op chains, one sample each, in one batch: equal to apply_torch sample by
    sample; each op alone equal to the numpy executor (colour ops exactly, affine within 1)."""
    size = 32
    policy = rand_augment.policy_for(rand_augment.RAND_AUGMENT, size)
    frames = smooth_clips(1, 3, size)[0]  # (T, H, W, 3)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    config = SimpleNamespace(rand_augment_policy=rand_augment.RAND_AUGMENT, size=size)
    consts = batch_augment.constants(CPU, size, size, policy.fill)
    chains = [policy.draw(seed) for seed in range(300)]
    singles = [(op,) for chain in chains for op in chain]
    for batch, exact_to_numpy in ((chains, False), (singles, True)):
        specs = [SimpleNamespace(rand_augment=ops) for ops in batch]
        params = batch_augment.Params()
        groups = rand_augment_batch.pack(specs, config, params)
        params.stage(pin=False)
        clips = x.transpose(0, 1).expand(len(specs), 3, *x.shape[:1], size, size).contiguous()
        got = rand_augment_batch.run(clips, groups, params.to(CPU), consts, config)
        want = torch.stack(
            [rand_augment.apply_torch(x, ops, policy.fill).transpose(0, 1) for ops in batch]
        )
        assert torch.equal(got, want)
        if exact_to_numpy:
            kinds = set()
            for ops, out in zip(batch, got.permute(0, 2, 3, 4, 1).numpy(), strict=True):
                diff = np.abs(out - policy.apply_numpy(frames, ops).astype(np.float32)).max()
                kinds.add(ops[0].kind)
                assert diff <= (1 if ops[0].kind == "affine" else 0), (ops, diff)
            assert len(kinds) == 11  # every kind of the inc1 policy was met


MODES = [
    ("train", {}),  # RandAugment, crop, flip, erasing
    ("train", {"rand_augment": None}),
    ("pretrain", {}),  # multi-scale crop
    ("train", {"augment": False, "flip_only": True, "random_sign": True, "subtract_mean": True}),
    ("train", {"random_sign": True, "subtract_mean": True}),
    ("test", {"subtract_mean": True}),
]


@pytest.mark.parametrize(("mode", "options"), MODES)
def test_batched_steps_equal_the_cpu_steps(mode: str, options: dict) -> None:
    """The whole chain on a batch (steps, normalisation, mean subtraction) against PyAV's CPU
    executors on the same frames: 1e-2/255 without RandAugment (OpenCV's resize against one
    grid_sample over the batch), the RandAugment tolerance with it."""
    size, frames_per_clip, count = 40, 4, 24
    config = SampleConfig.from_data(
        TrainDataOptions(**options),
        mode=mode,
        num_frames=frames_per_clip,
        size=size,
        seed=3,
        test_views=2,
    )
    plan = EpochPlan(table_of(count), config, epoch=0)
    specs = [plan.spec(i) for i in range(count)]
    clips = smooth_clips(count, frames_per_clip, size, seed=1)
    cpu = torch.stack(
        [
            pyav.load_sample(spec, config, clip.transpose(1, 2, 3, 0).astype(np.float32))
            for spec, clip in zip(specs, clips, strict=True)
        ]
    )
    prepared = batch_augment.prepare(specs, config)
    got = batch_augment.augment_batch(torch.from_numpy(clips).permute(0, 4, 1, 2, 3), prepared)
    assert got.shape == cpu.shape == (count, 3, frames_per_clip, size, size)
    assert got.dtype == torch.float32 and got.is_contiguous()
    diff = ((got - cpu) * STD).abs()
    if config.rand_augment:
        mean, share = rand_augment.CLIP_TOLERANCE
        assert diff.mean() <= mean and (diff > 2).float().mean() <= share
    else:
        assert diff.max() <= 1e-2, diff.max()
    assert [name for name, _ in prepared.steps] == [s.name for s in table.applied(config)]


def test_no_value_is_read_back_inside_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of op, the crop, flip, sign, erasing and the mean subtraction on one batch:
    no .cpu(), .item(), .tolist(), .numpy(), truth value or host-built tensor."""
    size = 24
    config = SampleConfig.from_data(
        TrainDataOptions(random_sign=True, subtract_mean=True),
        mode="train",
        num_frames=2,
        size=size,
        seed=0,
        test_views=2,
    )
    plan = EpochPlan(table_of(64), config, epoch=0)
    specs = [plan.spec(i) for i in range(64)]
    kinds = {op.kind for s in specs for op in s.rand_augment or ()}
    assert len(kinds) == 11 and any(s.erase for s in specs) and any(s.negate for s in specs)
    frames = torch.from_numpy(smooth_clips(64, 2, size)).permute(0, 4, 1, 2, 3)
    batch_augment.augment_batch(frames, batch_augment.prepare(specs, config))  # constants made
    prepared = batch_augment.prepare(specs, config)
    calls: list[str] = []

    def counting(name: str, original):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, counting(name, getattr(torch, name)))
    batch_augment.augment_batch(frames, prepared)
    assert calls == []


@pytest.mark.gpu
def test_on_cuda_nothing_synchronises_and_the_values_are_the_cpu_s() -> None:
    """``torch.cuda.set_sync_debug_mode("error")`` around a batch with every kind of op: no
    synchronising call; the values within the RandAugment tolerance of the CPU's."""
    size = 32
    config = SampleConfig.from_data(
        TrainDataOptions(random_sign=True, subtract_mean=True),
        mode="train",
        num_frames=4,
        size=size,
        seed=1,
        test_views=2,
    )
    plan = EpochPlan(table_of(48), config, epoch=0)
    specs = [plan.spec(i) for i in range(48)]
    frames = torch.from_numpy(smooth_clips(48, 4, size)).permute(0, 4, 1, 2, 3)
    cpu = batch_augment.augment_batch(frames, batch_augment.prepare(specs, config))
    on_gpu = frames.cuda()
    batch_augment.augment_batch(on_gpu, batch_augment.prepare(specs, config, pin=True))  # warm
    prepared = batch_augment.prepare(specs, config, pin=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = batch_augment.augment_batch(on_gpu, prepared)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    diff = ((got.cpu() - cpu) * STD).abs()
    mean, share = rand_augment.CLIP_TOLERANCE
    assert diff.mean() <= mean and (diff > 2).float().mean() <= share
