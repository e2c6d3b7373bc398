"""MAE pre-training recipe: ``maedfer pretrain`` (MODEL.md §3, §5.1; DESIGN.md §6).

One readable loop in the torchtune manner: :class:`PretrainRecipe` checks its options in the
constructor, ``setup()`` builds (in order) the process group, the resumed state, the model, the
loader, the optimiser, the schedule and the scaler; ``train()`` runs the epochs;
``save_checkpoint()`` writes ``<out>/checkpoints/last.pt``; ``cleanup()`` leaves the process
group. :func:`run` is what the CLI calls.

Per optimiser step: ``accum_steps`` micro-batches, each masked with part-window tube masks drawn
for the *global* batch from a seed of (seed, epoch, micro-batch) and sliced by rank — the rows a
rank holds are positions ``rank, rank + W, …`` of the global batch (the loader's sharding), so W
processes with batch b draw exactly the masks one process with batch W·b would. Loss =
``model.loss(model(video, mask), model.targets(video, mask))`` under autocast; gradients are
averaged by DDP; AdamW (0.9, 0.95), weight decay 0.05 except 1-D tensors, biases and
``mask_token``; lr = blr × total batch / 256, per-step linear warmup then cosine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from maedfer.errors import MaedferError
from maedfer.model import MaskedLGIFormer, create_model
from maedfer.train import checkpoint as ckpt_io
from maedfer.train.distributed import DistEnv, all_reduce_sum, cleanup, init_distributed, wrap_ddp
from maedfer.train.optim import create_optimizer, scaled_lr
from maedfer.train.precision import PRECISIONS, autocast, grad_scaler, resolve_precision
from maedfer.train.runtime import (
    MetricsLog,
    StopSignals,
    nonfinite_stop,
    parse_overrides,
    step_seed,
)
from maedfer.train.schedule import WarmupCosine

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Options of a pre-training run; defaults are MODEL.md §5.1's."""

    data: Path
    out: Path = Path("runs/pretrain")
    model: str = "mae_lgi_former_base"
    model_overrides: dict[str, Any] | list[str] | None = None
    epochs: int = 100
    batch_size: int = 32
    accum_steps: int = 1
    lr: float | None = None
    blr: float = 3e-4
    min_blr: float = 1e-5
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    mask_ratio: float | None = None
    clip_grad: float | None = None
    precision: str = "auto"
    device: str | None = None
    backend: str = "auto"
    workers: int | None = None
    resume: bool = False
    seed: int = 0
    num_frames: int | None = None
    size: int | None = None
    stride: int = 4
    subtract_mean: bool = False
    log_every: int = 10
    max_steps: int | None = None
    max_nonfinite: int = 5


class PretrainRecipe:
    """MAE pre-training of a ``mae_lgi_former_*`` model on a manifest.

    Raises:
        MaedferError: in the constructor, for ``epochs``, ``batch_size``, ``accum_steps``,
            ``log_every`` or ``max_nonfinite`` below 1, ``max_steps`` below 1, a ``lr``,
            ``blr`` or ``clip_grad`` that is not positive, ``mask_ratio`` outside (0, 1), an
            unknown precision, or a model name that is not a pre-training model; in ``setup()``
            for ``--resume`` without a checkpoint, a checkpoint of another architecture, or
            data too small for one optimiser step; in ``train()`` when the loss stays
            non-finite for ``max_nonfinite`` steps in a row.
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "max_nonfinite"):
            if getattr(cfg, name) < 1:
                raise MaedferError(f"{name} ({getattr(cfg, name)}) must be at least 1")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise MaedferError(f"max_steps ({cfg.max_steps}) must be at least 1")
        for name in ("lr", "blr", "clip_grad"):
            value = getattr(cfg, name)
            if value is not None and not value > 0:
                raise MaedferError(f"{name} ({value}) must be positive")
        if cfg.mask_ratio is not None and not 0 < cfg.mask_ratio < 1:
            raise MaedferError(f"mask_ratio ({cfg.mask_ratio}) must be in (0, 1)")
        if cfg.precision not in PRECISIONS:
            raise MaedferError(
                f"precision {cfg.precision!r} is unknown; choose one of {PRECISIONS}"
            )
        if not cfg.model.startswith("mae_"):
            raise MaedferError(
                f"pretrain needs a pre-training model (mae_lgi_former_*), got {cfg.model!r}"
            )
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / "checkpoints" / ckpt_io.LAST
        self._good_checkpoint: Path | None = None  # saved or resumed by this run
        self.epochs_run = 0  # epochs completed
        self.global_step = 0  # optimiser steps completed
        self.epoch_step = 0  # optimiser steps completed inside the current epoch
        self.nonfinite_steps = 0
        self._nonfinite_run = 0
        self._epoch_stats = [0.0, 0.0]  # loss sum and count of the current epoch (all ranks)
        self._window = [0.0, 0.0, 0]  # loss sum, count and steps since the last metrics line
        self.stopped_by: str | None = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.cfg
        # 1. process group and device; non-zero ranks keep quiet
        self._env: DistEnv = init_distributed(cfg.device)
        if not self._env.is_main:
            logging.getLogger("maedfer").setLevel(logging.ERROR)
        self._precision = resolve_precision(cfg.precision, self._env.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        # 2. the checkpoint to resume (read before building anything that it restores)
        state = self._load_resume()
        # 3. model (DDP-wrapped when distributed); 4. data; 5. optimiser; 6. schedule; 7. scaler
        self._model = self._setup_model(state)
        self._loader = self._setup_data()
        self._steps_per_epoch = len(self._loader) // cfg.accum_steps
        if self._steps_per_epoch < 1:
            raise MaedferError(
                f"{len(self._loader)} batches per epoch make no optimiser step with "
                f"accum_steps {cfg.accum_steps}; lower --batch-size or --accum-steps"
            )
        self._optimizer = self._setup_optimizer(state)
        self._scheduler = self._setup_schedule(state)
        self._scaler = grad_scaler(self._env.device, self._precision)
        self._metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self._env.is_main)
        if state is None:
            self._metrics.reset()
        else:
            self._restore_progress(state)
        log.info(
            "pretrain %s: %d clips, %d steps/epoch, total batch %d, peak lr %.3g, %s",
            cfg.model, self._loader.dataset_size, self._steps_per_epoch, self.total_batch,
            self.peak_lr, self._precision,
        )  # fmt: skip

    @property
    def total_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.accum_steps * self._env.world_size

    @property
    def peak_lr(self) -> float:
        return self.cfg.lr or scaled_lr(self.cfg.blr, self.total_batch)

    def _load_resume(self) -> dict[str, Any] | None:
        if not self.cfg.resume:
            if self.checkpoint_path.exists():
                log.warning("%s exists and --resume is off: starting afresh, it will be "
                            "replaced", self.checkpoint_path)
            return None
        if not self.checkpoint_path.is_file():
            raise MaedferError(f"--resume: no checkpoint at {self.checkpoint_path}")
        state = ckpt_io.load_checkpoint(self.checkpoint_path)
        self._good_checkpoint = self.checkpoint_path
        return state

    def _model_overrides(self) -> dict[str, Any]:
        cfg = self.cfg
        overrides = parse_overrides(cfg.model_overrides)
        for key, value in (("mask_ratio", cfg.mask_ratio), ("num_frames", cfg.num_frames),
                           ("img_size", cfg.size)):
            if value is not None:
                overrides[key] = value
        return overrides

    def _setup_model(self, state: dict[str, Any] | None) -> torch.nn.Module:
        overrides = self._model_overrides()
        try:
            model = create_model(self.cfg.model, **overrides)
        except (ValueError, TypeError) as exc:
            raise MaedferError(f"model {self.cfg.model} with {overrides}: {exc}") from None
        if not isinstance(model, MaskedLGIFormer):
            raise MaedferError(f"{self.cfg.model} is not a pre-training model")
        if state is not None:
            ckpt_io.check_model_matches(state, model, path=self.checkpoint_path)
            model.load_state_dict(state["model"])
        self._raw = model.to(self._env.device)
        return wrap_ddp(self._raw, self._env)

    def _setup_data(self):  # noqa: ANN202 (a maedfer.pipelines.ClipLoader)
        from maedfer.pipelines import build_loader

        cfg, env, model_cfg = self.cfg, self._env, self._raw.config
        options: dict[str, Any] = {"workers": cfg.workers} if cfg.workers is not None else {}
        return build_loader(
            cfg.data, mode="pretrain", batch_size=cfg.batch_size,
            num_frames=model_cfg["num_frames"], stride=cfg.stride, size=model_cfg["img_size"],
            backend=cfg.backend, device=str(env.device) if env.device.type == "cuda" else None,
            seed=cfg.seed, rank=env.rank, world_size=env.world_size,
            subtract_mean=cfg.subtract_mean, **options,
        )  # fmt: skip

    def _setup_optimizer(self, state: dict[str, Any] | None) -> torch.optim.Optimizer:
        cfg = self.cfg
        optimizer = create_optimizer(
            self._raw, lr=self.peak_lr, weight_decay=cfg.weight_decay, betas=cfg.betas
        )
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        return optimizer

    def _setup_schedule(self, state: dict[str, Any] | None) -> WarmupCosine:
        cfg = self.cfg
        min_lr = scaled_lr(cfg.min_blr, self.total_batch)
        if cfg.lr is not None:  # an absolute lr keeps the reference's min/peak ratio
            min_lr = cfg.lr * cfg.min_blr / cfg.blr
        scheduler = WarmupCosine(
            self._optimizer, lr=self.peak_lr, min_lr=min_lr, epochs=cfg.epochs,
            steps_per_epoch=self._steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        if state is not None:
            scheduler.load_state_dict(state["scheduler"])
        return scheduler

    def _restore_progress(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self._scaler.load_state_dict(state["scaler"])
        self.epochs_run, self.global_step = int(state["epoch"]), int(state["step"])
        self.epoch_step = int(state["epoch_step"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self._epoch_stats = [float(v) for v in state.get("epoch_stats", [0.0, 0.0])]
        self._window = list(state.get("log_window", [0.0, 0.0, 0]))
        ckpt_io.set_rng_state(state["rng"])
        self._metrics.truncate_after(self.global_step)
        log.info("resumed %s at epoch %d, step %d", self.checkpoint_path, self.epochs_run,
                 self.global_step)

    # ------------------------------------------------------------------ training

    def _loss_step(self, video: torch.Tensor, epoch: int, micro: int) -> torch.Tensor:
        """Loss of one micro-batch ``video (b, 3, T, H, W)`` of this rank."""
        env = self._env
        generator = torch.Generator().manual_seed(step_seed(self.cfg.seed, 1, epoch, micro))
        masks = self._raw.random_mask(video.shape[0] * env.world_size, generator=generator)
        mask = masks[env.rank :: env.world_size].to(env.device, non_blocking=True)
        with autocast(env.device, self._precision):
            pred = self._model(video, mask)
        return self._raw.loss(pred, self._raw.targets(video, mask))

    def _optimizer_step(self) -> float | None:
        """Clip (optionally), step and zero; returns the gradient norm when clipping."""
        grad_norm = None
        if self.cfg.clip_grad is not None:
            self._scaler.unscale_(self._optimizer)
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self._raw.parameters(), self.cfg.clip_grad)
            )
        self._scaler.step(self._optimizer)
        self._scaler.update()
        self._optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _count_nonfinite(self, bad: float, epoch: int) -> None:
        if not bad:
            self._nonfinite_run = 0
            return
        self.nonfinite_steps += 1
        self._nonfinite_run += 1
        self._optimizer.zero_grad(set_to_none=True)
        log.warning("non-finite loss at epoch %d, step %d: step skipped (%d so far)",
                    epoch + 1, self.global_step + 1, self.nonfinite_steps)
        if self._nonfinite_run >= self.cfg.max_nonfinite:
            raise nonfinite_stop(self._nonfinite_run, epoch=epoch + 1, step=self.global_step + 1,
                                 checkpoint=self._good_checkpoint)

    def _train_epoch(self, epoch: int, stop: StopSignals) -> str:
        """One epoch from ``self.epoch_step``; returns ``done``, ``stopped`` or ``max_steps``.

        Resuming inside an epoch replays the loader and skips the batches already trained (the
        loader's batches are a pure function of seed, epoch and position).
        """
        cfg, env, accum = self.cfg, self._env, self.cfg.accum_steps
        self._loader.set_epoch(epoch)
        skip = self.epoch_step * accum
        if skip:
            log.info("epoch %d: skipping the %d batches trained before the resume", epoch + 1, skip)
        self._bar = tqdm(total=self._steps_per_epoch, initial=self.epoch_step,
                         disable=not env.is_main, desc=f"pretrain {epoch + 1}/{cfg.epochs}",
                         unit="step", leave=False)
        self._window_started = time.perf_counter()
        step_loss = step_bad = 0.0
        with self._bar:
            for micro, batch in enumerate(self._loader):
                if micro < skip:
                    continue
                if micro % accum == 0:
                    lr = self._scheduler.apply(self.global_step)
                    step_loss = step_bad = 0.0
                last = micro % accum == accum - 1
                video = batch["video"].to(env.device, non_blocking=True)
                torch.manual_seed(step_seed(cfg.seed, 2, epoch, micro, env.rank))
                sync = last or not env.distributed
                with contextlib.nullcontext() if sync else self._model.no_sync():
                    loss = self._loss_step(video, epoch, micro)
                    value = loss.item()
                    self._scaler.scale(loss / accum).backward()
                if math.isfinite(value):
                    step_loss += value
                else:
                    step_bad += 1
                if not last:
                    continue
                # one reduction per step: loss, finite count, non-finite count, stop request
                loss_sum, count, bad, stopping = all_reduce_sum(
                    [step_loss, accum - step_bad, step_bad, float(stop.signum is not None)], env
                )
                self._count_nonfinite(bad, epoch)
                grad_norm = None if bad else self._optimizer_step()
                self._scheduler.step()
                outcome = self._record_step(epoch, lr, loss_sum, count, bad, grad_norm, stopping)
                if stopping:
                    self.stopped_by = stop.name or "signal"
                if outcome != "continue":
                    return outcome
        return "done"

    def _record_step(self, epoch: int, lr: float, loss_sum: float, count: float, bad: float,
                     grad_norm: float | None, stopping: float) -> str:
        """Count a finished optimiser step, update the bar and metrics; say what comes next."""
        cfg, window = self.cfg, self._window
        self.global_step += 1
        self.epoch_step += 1
        if not bad:
            self._epoch_stats[0] += loss_sum
            self._epoch_stats[1] += count
            window[0] += loss_sum
            window[1] += count
        window[2] += 1
        self._bar.update()
        mean = f"{loss_sum / count:.4f}" if count else "nan"
        self._bar.set_postfix(loss=mean, lr=f"{lr:.2e}", refresh=False)
        end_of_epoch = self.epoch_step == self._steps_per_epoch
        at_max = cfg.max_steps is not None and self.global_step >= cfg.max_steps
        if self.global_step % cfg.log_every == 0 or end_of_epoch or at_max or stopping:
            elapsed = time.perf_counter() - self._window_started
            clips = window[2] * self.total_batch / max(elapsed, 1e-9)
            self._bar.set_postfix(loss=mean, lr=f"{lr:.2e}", clips_s=f"{clips:.1f}")
            self._metrics.write({
                "kind": "train", "epoch": epoch + 1, "step": self.global_step,
                "loss": window[0] / window[1] if window[1] else None, "lr": lr,
                "clips_per_s": clips, "grad_norm": grad_norm,
                "nonfinite_steps": self.nonfinite_steps,
            })  # fmt: skip
            window[:], self._window_started = [0.0, 0.0, 0], time.perf_counter()
        if stopping:
            return "stopped"
        if at_max:
            return "max_steps"
        return "done" if end_of_epoch else "continue"

    def _end_epoch(self, epoch: int, seconds: float) -> None:
        total, count = self._epoch_stats
        num_bad = all_reduce_sum([float(self._loader.num_bad)], self._env)[0]
        self.epochs_run, self.epoch_step, self._epoch_stats = epoch + 1, 0, [0.0, 0.0]
        self._metrics.write({
            "kind": "epoch", "epoch": epoch + 1, "step": self.global_step,
            "loss": total / count if count else None, "time_s": seconds,
            "num_bad": int(num_bad), "nonfinite_steps": self.nonfinite_steps,
        })  # fmt: skip

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary :func:`run` prints."""
        cfg, started = self.cfg, time.perf_counter()
        with StopSignals() as stop:
            for epoch in range(self.epochs_run, cfg.epochs):
                epoch_started = time.perf_counter()
                outcome = self._train_epoch(epoch, stop)
                if self.epoch_step == self._steps_per_epoch:
                    self._end_epoch(epoch, time.perf_counter() - epoch_started)
                self.save_checkpoint()
                if outcome != "done":
                    break
        last = next((r for r in reversed(list(self._metrics.records()))
                     if r.get("kind") == "epoch"), {})  # fmt: skip
        return {
            "out": str(self.out), "checkpoint": str(self.checkpoint_path),
            "epochs": self.epochs_run, "steps": self.global_step,
            "loss": last.get("loss"), "stopped_by": self.stopped_by,
            "nonfinite_steps": self.nonfinite_steps, "time_s": time.perf_counter() - started,
        }

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` (rank 0; atomic) with everything an exact resume needs."""
        self._good_checkpoint = self.checkpoint_path  # every rank: rank 0 writes it now
        if not self._env.is_main:
            return
        ckpt_io.save_checkpoint(self.checkpoint_path, {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "model_name": self._raw.model_name, "model_config": ckpt_io.plain(self._raw.config),
            "model": self._raw.state_dict(), "optimizer": self._optimizer.state_dict(),
            "scheduler": self._scheduler.state_dict(), "scaler": self._scaler.state_dict(),
            "epoch": self.epochs_run, "step": self.global_step, "epoch_step": self.epoch_step,
            "epoch_stats": list(self._epoch_stats), "log_window": list(self._window),
            "nonfinite_steps": self.nonfinite_steps,
            "rng": ckpt_io.rng_state(), "config": ckpt_io.plain(dataclasses.asdict(self.cfg)),
            "classes": [],
        })  # fmt: skip

    def cleanup(self, *, completed: bool = True) -> None:
        """Leave the process group; ``completed`` is False after an error (no barrier then:
        another rank may never reach it)."""
        env = getattr(self, "_env", None)
        self._model = None  # the DDP wrapper holds the process group (see cleanup())
        if env is not None:
            cleanup(env, synchronize=completed)


def _summary(result: dict[str, Any]) -> str:
    loss = result["loss"]
    lines = [
        f"pretrain: {result['epochs']} epoch(s), {result['steps']} optimiser steps in "
        f"{result['time_s']:.1f} s" + (f", stopped by {result['stopped_by']}"
                                       if result["stopped_by"] else ""),
        f"  last epoch loss: {loss:.4f}" if loss is not None else "  no epoch completed",
        f"  checkpoint: {result['checkpoint']}",
        f"  metrics: {Path(result['out']) / 'metrics.jsonl'}",
    ]
    if result["nonfinite_steps"]:
        lines.append(f"  non-finite loss: {result['nonfinite_steps']} step(s) skipped")
    return "\n".join(lines)


def run(
    *,
    data: Path,
    out: Path = Path("runs/pretrain"),
    model: str = "mae_lgi_former_base",
    epochs: int | None = None,
    batch_size: int | None = None,
    accum_steps: int = 1,
    lr: float | None = None,
    blr: float | None = None,
    mask_ratio: float | None = None,
    device: str | None = None,
    backend: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    seed: int = 0,
    model_overrides: dict[str, Any] | list[str] | None = None,
    clip_grad: float | None = None,
    precision: str | None = None,
    num_frames: int | None = None,
    stride: int | None = None,
    size: int | None = None,
    subtract_mean: bool = False,
    log_every: int | None = None,
    max_steps: int | None = None,
    warmup_epochs: float | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """MAE pre-training (``maedfer pretrain``); ``None`` means MODEL.md §5.1's default.

    Returns the summary dict (``out``, ``checkpoint``, ``epochs``, ``steps``, ``loss`` of the
    last epoch, ``stopped_by``, ``nonfinite_steps``, ``time_s``). After SIGINT/SIGTERM the
    checkpoint is written and ``SystemExit(130 / 143)`` is raised.
    """
    given = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "blr": blr,
        "mask_ratio": mask_ratio, "workers": workers, "clip_grad": clip_grad,
        "precision": precision, "num_frames": num_frames, "stride": stride,
        "size": size,
        "log_every": log_every, "max_steps": max_steps, "warmup_epochs": warmup_epochs,
        "model_overrides": model_overrides, "device": device,
    }  # fmt: skip
    cfg = PretrainConfig(
        data=Path(data), out=Path(out), model=model, accum_steps=accum_steps, backend=backend,
        resume=resume, seed=seed, subtract_mean=subtract_mean,
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    recipe = PretrainRecipe(cfg)
    completed = False
    try:
        recipe.setup()
        result = recipe.train()
        completed = True
    finally:
        recipe.cleanup(completed=completed)
    if recipe._env.is_main and not quiet:
        print(_summary(result))
    if result["stopped_by"]:
        raise SystemExit(130 if result["stopped_by"] == "SIGINT" else 143)
    return result
