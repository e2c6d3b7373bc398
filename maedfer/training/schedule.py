"""Per-step warmup + cosine schedules of the lr and the weight decay (docs/recipe.md).

The reference (MAE-DFER ``utils.cosine_scheduler``) builds one value per optimiser step for the
whole run: ``warmup_epochs × steps_per_epoch`` values from ``np.linspace(start, base, n)``
(both ends included, so the first step runs at ``start`` = 0 and the last warmup step at the
peak), then a half cosine from ``base`` towards ``final`` over the remaining steps,
``final + (base - final) / 2 × (1 + cos(π i / n_cos))`` for ``i = 0 .. n_cos - 1`` (so ``final``
itself is never reached). Steps are optimiser steps: with gradient accumulation the value changes
once per accumulated step. The weight decay has the same kind of schedule, from
``weight_decay`` to ``weight_decay_end``; the reference leaves the end unset, i.e. constant.

Example: base 1e-3, final 1e-6, 2 epochs of 3 steps, 1 warmup epoch ->
``[0, 5e-4, 1e-3, 1e-3, 7.5e-4, 2.5e-4]`` (to 2 significant digits).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError


def cosine_schedule(
    base: float,
    final: float,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    warmup_steps: int | None = None,
    start: float = 0.0,
) -> np.ndarray:
    """One value per optimiser step, ``(epochs × steps_per_epoch,)`` float64 (see module doc).

    ``warmup_steps`` (when given) overrides ``warmup_epochs``; warmup longer than the run is cut
    to the run.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise MaedferError(
            f"epochs ({epochs}) and steps per epoch ({steps_per_epoch}) must be at least 1; "
            "is the training set smaller than one total batch?"
        )
    total = epochs * steps_per_epoch
    warmup = int(warmup_steps if warmup_steps is not None else warmup_epochs * steps_per_epoch)
    warmup = min(max(warmup, 0), total)
    head = np.linspace(start, base, warmup) if warmup else np.empty(0)
    n_cos = total - warmup
    i = np.arange(n_cos, dtype=np.float64)
    tail = final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * i / max(n_cos, 1)))
    return np.concatenate((head, tail))


class WarmupCosine:
    """Sets each optimiser group's lr (``value × lr_scale``) and weight decay per step.

    Args:
        optimizer: groups made by :func:`maedfer.training.optim.param_groups` (``lr_scale``).
        lr: peak lr (already scaled by total batch / 256).
        min_lr: the cosine's end.
        epochs, steps_per_epoch: the run's length in optimiser steps.
        warmup_epochs: linear warmup from 0.
        weight_decay, weight_decay_end: the decay schedule; ``None`` end = constant.

    ``state_dict()`` holds plain numbers (the next step and the schedule's parameters), so a
    checkpoint of it loads with ``weights_only=True``; loading checks the parameters match.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr: float,
        min_lr: float,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0,
        weight_decay: float = 0.0,
        weight_decay_end: float | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.params = {
            "lr": float(lr),
            "min_lr": float(min_lr),
            "epochs": int(epochs),
            "steps_per_epoch": int(steps_per_epoch),
            "warmup_epochs": float(warmup_epochs),
            "weight_decay": float(weight_decay),
            "weight_decay_end": None if weight_decay_end is None else float(weight_decay_end),
        }
        self.lr_values = cosine_schedule(
            lr,
            min_lr,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=warmup_epochs,
        )
        end = weight_decay if weight_decay_end is None else weight_decay_end
        self.wd_values = cosine_schedule(
            weight_decay, end, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
        self.step_index = 0

    @property
    def total_steps(self) -> int:
        return len(self.lr_values)

    def apply(self, step: int | None = None) -> float:
        """Set the groups for optimiser step ``step`` (default: the next one); returns the lr.

        Past the end the last value is kept (a run extended with more epochs than scheduled).
        """
        step = self.step_index if step is None else step
        i = min(step, self.total_steps - 1)
        lr, wd = float(self.lr_values[i]), float(self.wd_values[i])
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if group["weight_decay"] > 0:
                group["weight_decay"] = wd
        return lr

    def step(self) -> None:
        """Advance to the next optimiser step."""
        self.step_index += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step_index": self.step_index, **self.params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step; the schedule itself must be the one this run computed.

        Raises:
            MaedferError: the checkpoint's schedule differs (another lr, batch or epochs).
        """
        differ = [
            f"{k} {state.get(k)!r} -> {v!r}" for k, v in self.params.items() if state.get(k) != v
        ]
        if differ:
            raise MaedferError(
                "the checkpoint's lr schedule differs from this run's ("
                + ", ".join(differ)
                + "); resume with the same epochs, batch size, accumulation, processes and lr"
            )
        self.step_index = int(state["step_index"])
