"""Fine-tuning recipe: ``maedfer finetune`` (docs/recipe.md; docs/runs.md).

A torchtune-style recipe like :mod:`maedfer.recipes.pretrain` (the
:class:`maedfer.recipes.interface.Recipe` Protocol), over the same shared loop
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
from typing import TYPE_CHECKING, Any

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
from maedfer.recipes import common
from maedfer.recipes import config as config_io
from maedfer.recipes.config import FinetuneConfig
from maedfer.recipes.interface import execute
from maedfer.training import badclips
from maedfer.training import checkpoint as ckpt_io
from maedfer.training import describe as describing
from maedfer.training import run as run_io
from maedfer.training import setup as building
from maedfer.training.distributed import DistEnv, gather_objects
from maedfer.training.loop import TrainLoop, TrainParts
from maedfer.training.precision import autocast, grad_scaler
from maedfer.training.run import RunStart, resume_value
from maedfer.training.runtime import MetricsLog, step_seed

if TYPE_CHECKING:
    from maedfer.pipelines.loader import ClipLoader

log = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "FinetuneRecipe", "merge_views", "run"]


class FinetuneRecipe:
    """Fine-tune a classifier on one fold (or the fixed split) and test it.

    Raises:
        MaedferError: in the constructor, for a value the config refuses
            (:meth:`FinetuneConfig.validate`: counts below 1, a non-positive lr,
            ``eval.test_views``, ``eval.eval_every`` or ``eval.test_batch_size`` below 1,
            ``loss.smoothing`` outside [0, 1), negative mixup or cutmix alphas, an odd batch
            size with mixup/cutmix: pairs are mixed), a model that is not a classifier, or no
            manifest; in ``setup()`` for a fold the manifest does not have (or a fold given for
            a fixed-split manifest, or none for a k-fold one), a ``model.num_classes`` other
            than the manifest's, ``--resume`` without a checkpoint, a checkpoint or ``--init``
            of another architecture or class count, a half precision on CPU, or data too small
            for one optimiser step; in ``train()`` when the loss stays non-finite for
            ``run.max_nonfinite`` steps in a row.
    """

    def __init__(self, cfg: FinetuneConfig, *, dry_run: bool = False) -> None:
        common.check_config(cfg)
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
        self.out = (
            Path(cfg.run.out) if cfg.run.out else Path("runs/finetune") / f"{self.dataset}{suffix}"
        )
        self.checkpoint_path = self.out / "checkpoints" / ckpt_io.LAST
        self.dry_run = dry_run  # a dry run builds even a finished run, and writes nothing
        self.start: RunStart | None = None
        self._env: DistEnv | None = None
        self._state: dict[str, Any] | None = None  # the checkpoint resumed from
        self._model: torch.nn.Module | None = None
        self._loop: TrainLoop | None = None
        self._raw: Any = None  # the model unwrapped: the registry's API (config, loss, ...)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build everything; write nothing (``train()`` writes the run's records first)."""
        cfg = self.cfg
        # 1. process group, device, precision, seeds
        self._env, self._precision = building.init_run(
            device=cfg.run.device, precision=cfg.run.precision, seed=cfg.run.seed
        )
        # 2. which rows train and test; 3. the checkpoint to resume
        self._selection = self._select_rows()
        self.start = common.open_recipe_run(
            cfg, self.out, self._env, dry_run=self.dry_run, final_outputs=("report.json",)
        )
        if self.start.finished and not self.dry_run:
            return
        self._state = self.start.state
        # 4. model (init or resumed, DDP-wrapped); 5. data; 6. optimiser, schedule, scaler
        self._raw, self._model = building.place_model(
            self._setup_model(), self._env, self._state, self.checkpoint_path
        )
        self._loader, self._test_loader = self._setup_data()
        if (self._loader.table.label < 0).any():  # checked once here, not per batch
            raise MaedferError("the training selection holds unlabelled clips (label -1)")
        self._steps_per_epoch = building.steps_per_epoch(self._loader, cfg.optim.accum_steps)
        self._opt = common.optimisation(
            cfg,
            self._raw,
            total_batch=self.total_batch,
            steps_per_epoch=self._steps_per_epoch,
            state=self._state,
        )
        self._mixup, self._criterion = self._setup_loss()
        parts = TrainParts(
            env=self._env,
            model=self._model,
            raw=self._raw,
            optimizer=self._opt.optimizer,
            scheduler=self._opt.scheduler,
            scaler=grad_scaler(self._env.device, self._precision),
            loader=self._loader,
            metrics=MetricsLog(self.out / "metrics.jsonl", enabled=self._env.is_main),
            steps_per_epoch=self._steps_per_epoch,
            checkpoint_path=self.checkpoint_path,
            loss_step=self._loss_step,
            extra_state={
                "config": self.resolved_config(),
                "classes": self.classes,
                "recipe": config_io.to_dict(cfg),
            },
        )
        self._loop = TrainLoop(parts, common.loop_settings(cfg, "finetune"))
        if self._state is not None:
            self._loop.restore(self._state)
        log.info(
            "finetune %s on %s%s: %d train clips, %d test clips, %d steps/epoch, total batch "
            "%d, peak lr %.3g, %s",
            cfg.model.name,
            self.dataset,
            f" fold {cfg.data.fold}" if cfg.data.fold is not None else "",
            self._loader.dataset_size,
            self._test_loader.dataset_size,
            self._steps_per_epoch,
            self.total_batch,
            self._opt.lr[0],
            self._precision,
        )

    @property
    def total_batch(self) -> int:
        assert self._env is not None, "setup() first"
        return common.total_batch(self.cfg, self._env)

    def _select_rows(self) -> dict[str, dict[str, Any]]:
        fold, k = self.cfg.data.fold, self.num_folds
        if k > 0:
            if fold is None:
                raise MaedferError(
                    f"{self.dataset} is a {k}-fold protocol: give --fold K "
                    f"(1..{k}), the fold to test on"
                )
            if not 1 <= fold <= k:
                raise MaedferError(
                    f"--fold {fold} must be in 1..{k} for {self.dataset} ({k}-fold protocol)"
                )
            return {"train": {"fold": fold}, "test": {"fold": fold}}
        if fold is not None:
            raise MaedferError(f"{self.dataset} has a fixed train/test split: drop --fold {fold}")
        return {"train": {"split": "train"}, "test": {"split": "test"}}

    def _own_model_args(self) -> dict[str, Any]:
        """The constructor arguments the config declares as its own fields."""
        m = self.cfg.model
        if m.num_classes is not None and m.num_classes != len(self.classes):
            raise MaedferError(
                f"model.num_classes ({m.num_classes}) differs from the manifest's "
                f"{len(self.classes)} classes {self.classes}"
            )
        own = {
            "num_classes": len(self.classes),
            "num_frames": m.num_frames,
            "img_size": m.img_size,
            "drop_path_rate": m.drop_path,
        }
        region = m.overrides.get("pooling", "region") == "region"
        if m.skip_unused_tail and region and model_info(m.name)["unused_tail"]:
            own["skip_unused_tail"] = True
        return own

    def _setup_model(self) -> torch.nn.Module:
        model = building.build_model(
            self.cfg.model.name, dict(self.cfg.model.overrides), self._own_model_args()
        )
        if self._state is None and self.cfg.model.init is not None:
            log.info("init: %s", ckpt_io.load_init(model, Path(self.cfg.model.init)))
        elif self._state is None:
            log.warning("no --init: fine-tuning from random weights")
        return model

    def _setup_data(self) -> tuple[ClipLoader, ClipLoader]:
        from maedfer.pipelines import build_loader

        cfg, data = self.cfg, self.cfg.data
        assert self._env is not None and data.manifest is not None
        shared = building.loader_options(self._raw.config, self._env, cfg.run.seed)
        # the section goes whole: every backend runs the recipe's RandAugment, and one that
        # could not would refuse it here in one line naming data.rand_augment, never drop it
        train = build_loader(
            data.manifest,
            data,
            mode="train",
            **self._selection["train"],
            max_bad_share=data.max_bad_share,
            **shared,
        )
        test = build_loader(
            data.manifest,
            data,
            mode="test",
            test_views=cfg.eval.test_views,
            batch_size=cfg.eval.test_batch_size or data.batch_size,
            **self._selection["test"],
            **shared,
        )
        return train, test

    def _setup_loss(self) -> tuple[Any, torch.nn.Module]:
        """The batch mixer (timm's Mixup, or None) and the criterion."""
        from timm.loss import SoftTargetCrossEntropy

        from maedfer.pipelines import make_mixup

        lo = self.cfg.loss
        mixup = make_mixup(
            len(self.classes),
            mixup_alpha=lo.mixup,
            cutmix_alpha=lo.cutmix,
            prob=lo.mix_prob,
            switch_prob=lo.switch_prob,
            label_smoothing=lo.smoothing,
        )
        if mixup is None:
            return None, torch.nn.CrossEntropyLoss(label_smoothing=lo.smoothing)
        return mixup, SoftTargetCrossEntropy()

    def resolved_config(self) -> dict[str, Any]:
        """The config with what this run resolved: backend, precision, device, folder,
        class count."""
        assert self._env is not None, "setup() first"
        return config_io.to_dict(
            config_io.load(
                self.cfg,
                overrides={
                    "data.backend": self._loader.backend
                    if hasattr(self, "_loader")
                    else self.cfg.data.backend,
                    "run.precision": self._precision,
                    "run.device": str(self._env.device),
                    "run.out": str(self.out.absolute()),
                    "model.num_classes": len(self.classes),
                    **self._model_inputs(),
                },
            )
        )

    def _model_inputs(self) -> dict[str, Any]:
        """The frames and side the model was built for (null in the config: its contract)."""
        raw = getattr(self, "_raw", None)
        if raw is None:
            return {}
        return {f"model.{k}": raw.config[k] for k in ("num_frames", "img_size")}

    def describe(self) -> dict[str, Any]:
        """What this recipe runs (after ``setup()``): the ``--dry-run --json`` object."""
        from maedfer.pipelines.plan import describe_augment

        loader, lo, env = self._loader, self.cfg.loss, self._env
        assert env is not None, "setup() first"
        augment = describe_augment(loader.config)
        if self._mixup is not None:
            augment.append(
                {
                    "name": "mixup_cutmix",
                    "mixup_alpha": lo.mixup,
                    "cutmix_alpha": lo.cutmix,
                    "prob": lo.mix_prob,
                    "switch_prob": lo.switch_prob,
                    "mode": "batch",
                    "label_smoothing": lo.smoothing,
                }
            )
        return {
            "recipe": "finetune",
            "config": self.resolved_config(),
            "model": {"name": self.cfg.model.name, **describing.count_params(self._raw)},
            "data": {
                "backend": loader.backend,
                "temporal_rule": loader.config.temporal_rule,
                "augment": augment,
                "train_clips": loader.dataset_size,
                "test_clips": self._test_loader.dataset_size,
                "test_views": self.cfg.eval.test_views,
                "dataset": self.dataset,
                "fold": self.cfg.data.fold,
                "classes": self.classes,
            },
            **common.describe_training(
                self.cfg,
                self._opt,
                steps_per_epoch=self._steps_per_epoch,
                precision=self._precision,
                env=env,
            ),
        }

    # ------------------------------------------------------------------ training

    def _loss_step(self, batch: dict[str, Any], epoch: int, micro: int) -> torch.Tensor:
        """Loss of one micro-batch of this rank (mixup drawn from the step's own seed)."""
        env, model = self._env, self._model
        assert env is not None and model is not None
        video = batch["video"].to(env.device, non_blocking=True)
        target = batch["label"].to(env.device, non_blocking=True)
        if self._mixup is not None:
            # timm's Mixup draws from numpy's global generator
            np.random.seed(step_seed(self.cfg.run.seed, 3, epoch, micro, env.rank) % 2**32)
            video, target = self._mixup(video, target)
        with autocast(env.device, self._precision):
            logits = model(video)
        loss: torch.Tensor = self._criterion(logits.float(), target)
        # a mixture of experts' load balancing (S4D: the authors' aux_loss_coeff x its term)
        aux = self._raw.aux_loss() if hasattr(self._raw, "aux_loss") else None
        return loss if aux is None else loss + aux.float()

    @torch.no_grad()
    def test(self, *, write: bool) -> dict[str, Any] | None:
        """Test on the held-out clips; rank 0 returns the report (others ``None``).

        With ``write``, ``predictions.parquet`` and ``report.json`` go to the run folder.
        """
        env, lp = self._env, self._loop
        assert env is not None and lp is not None, "setup() first"
        rows = view_probabilities(
            self._raw,
            self._test_loader,
            device=env.device,
            precision=self._precision,
            progress=env.is_main,
        )
        gathered = gather_objects(rows, env)
        if not env.is_main:
            return None
        # test clips that failed to decode were replaced, so they are absent: score_views says
        result = score_views(
            [r for part in gathered for r in part], self.classes, self._test_loader.table.clip_ids()
        )
        report, progress = result.report, lp.progress
        report.update(
            {
                "dataset": self.dataset,
                "fold": self.cfg.data.fold,
                "epoch": progress.epochs_run,
                "step": progress.global_step,
                "bad_train_clips": badclips.count(self.out),
            }
        )
        lp.metrics.write(
            {
                "kind": "test",
                "epoch": progress.epochs_run,
                "step": progress.global_step,
                "uar": report["uar"],
                "war": report["war"],
                "final": write,
                "clips_expected": report["clips_expected"],
                "clips_scored": report["clips_scored"],
            }
        )
        if write and not report["complete"]:
            log.warning(
                "incomplete test set: %s",
                describe_missing(
                    len(report["missing_clips"]), report["clips_expected"], report["missing_clips"]
                ),
            )
        if write:
            write_results(self.out, result, self.classes)
        return report

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs, then the final test; returns :func:`run`'s summary."""
        cfg, started, lp, start = self.cfg, time.perf_counter(), self._loop, self.start
        assert lp is not None and start is not None, "setup() first"
        run_io.start_records(lp, start.decision, self.resolved_config(), "finetune")

        def after_epoch(outcome: str) -> None:
            done = lp.progress.epochs_run
            every = cfg.eval.eval_every
            if every and done % every == 0 and done < cfg.schedule.epochs and outcome == "done":
                self.test(write=False)

        outcome = lp.run(after_epoch)
        report = None if outcome == "stopped" else self.test(write=True)
        if report is not None and lp.progress.epochs_run >= cfg.schedule.epochs:
            run_io.finish_run(lp, self.out)
        return {
            "out": str(self.out),
            "checkpoint": str(self.checkpoint_path),
            "epochs": lp.progress.epochs_run,
            "steps": lp.progress.global_step,
            "loss": lp.last_epoch_loss(),
            "report": report,
            "stopped_by": lp.stopped_by,
            "nonfinite_steps": lp.progress.nonfinite_steps,
            "bad_train_clips": badclips.count(self.out),
            "time_s": time.perf_counter() - started,
        }

    def save_checkpoint(self) -> None:
        assert self._loop is not None, "setup() first"
        self._loop.save_checkpoint()

    def cleanup(self, *, completed: bool = True) -> None:
        self._model = None  # the DDP wrapper holds the process group
        run_io.close(env=self._env, loop=self._loop, start=self.start, completed=completed)


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
) -> dict[str, Any]:
    """Fine-tune and test (``maedfer finetune``); prints nothing (the command line does).

    Args:
        config: a :class:`FinetuneConfig`, a shipped config name (``finetune-dfew``), a YAML
            file, or ``None`` for the defaults (the official recipe).
        overrides: dotted ``key=value`` strings or a ``{dotted key: value}`` mapping.
        data, fold, init, out, device, resume: the CLI's common flags (``data.manifest``,
            ``data.fold``, ``model.init``, ``run.out``, ``run.device``, ``run.resume``); they
            win over the config and the overrides.
        dry_run: build everything, train nothing; returns ``describe()``.

    Returns:
        The summary dict (``out``, ``checkpoint``, ``epochs``, ``steps``, ``loss`` of the last
        epoch, ``report`` (the report.json dict, ``None`` off rank 0 or when stopped),
        ``stopped_by``, ``nonfinite_steps``, ``time_s``), the description, or
        ``{"finished": True, ...}`` (:func:`maedfer.recipes.interface.execute`). After
        SIGINT/SIGTERM the checkpoint is written and ``stopped_by`` names the signal.
    """
    flags = {
        "data.manifest": data,
        "data.fold": fold,
        "model.init": init,
        "run.out": out,
        "run.device": device,
        "run.resume": resume_value(resume),
        "run.overwrite": overwrite,
        "run.save_every": save_every,
    }
    cfg = config_io.resolve(config, recipe="finetune", overrides=overrides, flags=flags)
    assert isinstance(cfg, FinetuneConfig)
    return execute(FinetuneRecipe(cfg, dry_run=dry_run))
