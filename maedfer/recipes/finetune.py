"""Fine-tuning recipe: ``maedfer finetune`` (MODEL.md §4.2, §5.2; DESIGN.md §6).

A torchtune-style recipe like :mod:`maedfer.recipes.pretrain`, over the same shared loop
(:mod:`maedfer.training.loop`); its config is :class:`maedfer.recipes.config.FinetuneConfig`, whose
defaults are the official recipe, the reference training window included. The classifier starts
from ``model.init`` (``--init``): our pre-training checkpoint (its encoder), one of our
fine-tuning checkpoints (its encoder), or an official MAE-DFER checkpoint
(:func:`maedfer.model.load_official`). Training: AdamW (0.9, 0.999), weight decay 0.05 except
1-D tensors, biases and the region tokens, layer-wise lr decay 0.75, lr = blr × total batch /
256 with warmup and cosine per step, drop path 0.1, timm mixup/cutmix with label smoothing 0.1
and ``SoftTargetCrossEntropy``, the loader's train augmentations. Testing: the fold's (or the
fixed split's) test clips, ``eval.test_views`` temporal views each, softmax probabilities
averaged per clip; at the end (and every ``eval.eval_every`` epochs) ``predictions.parquet`` and
``report.json`` (UAR over the classes present in the test set; the test clips expected, scored
and missing, since a clip whose file is missing or undecodable cannot be scored) are written by
rank 0.

With region pooling the last block's cross-attention cannot reach the logits: the recipe builds
the classifier with ``skip_unused_tail=True`` where the model supports it (the model then freezes
those dead parameters itself), so DDP runs without ``find_unused_parameters``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.evaluation.coverage import describe_missing
from maedfer.evaluation.heldout import (
    manifest_info,
    merge_views,
    score_views,
    view_probabilities,
    write_results,
)
from maedfer.model import model_info
from maedfer.recipes import config as config_io
from maedfer.recipes.config import FinetuneConfig
from maedfer.training import badclips, loop
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.distributed import gather_objects
from maedfer.training.precision import autocast, grad_scaler
from maedfer.training.runtime import MetricsLog, step_seed

log = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "FinetuneRecipe", "merge_views", "run"]


class FinetuneRecipe:
    """Fine-tune a classifier on one fold (or the fixed split) and test it.

    Raises:
        MaedferError: in the constructor, for the options of :func:`loop.check_common`,
            ``eval.test_views``, ``eval.eval_every`` or ``eval.test_batch_size`` below 1,
            ``loss.smoothing`` outside [0, 1), negative mixup or cutmix alphas, an odd batch
            size with mixup/cutmix (pairs are mixed), a model that is not a classifier, or no
            manifest; in ``setup()`` for a fold the manifest does not have (or a fold given for
            a fixed-split manifest, or none for a k-fold one), a ``model.num_classes`` other
            than the manifest's, ``--resume`` without a checkpoint, a checkpoint or ``--init``
            of another architecture or class count, a half precision on CPU, or data too small
            for one optimiser step; in ``train()`` when the loss stays non-finite for
            ``run.max_nonfinite`` steps in a row.
    """

    def __init__(self, cfg: FinetuneConfig) -> None:
        loop.check_common(cfg)
        for key in ("test_views", "eval_every", "test_batch_size"):
            value = getattr(cfg.eval, key)
            if value is not None and value < 1:
                raise MaedferError(f"eval.{key} ({value}) must be at least 1")
        lo = cfg.loss
        if not 0 <= lo.smoothing < 1 or lo.mixup < 0 or lo.cutmix < 0:
            raise MaedferError(
                f"loss.smoothing ({lo.smoothing}) must be in [0, 1) and the loss.mixup "
                f"({lo.mixup}) and loss.cutmix ({lo.cutmix}) alphas >= 0"
            )
        if (lo.mixup > 0 or lo.cutmix > 0) and cfg.data.batch_size % 2:
            raise MaedferError(
                f"mixup/cutmix mix pairs of clips: data.batch_size ({cfg.data.batch_size}) must "
                "be even (or set loss.mixup and loss.cutmix to 0)"
            )
        if model_info(cfg.model.name)["kind"] != "classifier":
            raise MaedferError(
                f"finetune needs a classifier (lgi_former_*, videomae_*, marlin_*, svfap_*, "
                f"s4d_*, hicmae_*), got {cfg.model.name!r}"
            )
        if cfg.data.manifest is None:
            raise MaedferError("finetune needs a manifest: --data M.parquet (data.manifest)")
        self.cfg = cfg
        self.dataset, self.classes, self.num_folds = manifest_info(Path(cfg.data.manifest))
        fold = cfg.data.fold
        suffix = f"_fold{fold}" if fold is not None else ""
        self.out = (Path(cfg.run.out) if cfg.run.out
                    else Path("runs/finetune") / f"{self.dataset}{suffix}")
        self.checkpoint_path = self.out / "checkpoints" / ckpt_io.LAST
        self.dry_run = False  # set by loop.execute: a dry run builds even a finished run
        self.finished = None  # the decision, when --out holds a finished run

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build everything; write nothing (``train()`` writes the run's records first)."""
        cfg = self.cfg
        # 1. process group, device, precision, seeds
        self._env, self._precision = loop.init_run(cfg.run)
        # 2. which rows train and test; 3. the checkpoint to resume
        self._selection = self._select_rows()
        if loop.open_run(self, final_outputs=("report.json",)):
            return
        # 4. model (init or resumed, DDP-wrapped); 5. data; 6. optimiser, schedule, scaler
        self._raw, self._model = loop.place_model(self._setup_model(), self._env, self._state,
                                                  self.checkpoint_path)
        self._loader, self._test_loader = self._setup_data()
        if (self._loader.table.label < 0).any():  # checked once here, not per batch
            raise MaedferError("the training selection holds unlabelled clips (label -1)")
        self._steps_per_epoch = loop.steps_per_epoch(self._loader, cfg.optim.accum_steps)
        self._lr = loop.lr_range(cfg.optim, cfg.schedule, self.total_batch)
        self._optimizer = loop.build_optimizer(self._raw, cfg.optim, self._lr[0], self._state)
        self._scheduler = loop.build_schedule(
            self._optimizer, optim=cfg.optim, schedule=cfg.schedule, lr=self._lr,
            steps_per_epoch=self._steps_per_epoch, state=self._state)  # fmt: skip
        self._mixup, self._criterion = self._setup_loss()
        self._loop = loop.TrainLoop(
            name="finetune", env=self._env, model=self._model, raw=self._raw,
            optimizer=self._optimizer, scheduler=self._scheduler,
            scaler=grad_scaler(self._env.device, self._precision), loader=self._loader,
            metrics=MetricsLog(self.out / "metrics.jsonl", enabled=self._env.is_main),
            cfg=cfg, steps_per_epoch=self._steps_per_epoch,
            checkpoint_path=self.checkpoint_path, loss_step=self._loss_step,
            extra_state={"config": self.resolved_config(), "classes": self.classes,
                         "recipe": config_io.to_dict(cfg)},
        )  # fmt: skip
        if self._state is not None:
            self._loop.restore(self._state)
        log.info(
            "finetune %s on %s%s: %d train clips, %d test clips, %d steps/epoch, total batch "
            "%d, peak lr %.3g, %s", cfg.model.name, self.dataset,
            f" fold {cfg.data.fold}" if cfg.data.fold is not None else "",
            self._loader.dataset_size, self._test_loader.dataset_size, self._steps_per_epoch,
            self.total_batch, self._lr[0], self._precision,
        )  # fmt: skip

    @property
    def total_batch(self) -> int:
        return self.cfg.data.batch_size * self.cfg.optim.accum_steps * self._env.world_size

    def _select_rows(self) -> dict[str, dict[str, Any]]:
        fold, k = self.cfg.data.fold, self.num_folds
        if k > 0:
            if fold is None:
                raise MaedferError(f"{self.dataset} is a {k}-fold protocol: give --fold K "
                                   f"(1..{k}), the fold to test on")  # fmt: skip
            if not 1 <= fold <= k:
                raise MaedferError(
                    f"--fold {fold} must be in 1..{k} for {self.dataset} ({k}-fold protocol)"
                )
            return {"train": {"fold": fold}, "test": {"fold": fold}}
        if fold is not None:
            raise MaedferError(
                f"{self.dataset} has a fixed train/test split: drop --fold {fold}"
            )
        return {"train": {"split": "train"}, "test": {"split": "test"}}

    def _own_model_args(self) -> dict[str, Any]:
        """The constructor arguments the config declares as its own fields."""
        m = self.cfg.model
        if m.num_classes is not None and m.num_classes != len(self.classes):
            raise MaedferError(
                f"model.num_classes ({m.num_classes}) differs from the manifest's "
                f"{len(self.classes)} classes {self.classes}"
            )
        own = {"num_classes": len(self.classes), "num_frames": m.num_frames,
               "img_size": m.img_size, "drop_path_rate": m.drop_path}
        region = m.overrides.get("pooling", "region") == "region"
        if m.skip_unused_tail and region and model_info(m.name)["unused_tail"]:
            own["skip_unused_tail"] = True
        return own

    def _setup_model(self) -> torch.nn.Module:
        model = loop.build_model(self.cfg.model.name, dict(self.cfg.model.overrides),
                                 self._own_model_args())
        if self._state is None and self.cfg.model.init is not None:
            log.info("init: %s", ckpt_io.load_init(model, Path(self.cfg.model.init)))
        elif self._state is None:
            log.warning("no --init: fine-tuning from random weights")
        return model

    def _setup_data(self):  # noqa: ANN202 (two maedfer.pipelines.ClipLoader)
        from maedfer.pipelines import build_loader

        cfg, data = self.cfg, self.cfg.data
        common = loop.loader_options(self._raw.config, self._env, cfg.run.seed)
        # the section goes whole: every backend runs the recipe's RandAugment, and one that
        # could not would refuse it here in one line naming data.rand_augment, never drop it
        train = build_loader(data.manifest, data, mode="train", **self._selection["train"],
                             max_bad_share=data.max_bad_share, **common)
        test = build_loader(
            data.manifest, data, mode="test", test_views=cfg.eval.test_views,
            batch_size=cfg.eval.test_batch_size or data.batch_size,
            **self._selection["test"], **common,
        )  # fmt: skip
        return train, test

    def _setup_loss(self):  # noqa: ANN202 (mixup or None, criterion)
        from timm.loss import SoftTargetCrossEntropy

        from maedfer.pipelines import make_mixup

        lo = self.cfg.loss
        mixup = make_mixup(len(self.classes), mixup_alpha=lo.mixup, cutmix_alpha=lo.cutmix,
                           prob=lo.mix_prob, switch_prob=lo.switch_prob,
                           label_smoothing=lo.smoothing)
        if mixup is None:
            return None, torch.nn.CrossEntropyLoss(label_smoothing=lo.smoothing)
        return mixup, SoftTargetCrossEntropy()

    def resolved_config(self) -> dict[str, Any]:
        """The config with what this run resolved: backend, precision, device, folder,
        class count."""
        return config_io.to_dict(config_io.load(self.cfg, overrides={
            "data.backend": self._loader.backend if hasattr(self, "_loader")
            else self.cfg.data.backend, "run.precision": self._precision,
            "run.device": str(self._env.device), "run.out": str(self.out.absolute()),
            "model.num_classes": len(self.classes), **self._model_inputs(),
        }))  # fmt: skip

    def _model_inputs(self) -> dict[str, Any]:
        """The frames and side the model was built for (null in the config: its contract)."""
        raw = getattr(self, "_raw", None)
        if raw is None:
            return {}
        return {f"model.{k}": raw.config[k] for k in ("num_frames", "img_size")}

    def describe(self) -> dict[str, Any]:
        """What this recipe runs (after ``setup()``): the ``--dry-run --json`` object."""
        from maedfer.pipelines.plan import describe_augment

        loader, lo = self._loader, self.cfg.loss
        augment = describe_augment(loader.config)
        if self._mixup is not None:
            augment.append({"name": "mixup_cutmix", "mixup_alpha": lo.mixup,
                            "cutmix_alpha": lo.cutmix, "prob": lo.mix_prob,
                            "switch_prob": lo.switch_prob, "mode": "batch",
                            "label_smoothing": lo.smoothing})
        return {
            "recipe": "finetune", "config": self.resolved_config(),
            "model": {"name": self.cfg.model.name, **loop.count_params(self._raw)},
            "data": {
                "backend": loader.backend, "temporal_rule": loader.config.temporal_rule,
                "augment": augment, "train_clips": loader.dataset_size,
                "test_clips": self._test_loader.dataset_size,
                "test_views": self.cfg.eval.test_views, "dataset": self.dataset,
                "fold": self.cfg.data.fold, "classes": self.classes,
            },
            **loop.describe_training(self),
        }  # fmt: skip

    # ------------------------------------------------------------------ training

    def _loss_step(self, batch: dict[str, Any], epoch: int, micro: int) -> torch.Tensor:
        """Loss of one micro-batch of this rank (mixup drawn from the step's own seed)."""
        env = self._env
        video = batch["video"].to(env.device, non_blocking=True)
        target = batch["label"].to(env.device, non_blocking=True)
        if self._mixup is not None:
            # timm's Mixup draws from numpy's global generator
            np.random.seed(step_seed(self.cfg.run.seed, 3, epoch, micro, env.rank) % 2**32)
            video, target = self._mixup(video, target)
        with autocast(env.device, self._precision):
            logits = self._model(video)
        loss = self._criterion(logits.float(), target)
        # a mixture of experts' load balancing (S4D: the authors' aux_loss_coeff x its term)
        aux = self._raw.aux_loss() if hasattr(self._raw, "aux_loss") else None
        return loss if aux is None else loss + aux.float()

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
        # test clips that failed to decode were replaced, so they are absent: score_views says
        result = score_views([r for part in gathered for r in part], self.classes,
                             self._test_loader.table.clip_ids())  # fmt: skip
        report, progress = result.report, self._loop.progress
        report.update({"dataset": self.dataset, "fold": self.cfg.data.fold,
                       "epoch": progress.epochs_run, "step": progress.global_step,
                       "bad_train_clips": badclips.count(self.out)})
        self._loop.metrics.write({"kind": "test", "epoch": progress.epochs_run,
                                  "step": progress.global_step, "uar": report["uar"],
                                  "war": report["war"], "final": write,
                                  "clips_expected": report["clips_expected"],
                                  "clips_scored": report["clips_scored"]})  # fmt: skip
        if write and not report["complete"]:
            log.warning("incomplete test set: %s", describe_missing(
                len(report["missing_clips"]), report["clips_expected"],
                report["missing_clips"]))  # fmt: skip
        if write:
            write_results(self.out, result, self.classes)
        return report

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs, then the final test; returns :func:`run`'s summary."""
        cfg, started, lp = self.cfg, time.perf_counter(), self._loop
        loop.start_records(lp, self._decision, self.resolved_config(), "finetune")

        def after_epoch(outcome: str) -> None:
            done = lp.progress.epochs_run
            every = cfg.eval.eval_every
            if every and done % every == 0 and done < cfg.schedule.epochs and outcome == "done":
                self.test(write=False)

        outcome = lp.run(after_epoch)
        report = None if outcome == "stopped" else self.test(write=True)
        if report is not None and lp.progress.epochs_run >= cfg.schedule.epochs:
            loop.finish_run(lp, self.out)
        return {
            "out": str(self.out), "checkpoint": str(self.checkpoint_path),
            "epochs": lp.progress.epochs_run, "steps": lp.progress.global_step,
            "loss": lp.last_epoch_loss(), "report": report, "stopped_by": lp.stopped_by,
            "nonfinite_steps": lp.progress.nonfinite_steps,
            "bad_train_clips": badclips.count(self.out),
            "time_s": time.perf_counter() - started,
        }  # fmt: skip

    def save_checkpoint(self) -> None:
        self._loop.save_checkpoint()

    def cleanup(self, *, completed: bool = True) -> None:
        loop.close(self, completed=completed)


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
    lines += badclips.summary_lines(result)
    return "\n".join(lines)


def run(
    config: FinetuneConfig | str | Path | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    data: Path | str | None = None,
    fold: int | None = None,
    init: Path | str | None = None,
    out: Path | str | None = None,
    device: str | None = None,
    resume: str | bool | None = None,
    overwrite: bool | None = None,
    save_every: int | None = None,
    dry_run: bool = False,
    as_json: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fine-tune and test (``maedfer finetune``).

    Args:
        config: a :class:`FinetuneConfig`, a shipped config name (``finetune-dfew``), a YAML
            file, or ``None`` for the defaults (the official recipe).
        overrides: dotted ``key=value`` strings or a ``{dotted key: value}`` mapping.
        data, fold, init, out, device, resume: the CLI's common flags (``data.manifest``,
            ``data.fold``, ``model.init``, ``run.out``, ``run.device``, ``run.resume``); they
            win over the config and the overrides.
        dry_run: build everything, print what would run, train nothing; returns ``describe()``.
        as_json: with ``dry_run``, print the description as one JSON object.

    Returns:
        The summary dict (``out``, ``checkpoint``, ``epochs``, ``steps``, ``loss`` of the last
        epoch, ``report`` (the report.json dict, ``None`` off rank 0 or when stopped),
        ``stopped_by``, ``nonfinite_steps``, ``time_s``), or the description. After
        SIGINT/SIGTERM the checkpoint is written and ``SystemExit(130 / 143)`` is raised.
    """
    flags = {"data.manifest": data, "data.fold": fold, "model.init": init, "run.out": out,
             "run.device": device, "run.resume": loop.resume_value(resume),
             "run.overwrite": overwrite, "run.save_every": save_every}
    cfg = config_io.resolve(config, recipe="finetune", overrides=overrides, flags=flags)
    recipe = FinetuneRecipe(cfg)
    return loop.execute(recipe, dry_run=dry_run, as_json=as_json, quiet=quiet,
                        summary=lambda result: _summary(result, recipe.classes))
