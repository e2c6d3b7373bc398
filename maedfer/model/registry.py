"""Model registry in the timm manner: builders recorded by name, ``create_model(name, **kw)``.

A builder states only what its variant changes; the caller's overrides win. ``None`` overrides
mean "the default" and are dropped. Every created model carries ``model_name`` and ``config``
(the full keyword set it was built with), which checkpoints store to rebuild it.

Each entry also states the model's input contract (:class:`InputContract`: frames, side, frame
stride, normalisation, face crop), which the loaders, ``predict`` and ``export`` read: a model
built without ``num_frames``/``img_size`` overrides gets the contract's. An alias
(:func:`register_alias`) is a second name of an entry; models built by it carry the entry's name.

Documented in docs/models.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD
from maedfer.errors import MaedferError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, dict[str, Any]] = {}
_ALIASES: dict[str, str] = {}
KINDS: tuple[str, ...] = ("classifier", "pretrain")
#: The faces MAE-DFER was trained on (its contract's default).
MAE_DFER_CROP = (
    "the datasets' face crops (MAE-DFER preprocess), VoxCeleb2's face-centred "
    "frames for pre-training"
)


@dataclass(frozen=True)
class InputContract:
    """What a model expects of its input clips, as its authors fed it.

    Attributes:
        num_frames: frames per clip.
        img_size: side of the square face crop in pixels.
        stride: every ``stride``-th video frame is taken (the authors' sampling rate).
        mean, std: per-channel normalisation of RGB values in [0, 1]: ``(x - mean) / std``.
        face_crop: how the authors cut the faces (maedfer feeds every model its own
            MTCNN-aligned crop, at ``img_size``).
        source: the authors' code (and its version) the contract is read from.
    """

    num_frames: int = 16
    img_size: int = 160
    stride: int = 4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    face_crop: str = MAE_DFER_CROP
    source: str = "MAE-DFER (sunlicai/MAE-DFER)"

    @property
    def imagenet(self) -> bool:
        """Whether the normalisation is the loaders' (ImageNet mean and std)."""
        return tuple(self.mean) == IMAGENET_MEAN and tuple(self.std) == IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Published:
    """A figure the model's paper (or its authors' README) reports on one dataset, in percent
    (``None``: the source gives no such figure)."""

    uar: float | None
    war: float | None
    aggregation: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class _Entry:
    kind: str
    unused_tail: bool
    inputs: InputContract
    published: Mapping[str, Published] = field(default_factory=dict)


def register_model(
    builder: Callable[..., nn.Module] | None = None,
    *,
    kind: str = "classifier",
    unused_tail: bool = False,
    inputs: InputContract | None = None,
    published: Mapping[str, Published] | None = None,
) -> Any:
    """Decorator: record ``builder`` under its function name, with the model's facts.

    ``@register_model`` or ``@register_model(kind="pretrain", unused_tail=True)``. ``kind``:
    ``classifier`` (fine-tuning, ``(B, 3, T, H, W) -> logits``) or ``pretrain`` (MAE);
    ``unused_tail``: the model accepts ``skip_unused_tail`` (region pooling leaves part of the
    last block unreachable from the logits); ``inputs``: the input contract (default: MAE-DFER's,
    16 frames of 160 px, stride 4, ImageNet normalisation); ``published``: the paper's figures
    by dataset name (``dfew``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} must be one of {KINDS}")

    def record(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[fn.__name__] = fn
        _INFO[fn.__name__] = _Entry(
            kind, unused_tail, inputs or InputContract(), dict(published or {})
        )
        return fn

    return record(builder) if builder is not None else record


def register_alias(alias: str, name: str) -> None:
    """Make ``alias`` a second name of the registered model ``name``."""
    if name not in _BUILDERS:
        raise ValueError(f"cannot alias {alias!r} to unregistered {name!r}")
    _ALIASES[alias] = name


def canonical_name(name: str) -> str:
    """The registered name behind ``name`` (an alias or the name itself).

    Raises:
        MaedferError: unknown name (the message lists the known ones).
    """
    name = _ALIASES.get(name, name)
    if name not in _BUILDERS:
        raise MaedferError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return name


def model_info(name: str) -> dict[str, Any]:
    """The registered facts of a model: ``kind``, ``unused_tail`` (see :func:`register_model`),
    ``inputs`` (its :class:`InputContract`) and ``published`` (dataset -> :class:`Published`).

    Raises:
        MaedferError: unknown name (the message lists the known ones).
    """
    entry = _INFO[canonical_name(name)]
    return {
        "kind": entry.kind,
        "unused_tail": entry.unused_tail,
        "inputs": entry.inputs,
        "published": dict(entry.published),
    }


def input_contract(model_or_name: nn.Module | str) -> InputContract:
    """The input contract of a registered model (by name, or of a model it built), with the
    frames and side the model was actually built for."""
    if isinstance(model_or_name, str):
        return model_info(model_or_name)["inputs"]
    contract = model_info(model_or_name.model_name)["inputs"]
    config = getattr(model_or_name, "config", {})
    return InputContract(
        **{**asdict(contract), **{k: config[k] for k in ("num_frames", "img_size") if k in config}}
    )


def models_of_kind(kind: str) -> list[str]:
    """Names of the registered models of one kind (aliases included), sorted."""
    return [n for n in list_models() if _INFO[canonical_name(n)].kind == kind]


def list_models() -> list[str]:
    """Names of every registered model and alias, sorted."""
    return sorted({*_BUILDERS, *_ALIASES})


def build(cls: type[nn.Module], defaults: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """Instantiate ``cls`` with ``defaults`` updated by ``overrides``, checking field names.

    Raises:
        MaedferError: an override that is not a field of ``cls``.
    """
    fields = {
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise MaedferError(
            f"{', '.join(unknown)} {'is not a field' if len(unknown) == 1 else 'are not fields'} "
            f"of {cls.__name__}; valid: {', '.join(sorted(fields))}"
        )
    kwargs = {**defaults, **overrides}
    model = cls(**kwargs)
    bound = inspect.signature(cls).bind(**kwargs)
    bound.apply_defaults()
    model.config = dict(bound.arguments)
    return model


def create_model(name: str, **overrides: Any) -> Any:
    """Build a registered model, e.g. ``create_model("lgi_former_base", num_classes=7)``: an
    ``nn.Module`` with the registry's API (``config``, ``model_name``, its kind's methods).

    Raises:
        MaedferError: unknown name (the message lists the known ones) or unknown override.
    """
    name = canonical_name(name)
    given = {k: v for k, v in overrides.items() if v is not None}
    builder = _BUILDERS[name]
    contract = _INFO[name].inputs
    # the contract's frames and side, unless the caller gives them (or the model has no such
    # field: a model that takes them always takes both)
    for key in ("num_frames", "img_size"):
        given.setdefault(key, getattr(contract, key))
    model = builder(**given)
    model.model_name = name
    return model
