"""The training loop's running sums, kept on the device and read only every few steps.

Reading a loss (``loss.item()``) or a gradient norm (``float(norm)``) makes the host wait for
the GPU, so every step would wait for the previous one before it could queue the next. The
:class:`DeviceTally` keeps on the loss's device, per step, the micro-batch losses that are
finite and the count of those that are not, the epoch's and the log window's sums, the last
gradient norm and whether each step was bad; :meth:`DeviceTally.read` fetches them all in one
copy, which the loop does at its log points (``run.log_every``), at the end of an epoch and when
it stops. The arithmetic is the float64 of the host sums it replaces, in the same order, so the
logged losses and the saved progress are the same numbers.

A step whose loss was not finite is skipped on the device, as ``GradScaler`` skips one whose
gradients are not: the flag :meth:`DeviceTally.end_step` returns goes to the optimiser
(``found_inf`` of a fused AdamW), so no value is read. A run of ``run.max_nonfinite`` bad steps
in a row trips the stop, and every later step is skipped too, so the model stays as it was at
that step; the loop raises the stop, naming that exact step, at its next read.

Documented in docs/runs.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maedfer.training.distributed import DistEnv, all_reduce_sum_


@dataclass
class Reading:
    """What one :meth:`DeviceTally.read` brings back to the host."""

    epoch: list[float]  # loss sum, finite count of the epoch
    window: list[float]  # the same since the window's start
    bad_steps: list[tuple[int, bool]]  # (step number, not finite) of each step since the read
    grad_norm: float | None  # of the last step (None: no clipping, or the step was skipped)


class DeviceTally:
    """The loop's sums on ``device`` (see the module notes)."""

    def __init__(self, device: torch.device, max_nonfinite: int) -> None:
        self.device, self.max_nonfinite = device, max_nonfinite
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.step_loss, self.step_bad = zero.clone(), zero.clone()
        self.epoch = torch.zeros(2, dtype=torch.float64, device=device)
        self.window = torch.zeros(2, dtype=torch.float64, device=device)
        self.run = zero.clone()  # bad steps in a row
        self.tripped = torch.zeros((), dtype=torch.bool, device=device)
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.grad_norm: torch.Tensor | None = None
        self.last_bad: torch.Tensor | None = None

    def start(self, epoch: list[float], window: list[float]) -> None:
        """Continue from the progress's sums (a new epoch, or a resumed one)."""
        self.epoch = torch.tensor(epoch, dtype=torch.float64).to(self.device)
        self.window = torch.tensor(window[:2], dtype=torch.float64).to(self.device)

    def add(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss: summed when finite, counted when not."""
        value = loss.detach().double()
        finite = torch.isfinite(value)
        self.step_loss += torch.where(finite, value, 0.0)
        self.step_bad += (~finite).double()

    def end_step(self, accum: int, env: DistEnv, step: int) -> torch.Tensor:
        """Close optimiser step ``step`` (its number, from 1): one reduction over the ranks
        (loss sum, finite count, non-finite count), the sums of a good step added; returns
        the device flag "skip this step" (a bad one, or any after the stop tripped)."""
        sums = all_reduce_sum_(
            torch.stack([self.step_loss, accum - self.step_bad, self.step_bad]), env
        )
        bad = sums[2] > 0
        keep = (~bad).double()
        self.epoch += sums[:2] * keep
        self.window += sums[:2] * keep
        self.run = (self.run + 1) * bad.double()
        self.tripped |= self.run >= self.max_nonfinite
        self.pending.append((step, bad))
        self.last_bad = bad
        self.step_loss.zero_()
        self.step_bad.zero_()
        return bad | self.tripped

    def read(self) -> Reading:
        """Everything since the last read, in one device-to-host copy."""
        parts = [
            self.epoch,
            self.window,
            torch.stack([b for _, b in self.pending]).double() if self.pending else self.epoch[:0],
        ]
        grad, last_bad = self.grad_norm, self.last_bad
        norm = grad is not None and last_bad is not None
        if grad is not None and last_bad is not None:
            parts += [grad.detach().double().view(1), last_bad.double().view(1)]
        values = torch.cat(parts).tolist()
        flags = values[4 : 4 + len(self.pending)]
        bad_steps = [(step, bool(f)) for (step, _), f in zip(self.pending, flags, strict=True)]
        grad_norm = None
        if norm and not values[-1]:
            grad_norm = values[-2]
        self.pending = []
        return Reading(values[:2], values[2:4], bad_steps, grad_norm)

    def reset_window(self) -> None:
        self.window.zero_()
