"""The batched torch augmentation vs the per-sample loop it replaced, on CPU tensors.

One batch of 32 clips of 16 frames at 160×160 (pans over the committed portraits), the
specs of a real train-mode plan (the default recipe: RandAugment, random resized crop, flip,
random erasing; and the same without RandAugment). Both executors start from the frames DALI
would hand over (uint8 ``(B, T, S, S, 3)`` with RandAugment) and end at the normalised batch:

- ``per_sample``: the loop of ``DaliEpoch._augment`` + ``_finish`` as of ca3d647 (kept here as
  the baseline): per sample ``apply_torch``, ``resize_frames``, flip, ``torch.stack``, then
  ``normalise`` and ``finish_clip`` per sample;
- ``batched``: ``batch_augment.prepare`` (the producer's host work, timed apart) +
  ``augment_batch``.

CPU time (``time.process_time``) of one torch thread, the two interleaved over rounds (order
shuffled per round); the batched output is checked against the baseline's in the first round.

    .venv/bin/python bench/batch_augment_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import PORTRAITS, portrait_frames, system  # noqa: E402

from maedfer.pipelines import augment, batch_augment  # noqa: E402
from maedfer.pipelines.options import TrainDataOptions  # noqa: E402
from maedfer.pipelines.plan import EpochPlan, SampleConfig  # noqa: E402
from maedfer.pipelines.rand_augment import apply_torch, policy_for  # noqa: E402
from maedfer.pipelines.select import ClipTable  # noqa: E402

BATCH, FRAMES, SIZE = 32, 16, 160


def per_sample(frames: torch.Tensor, specs: list, config: SampleConfig) -> torch.Tensor:
    """The loop the batched executors replaced (DaliEpoch._augment/_finish at ca3d647)."""
    fill = policy_for(config.rand_augment_policy, config.size).fill
    clips = []
    for video, spec in zip(frames, specs, strict=True):
        x = video.permute(0, 3, 1, 2).float()
        if spec.rand_augment:
            x = apply_torch(x, spec.rand_augment, fill)
        x = augment.resize_frames(x, spec.box, config.size)
        clips.append((x.flip(-1) if spec.flip else x).transpose(0, 1))
    video = augment.normalise(torch.stack(clips), channel_dim=-4, inplace=True)
    return torch.stack(
        [
            augment.finish_clip(
                v,
                subtract_mean=config.subtract_mean,
                erase=s.erase,
                erase_seed=s.erase_seed,
                negate=s.negate,
            )
            for v, s in zip(video, specs, strict=True)
        ]
    )


def batch_inputs(rand_augment: str | None) -> tuple[torch.Tensor, list, SampleConfig]:
    config = SampleConfig.from_data(
        TrainDataOptions(rand_augment=rand_augment),
        mode="train",
        num_frames=FRAMES,
        size=SIZE,
        seed=0,
        test_views=2,
    )
    rows = BATCH
    table = ClipTable(
        clip_id=pa.array([f"c{i}" for i in range(rows)]),
        path=pa.array(["x.mp4"] * rows),
        label=np.zeros(rows, np.int64),
        num_frames=np.full(rows, 80, np.int64),
        crop=np.full((rows, 4), -1, np.int64),
        root=Path("/"),
    )
    plan = EpochPlan(table, config, epoch=0)
    specs = [plan.spec(i) for i in range(BATCH)]
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    frames = np.stack(
        [portrait_frames(images[i % len(images)], FRAMES, SIZE) for i in range(BATCH)]
    )
    return torch.from_numpy(frames), specs, config


def cpu_time(run) -> tuple[float, torch.Tensor]:  # noqa: ANN001
    start = time.process_time()
    out = run()
    return time.process_time() - start, out


def measure(rand_augment: str | None, rounds: int, rng: np.random.Generator) -> dict:
    frames, specs, config = batch_inputs(rand_augment)
    seconds: dict[str, list[float]] = {"per_sample": [], "batched": [], "prepare": []}
    checked = {}
    for r in range(rounds):
        for name in rng.permutation(["per_sample", "batched"]):
            if name == "per_sample":
                s, out = cpu_time(lambda: per_sample(frames, specs, config))
            else:
                p, prepared = cpu_time(lambda: batch_augment.prepare(specs, config))
                seconds["prepare"].append(p)
                s, out = cpu_time(
                    lambda p=prepared: batch_augment.augment_batch(frames.permute(0, 4, 1, 2, 3), p)
                )
            seconds[name].append(s)
            if r == 0:
                checked[name] = out
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1, 1) * 255
    diff = ((checked["batched"] - checked["per_sample"]) * std).abs()
    ms = {k: 1000 * statistics.median(v) for k, v in seconds.items()}
    return {
        "rand_augment": rand_augment,
        "ms_per_batch": ms,
        "ratio_per_sample_over_batched": ms["per_sample"] / ms["batched"],
        "max_diff_255": float(diff.max()),
        "mean_diff_255": float(diff.mean()),
        "share_beyond_2_255": float((diff > 2).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    results = {
        "system": system(),
        "batch": BATCH,
        "frames": FRAMES,
        "size": SIZE,
        "torch_threads": 1,
        "cases": [
            measure(policy, args.rounds, rng) for policy in ("rand-m7-n4-mstd0.5-inc1", None)
        ],
    }
    print(json.dumps(results, indent=2))
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "batch_augment_speed-cpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
