"""MAE pre-training recipe: ``maedfer pretrain`` (docs/reference.md; docs/runs.md).

A torchtune-style recipe (the :class:`maedfer.recipes.interface.Recipe` Protocol):
:class:`PretrainRecipe` checks its config (:class:`maedfer.recipes.config.PretrainConfig`,
defaults = the official recipe) in the constructor; ``setup()`` builds (in order) the process
group, the resumed state, the model, the loader, the optimiser, the schedule and the scaler, and
hands them to the shared :class:`maedfer.training.loop.TrainLoop`; ``train()`` runs the epochs;
``describe()`` says what would run (``--dry-run``); ``cleanup()`` leaves the process group.
:func:`run` is what the CLI calls. Only what is pre-training's own lives here: the model, the
data and the loss step.

Per optimiser step: ``accum_steps`` micro-batches, each masked with part-window tube masks drawn
for the *global* batch from a seed of (seed, epoch, micro-batch) and sliced by rank — the rows a
rank holds are positions ``rank, rank + W, …`` of the global batch (the loader's sharding), so W
processes with batch b draw exactly the masks one process with batch W·b would. Loss =
``model.loss(model(video, mask), model.targets(video, mask))`` under autocast; gradients are
averaged by DDP; AdamW (0.9, 0.95), weight decay 0.05 except 1-D tensors, biases and
``mask_token``; lr = blr × total batch / 256, per-step linear warmup then cosine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from maedfer.errors import MaedferError
from maedfer.model import model_info
from maedfer.recipes import common
from maedfer.recipes import config as config_io
from maedfer.recipes.config import PretrainConfig
from maedfer.recipes.interface import execute
from maedfer.training import badclips
from maedfer.training import checkpoint as ckpt_io
from maedfer.training import describe as describing
from maedfer.training import run as run_io
from maedfer.training import setup as building
from maedfer.training.distributed import DistEnv
from maedfer.training.loop import TrainLoop, TrainParts
from maedfer.training.precision import autocast, grad_scaler
from maedfer.training.run import RunStart, resume_value
from maedfer.training.runtime import MetricsLog, step_seed

if TYPE_CHECKING:
    from maedfer.pipelines.loader import ClipLoader

log = logging.getLogger(__name__)


class PretrainRecipe:
    """MAE pre-training of a pre-training model (``model_info(name)["kind"] == "pretrain"``).

    Raises:
        MaedferError: in the constructor, for a value the config refuses
            (:meth:`PretrainConfig.validate`: counts below 1, a non-positive lr, a
            ``model.mask_ratio`` outside (0, 1), ...), an unknown model or one that is not a
            pre-training model, or no manifest; in ``setup()`` for ``--resume`` without a
            checkpoint, a checkpoint of another architecture, a half precision on CPU, or data
            too small for one optimiser step; in ``train()`` when the loss stays non-finite for
            ``run.max_nonfinite`` steps in a row.
    """

    def __init__(self, cfg: PretrainConfig, *, dry_run: bool = False) -> None:
        common.check_config(cfg)
        if model_info(cfg.model.name)["kind"] != "pretrain":
            raise MaedferError(
                f"pretrain needs a pre-training model (mae_lgi_former_*), got {cfg.model.name!r}"
            )
        if cfg.data.manifest is None:
            raise MaedferError("pretrain needs a manifest: --data M.parquet (data.manifest)")
        self.cfg = cfg
        self.out = Path(cfg.run.out) if cfg.run.out else Path("runs/pretrain")
        self.checkpoint_path = self.out / "checkpoints" / ckpt_io.LAST
        self.dry_run = dry_run  # a dry run builds even a finished run, and writes nothing
        self.start: RunStart | None = None
        self._env: DistEnv | None = None
        self._model: torch.nn.Module | None = None
        self._loop: TrainLoop | None = None
        self._raw: Any = None  # the model unwrapped: the registry's API (config, loss, ...)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build everything; write nothing (``train()`` writes the run's records first)."""
        cfg = self.cfg
        # 1. process group, device, precision, seeds; 2. the checkpoint to resume
        self._env, self._precision = building.init_run(
            device=cfg.run.device, precision=cfg.run.precision, seed=cfg.run.seed
        )
        self.start = common.open_recipe_run(
            cfg, self.out, self._env, dry_run=self.dry_run, final_outputs=()
        )
        if self.start.finished and not self.dry_run:
            return
        state = self.start.state
        # 3. model (DDP-wrapped when distributed); 4. data; 5. optimiser; 6. schedule; 7. scaler
        self._raw, self._model = building.place_model(
            self._setup_model(), self._env, state, self.checkpoint_path
        )
        self._loader = self._setup_data()
        self._steps_per_epoch = building.steps_per_epoch(self._loader, cfg.optim.accum_steps)
        self._opt = common.optimisation(
            cfg,
            self._raw,
            total_batch=self.total_batch,
            steps_per_epoch=self._steps_per_epoch,
            state=state,
        )
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
                "classes": [],
                "recipe": config_io.to_dict(cfg),
            },
        )
        self._loop = TrainLoop(parts, common.loop_settings(cfg, "pretrain"))
        if state is not None:
            self._loop.restore(state)
        log.info(
            "pretrain %s: %d clips, %d steps/epoch, total batch %d, peak lr %.3g, %s",
            cfg.model.name,
            self._loader.dataset_size,
            self._steps_per_epoch,
            self.total_batch,
            self._opt.lr[0],
            self._precision,
        )

    @property
    def total_batch(self) -> int:
        assert self._env is not None, "setup() first"
        return common.total_batch(self.cfg, self._env)

    def _setup_model(self) -> torch.nn.Module:
        m = self.cfg.model
        own = {
            "num_frames": m.num_frames,
            "img_size": m.img_size,
            "drop_path_rate": m.drop_path,
            "mask_ratio": m.mask_ratio,
            "official_decoder_order": m.official_decoder_order,
        }
        return building.build_model(m.name, dict(m.overrides), own)

    def _setup_data(self) -> ClipLoader:
        from maedfer.pipelines import build_loader

        cfg, env = self.cfg, self._env
        assert env is not None and cfg.data.manifest is not None
        return build_loader(
            cfg.data.manifest,
            cfg.data,
            mode="pretrain",
            max_bad_share=cfg.data.max_bad_share,
            **building.loader_options(self._raw.config, env, cfg.run.seed),
        )

    def resolved_config(self) -> dict[str, Any]:
        """The config with what this run resolved: backend, precision, device, folder."""
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
                },
            )
        )

    def describe(self) -> dict[str, Any]:
        """What this recipe runs (after ``setup()``): the ``--dry-run --json`` object."""
        from maedfer.pipelines.plan import describe_augment

        loader, env = self._loader, self._env
        assert env is not None, "setup() first"
        return {
            "recipe": "pretrain",
            "config": self.resolved_config(),
            "model": {"name": self.cfg.model.name, **describing.count_params(self._raw)},
            "data": {
                "backend": loader.backend,
                "temporal_rule": loader.config.temporal_rule,
                "augment": describe_augment(loader.config),
                "train_clips": loader.dataset_size,
                "test_clips": None,
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
        """Loss of one micro-batch of this rank (``batch["video"]``: ``(b, 3, T, H, W)``)."""
        env, model = self._env, self._model
        assert env is not None and model is not None
        video = batch["video"].to(env.device, non_blocking=True)
        generator = torch.Generator().manual_seed(step_seed(self.cfg.run.seed, 1, epoch, micro))
        masks = self._raw.random_mask(video.shape[0] * env.world_size, generator=generator)
        # the token orders are made on the CPU with the masks: the device reads nothing back
        mask = masks[env.rank :: env.world_size]
        order, masked = (to_device(t, env.device) for t in self._raw.token_order(mask))
        mask = to_device(mask, env.device)
        with autocast(env.device, self._precision):
            pred = model(video, mask, order=order)
        loss: torch.Tensor = self._raw.loss(pred, self._raw.targets(video, mask, masked=masked))
        return loss

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary :func:`run` returns."""
        started, lp, start = time.perf_counter(), self._loop, self.start
        assert lp is not None and start is not None, "setup() first"
        run_io.start_records(lp, start.decision, self.resolved_config(), "pretrain")
        lp.run()
        if lp.progress.epochs_run >= self.cfg.schedule.epochs:
            run_io.finish_run(lp, self.out)
        return {
            "out": str(self.out),
            "checkpoint": str(self.checkpoint_path),
            "epochs": lp.progress.epochs_run,
            "steps": lp.progress.global_step,
            "loss": lp.last_epoch_loss(),
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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (CPU) on ``device`` without blocking (through pinned memory for CUDA)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def run(
    config: PretrainConfig | str | Path | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    data: Path | str | None = None,
    out: Path | str | None = None,
    device: str | None = None,
    resume: str | bool | None = None,
    overwrite: bool | None = None,
    save_every: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """MAE pre-training (``maedfer pretrain``); prints nothing (the command line does).

    Args:
        config: a :class:`PretrainConfig`, a shipped config name, a YAML file, or ``None`` for
            the defaults (the official recipe).
        overrides: dotted ``key=value`` strings or a ``{dotted key: value}`` mapping.
        data, out, device, resume: the CLI's common flags (``data.manifest``, ``run.out``,
            ``run.device``, ``run.resume``); they win over the config and the overrides.
        dry_run: build everything, train nothing; returns ``describe()``.

    Returns:
        The summary dict (``out``, ``checkpoint``, ``epochs``, ``steps``, ``loss`` of the last
        epoch, ``stopped_by``, ``nonfinite_steps``, ``time_s``), the description, or
        ``{"finished": True, ...}`` (:func:`maedfer.recipes.interface.execute`). After
        SIGINT/SIGTERM the checkpoint is written and ``stopped_by`` names the signal.
    """
    flags = {
        "data.manifest": data,
        "run.out": out,
        "run.device": device,
        "run.resume": resume_value(resume),
        "run.overwrite": overwrite,
        "run.save_every": save_every,
    }
    cfg = config_io.resolve(config, recipe="pretrain", overrides=overrides, flags=flags)
    assert isinstance(cfg, PretrainConfig)
    return execute(PretrainRecipe(cfg, dry_run=dry_run))
