"""Every GPU measurement of the toolkit in one process, bounded in time: run it on a GPU machine.

    .venv/bin/python bench/gpu_check.py              # CUDA + the gpu extra: all figures, ≤ 6 min
    .venv/bin/python bench/gpu_check.py --dry-run    # anywhere: list them, check the plumbing

Measurements, in order (each one reuses a bench script's code: data_speed, first_batch,
train_speed, the faces profile):

1. equality: DALI on the GPU vs PyAV on the same H.264 clips and plan — test mode (max
   difference ≤ 2/255) and train mode with RandAugment (the stated tolerance of
   ``maedfer.pipelines.rand_augment.CLIP_TOLERANCE``: mean ≤ 0.25/255, ≤ 0.5 % beyond 2/255);
2. DALI clips/s, train and test, batch 32, on 160×160 prepared H.264 clips and on 224×224
   VoxCeleb2-like originals (25 fps, 6-10 s, a keyframe every 250 frames) read in place with the
   manifest crop; PyAV on all cores on the same clips; the ratio DALI / PyAV;
3. time to first batch on a 1,000,000-row manifest (DALI, fresh process);
4. the training step of ``lgi_former_base`` (fine-tune) and ``mae_lgi_former_base`` (pre-train)
   at batch 32: ours (bf16, SDPA) vs the reference-style path (manual attention, fp16 + scaler),
   eager and ``torch.compile``, clips/s and peak memory;
5. the fine-tuning step fed by the DALI loader end to end, beside the synthetic-input step: is
   the data ever the bottleneck?
6. ``prepare`` face alignment on CUDA, frames/s at 720p.

Targets (issue 13): DALI ≥ 400 clips/s on prepared clips; step ≥ 1.5× the reference-style path;
data never the bottleneck of the base model's step; alignment ≥ 500 frames/s. A measurement
that would pass the time bound, or lacks what it needs (CUDA, DALI), is reported with the reason.

Writes ``bench/results/gpu_check-<device>.json`` and the "GPU check" section of
bench/RESULTS.md (device, date, commit). ``--dry-run`` lists the measurements and runs the
cheap CPU parts (DALI's CPU pipeline on VP9 instead of NVDEC on H.264, a tiny model) in seconds,
writing the JSON only under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import data_speed  # noqa: E402
import first_batch  # noqa: E402
import train_speed  # noqa: E402

from maedfer.pipelines import build_loader  # noqa: E402
from maedfer.pipelines.augment import IMAGENET_STD  # noqa: E402
from maedfer.pipelines.loader import dali_available  # noqa: E402
from maedfer.pipelines.rand_augment import CLIP_TOLERANCE  # noqa: E402

BUDGET_S = 360  # the whole run, on one H100/H200
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255
MEASUREMENTS: list[tuple[str, str]] = [
    ("equality", "DALI GPU vs PyAV, same H.264 clips and plan: test (max) and train + "
                 "RandAugment (mean, share > 2/255)"),
    ("dali_throughput", "DALI clips/s train/test batch 32: 160x160 prepared H.264 and 224x224 "
                        "VoxCeleb2-like originals read in place with the crop; PyAV on all "
                        "cores; ratio"),
    ("first_batch", "time to first batch on a 1,000,000-row manifest (DALI)"),
    ("train_step", "bf16 step of lgi_former_base and mae_lgi_former_base at batch 32 vs "
                   "reference-style (manual attention, fp16 + scaler), eager and torch.compile, "
                   "clips/s, peak memory"),
    ("dali_fed_step", "the fine-tuning step fed by the DALI loader end to end vs synthetic "
                      "input (data bottleneck?)"),
    ("faces", "prepare face alignment on CUDA, frames/s at 720p"),
]


class Clock:
    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def compare_backends(manifest: Path, *, device: str, mode: str, size: int, root: Path | None,
                     batch: int = 4, batches: int = 2, **kw) -> dict:
    """DALI vs PyAV on the same plan: max, mean and share beyond 2/255 (0..255 units)."""
    videos = []
    for backend in ("pyav", "dali"):
        loader = build_loader(manifest, mode=mode, batch_size=batch, size=size, seed=3,
                              backend=backend, workers=0 if backend == "pyav" else 2,
                              device=device if backend == "dali" else None, root=root, **kw)
        videos.append(torch.cat([b["video"].cpu() for b in itertools.islice(loader, batches)]))
    diff = ((videos[0] - videos[1]) * STD).abs()
    return {"max": float(diff.max()), "mean": float(diff.mean()),
            "share_beyond_2": float((diff > 2).float().mean())}


def voxceleb_like(folder: Path, clips: int, seconds: tuple[int, int] = (6, 10)) -> Path:
    """224x224 H.264 originals (25 fps, 6-10 s, keyframe every 250 frames) and a manifest that
    reads them in place with a 160x160 face crop."""
    from tests.pipelines.media import write_clip

    images = sorted(p for p in data_speed.PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    rows = []
    for i in range(clips):
        frames = 25 * (seconds[0] + i % (seconds[1] - seconds[0] + 1))
        rel = f"vox/clip{i:03d}.mp4"
        if not (folder / rel).exists():
            write_clip(folder / rel, data_speed.portrait_frames(images[i % len(images)], frames,
                                                                size=224),
                       codec="h264", fps=25, gop=250)
        rows.append({"clip_id": f"v{i}", "path": rel, "label": i % 7, "num_frames": frames,
                     "fold": i % 2 + 1, "crop": [32, 24, 160, 160]})
    path = folder / "manifest-vox.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def rate(loader, batches: int) -> float:
    """Clips/s over ``batches`` batches after one warm-up batch."""
    it = iter(loader)
    next(it)
    start, clips = time.perf_counter(), 0
    for _ in range(batches):
        try:
            clips += next(it)["video"].shape[0]
        except StopIteration:
            break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start)


def step_rate(step: Callable[[], float], device: torch.device, warmup: int, repeats: int,
              batch: int) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = train_speed.time_steps(step, device, warmup=warmup, repeats=repeats)
    median = float(np.median(times))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"clips_per_s": batch / median, "step_s": median, "peak_mem_gib": peak}


def train_steps(names: dict[str, tuple[str, dict]], device: torch.device, batch: int,
                repeats: int, compile_: bool, clock: Clock) -> dict:
    from maedfer.train.profile import build_step, reference_attention

    half = device.type == "cuda"
    out = {}
    for recipe, (name, overrides) in names.items():
        rows = {}
        for label, precision, reference in (("ours", "bf16" if half else "fp32", False),
                                            ("reference", "fp16" if half else "fp32", True)):
            for mode in ("eager", "compile") if compile_ else ("eager",):
                if clock.left() < 20:
                    rows[f"{label}_{mode}"] = {"missing": "time bound reached"}
                    continue
                step, model, _ = build_step(name, batch=batch, device=device,
                                            precision=precision, overrides=overrides,
                                            reference_style=reference)
                if mode == "compile":
                    model.compile()
                ctx = reference_attention() if reference else contextlib.nullcontext()
                with ctx:
                    rows[f"{label}_{mode}"] = {"precision": precision, **step_rate(
                        step, device, warmup=3 if mode == "compile" else 1, repeats=repeats,
                        batch=batch)}
                del step, model
                if half:
                    torch.cuda.empty_cache()
        for mode in ("eager", "compile"):
            ours, ref = rows.get(f"ours_{mode}", {}), rows.get(f"reference_{mode}", {})
            if "clips_per_s" in ours and "clips_per_s" in ref:
                rows[f"speedup_{mode}"] = ours["clips_per_s"] / ref["clips_per_s"]
        out[recipe] = {"model": name, **rows}
    return out


def fed_step(manifest: Path, name: str, overrides: dict, device: torch.device, batch: int,
             batches: int, backend: str, dali_device: str | None) -> dict:  # noqa: PLR0913
    """The fine-tuning step on loader batches (mixup, bf16 forward, loss, backward, AdamW)."""
    from timm.loss import SoftTargetCrossEntropy

    from maedfer.model import create_model
    from maedfer.pipelines import make_mixup
    from maedfer.train.optim import create_optimizer
    from maedfer.train.precision import autocast

    overrides = {"num_classes": 7, **overrides}
    model = create_model(name, skip_unused_tail=True, **overrides).to(device).train()
    cfg = model.config
    optimizer = create_optimizer(model, lr=1e-4, betas=(0.9, 0.999), layer_decay=0.75)
    mixup, criterion = make_mixup(cfg["num_classes"]), SoftTargetCrossEntropy()
    precision = "bf16" if device.type == "cuda" else "fp32"
    loader = build_loader(manifest, mode="train", batch_size=batch, size=cfg["img_size"],
                          num_frames=cfg["num_frames"], backend=backend, device=dali_device,
                          workers=None if device.type == "cuda" else 1)
    done, start, wait = 0, None, 0.0
    it = iter(loader)
    while done < batches + 1:
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        wait += time.perf_counter() - t0 if start is not None else 0.0
        video, label = b["video"].to(device), b["label"].to(device)
        mixed, target = mixup(video, label)
        with autocast(device, precision):
            loss = criterion(model(mixed).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if start is None:
            start = time.perf_counter()  # the first step warms up
        done += 1
    seconds = time.perf_counter() - start
    return {"clips_per_s": batches * batch / seconds, "share_waiting_for_data": wait / seconds}


def run(args: argparse.Namespace) -> dict:
    gpu = torch.cuda.is_available() and not args.dry_run
    clock = Clock(args.budget)
    results: dict = {"system": data_speed.system(), "dry_run": args.dry_run,
                     "budget_s": args.budget, "measurements": {}}
    work = Path(args.cache)
    work.mkdir(parents=True, exist_ok=True)
    dali = dali_available()
    device = torch.device("cuda" if gpu else "cpu")

    def measure(key: str, fn: Callable[[], dict], needs_dali: bool = False) -> None:
        if needs_dali and not dali:
            results["measurements"][key] = {"missing": "NVIDIA DALI is not installed"}
        elif clock.left() < 10:
            results["measurements"][key] = {"missing": "time bound reached"}
        else:
            started = time.perf_counter()
            try:
                value = fn()
            except Exception as exc:  # noqa: BLE001 (report, go on to the next figure)
                traceback.print_exc()
                value = {"missing": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
            value["seconds"] = round(time.perf_counter() - started, 1)
            results["measurements"][key] = value
        print(f"gpu_check: {key}: {json.dumps(results['measurements'][key])}", flush=True)

    tiny = {"finetune": ("lgi_former_tiny", train_speed.TINY),
            "pretrain": ("mae_lgi_former_tiny", train_speed.TINY_MAE)}
    base = {"finetune": ("lgi_former_base", {}), "pretrain": ("mae_lgi_former_base", {})}

    if not gpu:  # the plumbing, on the CPU: DALI's CPU pipeline on VP9, tiny models
        from tests.pipelines.media import make_manifest

        folder = work / "dry"
        if not (folder / "manifest.parquet").exists():
            make_manifest(folder, [40, 48, 56, 44], codec="vp9", size=64).to_parquet(
                folder / "manifest.parquet")
        manifest = folder / "manifest.parquet"
        measure("equality", lambda: {
            "device": "DALI CPU, VP9 (the GPU run: NVDEC, H.264)",
            "test": compare_backends(manifest, device="cpu", mode="test", size=32, root=None),
            "train_rand_augment": compare_backends(manifest, device="cpu", mode="train",
                                                   size=32, root=None, rand_augment=True),
        }, needs_dali=True)
        measure("dali_throughput", lambda: {"dali_cpu_test_clips_per_s": rate(build_loader(
            manifest, mode="test", batch_size=4, size=32, backend="dali", device="cpu",
            workers=1), 1)}, needs_dali=True)
        measure("train_step", lambda: train_steps({"finetune": tiny["finetune"]}, device, 2,
                                                  1, False, clock))
        measure("dali_fed_step", lambda: {"dali_cpu": fed_step(
            manifest, *tiny["finetune"], device, 2, 2, "dali", "cpu")}, needs_dali=True)
        for key in ("first_batch", "faces"):
            results["measurements"][key] = {"missing": "GPU only (dry run)"}
        return results

    manifests = data_speed.make_clips(work / "prepared", clips=64, frames=80)
    vox = voxceleb_like(work, clips=32)

    def equality() -> dict:
        return {
            "test": compare_backends(manifests["h264"], device="cuda", mode="test", size=160,
                                     root=None, batch=8),
            "train_rand_augment": compare_backends(manifests["h264"], device="cuda",
                                                   mode="train", size=160, root=None, batch=8),
            "tolerance": {"test_max": 2.0, "train_mean": CLIP_TOLERANCE[0],
                          "train_share_beyond_2": CLIP_TOLERANCE[1]},
        }

    def throughput() -> dict:
        out = {}
        cores = os.cpu_count() or 1
        for label, manifest in (("prepared_160_h264", manifests["h264"]),
                                ("voxceleb_224_in_place", vox)):
            for mode in ("train", "test"):
                common = {"mode": mode, "batch_size": 32, "size": 160}
                dali_rate = rate(build_loader(manifest, backend="dali", device="cuda",
                                              **common), 6)
                pyav_rate = rate(build_loader(manifest, backend="pyav", workers=cores,
                                              **common), 3)
                out[f"{label}_{mode}"] = {"dali_clips_per_s": dali_rate,
                                          "pyav_all_cores_clips_per_s": pyav_rate,
                                          "ratio": dali_rate / pyav_rate, "pyav_workers": cores}
        return out

    def first() -> dict:
        made = first_batch.make_manifest(work / "first-batch", 1_000_000)
        return first_batch.run_case({"manifest": str(made["h264"]), "mode": "train",
                                     "fold": 1, "batch_size": 32, "backend": "dali",
                                     "device": "cuda"}, repeats=1)

    def faces() -> dict:
        from maedfer.preprocess import profile as faces_profile

        return faces_profile.measure(device=device, batch=32, repeats=3,
                                     inputs={"720p": (1280, 720)})

    measure("equality", equality, needs_dali=True)
    measure("dali_throughput", throughput, needs_dali=True)
    measure("first_batch", first, needs_dali=True)
    measure("train_step", lambda: train_steps(base, device, 32, 8, True, clock))
    measure("dali_fed_step", lambda: {
        "dali": fed_step(manifests["h264"], "lgi_former_base", {}, device, 32, 12, "dali",
                         "cuda"),
        "synthetic_ours_eager_clips_per_s": results["measurements"].get("train_step", {})
        .get("finetune", {}).get("ours_eager", {}).get("clips_per_s"),
    }, needs_dali=True)
    measure("faces", faces)
    return results


def markdown(results: dict) -> str:
    s, m = results["system"], results["measurements"]
    lines = ["## GPU check (`bench/gpu_check.py`)", "",
             f"Device {s.get('gpu')}, {s.get('cpu_count')} cores; date {s.get('date')}; commit "
             f"{s.get('commit')}; torch {s.get('torch')}, DALI {s.get('dali', 'absent')}."
             + (" Dry run (CPU plumbing only)." if results["dry_run"] else ""), "",
             "| measurement | figures |", "|---|---|"]
    for key, _what in MEASUREMENTS:
        lines.append(f"| {key} | `{json.dumps(m.get(key, {'missing': 'not run'}))[:600]}` |")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace (or append) the "## GPU check" section of bench/RESULTS.md."""
    path = REPO / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    out, skipping = [], False
    for line in old.splitlines(keepends=True):
        if line.startswith("## "):
            skipping = line.startswith("## GPU check")
            if skipping and text:
                out.append(text + "\n")
                text = ""
        if not skipping:
            out.append(line)
    if text:
        out.append(("\n" if out and out[-1].strip() else "") + text)
    path.write_text("".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="list the measurements, run the cheap CPU parts")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds in all")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--cache", type=Path, default=None, help="clip folder (default: temp)")
    args = parser.parse_args()
    print("gpu_check measures:")
    for key, what in MEASUREMENTS:
        print(f"  {key}: {what}")
    with tempfile.TemporaryDirectory(prefix="maedfer-gpu-check-") as tmp:
        args.cache = args.cache or Path(tmp)
        results = run(args)
    device = "dry-run" if args.dry_run else ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_check-{device}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    if not args.dry_run:
        write_section(text)
    print(text)
    print(f"gpu_check: wrote {path}")


if __name__ == "__main__":
    main()
