"""The builders a recipe's ``setup()`` calls, each taking explicit values (docs/design.md,
"Wings": the training library reads no recipe config).

In the order the recipes call them: :func:`init_run` (process group, device, precision, seeds),
:func:`build_model` and :func:`place_model` (the model, resumed weights, DDP),
:func:`loader_options` (what every loader gets beside its ``data`` section),
:func:`steps_per_epoch`, :func:`lr_range`, :func:`build_optimizer` and :func:`build_schedule`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.model import create_model
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.distributed import DistEnv, init_distributed, wrap_ddp
from maedfer.training.optim import create_optimizer, scaled_lr
from maedfer.training.precision import resolve_precision
from maedfer.training.schedule import WarmupCosine

#: Model constructor arguments a recipe declares as config fields of its own
#: (``model.num_frames`` -> ``num_frames``), never through ``model.overrides``.
OWN_MODEL_FIELDS = {
    "num_frames": "num_frames",
    "img_size": "img_size",
    "drop_path_rate": "drop_path",
    "mask_ratio": "mask_ratio",
    "num_classes": "num_classes",
    "official_decoder_order": "official_decoder_order",
    "skip_unused_tail": "skip_unused_tail",
}


def init_run(*, device: str | None, precision: str, seed: int) -> tuple[DistEnv, str]:
    """Process group, device and precision; non-zero ranks keep quiet; global seeds set."""
    env = init_distributed(device)
    if not env.is_main:
        logging.getLogger("maedfer").setLevel(logging.ERROR)
    resolved = resolve_precision(precision, env.device)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return env, resolved


def build_model(name: str, overrides: dict[str, Any], own: dict[str, Any]) -> torch.nn.Module:
    """``create_model(name, **overrides, **own)`` with its errors as one-line ``MaedferError``.

    ``own`` are the constructor arguments the config declares as fields of its own
    (:data:`OWN_MODEL_FIELDS`); ``model.overrides`` may not set them too.
    """
    for key in overrides:
        if key in OWN_MODEL_FIELDS:
            raise MaedferError(f"model.overrides.{key}: set model.{OWN_MODEL_FIELDS[key]} instead")
    overrides = {**overrides, **own}
    try:
        return create_model(name, **overrides)
    except (ValueError, TypeError) as exc:
        raise MaedferError(f"model {name} with {overrides}: {exc}") from None


def place_model(
    model: torch.nn.Module, env: DistEnv, state: dict[str, Any] | None, checkpoint_path: Path
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Load the resumed weights (checked to fit), move to the device; (raw, DDP-wrapped)."""
    if state is not None:
        ckpt_io.check_model_matches(state, model, path=checkpoint_path)
        model.load_state_dict(state["model"])
    raw = model.to(env.device)
    return raw, wrap_ddp(raw, env)


def loader_options(model_config: dict[str, Any], env: DistEnv, seed: int) -> dict[str, Any]:
    """The ``build_loader`` arguments both recipes pass beside their ``data`` section: the
    model's input (the model decides frames and side), the run's seed and this rank's share."""
    return {
        "num_frames": model_config["num_frames"],
        "size": model_config["img_size"],
        "seed": seed,
        "device": str(env.device) if env.device.type == "cuda" else None,
        "rank": env.rank,
        "world_size": env.world_size,
    }


def steps_per_epoch(loader: Any, accum_steps: int) -> int:
    """Optimiser steps in one pass over ``loader``.

    Raises:
        MaedferError: too few batches for one step.
    """
    steps = len(loader) // accum_steps
    if steps < 1:
        raise MaedferError(
            f"{len(loader)} batches per epoch make no optimiser step with accum_steps "
            f"{accum_steps}; lower data.batch_size or optim.accum_steps"
        )
    return steps


def lr_range(
    *, lr: float | None, blr: float, min_blr: float, total_batch: int
) -> tuple[float, float]:
    """(peak lr, cosine end): ``blr``/``min_blr`` × total batch / 256, or an absolute ``lr``
    with the reference's min/peak ratio."""
    peak = lr or scaled_lr(blr, total_batch)
    low = scaled_lr(min_blr, total_batch)
    if lr is not None:
        low = lr * min_blr / blr
    return peak, low


def build_optimizer(
    raw: torch.nn.Module,
    *,
    peak_lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    layer_decay: float | None,
    state: dict[str, Any] | None,
) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups (:func:`maedfer.training.optim.create_optimizer`),
    its resumed state loaded."""
    optimizer = create_optimizer(
        raw,
        lr=peak_lr,
        weight_decay=weight_decay,
        betas=(betas[0], betas[1]),
        eps=eps,
        layer_decay=layer_decay,
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return optimizer


def build_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    lr: tuple[float, float],
    epochs: int,
    warmup_epochs: float,
    steps_per_epoch: int,
    weight_decay: float,
    state: dict[str, Any] | None,
) -> WarmupCosine:
    """Per-step linear warmup then cosine from ``lr[0]`` to ``lr[1]``, its resumed state
    loaded."""
    scheduler = WarmupCosine(
        optimizer,
        lr=lr[0],
        min_lr=lr[1],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        weight_decay=weight_decay,
    )
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
    return scheduler
