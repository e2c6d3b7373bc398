"""Training-step throughput: our path against a reference-style path, on the same device.

Ours: attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
GPU), bf16 autocast on GPU (fp32 on CPU), the classifier's dead last-block compute skipped and
frozen, fused AdamW on GPU. Reference-style (as the official MAE-DFER code runs): attention as
matmul-softmax-matmul, fp16 autocast with a gradient scaler on GPU (fp32 on CPU), the dead
compute kept, foreach AdamW. Both steps are those of ``maedfer profile train``
(:mod:`maedfer.recipes.profile`): mixup + forward + loss + backward + AdamW for fine-tuning; masks
+ forward + targets + loss + backward + AdamW for pre-training. Synthetic clips (decoding is
``bench/data_speed.py``'s business).

Before timing, both paths' fp32 outputs on the same weights are compared (they must agree:
another computation faster is no win). Median and p25/p75 of ``--repeats`` steps after
``--warmup`` steps; the two paths alternate in rounds so drift in machine load hits both.

    .venv/bin/python bench/train_speed.py                      # CPU, tiny (demo-size) models
    .venv/bin/python bench/train_speed.py --device cuda --size base --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from maedfer.devices import resolve_device
from maedfer.model import create_model
from maedfer.recipes.profile import build_step, quartiles, reference_attention, time_steps

# Demo-size models (docs/design.md): 64×64 faces, 16 frames, width 64, depth 2.
TINY = {
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "img_size": 64,
    "num_frames": 16,
    "region_size": (2, 2, 4),
}
TINY_MAE = {**TINY, "decoder_embed_dim": 64, "decoder_depth": 1, "decoder_num_heads": 2}
MODELS = {
    "tiny": {"finetune": ("lgi_former_tiny", TINY), "pretrain": ("mae_lgi_former_tiny", TINY_MAE)},
    "base": {"finetune": ("lgi_former_base", {}), "pretrain": ("mae_lgi_former_base", {})},
}


def system() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": dt.date.today().isoformat(),
        "commit": commit,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


@torch.no_grad()
def outputs_agree(name: str, overrides: dict, device: torch.device) -> float:
    """Max |difference| of the two paths' fp32 outputs on the same weights and input, relative
    to the largest output (the classifier's fresh head makes logits tiny in absolute terms)."""
    torch.manual_seed(0)
    ours = create_model(name, **overrides).to(device).eval()
    cfg = ours.config
    video = torch.randn(2, 3, cfg["num_frames"], cfg["img_size"], cfg["img_size"], device=device)
    if name.startswith("mae_"):
        mask = ours.random_mask(2, generator=torch.Generator().manual_seed(0)).to(device)
        args = (video, mask)
        reference = ours
    else:
        args = (video,)
        reference = create_model(name, **{**overrides, "skip_unused_tail": False}).to(device)
        reference.load_state_dict(ours.state_dict())
        reference.eval()
        ours = create_model(name, **{**overrides, "skip_unused_tail": True}).to(device).eval()
        ours.load_state_dict(reference.state_dict())
    expected = ours(*args)
    with reference_attention():
        got = reference.eval()(*args)
    return float((expected - got).abs().max() / expected.abs().max())


def compare(name: str, overrides: dict, args: argparse.Namespace, device: torch.device) -> dict:
    half = device.type == "cuda"
    paths = {
        "ours": build_step(
            name,
            batch=args.batch,
            device=device,
            precision="bf16" if half else "fp32",
            overrides=overrides,
        ),
        "reference": build_step(
            name,
            batch=args.batch,
            device=device,
            precision="fp16" if half else "fp32",
            overrides=overrides,
            reference_style=True,
        ),
    }
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    peak: dict[str, float] = {}
    per_round = max(1, args.repeats // args.rounds)
    for round_ in range(args.rounds):
        for label, (step, _model, _precision) in paths.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ctx = reference_attention() if label == "reference" else contextlib.nullcontext()
            with ctx:
                times[label] += time_steps(
                    step, device, warmup=args.warmup if round_ == 0 else 0, repeats=per_round
                )
            if device.type == "cuda":
                peak[label] = max(
                    peak.get(label, 0.0), torch.cuda.max_memory_allocated(device) / 2**30
                )
    rows = {}
    for label, (_step, _model, precision) in paths.items():
        spread = quartiles(times[label])
        rows[label] = {
            "precision": precision,
            "step_s": spread,
            "clips_per_s": args.batch / spread["median"],
            "peak_mem_gib": peak.get(label),
        }
    rows["speedup"] = rows["reference"]["step_s"]["median"] / rows["ours"]["step_s"]["median"]
    rows["max_rel_diff_fp32"] = outputs_agree(name, overrides, device)
    rows["model"] = name
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--size",
        choices=sorted(MODELS),
        default=None,
        help="tiny (demo-size) or base (default: base on CUDA, tiny on CPU)",
    )
    parser.add_argument("--batch", type=int, default=None, help="default 32 (CUDA) / 8 (CPU)")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.size = args.size or ("base" if device.type == "cuda" else "tiny")
    args.batch = args.batch or (32 if device.type == "cuda" else 8)
    results = {
        "system": system(),
        "device": str(device),
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
    }
    for kind, (name, overrides) in MODELS[args.size].items():
        results[kind] = compare(name, overrides, args, device)
    stem = f"train_speed-{device.type}-{args.size}-b{args.batch}"
    out = Path(__file__).parent / "out" / f"{stem}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print("| step | path | precision | clips/s | s/step median [p25, p75] | peak GiB |")
    print("|---|---|---|---|---|---|")
    for kind in MODELS[args.size]:
        r = results[kind]
        for label in ("ours", "reference"):
            row, s = r[label], r[label]["step_s"]
            mem = f"{row['peak_mem_gib']:.2f}" if row["peak_mem_gib"] is not None else "-"
            print(
                f"| {kind} ({r['model']}) | {label} | {row['precision']} | "
                f"{row['clips_per_s']:.1f} | {s['median']:.4f} [{s['p25']:.4f}, "
                f"{s['p75']:.4f}] | {mem} |"
            )
        print(
            f"| {kind} | speed-up ours / reference | | **{r['speedup']:.2f}×** | "
            f"fp32 outputs differ by {r['max_rel_diff_fp32']:.1e} (rel.) | |"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
