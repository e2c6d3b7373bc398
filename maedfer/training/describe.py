"""What ``--dry-run`` reports of the training library's part of a recipe: the optimiser's
groups, the schedule and the parameter counts (docs/runs.md). Plain dicts, printed by the
command line (``--json`` or :func:`maedfer.cli.training.format_description`)."""

from __future__ import annotations

from typing import Any

import torch


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """One entry per distinct (lr scale, weight decay): ``params`` (tensors) and ``numel``."""
    merged: dict[tuple[float, float], dict[str, Any]] = {}
    for group in optimizer.param_groups:
        key = (float(group["lr_scale"]), float(group["weight_decay"]))
        entry = merged.setdefault(
            key, {"lr_scale": key[0], "weight_decay": key[1], "params": 0, "numel": 0}
        )
        entry["params"] += len(group["params"])
        entry["numel"] += sum(p.numel() for p in group["params"])
    first = optimizer.param_groups[0]
    return {
        "name": "adamw",
        "betas": list(first["betas"]),
        "eps": first["eps"],
        "groups": sorted(merged.values(), key=lambda g: (g["lr_scale"], -g["weight_decay"])),
    }


def describe_schedule(
    *,
    lr: tuple[float, float],
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    max_steps: int | None,
) -> dict[str, Any]:
    """Steps, warmup steps and the lr range of a warmup-cosine schedule."""
    total = epochs * steps_per_epoch
    warmup = min(max(int(warmup_epochs * steps_per_epoch), 0), total)
    return {
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "peak_lr": lr[0],
        "min_lr": lr[1],
        "max_steps": max_steps,
    }


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameters in all, trainable ones, and tensors."""
    params = list(model.parameters())
    return {
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "tensors": len(params),
    }


def describe_training(
    *,
    optimizer: torch.optim.Optimizer,
    schedule: dict[str, Any],
    precision: str,
    world_size: int,
    total_batch: int,
) -> dict[str, Any]:
    """The part of a recipe's ``describe()`` the library knows: optimiser groups, schedule,
    precision, world size and total batch."""
    return {
        "optimizer": describe_optimizer(optimizer),
        "schedule": schedule,
        "precision": precision,
        "world_size": world_size,
        "total_batch": total_batch,
    }
