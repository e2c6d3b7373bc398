"""Clip loading speed: PyAV clips/s on one core, and DALI beside PyAV on the same clips.

Clips are made like prepared ones (``maedfer.preprocess.encode.write_clip``: 160×160, H.264 CRF
18 and VP9, keyframe every 16 frames) from the committed portraits, panned and zoomed so every
frame differs. Each case is one loader, timed over whole epochs after a warm-up epoch; figures
are median [p25, p75] over ``--repeats`` epochs. "Per core" cases decode in the main process
(``workers=0``, one torch thread), so clips per CPU-second is the per-core rate even when other
jobs share the machine; wall-clock clips/s is reported too. Before timing, DALI's output is
checked against PyAV's on the same samples (max difference in 0..255 units), so a faster
backend is not faster at giving other pixels.

    .venv/bin/python bench/data_speed.py [--clips 24] [--frames 80] [--repeats 5]
    .venv/bin/python bench/data_speed.py --gpu   # on a CUDA machine: DALI (NVDEC) cases too

Writes bench/out/data_speed-<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import PORTRAITS, portrait_frames, quartiles, system  # noqa: E402,F401

from maedfer.pipelines import build_loader  # noqa: E402
from maedfer.pipelines.augment import IMAGENET_STD  # noqa: E402
from maedfer.pipelines.loader import dali_available  # noqa: E402
from maedfer.pipelines.profile import _cpu_seconds as cpu_seconds  # noqa: E402
from maedfer.preprocess.encode import write_clip  # noqa: E402


def make_clips(folder: Path, *, clips: int, frames: int) -> dict[str, Path]:
    """H.264 and VP9 manifests of ``clips`` clips (cached in ``folder``)."""
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    manifests = {}
    for codec, ext in (("h264", "mp4"), ("vp9", "webm")):
        rows = []
        for i in range(clips):
            rel = f"{codec}/clip{i:03d}.{ext}"
            if not (folder / rel).exists():
                write_clip(
                    portrait_frames(images[i % len(images)], frames + i % 7),
                    folder / rel,
                    fps=25,
                    codec=codec,
                )
            rows.append(
                {
                    "clip_id": f"c{i}",
                    "path": rel,
                    "label": i % 7,
                    "num_frames": frames + i % 7,
                    "fold": i % 2 + 1,
                }
            )
        manifests[codec] = folder / f"manifest-{codec}.parquet"
        pd.DataFrame(rows).to_parquet(manifests[codec])
    return manifests


def time_case(repeats: int, **kw) -> dict:
    """Clips/s (wall) and clips per CPU-second (this process and its finished workers) of one
    loader over whole epochs."""
    loader = build_loader(**kw)
    for _ in loader:  # warm-up epoch: imports, worker start, caches
        pass
    rates, per_cpu = [], []
    for _ in range(repeats):
        wall, cpu, clips = time.perf_counter(), cpu_seconds(), 0
        for batch in loader:
            clips += batch["video"].shape[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        rates.append(clips / wall)
        per_cpu.append(clips / cpu)
    return {
        "clips_per_s": quartiles(rates),
        "clips_per_cpu_s": quartiles(per_cpu),
        "clips_per_epoch": clips,
    }


def max_difference(manifest: Path, *, dali_device: str, mode: str) -> float:
    """Largest |DALI − PyAV| over one batch, in 0..255 units (outputs must agree first)."""
    videos = []
    for backend in ("pyav", "dali"):
        loader = build_loader(
            manifest,
            mode=mode,
            batch_size=4,
            backend=backend,
            workers=0 if backend == "pyav" else 2,
            rand_augment=False,
            device=dali_device if backend == "dali" else None,
        )
        videos.append(next(iter(loader))["video"].cpu())
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255
    return float(((videos[0] - videos[1]) * std).abs().max())


def cases(manifests: dict[str, Path], gpu: bool) -> list[tuple[str, dict]]:
    one_core = {"backend": "pyav", "workers": 0, "batch_size": 8}
    rows = [
        (
            "pyav 1 core, test (2 views, no augmentation), H.264",
            {**one_core, "manifest": manifests["h264"], "mode": "test"},
        ),
        (
            "pyav 1 core, train (RRC, flip, erasing), H.264",
            {**one_core, "manifest": manifests["h264"], "mode": "train", "rand_augment": False},
        ),
        (
            "pyav 1 core, train + RandAugment, H.264",
            {**one_core, "manifest": manifests["h264"], "mode": "train"},
        ),
        (
            "pyav 1 core, pretrain (multi-scale crop), H.264",
            {**one_core, "manifest": manifests["h264"], "mode": "pretrain"},
        ),
        ("pyav 1 core, test, VP9", {**one_core, "manifest": manifests["vp9"], "mode": "test"}),
        (
            f"pyav {os.cpu_count()} workers, train + RandAugment, H.264",
            {
                "backend": "pyav",
                "workers": os.cpu_count(),
                "batch_size": 8,
                "manifest": manifests["h264"],
                "mode": "train",
            },
        ),
    ]
    if dali_available():
        rows.append(
            (
                "dali CPU 1 thread, test, VP9",
                {
                    "backend": "dali",
                    "device": "cpu",
                    "workers": 1,
                    "batch_size": 8,
                    "manifest": manifests["vp9"],
                    "mode": "test",
                },
            )
        )
    if gpu:
        for mode in ("test", "train"):
            rows.append(
                (
                    f"dali GPU (NVDEC), {mode}, H.264",
                    {
                        "backend": "dali",
                        "device": "cuda",
                        "workers": 4,
                        "batch_size": 32,
                        "manifest": manifests["h264"],
                        "mode": mode,
                    },
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="add the DALI GPU cases")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "out" / "data-clips")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures: one thread in the decoding process
    gpu = args.gpu and torch.cuda.is_available() and dali_available()
    manifests = make_clips(args.cache, clips=args.clips, frames=args.frames)
    results = {
        "system": system(),
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "repeats": args.repeats,
        "agreement_max_abs_255": {},
        "cases": {},
    }
    if dali_available():
        results["agreement_max_abs_255"]["dali_cpu_vs_pyav_vp9_test"] = max_difference(
            manifests["vp9"], dali_device="cpu", mode="test"
        )
    if gpu:
        for mode in ("test", "train"):
            results["agreement_max_abs_255"][f"dali_gpu_vs_pyav_h264_{mode}"] = max_difference(
                manifests["h264"], dali_device="cuda", mode=mode
            )
    for name, kw in cases(manifests, gpu):
        print(f"timing: {name}", file=sys.stderr)
        results["cases"][name] = time_case(args.repeats, **kw)
    device = "cuda" if gpu else "cpu"
    out = REPO / "bench" / "out" / f"data_speed-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten {out}", file=sys.stderr)


def table(results: dict) -> str:
    def fmt(q: dict) -> str:
        return f"{q['median']:.1f} [{q['p25']:.1f}, {q['p75']:.1f}]"

    lines = ["| case | clips/s (wall) | clips per CPU-second |", "|---|---|---|"]
    for name, row in results["cases"].items():
        lines.append(f"| {name} | {fmt(row['clips_per_s'])} | {fmt(row['clips_per_cpu_s'])} |")
    for name, value in results["agreement_max_abs_255"].items():
        lines.append(f"\nagreement {name}: max |Δ| = {value:.2f}/255")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
