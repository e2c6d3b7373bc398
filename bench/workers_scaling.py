"""Do more worker processes give more? The CPU loader and ``prepare`` with 1 and 2 workers.

Usage: .venv/bin/python bench/workers_scaling.py [--rounds 3] [--prepare-clips 60]
    [--json bench/out/workers_scaling.json]

- Loader: train mode with the full reference augmentation over the content of
  ``bench/loader_vs_reference.py`` (its 40 prepared 160² clips, each listed 4 times: 160 rows,
  20 batches of 8 per epoch), clips per wall-second with ``workers=1`` and ``workers=2``
  (DataLoader worker processes, started at each epoch), rounds interleaved; ratio = median of
  the per-round ratios.
- ``maedfer prepare ravdess`` on 720p 64-frame portrait clips (``bench/faces_speed.py``'s
  ``prepare_run``), ``--workers 1`` and ``--workers 2``, frames per second of the driver.

Wall time is the figure here (more workers use more cores); the cores each run kept busy
(CPU-seconds of the process and its children over wall seconds) is printed beside it, and the
machine's load average before each run, because a figure on a busy machine is not the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faces_speed import prepare_run  # noqa: E402
from loader_vs_reference import make_content, run_maedfer, system  # noqa: E402

from maedfer.pipelines import build_loader  # noqa: E402


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (every process:
    forkserver grandchildren included, which rusage misses; others' jobs too: see the load)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cores_busy(run: Callable[[], object]) -> dict:
    """Run ``run()``; the cores the machine kept busy meanwhile, on average."""
    busy0, total0 = _busy_jiffies()
    run()
    busy1, total1 = _busy_jiffies()
    return {"cores_busy": (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)}


def long_manifest(manifest: Path, times: int = 4) -> pd.DataFrame:
    """The manifest's rows ``times`` over (other clip ids, the same files): epochs long enough
    that the workers' start at each epoch (a fork and the first batch) weighs little, as in a
    real dataset's epoch of thousands of clips."""
    rows = pd.read_parquet(manifest)
    folder = manifest.parent
    return pd.concat(
        [
            rows.assign(clip_id=rows.clip_id + f"_{k}", path=[str(folder / p) for p in rows.path])
            for k in range(times)
        ],
        ignore_index=True,
    )


def loader_round(manifest: pd.DataFrame, workers: int, epochs: int = 2) -> dict:
    """Clips per wall-second of ``epochs`` passes (the workers start at each)."""
    loader = build_loader(
        manifest,
        mode="train",
        batch_size=8,
        backend="pyav",
        workers=workers,
        temporal_rule="reference",
    )
    load = os.getloadavg()[0]
    clips: list[int] = []
    wall0 = time.perf_counter()
    busy = cores_busy(lambda: clips.extend(run_maedfer(loader) for _ in range(epochs)))
    wall = time.perf_counter() - wall0
    return {
        "workers": workers,
        "clips": sum(clips),
        "wall_s": wall,
        "clips_per_s": sum(clips) / wall,
        **busy,
        "load_before": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--prepare-clips",
        type=int,
        default=60,
        help="at most 60 (one RAVDESS actor's speech clips)",
    )
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "out" / "ref-clips")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    content = make_content(args.cache, 40)
    manifest = long_manifest(content["finetune"])
    loader_runs: dict[int, list[dict]] = {1: [], 2: []}
    ratios = []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        got = {w: loader_round(manifest, w) for w in order}
        for w in order:
            loader_runs[w].append(got[w])
        ratios.append(got[2]["clips_per_s"] / got[1]["clips_per_s"])
        print(
            f"loader round {r + 1}: 1 worker {got[1]['clips_per_s']:.1f} clips/s, "
            f"2 workers {got[2]['clips_per_s']:.1f} ({ratios[-1]:.2f}x)",
            file=sys.stderr,
        )
    results = {
        "system": system([run["load_before"] for runs in loader_runs.values() for run in runs]),
        "loader": {
            "runs": loader_runs,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        },
    }
    print("| run | 1 worker | 2 workers | ratio |")
    print("|---|---|---|---|")
    one = statistics.median(run["clips_per_s"] for run in loader_runs[1])
    two = statistics.median(run["clips_per_s"] for run in loader_runs[2])
    cores = {w: statistics.median(run["cores_busy"] for run in loader_runs[w]) for w in (1, 2)}
    print(
        f"| loader, train mode (clips/s) | {one:.1f} ({cores[1]:.2f} cores) | {two:.1f} "
        f"({cores[2]:.2f} cores) | "
        f"**{statistics.median(ratios):.2f}×** [{min(ratios):.2f}, {max(ratios):.2f}] |"
    )
    if not args.skip_prepare:
        with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
            runs = {}
            for workers in (1, 2):
                load = os.getloadavg()[0]
                runs[workers] = prepare_run(
                    workers, args.prepare_clips, Path(tmp), "cpu", measure=cores_busy
                )
                runs[workers]["load_before"] = load
        ratio = runs[2]["driver_frames_per_s"] / runs[1]["driver_frames_per_s"]
        results["prepare"] = {"runs": runs, "ratio": ratio}
        print(
            f"| prepare ravdess 720p (frames/s, driver) | "
            f"{runs[1]['driver_frames_per_s']:.1f} ({runs[1]['cores_busy']:.2f} cores) | "
            f"{runs[2]['driver_frames_per_s']:.1f} ({runs[2]['cores_busy']:.2f} cores) | "
            f"**{ratio:.2f}×** |"
        )
    print(json.dumps(results["system"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
