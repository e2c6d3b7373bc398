"""The measurements of ``bench/gpu_check.py``, one per subprocess.

    python3 bench/gpu_measures.py NAME CONTEXT.json RESULT.json

Runs one step of the check (``setup`` or a measurement of ``gpu_check.MEASUREMENTS``) and
writes ``{"status": "ok", "figures": {...}}``, ``{"status": "not run", "reason": ...}`` or
``{"status": "failed", "reason": ...}`` to RESULT. The context says the mode (``gpu``,
``quick``, ``dry``), the clip cache, the clips set-up made, what the step needs and the figures
of the steps before it. Nothing optional is imported at module level: a step imports what it
uses, after its needs are checked, so a node without PyAV still runs the steps that need no
PyAV. Figures follow the check's rules: warm-up before timing, CUDA synchronised, medians.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# maedfer from this checkout without an install (PYTHONPATH=<repo> on a cluster node,
# docs/cluster.md); _common is found in this script's own folder, which Python puts first
sys.path.insert(0, str(REPO))

from _common import portrait_frames, portraits, quartiles, system  # noqa: E402


def sig(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits (a CPU's TFLOP/s and a GPU's alike)."""
    return float(f"{x:.{digits}g}")


class NotRun(Exception):
    """A piece the step needs is missing: the step reports ``not run`` with the reason."""


Context = dict[str, Any]


def dry(ctx: Context) -> bool:
    return ctx["mode"] == "dry"


def device(ctx: Context):  # noqa: ANN201 (torch imported late)
    import torch

    return torch.device("cpu" if dry(ctx) else "cuda")


def dali_device(ctx: Context) -> str:
    return "cpu" if dry(ctx) else "cuda"


def synchronize(ctx: Context) -> None:
    if not dry(ctx):
        import torch

        torch.cuda.synchronize()


# --- needs ----------------------------------------------------------------------------------------


def importable(module: str, what: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 (any import failure means: not here)
        raise NotRun(f"{what} is not importable ({type(exc).__name__}: {exc})") from None


def save_partial(ctx: Context, figures: dict) -> None:
    """Writes the figures measured so far: a timeout or a crash after this keeps them."""
    write_result(Path(ctx["result_path"]), {"status": "partial", "figures": figures})


def write_result(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, default=str))
    os.replace(tmp, path)


def check_needs(ctx: Context) -> None:
    for need in ctx.get("needs", []):
        if need == "cuda" and not dry(ctx):
            import torch

            if not torch.cuda.is_available():
                raise NotRun("no CUDA device (torch.cuda.is_available() is False)")
        elif need == "dali":
            importable("nvidia.dali", "NVIDIA DALI")
        elif need == "nvdec" and not dry(ctx):
            from maedfer.pipelines import nvdec

            if nvdec.library() is None:
                raise NotRun(nvdec.MISSING)
        elif need == "av":
            importable("av", "PyAV")
        elif need == "faces":
            importable("facenet_pytorch", "facenet-pytorch")
        elif need == "clips" and not ctx.get("clips"):
            raise NotRun(f"no clips: {ctx.get('clips_missing', 'set-up did not run')}")


# --- set-up: the clips, made before the clock starts ----------------------------------------------


def clip_plan(ctx: Context) -> dict[str, Any]:
    """What set-up makes: prepared-encoding clips (H.264; VP9 for the dry run, which DALI decodes
    on the CPU) and marker clips, at 160^2 (64^2 dry)."""
    small = dry(ctx)
    return {
        "codec": "vp9" if small else "h264",
        "size": 64 if small else 160,
        "prepared": [40 + i % 7 if small else 80 + i % 7 for i in range(8 if small else 64)],
        # shorter and longer than the 64-frame span: windows past the end are padded
        "markers": [24, 40, 56] if small else [40, 56, 80, 97],
        "rows": 96 if small else 4096,  # the loaders' manifests reuse the clips
        "faces": (320, 180, 16) if small else (1280, 720, 64),
        "million": 10_000 if small else 1_000_000,
    }


def _encode(job: tuple[str, str, int, int, str]) -> str:
    kind, path, frames, size, codec = job
    from maedfer.preprocess.encode import write_clip

    if kind == "markers":
        from tests.pipelines.media import marker_frames

        pixels = marker_frames(frames, size)
    else:
        image = portraits()[int(Path(path).stem[4:]) % len(portraits())]
        pixels = portrait_frames(image, frames, size=size)
    write_clip(pixels, path, fps=25, codec=codec)
    return path


def setup(ctx: Context) -> dict:
    import numpy as np
    import pandas as pd

    plan, cache = clip_plan(ctx), Path(ctx["cache"])
    ext = ".webm" if plan["codec"] == "vp9" else ".mp4"
    jobs, rows = [], {"prepared": [], "markers": []}
    for kind in ("prepared", "markers"):
        for i, frames in enumerate(plan[kind]):
            rel = f"{kind}-{plan['codec']}-{plan['size']}/clip{i:03d}{ext}"
            rows[kind].append(
                {
                    "clip_id": f"{kind[0]}{i}",
                    "path": rel,
                    "label": i % 7,
                    "num_frames": frames,
                    "fold": i % 2 + 1,
                    "split": "train",
                }
            )
            if not (cache / rel).exists():
                jobs.append((kind, str(cache / rel), frames, plan["size"], plan["codec"]))
    width, height, count = plan["faces"]
    faces = cache / f"faces-{width}x{height}-{count}.mp4"
    if jobs or not faces.exists():
        importable("av", "PyAV (needed to make the clips; none are in --cache)")
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
            list(pool.map(_encode, jobs))
        if not faces.exists():
            from maedfer.preprocess.encode import write_clip
            from maedfer.preprocess.profile import portrait_video

            write_clip(portrait_video(width, height, count), faces, fps=25)
    clips = {
        "codec": plan["codec"],
        "size": plan["size"],
        "faces_video": str(faces),
        "faces_frames": count,
    }
    for kind in ("prepared", "markers"):
        path = cache / f"{kind}.parquet"
        pd.DataFrame(rows[kind]).to_parquet(path)
        clips[kind] = str(path)
    base = pd.DataFrame(rows["prepared"])
    for name, n in (("big", plan["rows"]), ("million", plan["million"])):
        take = np.arange(n) % len(base)
        table = base.iloc[take].reset_index(drop=True)
        table["clip_id"] = [f"r{i}" for i in range(n)]
        table["fold"] = np.arange(n) % 2 + 1
        path = cache / f"{name}.parquet"
        table.to_parquet(path)
        clips[name] = str(path)
    made = len(jobs)
    return {
        "clips": clips,
        "headline": f"{len(plan['prepared'])} + {len(plan['markers'])} "
        f"{plan['codec']} clips at {plan['size']}^2 ({made} made, the rest from the cache)",
    }


# --- the measurements -----------------------------------------------------------------------------


def preflight(ctx: Context) -> dict:
    import shutil
    import subprocess

    import torch

    from maedfer.pipelines import nvdec

    out: dict[str, Any] = {
        "system": system(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "git": shutil.which("git"),
        "xz": shutil.which("xz"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["device"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
    out["libnvcuvid"] = nvdec.library()
    modules = {}
    for module in (
        "nvidia.dali",
        "av",
        "timm",
        "facenet_pytorch",
        "numpy",
        "cv2",
        "pandas",
        "pyarrow",
    ):
        try:
            mod = importlib.import_module(module)
            modules[module] = {
                "version": getattr(mod, "__version__", "?"),
                "file": getattr(mod, "__file__", None),
            }
        except Exception as exc:  # noqa: BLE001
            modules[module] = {"missing": f"{type(exc).__name__}: {exc}"[:200]}
    out["modules"] = modules
    try:
        nvidia = importlib.import_module("nvidia")
        out["nvidia_namespace"] = [str(p) for p in nvidia.__path__]
    except ImportError:
        out["nvidia_namespace"] = None
    missing = [m for m, v in modules.items() if "missing" in v]
    device_name = out.get("device", {}).get("name", "no CUDA device")
    nv = "libnvcuvid found" if out["libnvcuvid"] else "NO libnvcuvid"
    out["headline"] = (
        f"{device_name}; torch {torch.__version__}; {nv}; missing: "
        f"{', '.join(missing) or 'nothing'}"
    )
    return out


def ceilings(ctx: Context) -> dict:
    """bf16 GEMM TFLOP/s and device copy GB/s, measured in this run (fp32 and RAM dry)."""
    import torch

    dev = device(ctx)
    n = 1024 if dry(ctx) else 8192
    dtype = torch.float32 if dry(ctx) else torch.bfloat16
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))

    def timed(fn: Callable[[], Any], repeats: int) -> float:
        for _ in range(3):
            fn()
        synchronize(ctx)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(ctx)
        return (time.perf_counter() - start) / repeats

    gemm = 2 * n**3 / timed(lambda: a @ b, 3 if dry(ctx) else 20) / 1e12
    big = torch.empty(2**28 if not dry(ctx) else 2**25, dtype=torch.uint8, device=dev)
    other = torch.empty_like(big)
    copy = 2 * big.numel() / timed(lambda: other.copy_(big), 5 if dry(ctx) else 20) / 1e9
    return {
        "gemm_tflops": sig(gemm),
        "gemm": f"{n}^3 {str(dtype)[6:]}",
        "copy_gb_s": sig(copy),
        "copy_bytes": big.numel(),
        "headline": f"GEMM {gemm:.3g} TFLOP/s ({str(dtype)[6:]}), copy {copy:.3g} GB/s "
        "(read + write)",
    }


def to_uint8_frames(video):  # noqa: ANN001, ANN201 (torch tensors)
    """Loader output ``(B, 3, T, S, S)`` normalised float → ``(B, T, S, S, 3)`` uint8."""
    import torch

    from maedfer.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    pixels = ((video.float().cpu() * std + mean) * 255).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def frame_identity(ctx: Context) -> dict:
    """The frame numbers drawn in the pixels against the plan's, for every sample."""
    from maedfer.pipelines import build_loader
    from maedfer.pipelines.plan import EpochPlan
    from tests.pipelines.media import read_markers

    clips = ctx["clips"]
    cases = {
        "train_stride": ({"mode": "train", "augment": False}, 3),
        "train_reference_rule": (
            {"mode": "train", "augment": False, "temporal_rule": "reference"},
            2,
        ),
        "test_views": ({"mode": "test"}, 1),
    }
    figures: dict[str, Any] = {}
    total = wrong = 0
    for name, (options, epochs) in cases.items():
        loader = build_loader(
            clips["markers"],
            backend="dali",
            device=dali_device(ctx),
            batch_size=4,
            size=clips["size"],
            seed=11,
            drop_last=False,
            **options,
        )
        samples = frames = bad = 0
        examples = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            plan = EpochPlan(loader.table, loader.config, epoch=epoch)
            position = 0
            for batch in loader:
                for clip_id, clip in zip(
                    batch["clip_id"], to_uint8_frames(batch["video"]), strict=True
                ):
                    spec = plan.spec(position)
                    position += 1
                    got = read_markers(clip)
                    expected = spec.frame_indices
                    samples += 1
                    frames += len(expected)
                    miss = int((got != expected).sum()) + int(clip_id != spec.clip_id)
                    bad += miss
                    if miss and len(examples) < 3:
                        examples.append(
                            {
                                "clip": spec.clip_id,
                                "got_clip": clip_id,
                                "expected": expected.tolist(),
                                "got": got.tolist(),
                            }
                        )
        figures[name] = {
            "samples": samples,
            "frames": frames,
            "wrong_frames": bad,
            "examples": examples,
        }
        total, wrong = total + frames, wrong + bad
    figures["exact"] = wrong == 0
    figures["headline"] = (
        f"{total} frames, all exact" if not wrong else f"{wrong} of {total} frames WRONG"
    )
    return figures


def difference(a, b) -> dict:  # noqa: ANN001 (torch tensors)
    """|a - b| in 0..255 units of normalised clips: max, p99.99, mean, share beyond 2/255."""
    import torch

    from maedfer.pipelines.augment import IMAGENET_STD

    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255
    diff = ((a - b) * std).abs().flatten()
    k = max(1, int(0.9999 * diff.numel()))
    return {
        "max": round(float(diff.max()), 3),
        "p99_99": round(float(diff.kthvalue(k).values), 3),
        "mean": round(float(diff.mean()), 4),
        "share_beyond_2": round(float((diff > 2).float().mean()), 5),
    }


def pixel_equality(ctx: Context, other: str = "dali") -> dict:
    import itertools

    import torch

    from maedfer.pipelines import build_loader
    from maedfer.pipelines.rand_augment import CLIP_TOLERANCE

    small = dry(ctx)
    size, batch, batches = (32, 2, 2) if small else (160, 8, 8)
    manifest = ctx["clips"]["prepared"]

    def videos(mode: str, **kw: Any) -> list:
        out = []
        for backend in ("pyav", other):
            loader = build_loader(
                manifest,
                mode=mode,
                batch_size=batch,
                size=size,
                seed=3,
                backend=backend,
                workers=0 if backend == "pyav" else 2,
                device=None if backend == "pyav" else dali_device(ctx),
                **kw,
            )
            out.append(torch.cat([b["video"].cpu() for b in itertools.islice(loader, batches)]))
        return out

    test = difference(*videos("test"))
    train = difference(*videos("train", rand_augment=True))
    mean_limit, share_limit = CLIP_TOLERANCE
    passed = (
        test["max"] <= 2.0
        and train["mean"] <= mean_limit
        and train["share_beyond_2"] <= share_limit
    )
    return {
        "test": test,
        "train_rand_augment": train,
        "samples": batch * batches,
        "tolerance": {
            "test_max": 2.0,
            "train_mean": mean_limit,
            "train_share_beyond_2": share_limit,
        },
        "within_tolerance": passed,
        "headline": f"test max {test['max']:.2f}; train+RA mean {train['mean']:.3f}, "
        f"{100 * train['share_beyond_2']:.3f} % > 2/255: "
        f"{'within' if passed else 'OUTSIDE'} tolerance",
    }


def hybrid_equality(ctx: Context) -> dict:
    return {"backend": "hybrid", **pixel_equality(ctx, other="hybrid")}


def nvdec_ceiling(ctx: Context) -> dict:
    """Every frame of every prepared clip through DALI's video decoder, nothing else."""
    import numpy as np
    import nvidia.dali.fn as fn
    import pandas as pd
    from nvidia.dali import pipeline_def

    manifest = Path(ctx["clips"]["prepared"])
    rows = pd.read_parquet(manifest)
    data = [np.fromfile(manifest.parent / p, dtype=np.uint8) for p in rows["path"]]
    batch, threads = (4, 2) if dry(ctx) else (8, 8)
    rounds = 1 if dry(ctx) else 3
    order = [i % len(data) for i in range(len(data) * rounds)]
    batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    position = {"k": 0}

    def source(_info: Any) -> list:
        if position["k"] == len(batches):
            raise StopIteration
        chosen = batches[position["k"]]
        position["k"] += 1
        return [data[i] for i in chosen]

    @pipeline_def(
        batch_size=batch, num_threads=threads, device_id=None if dry(ctx) else 0, exec_dynamic=True
    )
    def decode():  # noqa: ANN202 (DALI graph)
        encoded = fn.external_source(source=source, batch=True, batch_info=True)
        return fn.decoders.video(encoded, device="cpu" if dry(ctx) else "mixed")

    pipe = decode()
    pipe.run()  # warm-up batch: decoders made, memory allocated
    frames, start = 0, time.perf_counter()
    for _ in range(len(batches) - 1):
        (out,) = pipe.run()
        frames += sum(int(shape[0]) for shape in out.shape())
    seconds = time.perf_counter() - start
    rate = frames / seconds
    return {
        "decoded_frames_per_s": round(rate),
        "frames": frames,
        "seconds": round(seconds, 2),
        "batch": batch,
        "threads": threads,
        "clip_side": ctx["clips"]["size"],
        "codec": ctx["clips"]["codec"],
        "headline": f"{rate:,.0f} decoded frames/s ({ctx['clips']['codec']}, "
        f"{ctx['clips']['size']}^2, {threads} threads)",
    }


def loader_rates(ctx: Context, backend: str, workers: int) -> dict:
    """Clips/s of each mode over the big manifest: 2 warm-up batches, then timed batches."""
    import resource

    from maedfer.pipelines import build_loader

    small = dry(ctx)
    size, batch = (32, 4) if small else (160, 32)
    at_least = 10 if backend == "dali" else max(10, 3 * workers)
    per_mode = ctx["budget_s"] / 3 * 0.6  # seconds of timing per mode at most
    out: dict[str, Any] = {"workers": workers, "batch": batch, "size": size}
    for mode in ("train", "test", "pretrain"):
        loader = build_loader(
            ctx["clips"]["big"],
            mode=mode,
            fold=1,
            batch_size=batch,
            size=size,
            backend=backend,
            workers=workers,
            device=None if backend == "pyav" else dali_device(ctx),
        )
        it = iter(loader)
        for _ in range(2):
            next(it)
        synchronize(ctx)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start, clips, timed = time.perf_counter(), 0, 0
        for b in it:
            clips += b["video"].shape[0]
            timed += 1
            if timed >= at_least and time.perf_counter() - start > per_mode:
                break
        synchronize(ctx)
        seconds = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        host = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        out[mode] = {
            "clips_per_s": round(clips / seconds, 1),
            "batches_timed": timed,
            "enough_batches": timed >= at_least,
            "main_process_cpu_s_per_clip": round(host / clips, 5),
            "rows": loader.dataset_size,
        }
        del it, loader
        save_partial(ctx, out)
    out["headline"] = (
        ", ".join(f"{m} {out[m]['clips_per_s']:.0f}" for m in ("train", "test", "pretrain"))
        + " clips/s"
    )
    return out


def loader_dali(ctx: Context) -> dict:
    from maedfer.pipelines.loader import default_workers

    return {"backend": "dali", **loader_rates(ctx, "dali", default_workers("dali"))}


def pyav_workers(ctx: Context) -> int:
    return 1 if dry(ctx) else max(1, len(os.sched_getaffinity(0)) - 1)


def loader_pyav(ctx: Context) -> dict:
    return {"backend": "pyav", **loader_rates(ctx, "pyav", pyav_workers(ctx))}


def loader_hybrid(ctx: Context) -> dict:
    return {"backend": "hybrid", **loader_rates(ctx, "hybrid", pyav_workers(ctx))}


def models(ctx: Context) -> dict[str, tuple[str, dict]]:
    """The base models on a GPU; demo-size ones for the dry run."""
    from train_speed import MODELS

    return MODELS["tiny" if dry(ctx) else "base"]


def step_flops(step: Callable[[], float]) -> float:
    """FLOPs of one call of ``step`` (torch's flop counter: matmuls, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_step(ctx: Context, step: Callable[[], float], warmup: int, repeats: int) -> dict:
    import torch

    from maedfer.recipes.profile import time_steps

    dev = device(ctx)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = time_steps(step, dev, warmup=warmup, repeats=repeats)
    spread = quartiles(times)
    row = {"step_s": spread, "peak_mem_gib": None}
    if dev.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return row


def step_eager(ctx: Context) -> dict:
    import contextlib

    import torch

    from maedfer.recipes.profile import build_step, reference_attention

    dev, small = device(ctx), dry(ctx)
    batch, warmup, repeats = (2, 1, 2) if small else (32, 3, 10)
    ceiling = ctx["prior"].get("ceilings", {}).get("gemm_tflops")
    out: dict[str, Any] = {"batch": batch, "gemm_ceiling_tflops": ceiling}
    for recipe, (name, overrides) in models(ctx).items():
        rows: dict[str, Any] = {"model": name}
        for label, precision, reference in (("ours", "bf16", False), ("reference", "fp16", True)):
            precision = "fp32" if small else precision
            step, model, _ = build_step(
                name,
                batch=batch,
                device=dev,
                precision=precision,
                overrides=overrides,
                reference_style=reference,
            )
            context = reference_attention() if reference else contextlib.nullcontext()
            with context:
                row = time_step(ctx, step, warmup, repeats)
                flops = step_flops(step)
            median = row["step_s"]["median"]
            row.update(
                precision=precision,
                clips_per_s=round(batch / median, 1),
                tflops_per_step=sig(flops / 1e12),
                achieved_tflops=sig(flops / median / 1e12),
            )
            if ceiling:
                row["share_of_gemm_ceiling"] = sig(flops / median / 1e12 / ceiling)
            rows[label] = row
            del step, model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows["ours_over_reference"] = round(
            rows["ours"]["clips_per_s"] / rows["reference"]["clips_per_s"], 3
        )
        out[recipe] = rows
        save_partial(ctx, out)
    ft = out["finetune"]["ours"]
    share = f", {100 * ft['share_of_gemm_ceiling']:.0f} % of GEMM" if ceiling else ""
    out["headline"] = (
        f"finetune {ft['clips_per_s']:.0f} clips/s{share} "
        f"({out['finetune']['ours_over_reference']:.2f}x ref); pretrain "
        f"{out['pretrain']['ours']['clips_per_s']:.0f} clips/s"
    )
    return out


def fed_step(ctx: Context, backend: str, workers: int) -> dict:
    """The fine-tuning step on loader batches (mixup, forward, loss, backward, AdamW)."""
    from timm.loss import SoftTargetCrossEntropy

    from maedfer.model import create_model
    from maedfer.pipelines import build_loader, make_mixup
    from maedfer.training.optim import create_optimizer
    from maedfer.training.precision import autocast

    dev, small = device(ctx), dry(ctx)
    name, overrides = models(ctx)["finetune"]
    batch, steps = (2, 4) if small else (32, 20)
    model = create_model(name, skip_unused_tail=True, **{"num_classes": 7, **overrides})
    model = model.to(dev).train()
    cfg = model.config
    optimizer = create_optimizer(model, lr=1e-4, betas=(0.9, 0.999), layer_decay=0.75)
    mixup, criterion = make_mixup(cfg["num_classes"]), SoftTargetCrossEntropy()
    precision = "fp32" if small else "bf16"
    loader = build_loader(
        ctx["clips"]["big"],
        mode="train",
        fold=1,
        batch_size=batch,
        size=cfg["img_size"],
        num_frames=cfg["num_frames"],
        backend=backend,
        workers=workers,
        device=None if backend == "pyav" else dali_device(ctx),
    )
    it = iter(loader)
    done, wait, start = 0, 0.0, None
    while done < steps + 1:
        t0 = time.perf_counter()
        b = next(it)
        if start is not None:
            wait += time.perf_counter() - t0
        video, label = b["video"].to(dev, non_blocking=True), b["label"].to(dev)
        mixed, target = mixup(video, label)
        with autocast(dev, precision):
            loss = criterion(model(mixed).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(ctx)
        if start is None:
            start = time.perf_counter()  # the first step warms up
        done += 1
    seconds = time.perf_counter() - start
    rate = steps * batch / seconds
    synthetic = ctx["prior"].get("step_eager", {}).get("finetune", {}).get("ours", {})
    return {
        "backend": backend,
        "workers": workers,
        "model": name,
        "batch": batch,
        "steps": steps,
        "clips_per_s": round(rate, 1),
        "share_waiting_for_data": round(wait / seconds, 3),
        "synthetic_step_clips_per_s": synthetic.get("clips_per_s"),
        "headline": f"{rate:.0f} clips/s, {100 * wait / seconds:.0f} % waiting for data",
    }


def fed_step_dali(ctx: Context) -> dict:
    from maedfer.pipelines.loader import default_workers

    return fed_step(ctx, "dali", default_workers("dali"))


def fed_step_pyav(ctx: Context) -> dict:
    return fed_step(ctx, "pyav", pyav_workers(ctx))


def fed_step_hybrid(ctx: Context) -> dict:
    return fed_step(ctx, "hybrid", pyav_workers(ctx))


class SyncCounter:
    """Counts host syncs: on CUDA by torch's sync debug mode (each sync warns); on the CPU, as
    a proxy, the calls that would sync on CUDA (``item``, ``cpu``, ``tolist``, ``numpy``,
    ``float``/``int``/``bool`` of a tensor)."""

    PROXY = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.count = cuda, 0

    def __enter__(self) -> SyncCounter:
        import warnings

        import torch

        self.count = 0
        if self.cuda:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._saved = {name: getattr(torch.Tensor, name) for name in self.PROXY}
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, self._counting(original))
        return self

    def _counting(self, original: Callable) -> Callable:
        def wrapper(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(tensor, *args, **kwargs)

        return wrapper

    def so_far(self) -> int:
        """The syncs counted since ``__enter__``, while still counting."""
        if self.cuda:
            return sum("synchroniz" in str(w.message) for w in self._caught)
        return self.count

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            self.count = self.so_far()
            self._warnings.__exit__(*exc)
        else:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)


def syncs(ctx: Context) -> dict:
    from maedfer.recipes.profile import build_step

    cuda = not dry(ctx)
    out: dict[str, Any] = {
        "method": "torch.cuda.set_sync_debug_mode('warn')"
        if cuda
        else "CPU proxy: calls of " + ", ".join(SyncCounter.PROXY)
    }
    try:
        importable("nvidia.dali", "NVIDIA DALI")
        if cuda:
            from maedfer.pipelines import nvdec

            if nvdec.library() is None:
                raise NotRun(nvdec.MISSING)
        from maedfer.pipelines import build_loader

        size, batch = (32, 4) if dry(ctx) else (160, 32)
        for mode in ("train", "test"):
            loader = build_loader(
                ctx["clips"]["big"],
                mode=mode,
                fold=1,
                batch_size=batch,
                size=size,
                backend="dali",
                device=dali_device(ctx),
            )
            it = iter(loader)
            next(it), next(it)
            with SyncCounter(cuda) as counter:
                next(it)
            out[f"dali_{mode}_batch"] = counter.count
    except NotRun as missing:
        out["dali_batch"] = f"not run: {missing}"
    from train_speed import MODELS

    for recipe, (name, overrides) in MODELS["tiny"].items():  # syncs do not depend on size
        step, model, _ = build_step(name, batch=2, device=device(ctx), overrides=overrides)
        step()
        with SyncCounter(cuda) as counter:
            step()
        out[f"{recipe}_step"] = counter.count
        del step, model
    parts = [f"{k} {v}" for k, v in out.items() if isinstance(v, int)]
    out["headline"] = "syncs: " + ", ".join(parts)
    return out


def recipe_step(ctx: Context) -> dict:
    """``maedfer finetune`` itself (the official recipe's defaults, the base model on a GPU):
    the recipe's own loader (``data.backend auto``), step and ``TrainLoop``, through its public
    ``finetune.run``. Three log windows of ``W`` steps; the first holds the warm-up. Its figures
    come from what the loop logs (``clips_per_s`` per window) and from the host syncs counted
    between the later log points (each log point reads the device once, by design). The dry
    run's count is a proxy: its CPU optimiser is not fused and reads its step counters."""
    import pandas as pd

    from maedfer.config import read_yaml
    from maedfer.manifests.io import write_manifest
    from maedfer.recipes import finetune
    from maedfer.training.runtime import MetricsLog

    small, cuda = dry(ctx), not dry(ctx)
    window, batch = (2, 2) if small else (10, 32)
    steps = 3 * window
    base = pd.read_parquet(ctx["clips"]["prepared"])
    train, test = steps * batch, 2 * batch
    rows = base.iloc[[i % len(base) for i in range(train + test)]].reset_index(drop=True)
    rows["clip_id"] = [f"s{i}" for i in range(len(rows))]
    rows["fold"] = [2] * train + [1] * test  # fold 1 is tested once at the end: a few clips
    rows["source"], rows["subject"] = rows["path"], rows["fold"].astype(str)
    rows["label_name"] = [f"class{label}" for label in rows["label"]]
    size = clip_plan(ctx)["size"]
    rows["fps"], rows["width"], rows["height"] = 25.0, size, size
    cache = Path(ctx["cache"])
    manifest = cache / "recipe_step.parquet"
    classes = [f"class{c}" for c in range(7)]
    write_manifest(
        rows,
        manifest,
        dataset="dfew",
        protocol="gpu-check",
        classes=classes,
        num_folds=2,
        raw_root=cache,
    )
    keys: dict[str, Any] = {
        "data.batch_size": batch,
        "schedule.max_steps": steps,
        "run.log_every": window,
        "run.device": "cuda" if cuda else "cpu",
    }
    if small:
        name, overrides = models(ctx)["finetune"]
        own = {k: overrides[k] for k in ("img_size", "num_frames")}
        keys |= {"model.name": name, "model.img_size": own["img_size"]}
        keys |= {"model.num_frames": own["num_frames"], "data.workers": 1}
        keys["model.overrides"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items() if k not in own
        }
    else:
        from maedfer.pipelines import nvdec

        if nvdec.library() is None:  # auto would take DALI, which cannot decode without it
            keys["data.backend"] = "hybrid"
    marks: list[tuple[int, int]] = []  # (step, syncs so far) at each train log point
    write = MetricsLog.write

    def watched(self: Any, record: dict) -> None:
        if record.get("kind") == "train":
            marks.append((record["step"], counter.so_far()))
        write(self, record)

    out_dir = Path(ctx["result_path"]).with_suffix("") / "run"
    MetricsLog.write = watched  # type: ignore[method-assign]
    try:
        with SyncCounter(cuda) as counter:
            summary = finetune.run(
                overrides=keys, data=manifest, fold=1, out=out_dir, overwrite=True
            )
    finally:
        MetricsLog.write = write  # type: ignore[method-assign]
    records = [
        json.loads(line)
        for line in (out_dir / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    steady = [r["clips_per_s"] for r in records[1:]]  # the first window holds the warm-up
    used = read_yaml(out_dir / "config.yaml")  # what the run resolved: backend, precision
    (first, at_first), (last, at_last) = marks[1], marks[-1]
    per_step = (at_last - at_first) / max(1, last - first)
    rate = sum(steady) / len(steady) if steady else float("nan")
    return {
        "model": keys.get("model.name", "lgi_former_base (the recipe's default)"),
        "backend": used["data"]["backend"],
        "precision": used["run"]["precision"],
        "batch": batch,
        "steps": summary["steps"],
        "clips_per_s_per_window": [sig(r["clips_per_s"]) for r in records],
        "steady_clips_per_s": sig(rate),
        "syncs_per_step": sig(per_step),
        "syncs_per_log_point_expected": 1,
        "log_every": window,
        "run_seconds": sig(summary["time_s"]),
        "headline": f"{rate:.0f} clips/s steady ({used['data']['backend']}, "
        f"{used['run']['precision']}), {per_step:.2f} host syncs per step (log every {window})",
    }


def step_compiled(ctx: Context) -> dict:
    import torch
    import torch._dynamo

    from maedfer.recipes.profile import build_step

    dev, small = device(ctx), dry(ctx)
    batch, warmup, repeats = (2, 1, 2) if small else (32, 2, 10)
    backend = "eager" if small else "inductor"  # the dry run traces, it does not generate code
    out: dict[str, Any] = {"backend": backend, "batch": batch}
    recipes = models(ctx)
    for recipe, (name, overrides) in recipes.items():
        if small and recipe != "finetune":
            continue
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        step, model, _ = build_step(
            name,
            batch=batch,
            device=dev,
            precision="fp32" if small else "bf16",
            overrides=overrides,
        )
        model.compile(backend=backend)
        start = time.perf_counter()
        step()
        synchronize(ctx)
        compile_s = time.perf_counter() - start
        row = time_step(ctx, step, warmup, repeats)
        counters = torch._dynamo.utils.counters
        row.update(
            clips_per_s=round(batch / row["step_s"]["median"], 1),
            first_step_s=round(compile_s, 1),
            graph_breaks=int(sum(counters["graph_break"].values())),
            break_reasons=sorted(counters["graph_break"])[:5],
            unique_graphs=int(counters["stats"].get("unique_graphs", 0)),
        )
        out[recipe] = {"model": name, **row}
        del step, model
        save_partial(ctx, out)
    ft = out["finetune"]
    out["headline"] = (
        f"finetune {ft['clips_per_s']:.0f} clips/s compiled, "
        f"{ft['graph_breaks']} graph breaks, first step {ft['first_step_s']:.0f} s"
    )
    return out


def faces(ctx: Context) -> dict:
    import numpy as np

    from maedfer.preprocess.encode import write_clip
    from maedfer.preprocess.faces import FaceAligner
    from maedfer.preprocess.video import read_video_frames

    clips, dev = ctx["clips"], device(ctx)
    video = Path(clips["faces_video"])
    decoded, fps = read_video_frames(video)
    frames = np.asarray(decoded)
    repeats = 1 if dry(ctx) else 3
    aligner = FaceAligner(160, dev, detect_every=4, batch_size=32)
    out_clip = Path(ctx["work"]) / "faces-out.mp4"

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            synchronize(ctx)
            start = time.perf_counter()
            fn()
            synchronize(ctx)
            times.append(time.perf_counter() - start)
        return len(frames) / quartiles(times)["median"]

    alone = timed(lambda: aligner.align_frames(frames))
    end_to_end = timed(
        lambda: write_clip(
            aligner.align_frames(np.asarray(read_video_frames(video)[0])).frames, out_clip, fps=fps
        )
    )
    height, width = frames.shape[1:3]
    return {
        "input": f"{width}x{height}",
        "frames": len(frames),
        "alignment_frames_per_s": round(alone, 1),
        "end_to_end_frames_per_s": round(end_to_end, 1),
        "headline": f"{width}x{height}: alignment {alone:.0f} frames/s, end to end "
        f"{end_to_end:.0f} frames/s",
    }


def first_batch(ctx: Context) -> dict:
    """This process is fresh: the import, the loader on the big manifest, its first batch."""
    import resource

    start = time.perf_counter()
    from maedfer.pipelines import build_loader

    imported = time.perf_counter()
    loader = build_loader(
        ctx["clips"]["million"],
        mode="train",
        fold=1,
        batch_size=32,
        size=ctx["clips"]["size"],
        backend="dali",
        device=dali_device(ctx),
    )
    batch = next(iter(loader))
    synchronize(ctx)
    done = time.perf_counter()
    return {
        "rows": loader.dataset_size * 2,
        "import_s": round(imported - start, 2),
        "first_batch_s": round(done - imported, 2),
        "shape": list(batch["video"].shape),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "headline": f"first batch {done - imported:.1f} s after a {imported - start:.1f} s "
        f"import ({loader.dataset_size * 2:,} rows)",
    }


STEPS: dict[str, Callable[[Context], dict]] = {
    "setup": setup,
    "preflight": preflight,
    "ceilings": ceilings,
    "frame_identity": frame_identity,
    "pixel_equality": pixel_equality,
    "hybrid_equality": hybrid_equality,
    "nvdec_ceiling": nvdec_ceiling,
    "loader_dali": loader_dali,
    "loader_pyav": loader_pyav,
    "loader_hybrid": loader_hybrid,
    "step_eager": step_eager,
    "fed_step_dali": fed_step_dali,
    "fed_step_pyav": fed_step_pyav,
    "fed_step_hybrid": fed_step_hybrid,
    "syncs": syncs,
    "recipe_step": recipe_step,
    "step_compiled": step_compiled,
    "faces": faces,
    "first_batch": first_batch,
}


def failure(exc: BaseException) -> str:
    """One line: DALI's own error named as DALI's, else the exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    from_dali = any("nvidia/dali" in f.filename for f in frames) or "DALI" in str(exc)[:200]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    informative = next(
        (b for a, b in zip(lines, lines[1:], strict=False) if a.startswith("encountered")),
        lines[0] if lines else repr(exc),
    )
    return f"{'DALI: ' if from_dali else ''}{type(exc).__name__}: {informative}"[:400]


def main() -> None:
    name, context_path, result_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ctx = json.loads(context_path.read_text())
    ctx["result_path"] = str(result_path)
    try:
        check_needs(ctx)
        value = {"status": "ok", "figures": STEPS[name](ctx)}
    except NotRun as missing:
        value = {"status": "not run", "reason": str(missing)}
    except Exception as exc:  # noqa: BLE001 (reported in the JSON; the check goes on)
        traceback.print_exc()
        value = {"status": "failed", "reason": failure(exc)}
    write_result(result_path, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the figures are written: a library crashing at interpreter exit loses nothing


if __name__ == "__main__":
    main()
