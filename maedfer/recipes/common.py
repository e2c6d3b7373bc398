"""The steps both training recipes take in the same way, reading their configs into the
explicit values of the training library (docs/design.md, "The recipe interface").

Each recipe still writes its own ``setup()`` in its own order; these are the pieces whose
reading of the config is the same in both: the stride of the model's input contract, the run's
start (:func:`open_recipe_run`), the optimiser and schedule (:func:`optimisation`), the loop's
settings (:func:`loop_settings`) and the training part of ``describe()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maedfer.model import input_contract
from maedfer.recipes.config import PATH_KEYS, FinetuneConfig, PretrainConfig, to_dict
from maedfer.training import describe as describing
from maedfer.training import setup as building
from maedfer.training.distributed import DistEnv
from maedfer.training.loop import LoopSettings
from maedfer.training.run import RunStart, open_run
from maedfer.training.schedule import WarmupCosine

RecipeConfig = PretrainConfig | FinetuneConfig


def check_config(cfg: RecipeConfig) -> None:
    """Fill a null ``data.stride`` with the model's (its input contract), then validate the
    config (:meth:`maedfer.recipes.config.PretrainConfig.validate`).

    Raises:
        MaedferError: an unknown ``model.name``, or a value the config refuses.
    """
    if cfg.data.stride is None:
        cfg.data.stride = input_contract(cfg.model.name).stride
    cfg.validate()


def open_recipe_run(
    cfg: RecipeConfig, out: Path, env: DistEnv, *, dry_run: bool, final_outputs: tuple[str, ...]
) -> RunStart:
    """:func:`maedfer.training.run.open_run` with the recipe's ``run.resume``,
    ``run.overwrite`` and options."""
    return open_run(
        out,
        recipe=to_dict(cfg),
        resume=str(cfg.run.resume),
        overwrite=cfg.run.overwrite,
        is_main=env.is_main,
        dry_run=dry_run,
        final_outputs=final_outputs,
        path_keys=PATH_KEYS,
    )


@dataclass
class Optimisation:
    """The lr range, AdamW and its schedule of one run."""

    lr: tuple[float, float]
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine


def optimisation(
    cfg: RecipeConfig,
    raw: torch.nn.Module,
    *,
    total_batch: int,
    steps_per_epoch: int,
    state: dict[str, Any] | None,
) -> Optimisation:
    """The lr range (``optim.lr`` or ``optim.blr`` by the total batch), AdamW and the
    warmup-cosine schedule, resumed from ``state``."""
    o, s = cfg.optim, cfg.schedule
    lr = building.lr_range(lr=o.lr, blr=o.blr, min_blr=s.min_blr, total_batch=total_batch)
    optimizer = building.build_optimizer(
        raw,
        peak_lr=lr[0],
        weight_decay=o.weight_decay,
        betas=o.betas,
        eps=o.eps,
        layer_decay=o.layer_decay,
        state=state,
    )
    scheduler = building.build_schedule(
        optimizer,
        lr=lr,
        epochs=s.epochs,
        warmup_epochs=s.warmup_epochs,
        steps_per_epoch=steps_per_epoch,
        weight_decay=o.weight_decay,
        state=state,
    )
    return Optimisation(lr, optimizer, scheduler)


def loop_settings(cfg: RecipeConfig, name: str) -> LoopSettings:
    """The values :class:`~maedfer.training.loop.TrainLoop` runs by, from the config."""
    return LoopSettings(
        name=name,
        epochs=cfg.schedule.epochs,
        batch_size=cfg.data.batch_size,
        accum_steps=cfg.optim.accum_steps,
        max_steps=cfg.schedule.max_steps,
        log_every=cfg.run.log_every,
        max_nonfinite=cfg.run.max_nonfinite,
        clip_grad=cfg.optim.clip_grad,
        seed=cfg.run.seed,
        save_every=cfg.run.save_every,
        keep_checkpoints=cfg.run.keep_checkpoints,
        max_bad_share=cfg.data.max_bad_share,
    )


def total_batch(cfg: RecipeConfig, env: DistEnv) -> int:
    """Clips per optimiser step: batch size × accumulation × world size."""
    return cfg.data.batch_size * cfg.optim.accum_steps * env.world_size


def describe_training(
    cfg: RecipeConfig, opt: Optimisation, *, steps_per_epoch: int, precision: str, env: DistEnv
) -> dict[str, Any]:
    """The part of ``describe()`` both recipes share: optimiser groups, schedule, precision,
    world size and total batch."""
    schedule = describing.describe_schedule(
        lr=opt.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.schedule.epochs,
        warmup_epochs=cfg.schedule.warmup_epochs,
        max_steps=cfg.schedule.max_steps,
    )
    return describing.describe_training(
        optimizer=opt.optimizer,
        schedule=schedule,
        precision=precision,
        world_size=env.world_size,
        total_batch=total_batch(cfg, env),
    )
