"""``maedfer profile model``: size, MACs and speed of a model beside the ViT-B baseline, or of
several models beside LGI-Former.

Figures per clip: parameters, GMACs (batch 1, :mod:`maedfer.model.flops`), forward and
forward+backward seconds (median over ``batches`` timed batches after one warm-up), and peak
memory on CUDA. The chosen model and ``vit_base`` run on the same device in the same call, so
their ratios are the figures to quote (docs/design.md).

``--name lineage`` (or a comma-separated list of names) measures every model of the lineage
(:data:`LINEAGE`, docs/models.md), each on its own input contract (16 frames of 160 or 224 px),
in one call beside ``lgi_former_base``: one row per model, with its ratios to LGI-Former.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.model.flops import clip_shape, count_gmacs, count_params
from maedfer.model.registry import create_model, list_models

BASELINE = "vit_base"
LINEAGE_BASELINE = "lgi_former_base"
#: ``--name lineage``: MAE-DFER's classifier and the encoders of its lineage, at full size
LINEAGE = (
    "lgi_former_base",
    "videomae_base",
    "videomae_base_224",
    "marlin_base",
    "marlin_large",
    "svfap_base",
    "s4d_base",
    "hicmae_base",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up: allocator, kernels, autotuning
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, *, batch: int, batches: int, device: torch.device) -> dict[str, Any]:
    """Profile one registered classifier; returns the figures of one table row."""
    if name not in list_models() or name.startswith("mae_"):
        raise MaedferError(
            f"unknown classifier {name!r}; choose one of "
            f"{', '.join(n for n in list_models() if not n.startswith('mae_'))}"
        )
    model = create_model(name).to(device)
    params = count_params(model)
    gmacs = count_gmacs(model)
    shape = clip_shape(model)
    video = torch.randn(batch, *shape, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward() -> None:
        with torch.no_grad(), autocast:
            model(video)

    def forward_backward() -> None:
        with autocast:
            loss = model(video).float().logsumexp(-1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    fwd = time_calls(forward, device, batches)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fwd_bwd = time_calls(forward_backward, device, batches)
    row: dict[str, Any] = {
        "name": name,
        "input": f"{shape[1]}x{shape[2]}x{shape[3]}",
        "params": params,
        "gmacs": round(gmacs, 3),
        "fwd_s_per_clip": statistics.median(fwd) / batch,
        "fwd_bwd_s_per_clip": statistics.median(fwd_bwd) / batch,
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def run(
    *,
    name: str | None = None,
    batch: int | None = None,
    batches: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Measure ``name`` (default ``lgi_former_base``) and ``vit_base`` (:func:`format_table`);
    with ``lineage`` or several names, :func:`run_lineage` (:func:`format_lineage`)."""
    dev = resolve_device(device)
    name = name or "lgi_former_base"
    batch = batch or (8 if dev.type == "cuda" else 1)
    batches = batches or (10 if dev.type == "cuda" else 2)
    if name == "lineage" or "," in name:
        names = list(LINEAGE) if name == "lineage" else [n.strip() for n in name.split(",")]
        return run_lineage(names, batch=batch, batches=batches, device=dev)
    ours = measure(name, batch=batch, batches=batches, device=dev)
    base = ours if name == BASELINE else measure(BASELINE, batch=batch, batches=batches, device=dev)
    ratios = {
        "params": ours["params"] / base["params"],
        "gmacs": ours["gmacs"] / base["gmacs"],
        "fwd_speedup": base["fwd_s_per_clip"] / ours["fwd_s_per_clip"],
        "fwd_bwd_speedup": base["fwd_bwd_s_per_clip"] / ours["fwd_bwd_s_per_clip"],
    }
    result = {
        "stage": "model",
        "device": str(dev),
        "precision": "bf16 autocast" if dev.type == "cuda" else "fp32",
        "batch": batch,
        **{k: v for k, v in ours.items()},
        "baseline": base,
        "ratio_to_baseline": ratios,
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    ours, base, ratios = result, result["baseline"], result["ratio_to_baseline"]
    rows = [
        ("parameters", f"{ours['params']:,}", f"{base['params']:,}", f"{ratios['params']:.3f}x"),
        ("GMACs / clip", f"{ours['gmacs']:.2f}", f"{base['gmacs']:.2f}", f"{ratios['gmacs']:.3f}x"),
        (
            "forward s / clip",
            f"{ours['fwd_s_per_clip']:.4f}",
            f"{base['fwd_s_per_clip']:.4f}",
            f"{ratios['fwd_speedup']:.2f}x faster",
        ),
        (
            "fwd+bwd s / clip",
            f"{ours['fwd_bwd_s_per_clip']:.4f}",
            f"{base['fwd_bwd_s_per_clip']:.4f}",
            f"{ratios['fwd_bwd_speedup']:.2f}x faster",
        ),
    ]
    if "peak_mem_gib" in ours:
        rows.append(
            ("peak memory GiB", f"{ours['peak_mem_gib']:.2f}", f"{base['peak_mem_gib']:.2f}", "")
        )
    header = f"model profile on {result['device']} ({result['precision']}, batch {result['batch']})"
    widths = [18, 14, 14, 16]
    lines = [header, _row(("", ours["name"], base["name"], "ratio"), widths)]
    lines += [_row(r, widths) for r in rows]
    return "\n".join(lines)


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def run_lineage(
    names: list[str], *, batch: int, batches: int, device: torch.device
) -> dict[str, Any]:
    """Measure ``names`` and ``lgi_former_base`` on one device in one call; a row per model with
    its ratios to LGI-Former (parameters, GMACs, forward and forward+backward speed)."""
    order = [LINEAGE_BASELINE, *[n for n in names if n != LINEAGE_BASELINE]]
    rows = {n: measure(n, batch=batch, batches=batches, device=device) for n in order}
    base = rows[LINEAGE_BASELINE]
    for row in rows.values():
        row["ratio_to_lgi_former"] = {
            "params": row["params"] / base["params"],
            "gmacs": row["gmacs"] / base["gmacs"],
            "fwd_time": row["fwd_s_per_clip"] / base["fwd_s_per_clip"],
            "fwd_bwd_time": row["fwd_bwd_s_per_clip"] / base["fwd_bwd_s_per_clip"],
        }
    result = {
        "stage": "model",
        "device": str(device),
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "batch": batch,
        "baseline": LINEAGE_BASELINE,
        "models": list(rows.values()),
    }
    return result


def format_lineage(result: dict[str, Any]) -> str:
    """One row per model; ratios are to LGI-Former (time: > 1 is slower)."""
    header = (
        f"model profile on {result['device']} ({result['precision']}, batch "
        f"{result['batch']}); x = ratio to {result['baseline']}"
    )
    titles = ("model", "input", "params (M)", "GMACs", "fwd s/clip", "fwd+bwd s/clip")
    lines = [header, f"{titles[0]:<20}{titles[1]:>11}" + "".join(f"{t:>22}" for t in titles[2:])]
    for row in result["models"]:
        r = row["ratio_to_lgi_former"]
        cells = (
            f"{row['params'] / 1e6:.2f} ({r['params']:.2f}x)",
            f"{row['gmacs']:.2f} ({r['gmacs']:.2f}x)",
            f"{row['fwd_s_per_clip']:.4f} ({r['fwd_time']:.2f}x)",
            f"{row['fwd_bwd_s_per_clip']:.4f} ({r['fwd_bwd_time']:.2f}x)",
        )
        lines.append(f"{row['name']:<20}{row['input']:>11}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)
