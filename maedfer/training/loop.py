"""The training loop both recipes share: progress, resume, non-finite guard, logging, checkpoints.

A recipe (:mod:`maedfer.recipes.pretrain`, :mod:`maedfer.recipes.finetune`) builds its own model,
data and loss step; everything that is bookkeeping lives here once (torchtune keeps the same
pieces in ``torchtune/training/``):

- :class:`TrainingProgress` — where the run is (epochs, steps, the current epoch's loss sums,
  the metrics window, non-finite counts), one dataclass with ``state_dict()``;
- :func:`decide_run` — **the one place that decides whether a run starts, resumes, is already
  finished or is refused** (``run.resume`` auto/true/false, ``run.overwrite``);
- :func:`start_records` — **the one place where a run writes its records at start**
  (``config.yaml``, ``env.json``, ``metrics.jsonl``, TensorBoard events), and
  :func:`finish_run` the mark of a finished run (``final.pt``, ``run_state.json``);
- :class:`TrainLoop` — the epoch skeleton (micro-batches, gradient accumulation, one reduction
  per step, the non-finite guard, the schedule, metrics lines, the stop signals) and
  :meth:`TrainLoop.save_checkpoint`, **the one place that writes a checkpoint**;
- small builders shared by the recipes' ``setup()`` (process group and precision, the lr range,
  the optimiser and schedule) and the parts of ``describe()`` that do not depend on the recipe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from maedfer.atomic import remove_stale
from maedfer.errors import MaedferError
from maedfer.lock import RunLock
from maedfer.model import create_model
from maedfer.pipelines.loader import TooManyBadClips
from maedfer.recipes import config as config_io
from maedfer.training import badclips
from maedfer.training import checkpoint as ckpt_io
from maedfer.training import distributed as dist_io
from maedfer.training.distributed import (
    DistEnv,
    all_reduce_sum,
    cleanup,
    init_distributed,
    wrap_ddp,
)
from maedfer.training.optim import create_optimizer, scaled_lr
from maedfer.training.precision import resolve_precision
from maedfer.training.records import CONFIG_YAML, TensorBoardLog, write_config_yaml, write_env_json
from maedfer.training.resume import ResumeDecision, decide_resume, mark_finished, prepare_run_dir
from maedfer.training.runtime import MetricsLog, StopSignals, nonfinite_stop, step_seed
from maedfer.training.schedule import WarmupCosine
from maedfer.training.tally import DeviceTally

log = logging.getLogger(__name__)


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
            "epoch": self.epochs_run, "step": self.global_step, "epoch_step": self.epoch_step,
            "epoch_stats": list(self.epoch_stats), "log_window": list(self.window),
            "nonfinite_steps": self.nonfinite_steps,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_run, self.global_step = int(state["epoch"]), int(state["step"])
        self.epoch_step = int(state["epoch_step"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.epoch_stats = [float(v) for v in state.get("epoch_stats", [0.0, 0.0])]
        self.window = list(state.get("log_window", [0.0, 0.0, 0]))


# ---------------------------------------------------------------------------- setup pieces


def init_run(run_cfg: Any) -> tuple[DistEnv, str]:
    """Process group, device and precision; non-zero ranks keep quiet; global seeds set."""
    env = init_distributed(run_cfg.device)
    if not env.is_main:
        logging.getLogger("maedfer").setLevel(logging.ERROR)
    precision = resolve_precision(run_cfg.precision, env.device)
    torch.manual_seed(run_cfg.seed)
    np.random.seed(run_cfg.seed % 2**32)
    return env, precision


def resume_value(resume: str | bool | None) -> str | None:
    """``run.resume`` from a flag: ``True``/``False`` (the Python API) as ``true``/``false``."""
    if isinstance(resume, bool):
        return "true" if resume else "false"
    return resume


def decide_run(cfg: Any, out: Path, *, final_outputs: tuple[str, ...] = ()) -> ResumeDecision:
    """Start, resume, leave a finished run alone, or refuse: the one place a recipe decides it
    (:func:`maedfer.training.resume.decide_resume`; nothing on disk changes here).

    Raises:
        MaedferError: a checkpoint of another recipe (the keys that differ), ``resume`` true
            without a checkpoint, false with a run in ``out``, an unreadable checkpoint.
    """
    return decide_resume(out, config_io.to_dict(cfg), resume=cfg.run.resume,
                         overwrite=cfg.run.overwrite, final_outputs=final_outputs)


def open_run(recipe: Any, *, final_outputs: tuple[str, ...] = ()) -> bool:
    """Take the run folder's lock (rank 0; not for a dry run, which writes nothing) and decide
    the run (:func:`decide_run`) for ``recipe``; True when ``--out`` holds a finished run and
    nothing is to be built (a dry run builds it all the same). The lock is held until
    :func:`close`: a second command into the same folder is refused (:mod:`maedfer.lock`)."""
    recipe._lock = RunLock()
    if recipe._env.is_main and not recipe.dry_run:
        recipe._lock.take(recipe.out, what="choose another --out (run.out)")
        for folder in (recipe.out, recipe.checkpoint_path.parent):  # a killed save's temporary
            remove_stale(folder)
    recipe._decision = decide_run(recipe.cfg, recipe.out, final_outputs=final_outputs)
    recipe._state = recipe._decision.state
    if recipe._decision.action == "finished" and not recipe.dry_run:
        recipe.finished = recipe._decision
        return True
    return False


def describe_training(recipe: Any) -> dict[str, Any]:
    """The part of ``describe()`` both recipes share: optimiser groups, schedule, precision,
    world size and total batch."""
    return {
        "optimizer": describe_optimizer(recipe._optimizer),
        "schedule": describe_schedule(recipe._scheduler, recipe._lr, recipe._steps_per_epoch,
                                      recipe.cfg.schedule),
        "precision": recipe._precision, "world_size": recipe._env.world_size,
        "total_batch": recipe.total_batch,
    }  # fmt: skip


def start_records(lp: TrainLoop, decision: ResumeDecision, resolved: dict[str, Any],
                  recipe: str) -> None:
    """Write the run's records at its start: the one place for it (rank 0 writes).

    A fresh start first removes what an earlier start left (``--overwrite``: the whole run);
    ``metrics.jsonl`` starts afresh, or on resume loses the lines written after the
    checkpoint; ``config.yaml`` (the resolved recipe: replay it with ``--config``),
    ``env.json`` (versions, commit, devices) and TensorBoard events under ``tb/`` follow.
    """
    env, state, out = lp.env, decision.state, decision.run_dir
    if env.is_main:
        prepare_run_dir(decision)
    if state is None:
        lp.metrics.reset()
    else:
        lp.metrics.truncate_after(int(state["step"]))
    if env.is_main:
        facts = {"world_size": env.world_size, "total_batch": lp.total_batch,
                 "peak_lr": lp.scheduler.params["lr"], "min_lr": lp.scheduler.params["min_lr"],
                 "steps_per_epoch": lp.steps_per_epoch}  # fmt: skip
        resolved = {**resolved, config_io.RESOLVED: facts}
        write_config_yaml(out, resolved, header=f"resolved {recipe} recipe; replay it with: "
                          f"maedfer {recipe} --config {out / CONFIG_YAML} --out NEW_FOLDER")
        write_env_json(out, {"recipe": recipe}, world_size=env.world_size)
    purge = int(state["step"]) + 1 if state is not None else None
    lp.metrics.mirrors.append(TensorBoardLog(out, enabled=env.is_main, purge_step=purge))


def finish_run(lp: TrainLoop, out: Path) -> None:
    """A run that did all its epochs: the weights-only export, then ``run_state.json`` (the
    mark a re-run reads to leave the run alone), rank 0."""
    if lp.env.is_main:
        ckpt_io.export_weights(lp.checkpoint_path)
        mark_finished(out, epoch=lp.progress.epochs_run, step=lp.progress.global_step)


def lr_range(optim: Any, schedule: Any, total_batch: int) -> tuple[float, float]:
    """(peak lr, cosine end): ``blr``/``min_blr`` × total batch / 256, or an absolute ``lr``
    with the reference's min/peak ratio."""
    peak = optim.lr or scaled_lr(optim.blr, total_batch)
    low = scaled_lr(schedule.min_blr, total_batch)
    if optim.lr is not None:
        low = optim.lr * schedule.min_blr / optim.blr
    return peak, low


def build_model(name: str, overrides: dict[str, Any], own: dict[str, Any]) -> torch.nn.Module:
    """``create_model(name, **overrides, **own)`` with its errors as one-line ``MaedferError``.

    ``own`` are the constructor arguments the config declares as fields of its own
    (``model.num_frames`` -> ``num_frames``); ``model.overrides`` may not set them too.
    """
    fields = {"num_frames": "num_frames", "img_size": "img_size", "drop_path_rate": "drop_path",
              "mask_ratio": "mask_ratio", "num_classes": "num_classes",
              "official_decoder_order": "official_decoder_order",
              "skip_unused_tail": "skip_unused_tail"}
    for key in overrides:
        if key in fields:
            raise MaedferError(f"model.overrides.{key}: set model.{fields[key]} instead")
    overrides = {**overrides, **own}
    try:
        return create_model(name, **overrides)
    except (ValueError, TypeError) as exc:
        raise MaedferError(f"model {name} with {overrides}: {exc}") from None


def place_model(model: torch.nn.Module, env: DistEnv, state: dict[str, Any] | None,
                checkpoint_path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Load the resumed weights (checked to fit), move to the device; (raw, DDP-wrapped)."""
    if state is not None:
        ckpt_io.check_model_matches(state, model, path=checkpoint_path)
        model.load_state_dict(state["model"])
    raw = model.to(env.device)
    return raw, wrap_ddp(raw, env)


def build_optimizer(raw: torch.nn.Module, optim: Any, peak_lr: float,
                    state: dict[str, Any] | None) -> torch.optim.Optimizer:
    optimizer = create_optimizer(raw, lr=peak_lr, weight_decay=optim.weight_decay,
                                 betas=tuple(optim.betas), eps=optim.eps,
                                 layer_decay=optim.layer_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return optimizer


def build_schedule(optimizer: torch.optim.Optimizer, *, optim: Any, schedule: Any,
                   lr: tuple[float, float], steps_per_epoch: int,
                   state: dict[str, Any] | None) -> WarmupCosine:
    scheduler = WarmupCosine(
        optimizer, lr=lr[0], min_lr=lr[1], epochs=schedule.epochs,
        steps_per_epoch=steps_per_epoch, warmup_epochs=schedule.warmup_epochs,
        weight_decay=optim.weight_decay,
    )  # fmt: skip
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
    return scheduler


def loader_options(model_config: dict[str, Any], env: DistEnv, seed: int) -> dict[str, Any]:
    """The ``build_loader`` arguments both recipes pass beside their ``data`` section: the
    model's input (the model decides frames and side), the run's seed and this rank's share."""
    return {
        "num_frames": model_config["num_frames"], "size": model_config["img_size"],
        "seed": seed, "device": str(env.device) if env.device.type == "cuda" else None,
        "rank": env.rank, "world_size": env.world_size,
    }  # fmt: skip


def steps_per_epoch(loader: Any, accum_steps: int) -> int:
    steps = len(loader) // accum_steps
    if steps < 1:
        raise MaedferError(
            f"{len(loader)} batches per epoch make no optimiser step with accum_steps "
            f"{accum_steps}; lower data.batch_size or optim.accum_steps"
        )
    return steps


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """One entry per distinct (lr scale, weight decay): ``params`` (tensors) and ``numel``."""
    merged: dict[tuple[float, float], dict[str, Any]] = {}
    for group in optimizer.param_groups:
        key = (float(group["lr_scale"]), float(group["weight_decay"]))
        entry = merged.setdefault(key, {"lr_scale": key[0], "weight_decay": key[1],
                                        "params": 0, "numel": 0})
        entry["params"] += len(group["params"])
        entry["numel"] += sum(p.numel() for p in group["params"])
    first = optimizer.param_groups[0]
    return {
        "name": "adamw", "betas": list(first["betas"]), "eps": first["eps"],
        "groups": sorted(merged.values(), key=lambda g: (g["lr_scale"], -g["weight_decay"])),
    }


def describe_schedule(scheduler: WarmupCosine, lr: tuple[float, float],
                      steps_per_epoch: int, schedule: Any) -> dict[str, Any]:
    total = schedule.epochs * steps_per_epoch
    warmup = min(max(int(schedule.warmup_epochs * steps_per_epoch), 0), total)
    return {
        "steps": total, "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup,
        "peak_lr": lr[0], "min_lr": lr[1], "max_steps": schedule.max_steps,
    }  # fmt: skip


# ---------------------------------------------------------------------------- the loop


class TrainLoop:
    """The epoch skeleton shared by the recipes; the recipe gives the loss of a micro-batch.

    Args:
        name: the bar's label (``pretrain``, ``finetune``).
        loss_step: ``(batch, epoch, micro) -> loss`` of one micro-batch of this rank.
        extra_state: what the recipe adds to the checkpoint (``config``, ``classes``).
    """

    def __init__(self, *, name: str, env: DistEnv, model: torch.nn.Module, raw: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: WarmupCosine,
                 scaler: torch.amp.GradScaler, loader: Any, metrics: MetricsLog, cfg: Any,
                 steps_per_epoch: int, checkpoint_path: Path,
                 loss_step: Callable[[Any, int, int], torch.Tensor],
                 extra_state: dict[str, Any]) -> None:
        self.name, self.env, self.model, self.raw = name, env, model, raw
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.loader, self.metrics, self.cfg = loader, metrics, cfg
        self.steps_per_epoch, self.checkpoint_path = steps_per_epoch, checkpoint_path
        self.loss_step, self.extra_state = loss_step, extra_state
        self.progress = TrainingProgress()
        self.good_checkpoint: Path | None = None  # saved or resumed by this run
        self.stopped_by: str | None = None
        self.tally = DeviceTally(env.device, cfg.run.max_nonfinite)
        self._skip: torch.Tensor | None = None  # the current step's "skip it" device flag

    @property
    def total_batch(self) -> int:
        return self.cfg.data.batch_size * self.cfg.optim.accum_steps * self.env.world_size

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's progress, scaler and RNG states."""
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress.load_state_dict(state)
        ckpt_io.set_rng_state(state["rng"])
        self.good_checkpoint = self.checkpoint_path
        log.info("resumed %s at epoch %d, step %d", self.checkpoint_path,
                 self.progress.epochs_run, self.progress.global_step)

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip (optionally), step and zero; returns the gradient norm (on the device) when
        clipping. The step is skipped where the device flag ``self._skip`` is set: by the fused
        optimiser itself (``found_inf``, as ``GradScaler`` skips; nothing is read), by the
        scaler in fp16 (the gradients of a non-finite loss are not finite), else on the host.
        """
        grad_norm, skip = None, self._skip
        clip = self.cfg.optim.clip_grad
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.raw.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = skip.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
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
        env, accum, seed = self.env, self.cfg.optim.accum_steps, self.cfg.run.seed
        self.loader.set_epoch(epoch)
        skip = self.progress.epoch_step * accum
        if skip:
            log.info("epoch %d: skipping the %d batches trained before the resume", epoch + 1, skip)
        self._bar = tqdm(total=self.steps_per_epoch, initial=self.progress.epoch_step,
                         disable=not env.is_main,
                         desc=f"{self.name} {epoch + 1}/{self.cfg.schedule.epochs}",
                         unit="step", leave=False)
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
                stopping = self._stopping(stop, self._log_point(self.progress.global_step + 1,
                                                                self.progress.epoch_step + 1))
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
            log.warning("non-finite loss at epoch %d, step %d: step skipped (%d so far)",
                        epoch + 1, step, p.nonfinite_steps)
            if p.nonfinite_run >= self.cfg.run.max_nonfinite:
                raise nonfinite_stop(p.nonfinite_run, epoch=epoch + 1, step=step,
                                     checkpoint=self.good_checkpoint)
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
        max_steps = self.cfg.schedule.max_steps
        return (step % self.cfg.run.log_every == 0 or epoch_step == self.steps_per_epoch
                or (max_steps is not None and step >= max_steps))  # fmt: skip

    def record_step(self, epoch: int, lr: float, stop: StopSignals, stopping: bool) -> str:
        """Count a finished optimiser step, update the bar and, at log points, the metrics;
        say what comes next."""
        p, window = self.progress, self.progress.window
        p.global_step += 1
        p.epoch_step += 1
        window[2] += 1
        self._bar.update()
        end_of_epoch = p.epoch_step == self.steps_per_epoch
        max_steps = self.cfg.schedule.max_steps
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
            self.metrics.write({
                "kind": "train", "epoch": epoch + 1, "step": p.global_step,
                "loss": window[0] / window[1] if window[1] else None, "lr": lr,
                "clips_per_s": clips, "grad_norm": grad_norm,
                "nonfinite_steps": p.nonfinite_steps,
            })  # fmt: skip
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
        self.metrics.write({
            "kind": "epoch", "epoch": epoch + 1, "step": p.global_step,
            "loss": total / count if count else None, "time_s": seconds,
            "num_bad": int(num_bad), "nonfinite_steps": p.nonfinite_steps,
        })  # fmt: skip
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
        return badclips.record(self.checkpoint_path.parent.parent, found,
                               train_clips=self.loader.dataset_size,
                               max_bad_share=self.cfg.data.max_bad_share, stopped=stopped)

    def run(self, after_epoch: Callable[[str], None] | None = None) -> str:
        """The remaining epochs, a checkpoint after each (and on a stop); returns the last
        outcome (``done``, ``stopped``, ``max_steps``). ``after_epoch(outcome)`` runs after
        each completed epoch, before its checkpoint (the fine-tuning recipe tests there)."""
        outcome = "done"
        with StopSignals() as stop:
            for epoch in range(self.progress.epochs_run, self.cfg.schedule.epochs):
                epoch_started = time.perf_counter()
                outcome = self.train_epoch(epoch, stop)
                if self.progress.epoch_step == self.steps_per_epoch:
                    self.end_epoch(epoch, time.perf_counter() - epoch_started)
                    if after_epoch is not None:
                        after_epoch(outcome)
                self.save_checkpoint()
                if outcome != "done":
                    break
        return outcome

    def last_epoch_loss(self) -> float | None:
        last = next((r for r in reversed(list(self.metrics.records()))
                     if r.get("kind") == "epoch"), {})  # fmt: skip
        return last.get("loss")

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` (rank 0; atomic) with everything an exact resume needs.

        This is the one place a run writes a checkpoint.
        """
        self.good_checkpoint = self.checkpoint_path  # every rank: rank 0 writes it now
        if not self.env.is_main:
            return
        raw = self.raw
        ckpt_io.save_checkpoint(self.checkpoint_path, {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "model_name": raw.model_name, "model_config": ckpt_io.plain(raw.config),
            "model": raw.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            **self.progress.state_dict(), "rng": ckpt_io.rng_state(),
            **self.extra_state,
        })  # fmt: skip
        run, p = self.cfg.run, self.progress
        if run.save_every and p.epoch_step == 0 and p.epochs_run and \
                p.epochs_run % run.save_every == 0:
            ckpt_io.save_numbered(self.checkpoint_path.parent.parent, self.checkpoint_path,
                                  p.epochs_run, keep=run.keep_checkpoints)


def close(recipe: Any, *, completed: bool) -> None:
    """Leave the process group; ``completed`` is False after an error (no barrier then:
    another rank may never reach it)."""
    env = getattr(recipe, "_env", None)
    recipe._model = None  # the DDP wrapper holds the process group (see cleanup())
    loop = getattr(recipe, "_loop", None)
    if loop is not None:
        loop.model = None
        loop.metrics.close()  # flushes TensorBoard's events
    if env is not None:
        cleanup(env, synchronize=completed)
    lock = getattr(recipe, "_lock", None)
    if lock is not None:
        lock.release()


def check_common(cfg: Any) -> None:
    """The checks of options both recipes share (in the constructor, before any work).

    Raises:
        MaedferError: ``schedule.epochs``, ``data.batch_size``, ``optim.accum_steps``,
            ``run.log_every`` or ``run.max_nonfinite`` below 1, ``schedule.max_steps`` below 1,
            an ``optim.lr``, ``optim.blr`` or ``optim.clip_grad`` that is not positive, a
            negative ``schedule.warmup_epochs``, ``data.stride`` below 1, or an unknown
            ``model.name``. A ``data.stride`` of null becomes the model's (its input contract).
    """
    if cfg.data.stride is None:
        from maedfer.model import input_contract

        cfg.data.stride = input_contract(cfg.model.name).stride
    for key in ("schedule.epochs", "data.batch_size", "optim.accum_steps", "run.log_every",
                "run.max_nonfinite", "data.stride"):
        value = _get(cfg, key)
        if value < 1:
            raise MaedferError(f"{key} ({value}) must be at least 1")
    for key in ("schedule.max_steps", "data.workers"):
        value = _get(cfg, key)
        if value is not None and value < (1 if key == "schedule.max_steps" else 0):
            raise MaedferError(f"{key} ({value}) must be at least "
                               f"{1 if key == 'schedule.max_steps' else 0}")
    for key in ("optim.lr", "optim.blr", "optim.clip_grad", "schedule.min_blr"):
        value = _get(cfg, key)
        if value is not None and not value > 0:
            raise MaedferError(f"{key} ({value}) must be positive")
    if cfg.schedule.warmup_epochs < 0:
        raise MaedferError(f"schedule.warmup_epochs ({cfg.schedule.warmup_epochs}) must be >= 0")
    if cfg.optim.layer_decay is not None and not 0 < cfg.optim.layer_decay <= 1:
        raise MaedferError(f"optim.layer_decay ({cfg.optim.layer_decay}) must be in (0, 1]")


def _get(cfg: Any, key: str) -> Any:
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def count_params(model: torch.nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {"params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "tensors": len(params)}


def format_description(d: dict[str, Any]) -> str:
    """The human-readable ``--dry-run`` text of a ``describe()`` dict."""
    data, sched, opt = d["data"], d["schedule"], d["optimizer"]
    aug = ", ".join(a["name"] + (f" {a['policy']}" if "policy" in a else "")
                    for a in data["augment"]) or "none"
    lines = [
        f"{d['recipe']} (dry run: built, nothing trained or written)",
        f"  model: {d['model']['name']}, {d['model']['params']:,} parameters "
        f"({d['model']['trainable_params']:,} trainable)",
        f"  data: {data['train_clips']} train clips"
        + (f", {data['test_clips']} test clips" if data.get("test_clips") is not None else "")
        + f", backend {data['backend']}, window {data['temporal_rule']} "
        f"(stride {d['config']['data']['stride']})",
        f"  augment: {aug}",
        f"  optimizer: AdamW betas {tuple(opt['betas'])}, {len(opt['groups'])} groups of "
        "(lr scale, weight decay)",
        f"  schedule: {sched['steps']} steps ({sched['steps_per_epoch']}/epoch), warmup "
        f"{sched['warmup_steps']}, peak lr {sched['peak_lr']:.4g}, min lr {sched['min_lr']:.4g}",
        f"  precision {d['precision']}, world size {d['world_size']}, total batch "
        f"{d['total_batch']}",
        f"  run folder: {d['config']['run']['out']}",
    ]
    return "\n".join(lines)


def _bad_clips_stop(recipe: Any, exc: TooManyBadClips) -> MaedferError:
    """The one line of a run stopped for too many faulty clips, after listing them."""
    lp = getattr(recipe, "_loop", None)
    path = lp.record_bad_clips(stopped=True) if lp is not None else None
    where = f"; all are listed in {path}" if path is not None else ""
    return MaedferError(
        f"{exc}{where}: restore or re-prepare those clips (or raise data.max_bad_share), then "
        "run the same command again (it resumes from the last checkpoint)"
    )


def execute(recipe: Any, *, dry_run: bool, as_json: bool, quiet: bool, summary: Any) -> dict:
    """Set up, then describe (dry run) or train; always clean up (shared by both recipes)."""
    completed = False
    recipe.dry_run = dry_run
    try:
        recipe.setup()
        if recipe.finished is not None:  # a finished run in --out: nothing is touched
            completed = True
            if recipe._env.is_main and not quiet:
                print(recipe.finished.message)
            return {"finished": True, "out": str(recipe.out),
                    "message": recipe.finished.message}
        try:
            result = recipe.describe() if dry_run else recipe.train()
        except TooManyBadClips as exc:
            raise _bad_clips_stop(recipe, exc) from None
        completed = True
    finally:
        recipe.cleanup(completed=completed)
    if not recipe._env.is_main:
        return result
    if dry_run:
        print(json.dumps(result, indent=2) if as_json else format_description(result))
        return result
    if not quiet:
        print(summary(result))
    if result["stopped_by"]:
        raise SystemExit(130 if result["stopped_by"] == "SIGINT" else 143)
    return result
