"""Fine-tuning recipe: ``maedfer finetune`` (MODEL.md §4.2, §5.2; DESIGN.md §6; issue 5 §2).

Shaped like :mod:`maedfer.train.pretrain` (a torchtune-style recipe; the two loops are kept
apart on purpose). The classifier starts from ``--init``: our pre-training checkpoint (its
encoder), one of our fine-tuning checkpoints (its encoder), or an official MAE-DFER checkpoint
(:func:`maedfer.model.load_official`). Training: AdamW (0.9, 0.999), weight decay 0.05 except
1-D tensors, biases and the region tokens, layer-wise lr decay 0.75, lr = blr × total batch /
256 with warmup and cosine per step, drop path 0.1, timm mixup/cutmix with label smoothing 0.1
and ``SoftTargetCrossEntropy``, the loader's train augmentations. Testing: the fold's (or the
fixed split's) test clips, ``test_views`` temporal views each, softmax probabilities averaged
per clip; at the end (and every ``eval_every`` epochs) ``predictions.parquet`` and
``report.json`` (UAR over the classes present in the test set; the test clips expected, scored
and missing, since a clip whose file is missing or undecodable cannot be scored) are written by
rank 0.

With region pooling the last block's cross-attention cannot reach the logits (MODEL.md §7.13):
the recipe builds the classifier with ``skip_unused_tail=True`` (same logits, less compute) and
freezes those dead parameters, so DDP runs without ``find_unused_parameters``.
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
from maedfer.model import LGIFormer, create_model
from maedfer.train import checkpoint as ckpt_io
from maedfer.train import metrics
from maedfer.train.coverage import coverage_keys, describe_missing
from maedfer.train.distributed import (
    DistEnv,
    all_reduce_sum,
    cleanup,
    gather_objects,
    init_distributed,
    wrap_ddp,
)
from maedfer.train.heldout import manifest_info, merge_views, view_probabilities
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
class FinetuneConfig:
    """Options of a fine-tuning run; defaults are MODEL.md §5.2's."""

    data: Path
    fold: int | None = None
    init: Path | None = None
    out: Path | None = None
    model: str = "lgi_former_base"
    model_overrides: dict[str, Any] | list[str] | None = None
    epochs: int = 100
    batch_size: int = 32
    accum_steps: int = 1
    lr: float | None = None
    blr: float = 1e-3
    min_blr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75
    drop_path: float | None = None
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
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
    augment: bool | None = None
    flip_only: bool = False
    random_sign: bool = False
    test_views: int = 2
    test_batch_size: int | None = None
    eval_every: int | None = None
    log_every: int = 10
    max_steps: int | None = None
    max_nonfinite: int = 5


class FinetuneRecipe:
    """Fine-tune a classifier on one fold (or the fixed split) and test it.

    Raises:
        MaedferError: in the constructor, for ``epochs``, ``batch_size``, ``accum_steps``,
            ``log_every``, ``test_views`` or ``max_nonfinite`` below 1, ``eval_every`` or
            ``max_steps`` below 1, a ``lr``, ``blr`` or ``clip_grad`` that is not positive,
            ``layer_decay`` outside (0, 1], ``smoothing`` outside [0, 1), negative mixup or
            cutmix alphas, an odd batch size with mixup/cutmix (pairs are mixed), an unknown
            precision, a pre-training model name; in ``setup()`` for a fold the manifest does
            not have (or a fold given for a fixed-split manifest, or none for a k-fold one),
            ``--resume`` without a checkpoint, a checkpoint or ``--init`` of another
            architecture or class count, or data too small for one optimiser step; in
            ``train()`` when the loss stays non-finite for ``max_nonfinite`` steps in a row.
    """

    def __init__(self, cfg: FinetuneConfig) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "test_views",
                     "max_nonfinite"):
            if getattr(cfg, name) < 1:
                raise MaedferError(f"{name} ({getattr(cfg, name)}) must be at least 1")
        for name in ("eval_every", "max_steps", "test_batch_size"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                raise MaedferError(f"{name} ({getattr(cfg, name)}) must be at least 1")
        for name in ("lr", "blr", "clip_grad"):
            if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
                raise MaedferError(f"{name} ({getattr(cfg, name)}) must be positive")
        if not 0 < cfg.layer_decay <= 1:
            raise MaedferError(f"layer_decay ({cfg.layer_decay}) must be in (0, 1]")
        if not 0 <= cfg.smoothing < 1 or cfg.mixup < 0 or cfg.cutmix < 0:
            raise MaedferError(
                f"smoothing ({cfg.smoothing}) must be in [0, 1) and the mixup ({cfg.mixup}) "
                f"and cutmix ({cfg.cutmix}) alphas >= 0"
            )
        if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
            raise MaedferError(
                f"mixup/cutmix mix pairs of clips: batch_size ({cfg.batch_size}) must be even "
                "(or set mixup and cutmix to 0)"
            )
        if cfg.precision not in PRECISIONS:
            raise MaedferError(
                f"precision {cfg.precision!r} is unknown; choose one of {PRECISIONS}"
            )
        if cfg.model.startswith("mae_"):
            raise MaedferError(
                f"finetune needs a classifier (lgi_former_*, vit_base), got {cfg.model!r}"
            )
        self.cfg = cfg
        self.dataset, self.classes, self.num_folds = manifest_info(Path(cfg.data))
        suffix = f"_fold{cfg.fold}" if cfg.fold is not None else ""
        self.out = Path(cfg.out) if cfg.out else Path("runs/finetune") / f"{self.dataset}{suffix}"
        self.checkpoint_path = self.out / "checkpoints" / ckpt_io.LAST
        self._good_checkpoint: Path | None = None  # saved or resumed by this run
        self.epochs_run = self.global_step = self.epoch_step = 0
        self.nonfinite_steps = self._nonfinite_run = 0
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
        # 2. which rows train and test; 3. the checkpoint to resume
        self._selection = self._select_rows()
        state = self._load_resume()
        # 4. model (init or resumed, DDP-wrapped); 5. data; 6. optimiser, schedule, scaler
        self._model = self._setup_model(state)
        self._loader, self._test_loader = self._setup_data()
        self._steps_per_epoch = len(self._loader) // cfg.accum_steps
        if self._steps_per_epoch < 1:
            raise MaedferError(
                f"{len(self._loader)} batches per epoch make no optimiser step with "
                f"accum_steps {cfg.accum_steps}; lower --batch-size or --accum-steps"
            )
        self._optimizer = self._setup_optimizer(state)
        self._scheduler = self._setup_schedule(state)
        self._scaler = grad_scaler(self._env.device, self._precision)
        self._mixup, self._criterion = self._setup_loss()
        self._metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self._env.is_main)
        if state is None:
            self._metrics.reset()
        else:
            self._restore_progress(state)
        log.info(
            "finetune %s on %s%s: %d train clips, %d test clips, %d steps/epoch, total batch "
            "%d, peak lr %.3g, %s", cfg.model, self.dataset,
            f" fold {cfg.fold}" if cfg.fold is not None else "", self._loader.dataset_size,
            self._test_loader.dataset_size, self._steps_per_epoch, self.total_batch,
            self.peak_lr, self._precision,
        )  # fmt: skip

    @property
    def total_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.accum_steps * self._env.world_size

    @property
    def peak_lr(self) -> float:
        return self.cfg.lr or scaled_lr(self.cfg.blr, self.total_batch)

    def _select_rows(self) -> dict[str, dict[str, Any]]:
        fold, k = self.cfg.fold, self.num_folds
        if k > 0:
            if fold is None or not 1 <= fold <= k:
                raise MaedferError(
                    f"--fold ({fold}) must be in 1..{k} for {self.dataset} ({k}-fold protocol)"
                )
            return {"train": {"fold": fold}, "test": {"fold": fold}}
        if fold is not None:
            raise MaedferError(
                f"{self.dataset} has a fixed train/test split: drop --fold ({fold})"
            )
        return {"train": {"split": "train"}, "test": {"split": "test"}}

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
        given = overrides.setdefault("num_classes", len(self.classes))
        if given != len(self.classes):
            raise MaedferError(
                f"num_classes override ({given}) differs from the manifest's "
                f"{len(self.classes)} classes {self.classes}"
            )
        for key, value in (("drop_path_rate", cfg.drop_path), ("num_frames", cfg.num_frames),
                           ("img_size", cfg.size)):
            if value is not None:
                overrides[key] = value
        if cfg.model.startswith("lgi_former") and overrides.get("pooling", "region") == "region":
            overrides.setdefault("skip_unused_tail", True)
        return overrides

    def _setup_model(self, state: dict[str, Any] | None) -> torch.nn.Module:
        overrides = self._model_overrides()
        try:
            model = create_model(self.cfg.model, **overrides)
        except (ValueError, TypeError) as exc:
            raise MaedferError(f"model {self.cfg.model} with {overrides}: {exc}") from None
        if state is not None:
            ckpt_io.check_model_matches(state, model, path=self.checkpoint_path)
            model.load_state_dict(state["model"])
        elif self.cfg.init is not None:
            log.info("init: %s", ckpt_io.load_init(model, Path(self.cfg.init)))
        else:
            log.warning("no --init: fine-tuning from random weights")
        if isinstance(model, LGIFormer) and model.skip_unused_tail:
            last = model.encoder.blocks[-1]
            for module in (last.cross_attn, last.cross_norm, last.cross_context_norm):
                module.requires_grad_(False)
        self._raw = model.to(self._env.device)
        return wrap_ddp(self._raw, self._env)

    def _setup_data(self):  # noqa: ANN202 (two maedfer.pipelines.ClipLoader)
        from maedfer.pipelines import build_loader

        cfg, env, model_cfg = self.cfg, self._env, self._raw.config
        common: dict[str, Any] = {
            "num_frames": model_cfg["num_frames"], "stride": cfg.stride,
            "size": model_cfg["img_size"], "backend": cfg.backend, "seed": cfg.seed,
            "device": str(env.device) if env.device.type == "cuda" else None,
            "rank": env.rank, "world_size": env.world_size, "subtract_mean": cfg.subtract_mean,
        }  # fmt: skip
        if cfg.workers is not None:
            common["workers"] = cfg.workers
        train = build_loader(cfg.data, mode="train", batch_size=cfg.batch_size,
                             augment=cfg.augment, flip_only=cfg.flip_only,
                             random_sign=cfg.random_sign, **self._selection["train"],
                             **common)  # fmt: skip
        test = build_loader(cfg.data, mode="test", batch_size=cfg.test_batch_size
                            or cfg.batch_size, test_views=cfg.test_views,
                            **self._selection["test"], **common)  # fmt: skip
        return train, test

    def _setup_optimizer(self, state: dict[str, Any] | None) -> torch.optim.Optimizer:
        cfg = self.cfg
        optimizer = create_optimizer(
            self._raw, lr=self.peak_lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
            layer_decay=cfg.layer_decay,
        )  # fmt: skip
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

    def _setup_loss(self):  # noqa: ANN202 (mixup or None, criterion)
        from timm.loss import SoftTargetCrossEntropy

        from maedfer.pipelines import make_mixup

        cfg = self.cfg
        mixup = make_mixup(len(self.classes), mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                           label_smoothing=cfg.smoothing)
        if mixup is None:
            return None, torch.nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
        return mixup, SoftTargetCrossEntropy()

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

    def _loss_step(self, batch: dict[str, Any], epoch: int, micro: int) -> torch.Tensor:
        """Loss of one micro-batch of this rank (mixup drawn from the step's own seed)."""
        env = self._env
        if bool((batch["label"] < 0).any()):
            raise MaedferError("the training selection holds unlabelled clips (label -1)")
        video = batch["video"].to(env.device, non_blocking=True)
        target = batch["label"].to(env.device, non_blocking=True)
        if self._mixup is not None:
            # timm's Mixup draws from numpy's global generator
            np.random.seed(step_seed(self.cfg.seed, 3, epoch, micro, env.rank) % 2**32)
            video, target = self._mixup(video, target)
        with autocast(env.device, self._precision):
            logits = self._model(video)
        return self._criterion(logits.float(), target)

    def _optimizer_step(self) -> float | None:
        """Clip (optionally), step and zero; returns the gradient norm when clipping."""
        grad_norm = None
        if self.cfg.clip_grad is not None:
            self._scaler.unscale_(self._optimizer)
            params = [p for p in self._raw.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad))
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
                         disable=not env.is_main, desc=f"finetune {epoch + 1}/{cfg.epochs}",
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
                torch.manual_seed(step_seed(cfg.seed, 2, epoch, micro, env.rank))
                sync = last or not env.distributed
                with contextlib.nullcontext() if sync else self._model.no_sync():
                    loss = self._loss_step(batch, epoch, micro)
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

    @torch.no_grad()
    def test(self, *, write: bool) -> dict[str, Any] | None:
        """Test on the held-out clips; rank 0 returns the report (others ``None``).

        With ``write``, ``predictions.parquet`` and ``report.json`` go to the run folder.
        """
        env = self._env
        rows = view_probabilities(self._raw, self._test_loader, device=env.device,
                                  precision=self._precision, progress=env.is_main)
        gathered = gather_objects(rows, env)
        if not env.is_main:
            return None
        ids, labels, probs, views = merge_views([r for part in gathered for r in part])
        report = metrics.classification_report(labels, probs.argmax(1), self.classes, views)
        # test clips that failed to decode were replaced, so they are absent from ids: say so
        coverage = coverage_keys(self._test_loader.table.clip_ids(), ids)
        report.update({"dataset": self.dataset, "fold": self.cfg.fold,
                       "epoch": self.epochs_run, "step": self.global_step, **coverage})
        self._metrics.write({"kind": "test", "epoch": self.epochs_run, "step": self.global_step,
                             "uar": report["uar"], "war": report["war"], "final": write,
                             "clips_expected": coverage["clips_expected"],
                             "clips_scored": coverage["clips_scored"]})  # fmt: skip
        if write and not coverage["complete"]:
            log.warning("incomplete test set: %s", describe_missing(
                len(coverage["missing_clips"]), coverage["clips_expected"],
                coverage["missing_clips"]))  # fmt: skip
        if write:
            metrics.write_predictions(self.out / "predictions.parquet", ids, labels, probs,
                                      self.classes)
            metrics.write_report(self.out / "report.json", report)
        return report

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs, then the final test; returns :func:`run`'s summary."""
        cfg, started, outcome = self.cfg, time.perf_counter(), "done"
        with StopSignals() as stop:
            for epoch in range(self.epochs_run, cfg.epochs):
                epoch_started = time.perf_counter()
                outcome = self._train_epoch(epoch, stop)
                if self.epoch_step == self._steps_per_epoch:
                    self._end_epoch(epoch, time.perf_counter() - epoch_started)
                    if (cfg.eval_every and self.epochs_run % cfg.eval_every == 0
                            and self.epochs_run < cfg.epochs and outcome == "done"):
                        self.test(write=False)
                self.save_checkpoint()
                if outcome != "done":
                    break
        report = None if outcome == "stopped" else self.test(write=True)
        epochs = [r for r in self._metrics.records() if r.get("kind") == "epoch"]
        return {
            "out": str(self.out), "checkpoint": str(self.checkpoint_path),
            "epochs": self.epochs_run, "steps": self.global_step,
            "loss": epochs[-1]["loss"] if epochs else None, "report": report,
            "stopped_by": self.stopped_by, "nonfinite_steps": self.nonfinite_steps,
            "time_s": time.perf_counter() - started,
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
            "nonfinite_steps": self.nonfinite_steps, "rng": ckpt_io.rng_state(),
            "config": ckpt_io.plain(dataclasses.asdict(self.cfg)), "classes": self.classes,
        })  # fmt: skip

    def cleanup(self, *, completed: bool = True) -> None:
        """Leave the process group; ``completed`` is False after an error (no barrier then:
        another rank may never reach it)."""
        env = getattr(self, "_env", None)
        self._model = None  # the DDP wrapper holds the process group (see cleanup())
        if env is not None:
            cleanup(env, synchronize=completed)


def _summary(result: dict[str, Any], classes: list[str]) -> str:
    lines = [
        f"finetune: {result['epochs']} epoch(s), {result['steps']} optimiser steps in "
        f"{result['time_s']:.1f} s" + (f", stopped by {result['stopped_by']}"
                                       if result["stopped_by"] else ""),
    ]
    report = result["report"]
    if report is not None:
        present = sum(r is not None for r in report["per_class_recall"].values())
        scored, expected = report["clips_scored"], report["clips_expected"]
        lines.append(
            f"  test: UAR {report['uar']:.4f}  WAR {report['war']:.4f}  on {scored} of {expected} "
            f"clips, {report['views']} views (chance UAR {1 / max(present, 1):.4f})"
        )
        if not report["complete"]:
            missing = report["missing_clips"]
            lines.append(f"  INCOMPLETE: {describe_missing(len(missing), expected, missing)} "
                         "(all listed in report.json under missing_clips)")
        lines.append(f"  report: {Path(result['out']) / 'report.json'}")
    lines.append(f"  checkpoint: {result['checkpoint']}")
    if result["nonfinite_steps"]:
        lines.append(f"  non-finite loss: {result['nonfinite_steps']} step(s) skipped")
    return "\n".join(lines)


def run(
    *,
    data: Path,
    fold: int | None = None,
    init: Path | None = None,
    out: Path | None = None,
    model: str = "lgi_former_base",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    blr: float | None = None,
    device: str | None = None,
    backend: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    seed: int = 0,
    accum_steps: int = 1,
    model_overrides: dict[str, Any] | list[str] | None = None,
    clip_grad: float | None = None,
    precision: str | None = None,
    num_frames: int | None = None,
    stride: int | None = None,
    size: int | None = None,
    subtract_mean: bool = False,
    eval_every: int | None = None,
    log_every: int | None = None,
    max_steps: int | None = None,
    warmup_epochs: float | None = None,
    drop_path: float | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    smoothing: float | None = None,
    layer_decay: float | None = None,
    augment: bool | None = None,
    flip_only: bool = False,
    random_sign: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fine-tune and test (``maedfer finetune``); ``None`` means MODEL.md §5.2's default.

    Returns the summary dict (``out``, ``checkpoint``, ``epochs``, ``steps``, ``loss`` of the
    last epoch, ``report`` (the report.json dict, ``None`` off rank 0 or when stopped),
    ``stopped_by``, ``nonfinite_steps``, ``time_s``). After SIGINT/SIGTERM the checkpoint is
    written and ``SystemExit(130 / 143)`` is raised.
    """
    given = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "blr": blr, "workers": workers,
        "clip_grad": clip_grad, "precision": precision, "num_frames": num_frames, "stride": stride,
        "size": size,
        "eval_every": eval_every, "log_every": log_every, "max_steps": max_steps,
        "warmup_epochs": warmup_epochs, "drop_path": drop_path, "mixup": mixup,
        "cutmix": cutmix, "smoothing": smoothing, "layer_decay": layer_decay,
        "model_overrides": model_overrides, "device": device, "augment": augment,
    }  # fmt: skip
    cfg = FinetuneConfig(
        data=Path(data), fold=fold, init=Path(init) if init else None,
        out=Path(out) if out else None, model=model, accum_steps=accum_steps, backend=backend,
        resume=resume, seed=seed, subtract_mean=subtract_mean, flip_only=flip_only,
        random_sign=random_sign, **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    recipe = FinetuneRecipe(cfg)
    completed = False
    try:
        recipe.setup()
        result = recipe.train()
        completed = True
    finally:
        recipe.cleanup(completed=completed)
    if recipe._env.is_main and not quiet:
        print(_summary(result, recipe.classes))
    if result["stopped_by"]:
        raise SystemExit(130 if result["stopped_by"] == "SIGINT" else 143)
    return result
