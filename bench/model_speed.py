"""LGI-Former vs. the VideoMAE ViT-B baseline: GMACs and forward / forward+backward time per clip.

Both models run in the same process on the same input, alternating, so the ratio is the figure to
quote (docs/design.md). Median and p25/p75 over --repeats after one warm-up; JSON to bench/out/.

    .venv/bin/python bench/model_speed.py [--device cpu|cuda] [--batch 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

from maedfer.devices import resolve_device
from maedfer.model import create_model
from maedfer.model.flops import count_gmacs, count_params
from maedfer.model.profile import time_calls


def quartiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2]}


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
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    video = torch.randn(args.batch, 3, 16, 160, 160, device=device)
    results = {"system": system(), "device": str(device), "batch": args.batch}
    for name in ("lgi_former_base", "vit_base"):
        model = create_model(name, num_classes=7).to(device)
        row = {"params": count_params(model), "gmacs": count_gmacs(model)}

        def forward(model=model) -> None:
            with torch.no_grad(), autocast:
                model(video)

        def forward_backward(model=model) -> None:
            with autocast:
                model(video).float().logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)

        model.eval()
        row["fwd_s_per_clip"] = quartiles(
            [t / args.batch for t in time_calls(forward, device, args.repeats)]
        )
        model.train()
        row["fwd_bwd_s_per_clip"] = quartiles(
            [t / args.batch for t in time_calls(forward_backward, device, args.repeats)]
        )
        results[name] = row
    lgi, vit = results["lgi_former_base"], results["vit_base"]
    results["ratios"] = {
        "gmacs_lgi_over_vit": lgi["gmacs"] / vit["gmacs"],
        "fwd_speedup": vit["fwd_s_per_clip"]["median"] / lgi["fwd_s_per_clip"]["median"],
        "fwd_bwd_speedup": vit["fwd_bwd_s_per_clip"]["median"]
        / lgi["fwd_bwd_s_per_clip"]["median"],
    }
    out = Path(__file__).parent / "out" / f"model_speed-{device.type}-b{args.batch}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["ratios"], indent=1))
    for name in ("lgi_former_base", "vit_base"):
        r = results[name]
        print(
            f"{name:16s} {r['params']:>11,} params {r['gmacs']:6.2f} GMACs "
            f"fwd {r['fwd_s_per_clip']['median']:.3f}s "
            f"[{r['fwd_s_per_clip']['p25']:.3f}, {r['fwd_s_per_clip']['p75']:.3f}] "
            f"fwd+bwd {r['fwd_bwd_s_per_clip']['median']:.3f}s "
            f"[{r['fwd_bwd_s_per_clip']['p25']:.3f}, {r['fwd_bwd_s_per_clip']['p75']:.3f}] per clip"
        )


if __name__ == "__main__":
    main()
