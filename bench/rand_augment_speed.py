"""RandAugment numpy executor speed: the frame-by-frame PIL/warpAffine executor it replaced vs the
fast one on whole frames vs the fast one computing only a random-resized-crop box.

Clips are 16×160×160 pans over the committed portraits (``bench/_common.portrait_frames``);
the ops are real draws of ``policy_for(RAND_AUGMENT, 160)``, one seed per clip, and each clip
gets a random-resized-crop box as the loader draws it. CPU time (``time.process_time``) with one
OpenCV thread, so other jobs on the machine slow the figures little; the three executors run
interleaved (their order shuffled per clip) and each round gives a ratio, reported as the median
over rounds. Every output is checked against the old executor's in the first round, so a faster
executor is not faster at giving other bytes.

    .venv/bin/python bench/rand_augment_speed.py [--seeds 300] [--rounds 3]

Prints Markdown tables (per clip, per op kind) and writes bench/out/rand_augment_speed-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import PORTRAITS, portrait_frames, system  # noqa: E402

from maedfer.pipelines import augment  # noqa: E402
from maedfer.pipelines.rand_augment import (  # noqa: E402
    RAND_AUGMENT,
    apply_numpy,
    policy_for,
    source_region,
)
from tests.pipelines.test_rand_augment import _reference_apply_numpy  # noqa: E402

SIZE, FRAMES = 160, 16
VARIANTS = ("old", "new", "new_region")


def runners(clip: np.ndarray, ops: tuple, box: augment.Box, policy) -> dict[str, Callable]:  # noqa: ANN001
    def region() -> np.ndarray:  # the region's cut is part of the work the loader would do
        s = source_region(ops, box, SIZE)
        return apply_numpy(
            clip[:, s.y : s.y + s.h, s.x : s.x + s.w], ops, policy, keep=box, source=s
        )

    return {
        "old": lambda: _reference_apply_numpy(clip, ops, policy),
        "new": lambda: apply_numpy(clip, ops, policy),
        "new_region": region,
    }


def timed(run: Callable) -> tuple[float, np.ndarray]:
    start = time.process_time()
    out = run()
    return time.process_time() - start, out


def one_round(
    clips: list[np.ndarray],
    draws: list[tuple],
    boxes: list[augment.Box],
    policy,  # noqa: ANN001
    rng: np.random.Generator,
    check: bool,
) -> tuple[dict, dict]:
    """Seconds per variant over all clips; mean seconds per (op kind, variant) of an op."""
    totals: dict[str, float] = defaultdict(float)
    kinds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for k, (ops, box) in enumerate(zip(draws, boxes, strict=True)):
        clip = clips[k % len(clips)]
        cases = [(None, ops)] + [(op.kind, (op,)) for op in ops]
        for kind, chain in cases:
            run = runners(clip, chain, box, policy)
            outs = {}
            for name in rng.permutation(VARIANTS):
                seconds, outs[name] = timed(run[name])
                if kind is None:
                    totals[name] += seconds
                else:
                    kinds[(kind, name)].append(seconds)
            if check:
                cut = outs["old"][:, box.y : box.y + box.h, box.x : box.x + box.w]
                assert np.array_equal(outs["new"], outs["old"]), chain
                assert np.array_equal(outs["new_region"], cut), (chain, box)
    return totals, {key: sum(v) / len(v) for key, v in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    policy = policy_for(RAND_AUGMENT, SIZE)
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    clips = [portrait_frames(image, FRAMES, SIZE) for image in images]
    rng = np.random.default_rng(0)
    draws = [policy.draw(seed) for seed in range(args.seeds)]
    boxes = [augment.random_resized_crop_box(SIZE, SIZE, generator=rng) for _ in draws]
    rounds = [one_round(clips, draws, boxes, policy, rng, check=r == 0) for r in range(args.rounds)]

    per_clip = {
        name: statistics.median(t[name] for t, _ in rounds) / len(draws) * 1e3 for name in VARIANTS
    }
    ratio = {
        name: statistics.median(t["old"] / t[name] for t, _ in rounds) for name in VARIANTS[1:]
    }
    kinds = sorted({kind for _, k in rounds for kind, _ in k})
    per_kind = {}
    for kind in kinds:
        ms = {
            name: statistics.median(k[(kind, name)] for _, k in rounds) * 1e3 for name in VARIANTS
        }
        ratios = {
            name: statistics.median(k[(kind, "old")] / k[(kind, name)] for _, k in rounds)
            for name in VARIANTS[1:]
        }
        count = sum(op.kind == kind for ops in draws for op in ops)
        per_kind[kind] = {"count": count, "ms": ms, "ratio": ratios}

    mean_area = float(np.mean([b.w * b.h for b in boxes])) / SIZE**2
    print(
        f"{len(draws)} clips of {FRAMES}×{SIZE}×{SIZE}, {args.rounds} rounds, "
        f"mean crop area {mean_area:.0%}; CPU ms, median over rounds; outputs checked equal\n"
    )
    print("| | old | new (whole) | new (region) |\n|---|---|---|---|")
    print(
        f"| ms / clip | {per_clip['old']:.2f} | {per_clip['new']:.2f} | "
        f"{per_clip['new_region']:.2f} |"
    )
    print(f"| speed-up | 1× | {ratio['new']:.1f}× | {ratio['new_region']:.1f}× |\n")
    print("| op kind | ops | old ms | new ms (whole) | new ms (region) | × whole | × region |")
    print("|---|---|---|---|---|---|---|")
    for kind, row in per_kind.items():
        ms, r = row["ms"], row["ratio"]
        print(
            f"| {kind} | {row['count']} | {ms['old']:.2f} | {ms['new']:.2f} | "
            f"{ms['new_region']:.2f} | {r['new']:.1f}× | {r['new_region']:.1f}× |"
        )
    out = REPO / "bench" / "out" / "rand_augment_speed-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "system": system(),
                "seeds": len(draws),
                "rounds": args.rounds,
                "mean_crop_area": mean_area,
                "ms_per_clip": per_clip,
                "ratio": ratio,
                "per_kind": per_kind,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
