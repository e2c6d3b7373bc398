"""``maedfer profile train``: training-step throughput (docs/design.md; issue 5 benchmarks).

One step is what the recipes do per optimiser step, on a synthetic batch (decoding is measured
by ``maedfer profile data``): for a classifier, timm mixup/cutmix, forward under autocast,
``SoftTargetCrossEntropy``, backward (through the gradient scaler), AdamW with layer decay; for a
``mae_*`` model, part-window masks, forward, targets, loss, backward, AdamW. Figures: clips per
second (batch / median step time), the step time's median and p25/p75, peak CUDA memory.

:func:`build_step` also serves ``bench/train_speed.py``, which compares our path with a
reference-style one on the same device: attention written out as matmul-softmax-matmul (as the
official code), fp16 autocast with a gradient scaler, and the classifier's dead last-block
compute kept (docs/reference.md).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import types
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch

from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.model import MaskedLGIFormer, create_model, list_models, model_info
from maedfer.model import layers as model_layers
from maedfer.training.optim import create_optimizer
from maedfer.training.precision import autocast, grad_scaler, resolve_precision


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_: Any) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` as explicit ops, the way the official code computes attention."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


@contextlib.contextmanager
def reference_attention() -> Iterator[None]:
    """Within the block, maedfer's attention layers use :func:`manual_attention` (not SDPA)."""
    proxy = types.SimpleNamespace(
        **{
            name: getattr(torch.nn.functional, name)
            for name in dir(torch.nn.functional)
            if not name.startswith("__")
        }
    )
    proxy.scaled_dot_product_attention = manual_attention
    with mock.patch.object(model_layers, "F", proxy):
        yield


def build_step(
    name: str,
    *,
    batch: int,
    device: torch.device,
    precision: str = "auto",
    overrides: dict[str, Any] | None = None,
    reference_style: bool = False,
) -> tuple[Callable[[], float], torch.nn.Module, str]:
    """A closure running one training step on a fixed synthetic batch; returns its loss.

    Args:
        name: a registered model (``mae_*`` = pre-training step, else fine-tuning step).
        batch: clips per step (even for the fine-tuning step: mixup mixes pairs).
        device, precision: where and how (``auto``: bf16 on GPU, fp32 on CPU).
        overrides: model overrides (tiny configs).
        reference_style: keep the classifier's dead tail (no ``skip_unused_tail``); the caller
            wraps calls in :func:`reference_attention` and asks for ``precision="fp16"``.
    Returns:
        ``(step, model, precision)``.
    """
    if name not in list_models():
        raise MaedferError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    precision = resolve_precision(precision, device)
    info = model_info(name)
    pretraining = info["kind"] == "pretrain"
    overrides = dict(overrides or {})
    if not pretraining and info["unused_tail"] and not reference_style:
        overrides.setdefault("skip_unused_tail", overrides.get("pooling", "region") == "region")
    model = create_model(name, **overrides).to(device)
    # (a model built with skip_unused_tail freezes its dead tail itself, as in the recipe)
    cfg = model.config
    video = torch.randn(
        batch, 3, cfg["num_frames"], cfg["img_size"], cfg["img_size"], device=device
    )
    optimizer = create_optimizer(
        model,
        lr=1e-4,
        betas=(0.9, 0.95) if pretraining else (0.9, 0.999),
        layer_decay=None if pretraining else 0.75,
        fused=False if reference_style else None,
    )
    scaler = grad_scaler(device, precision)
    model.train()
    if isinstance(model, MaskedLGIFormer):
        generator = torch.Generator().manual_seed(0)

        def loss_fn() -> torch.Tensor:
            mask = model.random_mask(batch, generator=generator).to(device)
            with autocast(device, precision):
                pred = model(video, mask)
            return model.loss(pred, model.targets(video, mask))
    else:
        from timm.loss import SoftTargetCrossEntropy

        from maedfer.pipelines import make_mixup

        mixup, criterion = make_mixup(cfg["num_classes"]), SoftTargetCrossEntropy()
        labels = torch.arange(batch, device=device) % cfg["num_classes"]

        def loss_fn() -> torch.Tensor:
            mixed, target = mixup(video, labels)
            with autocast(device, precision):
                logits = model(mixed)
            return criterion(logits.float(), target)

    def step() -> float:
        loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, model, precision


def time_steps(
    step: Callable[[], float], device: torch.device, *, warmup: int, repeats: int
) -> list[float]:
    """Seconds per call of ``step`` after ``warmup`` untimed calls (CUDA synchronised)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def quartiles(values: list[float]) -> dict[str, float]:
    """Median and p25/p75 (all three the single value when there is one)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2]}


def measure(
    name: str,
    *,
    batch: int,
    batches: int,
    device: torch.device,
    precision: str = "auto",
    overrides: dict[str, Any] | None = None,
    reference_style: bool = False,
    warmup: int = 1,
) -> dict[str, Any]:
    """Profile one training step; returns the figures of one row."""
    step, model, precision = build_step(
        name,
        batch=batch,
        device=device,
        precision=precision,
        overrides=overrides,
        reference_style=reference_style,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    context = reference_attention() if reference_style else contextlib.nullcontext()
    with context:
        times = time_steps(step, device, warmup=warmup, repeats=batches)
    spread = quartiles(times)
    row: dict[str, Any] = {
        "name": name,
        "batch": batch,
        "precision": precision,
        "kind": "pretrain" if model_info(name)["kind"] == "pretrain" else "finetune",
        "clips_per_s": batch / spread["median"],
        "step_s": spread,
        "clips_per_s_p25_p75": [batch / spread["p75"], batch / spread["p25"]],
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del step, model
    return row


def run(
    *,
    name: str | None = None,
    batch: int | None = None,
    batches: int | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``maedfer profile train``: clips/s of one training step of ``name`` (default
    ``lgi_former_base``; ``mae_*`` names profile the pre-training step); ``overrides`` set model
    fields (tiny configs from Python)."""
    dev = resolve_device(device)
    name = name or "lgi_former_base"
    batch = batch or (32 if dev.type == "cuda" else 2)
    batches = batches or (10 if dev.type == "cuda" else 2)
    if batch % 2 and name in list_models() and model_info(name)["kind"] != "pretrain":
        raise MaedferError(f"--batch ({batch}) must be even: the fine-tuning step mixes pairs")
    row = measure(name, batch=batch, batches=batches, device=dev, overrides=overrides)
    return {"stage": "train", "device": str(dev), "batch": batch, "batches": batches, **row}


def format_table(result: dict[str, Any]) -> str:
    """The lines ``maedfer profile train`` prints."""
    spread = result["step_s"]
    lines = [
        f"train-step profile on {result['device']} ({result['precision']}): {result['name']}, "
        f"{result['kind']} step, batch {result['batch']}",
        f"  clips/s       {result['clips_per_s']:.2f}",
        f"  s / step      {spread['median']:.4f} [p25 {spread['p25']:.4f}, "
        f"p75 {spread['p75']:.4f}] over {result['batches']} steps",
    ]
    if "peak_mem_gib" in result:
        lines.append(f"  peak memory   {result['peak_mem_gib']:.2f} GiB")
    return "\n".join(lines)
