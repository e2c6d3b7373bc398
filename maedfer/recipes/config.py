"""Recipe configs: the one declaration of every option of ``pretrain`` and ``finetune``.

A recipe's options are a tree of dataclasses (sections ``data``, ``model``, ``optim``,
``schedule``, ``loss``, ``eval``, ``run``); each field has its default and a ``help`` line in its
metadata. The defaults are the official MAE-DFER recipe (pre-training on VoxCeleb2, fine-tuning
on DFEW); where maedfer deliberately differs, the help line says so and names the one value that
restores the official behaviour (docs/recipe.md).

The machinery (declaring, loading, overriding, writing) is :mod:`maedfer.config`'s, below every
wing (docs/design.md). Configs are YAML files (``recipe: finetune`` plus the sections); the
shipped ones live in ``maedfer/recipes/configs/`` and are found by name (``finetune-dfew``).
Dotted overrides change one value in :mod:`maedfer.config`'s one grammar (``optim.lr=1e-3``; a
value is read as YAML). An unknown key is refused in one line that names it and the nearest
valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from maedfer.config import (
    RESOLVED,
    get,
    keys,
    markdown_rows,
    opt,
    parse_overrides,
    read_yaml,
    section,
    set_values,
    to_dict,
)
from maedfer.config import to_yaml as _to_yaml
from maedfer.constants import TemporalRule
from maedfer.errors import MaedferError
from maedfer.pipelines.options import DataOptions, TrainDataOptions

__all__ = [
    "CONFIG_CLASSES",
    "CONFIG_DIR",
    "PATH_KEYS",
    "RECIPES",
    "RESOLVED",
    "FinetuneConfig",
    "PretrainConfig",
    "RecipeConfig",
    "apply_overrides",
    "config_path",
    "from_dict",
    "keys",
    "list_configs",
    "load",
    "markdown_tables",
    "parse_overrides",
    "resolve",
    "to_dict",
    "to_yaml",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RECIPES: tuple[str, ...] = ("pretrain", "finetune")

# ---------------------------------------------------------------------------------- sections


@dataclass
class DataConfig(DataOptions):
    """Which clips, how they are sampled and decoded (shared by both recipes): the loader's
    options (:class:`maedfer.pipelines.options.DataOptions`, declared there) and the manifest."""

    manifest: str | None = opt(None, "manifest.parquet of a prepared dataset (--data)")
    max_bad_share: float = opt(
        0.01,
        "a missing or undecodable training clip is replaced by "
        "another and counted (report.json, the summary, "
        "RUN/bad_clips.json); the run stops once more than this share "
        "of the training clips are (1: never)",
    )


@dataclass
class FinetuneDataConfig(DataConfig, TrainDataOptions):
    """The fine-tuning recipe's data: the loader's train-mode options too, and the fold."""

    fold: int | None = opt(
        None, "test fold of a k-fold protocol (--fold); null for a fixed train/test split"
    )
    temporal_rule: TemporalRule = opt(
        "reference",
        "training window: reference = the official rule (int(linspace) over a "
        "num_frames*stride window, effective stride 64/15; short clips spread over the whole "
        "clip); stride = exactly `stride` apart, equal to the test views' stride (a maedfer "
        "option)",
    )


@dataclass
class ModelConfig:
    name: str = opt("lgi_former_base", "registered model name (maedfer.model.list_models())")
    num_frames: int | None = opt(16, "frames per clip (model input)")
    img_size: int | None = opt(160, "clip side in pixels (model input)")
    drop_path: float = opt(0.1, "stochastic depth rate of the last block (linear ramp)")
    overrides: dict[str, Any] = opt(
        {}, "other constructor arguments of the model, e.g. {embed_dim: 64, depth: 2}"
    )


@dataclass
class PretrainModelConfig(ModelConfig):
    name: str = opt("mae_lgi_former_base", "registered pre-training model name")
    num_frames: int = opt(16, "frames per clip (model input)")
    img_size: int = opt(160, "clip side in pixels (model input)")
    drop_path: float = opt(0.0, "encoder stochastic depth rate")
    mask_ratio: float = opt(0.9, "fraction of tokens masked (part-window tube masking)")
    official_decoder_order: bool = opt(
        False,
        "false: maedfer gives the decoder the positions of the tokens it predicts; true: "
        "the official code's mismatched decoder positions",
    )


@dataclass
class FinetuneModelConfig(ModelConfig):
    num_frames: int | None = opt(
        None,
        "frames per clip (model input; null: the model's input "
        "contract, 16 for every model of docs/models.md)",
    )
    img_size: int | None = opt(
        None,
        "clip side in pixels (model input; null: the model's "
        "input contract: 160, videomae_base_224 and marlin_* 224)",
    )
    init: str | None = opt(
        None,
        "checkpoint to start from (--init): maedfer pre-training or "
        "fine-tuning, or the authors' released .pth of the model's family "
        "(docs/models.md); null: random weights",
    )
    num_classes: int | None = opt(
        None, "classes (null: from the manifest; set, it must match the manifest)"
    )
    skip_unused_tail: bool = opt(
        True,
        "LGI-Former with region pooling: skip and freeze the last block's cross-attention,"
        " which cannot reach the logits (same logits, less compute; the official code "
        "computes it: false)",
    )


@dataclass
class OptimConfig:
    lr: float | None = opt(None, "absolute peak lr (null: blr * total batch / 256)")
    blr: float = opt(3e-4, "base lr per 256 clips of total batch")
    weight_decay: float = opt(
        0.05,
        "AdamW weight decay (constant; 1-D tensors, biases and the model's no-decay list exempt)",
    )
    betas: tuple[float, float] = opt((0.9, 0.95), "AdamW betas")
    eps: float = opt(1e-8, "AdamW eps")
    layer_decay: float | None = opt(None, "layer-wise lr decay (null: none)")
    clip_grad: float | None = opt(None, "clip the gradient norm to this (null: no clipping)")
    accum_steps: int = opt(
        1, "micro-batches per optimiser step (total batch = batch_size * accum_steps * world size)"
    )

    def validate(self) -> None:
        """Raises: MaedferError: ``optim.accum_steps`` below 1; an ``optim.lr``, ``optim.blr``
        or ``optim.clip_grad`` that is not positive; ``optim.layer_decay`` outside (0, 1]."""
        if self.accum_steps < 1:
            raise MaedferError(f"optim.accum_steps ({self.accum_steps}) must be at least 1")
        for key in ("lr", "blr", "clip_grad"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise MaedferError(f"optim.{key} ({value}) must be positive")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise MaedferError(f"optim.layer_decay ({self.layer_decay}) must be in (0, 1]")


@dataclass
class FinetuneOptimConfig(OptimConfig):
    blr: float = opt(1e-3, "base lr per 256 clips of total batch (96 -> 3.75e-4)")
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas")
    layer_decay: float | None = opt(0.75, "layer-wise lr decay: scale decay**(L-1-layer id)")


@dataclass
class ScheduleConfig:
    epochs: int = opt(
        100, "epochs scheduled (the released pre-training checkpoint is epoch 50 of 100)"
    )
    warmup_epochs: float = opt(5.0, "linear warmup from 0 (per optimiser step)")
    min_blr: float = opt(1e-5, "cosine end per 256 clips (scaled like blr)")
    max_steps: int | None = opt(None, "stop after this many optimiser steps (a trial run)")

    def validate(self) -> None:
        """Raises: MaedferError: ``schedule.epochs`` or ``schedule.max_steps`` below 1, a
        non-positive ``schedule.min_blr``, a negative ``schedule.warmup_epochs``."""
        if self.epochs < 1:
            raise MaedferError(f"schedule.epochs ({self.epochs}) must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise MaedferError(f"schedule.max_steps ({self.max_steps}) must be at least 1")
        if not self.min_blr > 0:
            raise MaedferError(f"schedule.min_blr ({self.min_blr}) must be positive")
        if self.warmup_epochs < 0:
            raise MaedferError(f"schedule.warmup_epochs ({self.warmup_epochs}) must be >= 0")


@dataclass
class FinetuneScheduleConfig(ScheduleConfig):
    epochs: int = opt(100, "epochs")
    min_blr: float = opt(1e-6, "cosine end per 256 clips (scaled like blr)")


@dataclass
class LossConfig:
    mixup: float = opt(0.8, "mixup alpha (0: off)")
    cutmix: float = opt(1.0, "CutMix alpha (0: off)")
    mix_prob: float = opt(1.0, "probability of mixing a batch")
    switch_prob: float = opt(0.5, "probability of CutMix instead of mixup")
    smoothing: float = opt(0.1, "label smoothing (folded into the mixed targets)")

    def validate(self, batch_size: int) -> None:
        """Raises: MaedferError: ``loss.smoothing`` outside [0, 1), negative mixup or cutmix
        alphas, an odd ``batch_size`` with mixup/cutmix (pairs are mixed)."""
        if not 0 <= self.smoothing < 1 or self.mixup < 0 or self.cutmix < 0:
            raise MaedferError(
                f"loss.smoothing ({self.smoothing}) must be in [0, 1) and the loss.mixup "
                f"({self.mixup}) and loss.cutmix ({self.cutmix}) alphas >= 0"
            )
        if (self.mixup > 0 or self.cutmix > 0) and batch_size % 2:
            raise MaedferError(
                f"mixup/cutmix mix pairs of clips: data.batch_size ({batch_size}) must "
                "be even (or set loss.mixup and loss.cutmix to 0)"
            )


@dataclass
class EvalConfig:
    test_views: int = opt(
        2,
        "temporal test views per clip, softmax-averaged (the official "
        "2 segments x 2 identical crops)",
    )
    test_batch_size: int | None = opt(None, "test batch (null: data.batch_size)")
    eval_every: int | None = opt(
        None, "also test every N epochs (logged only; null: at the end only)"
    )

    def validate(self) -> None:
        """Raises: MaedferError: ``eval.test_views``, ``eval.eval_every`` or
        ``eval.test_batch_size`` below 1."""
        for key in ("test_views", "eval_every", "test_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise MaedferError(f"eval.{key} ({value}) must be at least 1")


@dataclass
class RunConfig:
    out: str | None = opt(None, "run folder (--out; null: runs/<recipe>[/<dataset>_fold<k>])")
    device: str | None = opt(None, "cpu, cuda or cuda:N (--device; null: CUDA when present)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = opt(
        "auto",
        "auto = bf16 where the GPU supports it, else fp16 with a gradient scaler, fp32 "
        "on CPU (the official code: fp16 with a scaler: set fp16)",
    )
    seed: int = opt(0, "seed of shuffling, augmentation, masks and mixup")
    resume: Literal["auto", "true", "false"] = opt(
        "auto",
        "auto: continue a run of the same recipe in <out>, leave a finished one alone, "
        "refuse one of another recipe; true: a checkpoint must be there; false: <out> must "
        "hold no run (--resume)",
    )
    overwrite: bool = opt(False, "delete the run's files in <out> and start over (--overwrite)")
    save_every: int | None = opt(
        None,
        "also keep checkpoints/epoch-NNNN.pt every N epochs (--save-every; null: only "
        "last.pt; the official code keeps numbered checkpoints too)",
    )
    keep_checkpoints: int | None = opt(3, "numbered checkpoints kept, newest first (null: all)")
    log_every: int = opt(10, "optimiser steps per metrics line")
    max_nonfinite: int = opt(5, "stop after this many non-finite losses in a row")

    def validate(self) -> None:
        """Raises: MaedferError: ``run.log_every`` or ``run.max_nonfinite`` below 1."""
        for key in ("log_every", "max_nonfinite"):
            value = getattr(self, key)
            if value < 1:
                raise MaedferError(f"run.{key} ({value}) must be at least 1")


@dataclass
class PretrainConfig:
    """MAE pre-training (official: VoxCeleb2, 100 epochs scheduled, 32 clips per GPU)."""

    recipe: Literal["pretrain"] = opt("pretrain", "which recipe this config is for")
    data: DataConfig = section(DataConfig, "clips and their sampling")
    model: PretrainModelConfig = section(PretrainModelConfig, "the pre-training model")
    optim: OptimConfig = section(OptimConfig, "AdamW")
    schedule: ScheduleConfig = section(ScheduleConfig, "per-step warmup + cosine lr")
    run: RunConfig = section(RunConfig, "where, how and how often")

    def validate(self) -> None:
        """Check every section (in the constructor of the recipe, before any work).

        Raises:
            MaedferError: a value a section refuses (:meth:`OptimConfig.validate`, ...), or
                ``model.mask_ratio`` outside (0, 1).
        """
        _validate_sections(self)
        if not 0 < self.model.mask_ratio < 1:
            raise MaedferError(f"model.mask_ratio ({self.model.mask_ratio}) must be in (0, 1)")


@dataclass
class FinetuneConfig:
    """Fine-tuning and testing on one fold (official: DFEW fold 1 script)."""

    recipe: Literal["finetune"] = opt("finetune", "which recipe this config is for")
    data: FinetuneDataConfig = section(FinetuneDataConfig, "clips and their sampling")
    model: FinetuneModelConfig = section(FinetuneModelConfig, "the classifier")
    optim: FinetuneOptimConfig = section(FinetuneOptimConfig, "AdamW with layer decay")
    schedule: FinetuneScheduleConfig = section(
        FinetuneScheduleConfig, "per-step warmup + cosine lr"
    )
    loss: LossConfig = section(LossConfig, "mixup/CutMix and label smoothing")
    eval: EvalConfig = section(EvalConfig, "the test protocol")
    run: RunConfig = section(RunConfig, "where, how and how often")

    def validate(self) -> None:
        """Check every section (in the constructor of the recipe, before any work).

        Raises:
            MaedferError: a value a section refuses (:meth:`OptimConfig.validate`, ...,
                :meth:`EvalConfig.validate`, :meth:`LossConfig.validate`).
        """
        _validate_sections(self)
        self.eval.validate()
        self.loss.validate(self.data.batch_size)


def _validate_sections(cfg: PretrainConfig | FinetuneConfig) -> None:
    """The sections both recipes have, in the order a reader meets them."""
    cfg.schedule.validate()
    cfg.data.validate()
    cfg.optim.validate()
    cfg.run.validate()


RecipeConfig = PretrainConfig | FinetuneConfig
CONFIG_CLASSES: dict[str, type] = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def apply_overrides(cfg: Any, overrides: Sequence[str] | Mapping[str, Any] | None) -> Any:
    """``cfg`` with dotted overrides applied (in place; returned for chaining).

    Raises:
        MaedferError: an unknown key or bad value, or an override that would have no effect
            (``optim.blr`` where the config sets an absolute ``optim.lr``, which wins).
    """
    parsed = parse_overrides(overrides)
    if "recipe" in parsed and parsed["recipe"] != cfg.recipe:
        raise MaedferError(f"this is a {cfg.recipe} config; recipe cannot be {parsed['recipe']!r}")
    # set_values parses the text the same way again: --set text merges into a mapping option
    given: Sequence[str] | dict[str, Any]
    if overrides is None or isinstance(overrides, Mapping):
        given = {k: v for k, v in parsed.items() if k != "recipe"}
    else:
        given = [item for item in overrides if item.partition("=")[0].strip() != "recipe"]
    set_values(cfg, given)
    optim = getattr(cfg, "optim", None)
    if (
        "optim.blr" in parsed
        and "optim.lr" not in parsed
        and optim is not None
        and optim.lr is not None
    ):
        raise MaedferError(
            f"--set optim.blr={parsed['optim.blr']} would be ignored: the config sets "
            f"optim.lr={optim.lr}, an absolute peak lr that wins over blr; add --set "
            "optim.lr=null to scale blr by the total batch, or set optim.lr instead"
        )
    return cfg


# ---------------------------------------------------------------------------------- files


def list_configs() -> list[str]:
    """Names of the shipped configs (``maedfer config list``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(source: str | Path) -> Path:
    """The file of a shipped config name, or ``source`` itself when it is a file.

    Raises:
        MaedferError: neither a shipped name nor an existing file.
    """
    text = str(source)
    if text in list_configs():
        return CONFIG_DIR / f"{text}.yaml"
    path = Path(text)
    if path.is_file():
        return path
    near = difflib.get_close_matches(text, list_configs(), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise MaedferError(
        f"config {text!r} is neither a shipped config ({', '.join(list_configs())}) nor a "
        f"file{hint}"
    )


def from_dict(data: Mapping[str, Any], *, recipe: str | None = None) -> RecipeConfig:
    """A config from its (nested) dict; keys absent keep their defaults.

    Raises:
        MaedferError: a missing or unknown ``recipe``, one that differs from ``recipe``, or an
            unknown key or bad value.
    """
    if not isinstance(data, Mapping):
        raise MaedferError("a config must be a mapping with a 'recipe' key and its sections")
    name = data.get("recipe", recipe)
    if name not in CONFIG_CLASSES:
        raise MaedferError(f"config recipe {name!r} is unknown; expected one of {RECIPES}")
    if recipe is not None and name != recipe:
        raise MaedferError(
            f"that is a {name} config; {recipe} needs a {recipe} config (see maedfer config list)"
        )
    cfg = CONFIG_CLASSES[name]()
    # ``resolved`` is what a run's config.yaml adds for the record (world size, total batch,
    # lr range): facts of that run, not options, so a replay reads past it.
    apply_overrides(cfg, {k: v for k, v in data.items() if k not in ("recipe", RESOLVED)})
    return cfg


def load(
    source: str | Path | RecipeConfig | None = None,
    *,
    recipe: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> RecipeConfig:
    """A shipped config by name, a YAML file, or (``None``) the recipe's defaults; then
    ``overrides``.

    Raises:
        MaedferError: unknown name, unreadable YAML, wrong recipe, unknown key or bad value.
    """
    if source is None:
        if recipe is None:
            raise MaedferError("load() needs a config or a recipe name")
        cfg = CONFIG_CLASSES[recipe]()
    elif dataclasses.is_dataclass(source):
        cfg = from_dict(to_dict(source), recipe=recipe)
    else:
        cfg = from_dict(read_yaml(config_path(source)), recipe=recipe)
    return apply_overrides(cfg, overrides)


def markdown_tables() -> str:
    """Every key of both recipes, its default and its help line, as the Markdown tables of
    ``docs/recipe.md`` (a generated page: a test keeps it equal to this; regenerate with
    ``python -m maedfer.recipes.config``)."""
    out = []
    for recipe, cls in CONFIG_CLASSES.items():
        out += [f"### `{recipe}`", "", "| key | default | what it does |", "|---|---|---|"]
        out += [*markdown_rows(cls()), ""]
    return "\n".join(out)


def resolve(
    config: Any,
    *,
    recipe: str,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> RecipeConfig:
    """:func:`load` then the CLI's common flags (dotted key -> value; ``None`` = not given),
    which win over the config and the overrides."""
    cfg = load(config, recipe=recipe, overrides=overrides)
    given = {
        k: str(v) if isinstance(v, Path) else v for k, v in (flags or {}).items() if v is not None
    }
    cfg = apply_overrides(cfg, given)
    # the files a run reads, absolute: its config.yaml replays from any folder
    absolute = {
        key: os.path.abspath(os.path.expanduser(value))
        for key in PATH_KEYS
        if isinstance(value := get(cfg, key), str) and value
    }
    return apply_overrides(cfg, absolute)


#: Config keys that name files; stored absolute (:func:`resolve`), compared by the file they
#: name (``maedfer.training.resume``).
PATH_KEYS = ("data.manifest", "model.init")


def describe_config(name: str) -> str:
    """The first sentence of a shipped config's leading comment, whole (it may span lines)."""
    text = (CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    paragraph = " ".join(" ".join(lines).split())
    end = re.search(r"[.!?](\s|$)", paragraph)
    return paragraph[: end.start() + 1] if end else paragraph


def to_yaml(cfg: Any) -> str:
    """A recipe config as YAML, each key with its help line as a comment (loads back equal)."""
    title = f"maedfer {cfg.recipe} recipe; every key, its value and what it does"
    return _to_yaml(cfg, title=title)


if __name__ == "__main__":  # regenerate the tables of docs/recipe.md
    print(markdown_tables(), end="")
