"""Model registry in the timm manner: builders recorded by name, ``create_model(name, **kw)``.

A builder states only what its variant changes; the caller's overrides win. ``None`` overrides
mean "the default" and are dropped. Every created model carries ``model_name`` and ``config``
(the full keyword set it was built with), which checkpoints store to rebuild it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from maedfer.errors import MaedferError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, dict[str, Any]] = {}
KINDS: tuple[str, ...] = ("classifier", "pretrain")


def register_model(
    builder: Callable[..., nn.Module] | None = None, *, kind: str = "classifier",
    unused_tail: bool = False,
) -> Any:
    """Decorator: record ``builder`` under its function name, with the model's facts.

    ``@register_model`` or ``@register_model(kind="pretrain", unused_tail=True)``. ``kind``:
    ``classifier`` (fine-tuning, ``(B, 3, T, H, W) -> logits``) or ``pretrain`` (MAE);
    ``unused_tail``: the model accepts ``skip_unused_tail`` (region pooling leaves part of the
    last block unreachable from the logits).
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} must be one of {KINDS}")

    def record(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[fn.__name__] = fn
        _INFO[fn.__name__] = {"kind": kind, "unused_tail": unused_tail}
        return fn

    return record(builder) if builder is not None else record


def model_info(name: str) -> dict[str, Any]:
    """The registered facts of a model: ``kind`` and ``unused_tail`` (see :func:`register_model`).

    Raises:
        MaedferError: unknown name (the message lists the known ones).
    """
    if name not in _BUILDERS:
        raise MaedferError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return dict(_INFO[name])


def models_of_kind(kind: str) -> list[str]:
    """Names of the registered models of one kind, sorted."""
    return [n for n in list_models() if _INFO[n]["kind"] == kind]


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_BUILDERS)


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


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("lgi_former_base", num_classes=7)``.

    Raises:
        MaedferError: unknown name (the message lists the known ones) or unknown override.
    """
    if name not in _BUILDERS:
        raise MaedferError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    model = _BUILDERS[name](**{k: v for k, v in overrides.items() if v is not None})
    model.model_name = name
    return model
