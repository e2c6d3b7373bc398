"""The training loop the recipes share: progress, the epoch skeleton, the one checkpoint writer.

A recipe (:mod:`maedfer.recipes.pretrain`, :mod:`maedfer.recipes.finetune`) builds its own
model, data and loss step and hands them over as :class:`TrainParts`, with the values the loop
runs by as :class:`LoopSettings` (torchtune's rule: the library reads no recipe config;
docs/design.md, "Wings"):

- :class:`TrainingProgress` — where the run is (epochs, steps, the current epoch's loss sums,
  the metrics window, non-finite counts), one dataclass with ``state_dict()``;
- :class:`TrainLoop` — the epoch skeleton (micro-batches, gradient accumulation, one reduction
  per step, the non-finite guard, the schedule, metrics lines, the stop signals) and
  :meth:`TrainLoop.save_checkpoint`, **the one place that writes a checkpoint**.

The rest of the shared bookkeeping lives beside it: :mod:`maedfer.training.run` (deciding,
recording and closing a run), :mod:`maedfer.training.setup` (the builders of ``setup()``) and
:mod:`maedfer.training.describe` (what ``--dry-run`` reports).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from maedfer.errors import MaedferError
from maedfer.pipelines.loader import TooManyBadClips
from maedfer.training import badclips
from maedfer.training import checkpoint as ckpt_io
from maedfer.training import distributed as dist_io
from maedfer.training.distributed import DistEnv, all_reduce_sum
from maedfer.training.runtime import MetricsLog, StopSignals, nonfinite_stop, step_seed
from maedfer.training.schedule import WarmupCosine
from maedfer.training.tally import DeviceTally

log = logging.getLogger(__name__)

LossStep = Callable[[Any, int, int], torch.Tensor]


@dataclass
class TrainingProgress:
    """Where a run is; saved in the checkpoint (keys of ``state_dict()``: ``epoch``, ``step``,
    ``epoch_step``, ``epoch_stats``, ``log_window``, ``nonfinite_steps``)."""

    epochs_run: int = 0  # epochs completed
    global_step: int = 0  # optimiser steps completed
    epoch_step: int = 0  # optimiser steps completed inside the current epoch
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss, in total
    nonfinite_run: int = 0  # ... in a row, now (not saved: a resume starts a new row)
    epoch_stats: list[float] = field(default_factory=lambda: [0.0, 0.0])  # loss sum, count
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # since the last line

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epochs_run,
            "step": self.global_step,
            "epoch_step": self.epoch_step,
            "epoch_stats": list(self.epoch_stats),
            "log_window": list(self.window),
            "nonfinite_steps": self.nonfinite_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_run, self.global_step = int(state["epoch"]), int(state["step"])
        self.epoch_step = int(state["epoch_step"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.epoch_stats = [float(v) for v in state.get("epoch_stats", [0.0, 0.0])]
        self.window = list(state.get("log_window", [0.0, 0.0, 0]))


@dataclass(frozen=True)
class LoopSettings:
    """The values a :class:`TrainLoop` runs by (a recipe reads them off its config).

    Attributes:
        name: the progress bar's label (``pretrain``, ``finetune``).
        epochs: epochs scheduled; max_steps: stop after this many optimiser steps (None: no cap).
        batch_size: clips per process and micro-batch; accum_steps: micro-batches per step.
        log_every: optimiser steps per metrics line; max_nonfinite: stop after this many
            non-finite losses in a row.
        clip_grad: clip the gradient norm to this (None: no clipping).
        seed: the run's seed (per-step seeds derive from it).
        save_every: also keep ``checkpoints/epoch-NNNN.pt`` every N epochs (None: only
            ``last.pt``); keep_checkpoints: how many of them (None: all).
        max_bad_share: the run stops once more than this share of its training clips were
            faulty (1: never).

    Raises:
        MaedferError: a count (epochs, batch size, accumulation, logging, non-finite steps, a
            step cap) below 1, or a non-positive ``clip_grad``.
    """

    name: str
    epochs: int
    batch_size: int
    accum_steps: int = 1
    max_steps: int | None = None
    log_every: int = 10
    max_nonfinite: int = 5
    clip_grad: float | None = None
    seed: int = 0
    save_every: int | None = None
    keep_checkpoints: int | None = 3
    max_bad_share: float = 1.0

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "accum_steps", "log_every", "max_nonfinite"):
            if getattr(self, key) < 1:
                raise MaedferError(f"{key} ({getattr(self, key)}) must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise MaedferError(f"max_steps ({self.max_steps}) must be at least 1")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise MaedferError(f"clip_grad ({self.clip_grad}) must be positive")


@dataclass
class TrainParts:
    """What a recipe's ``setup()`` built, handed to the loop.

    Attributes:
        env: this process's place (:class:`~maedfer.training.distributed.DistEnv`).
        model: the model the loss step calls (DDP-wrapped when distributed); raw: unwrapped.
        optimizer, scheduler, scaler: AdamW, its warmup-cosine schedule, the gradient scaler.
        loader: the training loader (``set_epoch``, ``len``, iteration, ``num_bad``,
            ``dataset_size``, ``faults``).
        metrics: the run's ``metrics.jsonl``.
        steps_per_epoch: optimiser steps per epoch.
        checkpoint_path: ``RUN/checkpoints/last.pt``.
        loss_step: ``(batch, epoch, micro) -> loss`` of one micro-batch of this rank.
        extra_state: what the recipe adds to the checkpoint (``config``, ``classes``,
            ``recipe``).
    """

    env: DistEnv
    model: torch.nn.Module
    raw: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    scaler: torch.amp.GradScaler
    loader: Any
    metrics: MetricsLog
    steps_per_epoch: int
    checkpoint_path: Path
    loss_step: LossStep
    extra_state: dict[str, Any] = field(default_factory=dict)


class TrainLoop:
    """The epoch skeleton shared by the recipes; the recipe gives the loss of a micro-batch
    (:attr:`TrainParts.loss_step`) and the values it runs by (:class:`LoopSettings`); the loop
    reads no recipe config."""

    def __init__(self, parts: TrainParts, settings: LoopSettings) -> None:
        self.parts, self.settings = parts, settings
        self.model: Any = parts.model  # None after close(): the DDP wrapper holds the group
        self.name, self.env, self.raw = settings.name, parts.env, parts.raw
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.loader, self.metrics = parts.loader, parts.metrics
        self.steps_per_epoch, self.checkpoint_path = parts.steps_per_epoch, parts.checkpoint_path
        self.loss_step, self.extra_state = parts.loss_step, parts.extra_state
        self.progress = TrainingProgress()
        self.good_checkpoint: Path | None = None  # saved or resumed by this run
        self.stopped_by: str | None = None
        self.tally = DeviceTally(self.env.device, settings.max_nonfinite)
        self._skip: torch.Tensor | None = None  # the current step's "skip it" device flag
        self._bar: Any = None  # the epoch's progress bar (tqdm)
        self._window_started = 0.0

    @property
    def total_batch(self) -> int:
        """Clips per optimiser step over every process."""
        s = self.settings
        return s.batch_size * s.accum_steps * self.env.world_size

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's progress, scaler and RNG states."""
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress.load_state_dict(state)
        ckpt_io.set_rng_state(state["rng"])
        self.good_checkpoint = self.checkpoint_path
        log.info(
            "resumed %s at epoch %d, step %d",
            self.checkpoint_path,
            self.progress.epochs_run,
            self.progress.global_step,
        )

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip (optionally), step and zero; returns the gradient norm (on the device) when
        clipping. The step is skipped where the device flag ``self._skip`` is set: by the fused
        optimiser itself (``found_inf``, as ``GradScaler`` skips; nothing is read), by the
        scaler in fp16 (the gradients of a non-finite loss are not finite), else on the host.
        """
        grad_norm, skip = None, self._skip
        clip = self.settings.clip_grad
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.raw.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.optimizer.defaults.get("fused"):
            assert skip is not None, "train_epoch sets the step's flag"
            setattr(self.optimizer, "found_inf", skip.float())  # noqa: B010 (fused AdamW reads it)
            try:
                self.optimizer.step()
            finally:
                delattr(self.optimizer, "found_inf")
        elif not bool(skip):  # a host read: free on the CPU (CUDA optimisers are fused)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def train_epoch(self, epoch: int, stop: StopSignals) -> str:
        """One epoch from ``progress.epoch_step``; returns ``done``, ``stopped`` or
        ``max_steps``.

        Resuming inside an epoch replays the loader and skips the batches already trained (the
        loader's batches are a pure function of seed, epoch and position). Nothing is read
        from the device between log points (:mod:`maedfer.training.tally`).
        """
        env, accum, seed = self.env, self.settings.accum_steps, self.settings.seed
        self.loader.set_epoch(epoch)
        skip = self.progress.epoch_step * accum
        if skip:
            log.info("epoch %d: skipping the %d batches trained before the resume", epoch + 1, skip)
        self._bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.progress.epoch_step,
            disable=not env.is_main,
            desc=f"{self.name} {epoch + 1}/{self.settings.epochs}",
            unit="step",
            leave=False,
        )
        self._window_started = time.perf_counter()
        self.tally.start(self.progress.epoch_stats, self.progress.window)
        with self._bar:
            for micro, batch in enumerate(self.loader):
                if micro < skip:
                    continue
                if micro % accum == 0:
                    lr = self.scheduler.apply(self.progress.global_step)
                last = micro % accum == accum - 1
                torch.manual_seed(step_seed(seed, 2, epoch, micro, env.rank))
                sync = last or not env.distributed
                with contextlib.nullcontext() if sync else self.model.no_sync():
                    loss = self.loss_step(batch, epoch, micro)
                    self.tally.add(loss)
                    self.scaler.scale(loss / accum).backward()
                if not last:
                    continue
                self._skip = self.tally.end_step(accum, env, self.progress.global_step + 1)
                # a stop asked for from here on stops after the next step (as the reduction
                # that carried the request used to come first)
                stopping = self._stopping(
                    stop,
                    self._log_point(self.progress.global_step + 1, self.progress.epoch_step + 1),
                )
                self.tally.grad_norm = self.optimizer_step()
                self.scheduler.step()
                outcome = self.record_step(epoch, lr, stop, stopping)
                if outcome != "continue":
                    return outcome
        self.read(epoch)  # the loader ended before the epoch's last step (nothing was read)
        return "done"

    def read(self, epoch: int) -> float | None:
        """Bring the device's sums into ``progress`` (one copy): log each skipped step, raise
        the non-finite stop at the exact step that tripped it; returns the last step's
        gradient norm."""
        p, reading = self.progress, self.tally.read()
        p.epoch_stats = reading.epoch
        p.window[:2] = reading.window
        for step, bad in reading.bad_steps:
            if not bad:
                p.nonfinite_run = 0
                continue
            p.nonfinite_steps += 1
            p.nonfinite_run += 1
            log.warning(
                "non-finite loss at epoch %d, step %d: step skipped (%d so far)",
                epoch + 1,
                step,
                p.nonfinite_steps,
            )
            if p.nonfinite_run >= self.settings.max_nonfinite:
                raise nonfinite_stop(
                    p.nonfinite_run, epoch=epoch + 1, step=step, checkpoint=self.good_checkpoint
                )
        return reading.grad_norm

    def _stopping(self, stop: StopSignals, log_point: bool) -> bool:
        """Whether every rank stops after this step: checked each step in one process, at log
        points across processes (agreeing needs a reduction, which waits for the device)."""
        if not self.env.distributed:
            return stop.signum is not None
        if not log_point:
            return False
        return bool(all_reduce_sum([float(stop.signum is not None)], self.env)[0])

    def _log_point(self, step: int, epoch_step: int) -> bool:
        """Whether step ``step`` (``epoch_step`` of its epoch) writes a metrics line."""
        max_steps = self.settings.max_steps
        return (
            step % self.settings.log_every == 0
            or epoch_step == self.steps_per_epoch
            or (max_steps is not None and step >= max_steps)
        )

    def record_step(self, epoch: int, lr: float, stop: StopSignals, stopping: bool) -> str:
        """Count a finished optimiser step, update the bar and, at log points, the metrics;
        say what comes next."""
        p, window = self.progress, self.progress.window
        p.global_step += 1
        p.epoch_step += 1
        window[2] += 1
        self._bar.update()
        end_of_epoch = p.epoch_step == self.steps_per_epoch
        max_steps = self.settings.max_steps
        at_max = max_steps is not None and p.global_step >= max_steps
        log_point = self._log_point(p.global_step, p.epoch_step)
        if stopping:
            self.stopped_by = stop.name or "signal"
        if log_point or stopping:
            grad_norm = self.read(epoch)
            elapsed = time.perf_counter() - self._window_started
            clips = window[2] * self.total_batch / max(elapsed, 1e-9)
            mean = f"{window[0] / window[1]:.4f}" if window[1] else "nan"
            self._bar.set_postfix(loss=mean, lr=f"{lr:.2e}", clips_s=f"{clips:.1f}")
            self.metrics.write(
                {
                    "kind": "train",
                    "epoch": epoch + 1,
                    "step": p.global_step,
                    "loss": window[0] / window[1] if window[1] else None,
                    "lr": lr,
                    "clips_per_s": clips,
                    "grad_norm": grad_norm,
                    "nonfinite_steps": p.nonfinite_steps,
                }
            )
            window[:], self._window_started = [0.0, 0.0, 0], time.perf_counter()
            self.tally.reset_window()
        if stopping:
            return "stopped"
        if at_max:
            return "max_steps"
        return "done" if end_of_epoch else "continue"

    def end_epoch(self, epoch: int, seconds: float) -> None:
        p = self.progress
        total, count = p.epoch_stats
        num_bad = all_reduce_sum([float(self.loader.num_bad)], self.env)[0]
        p.epochs_run, p.epoch_step, p.epoch_stats = epoch + 1, 0, [0.0, 0.0]
        self.metrics.write(
            {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": p.global_step,
                "loss": total / count if count else None,
                "time_s": seconds,
                "num_bad": int(num_bad),
                "nonfinite_steps": p.nonfinite_steps,
            }
        )
        self.record_bad_clips()

    def record_bad_clips(self, *, stopped: bool = False) -> Path | None:
        """Add the faulty training clips met so far to ``RUN/bad_clips.json`` (every rank's,
        written by rank 0; a rank that stops for too many writes its own)."""
        found = getattr(self.loader, "faults", None)
        found = dict(found.reasons) if found is not None else {}
        if not stopped:
            merged: dict[str, str] = {}
            for part in dist_io.gather_objects(found, self.env):
                merged.update(part)
            found = merged
        if not (self.env.is_main or stopped):
            return None
        return badclips.record(
            self.checkpoint_path.parent.parent,
            found,
            train_clips=self.loader.dataset_size,
            max_bad_share=self.settings.max_bad_share,
            stopped=stopped,
        )

    def run(self, after_epoch: Callable[[str], None] | None = None) -> str:
        """The remaining epochs, a checkpoint after each (and on a stop); returns the last
        outcome (``done``, ``stopped``, ``max_steps``). ``after_epoch(outcome)`` runs after
        each completed epoch, before its checkpoint (the fine-tuning recipe tests there).

        Raises:
            MaedferError: the loss stayed non-finite for ``max_nonfinite`` steps in a row, or
                more than ``max_bad_share`` of the training clips were faulty (after listing
                them in ``RUN/bad_clips.json``).
        """
        outcome = "done"
        with StopSignals() as stop:
            for epoch in range(self.progress.epochs_run, self.settings.epochs):
                epoch_started = time.perf_counter()
                try:
                    outcome = self.train_epoch(epoch, stop)
                except TooManyBadClips as exc:
                    raise self.bad_clips_stop(exc) from None
                if self.progress.epoch_step == self.steps_per_epoch:
                    self.end_epoch(epoch, time.perf_counter() - epoch_started)
                    if after_epoch is not None:
                        after_epoch(outcome)
                self.save_checkpoint()
                if outcome != "done":
                    break
        return outcome

    def last_epoch_loss(self) -> float | None:
        last: dict[str, Any] = next(
            (r for r in reversed(list(self.metrics.records())) if r.get("kind") == "epoch"), {}
        )
        return last.get("loss")

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` (rank 0; atomic) with everything an exact resume needs.

        This is the one place a run writes a checkpoint.
        """
        self.good_checkpoint = self.checkpoint_path  # every rank: rank 0 writes it now
        if not self.env.is_main:
            return
        raw = self.raw
        ckpt_io.save_checkpoint(
            self.checkpoint_path,
            {
                "format": ckpt_io.FORMAT,
                "version": ckpt_io.VERSION,
                "model_name": raw.model_name,
                "model_config": ckpt_io.plain(raw.config),
                "model": raw.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                **self.progress.state_dict(),
                "rng": ckpt_io.rng_state(),
                **self.extra_state,
            },
        )
        s, p = self.settings, self.progress
        if s.save_every and p.epoch_step == 0 and p.epochs_run and p.epochs_run % s.save_every == 0:
            ckpt_io.save_numbered(
                self.checkpoint_path.parent.parent,
                self.checkpoint_path,
                p.epochs_run,
                keep=s.keep_checkpoints,
            )

    def bad_clips_stop(self, exc: TooManyBadClips) -> MaedferError:
        """The one line of a run stopped for too many faulty clips, after listing them."""
        path = self.record_bad_clips(stopped=True)
        where = f"; all are listed in {path}" if path is not None else ""
        return MaedferError(
            f"{exc}{where}: restore or re-prepare those clips (or raise data.max_bad_share), "
            "then run the same command again (it resumes from the last checkpoint)"
        )
