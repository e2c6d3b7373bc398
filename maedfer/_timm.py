"""LGI-Former in timm's registry: ``timm.create_model("lgi_former_base", num_classes=7)``.

Registered when timm is imported after ``import maedfer`` (or at once, if timm already was):
``maedfer/__init__.py`` installs the hook, so ``import maedfer`` alone stays light. Which models
and which dataset tags are read from maedfer's own registries (docs/design.md, "Facts in one
place"): MAE-DFER's classifiers (the classifiers of the model registry with MAE-DFER's input
contract, :func:`maedfer.model.models_of_kind`) and every labelled dataset of the dataset
registry. The entrypoints build :func:`maedfer.model.create_model` models; ``pretrained_cfg``
carries the model's input contract, and the tags name the classes of each labelled dataset in
its label order (``maedfer.manifests``): ``timm.create_model("lgi_former_base.dfew")`` is a
7-class head whose ``pretrained_cfg["label_names"]`` are DFEW's. No weights are ever
downloaded: ``pretrained=True`` is refused with what to do instead (load a checkpoint:
``maedfer.Predictor`` or ``maedfer.model.load_official``).
"""

from __future__ import annotations

import sys
from typing import Any

from maedfer.errors import MaedferError

default_cfgs: dict[str, Any] = {}  # timm reads this module attribute when registering
_registered = False
_pending = False  # timm came first, from inside maedfer.model's own import


def models() -> list[str]:
    """MAE-DFER's classifiers: the model registry's classifiers with MAE-DFER's input contract
    (``lgi_former_tiny``, ``_small``, ``_base``)."""
    from maedfer.model import InputContract, model_info, models_of_kind

    own = InputContract().source
    return [n for n in models_of_kind("classifier") if model_info(n)["inputs"].source == own]


def labelled_datasets() -> dict[str, str]:
    """Tag -> dataset for every labelled dataset of the registry (tags cannot hold '-')."""
    from maedfer.manifests import get_protocol, list_datasets

    return {n.replace("-", "_"): n for n in list_datasets() if get_protocol(n).classes}


def _cfg(name: str, **extra: Any) -> dict[str, Any]:
    from maedfer.model import input_contract

    contract = input_contract(name)
    return {
        "url": "",
        "hf_hub_id": None,
        "input_size": (3, contract.num_frames, contract.img_size, contract.img_size),
        "fixed_input_size": True,
        "mean": tuple(contract.mean),
        "std": tuple(contract.std),
        "crop_pct": 1.0,
        "first_conv": "encoder.patch_embed.proj",
        "classifier": "head",
        "license": "see the checkpoint's source",
        **extra,
    }


def _entrypoint(name: str):
    def create(
        pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs: Any
    ):
        from timm.models._builder import resolve_pretrained_cfg

        from maedfer.model import create_model

        if pretrained:
            raise MaedferError(
                f"maedfer downloads no weights: create {name} without pretrained=True and load "
                "a checkpoint (maedfer.Predictor, or maedfer.model.load_official for official "
                "MAE-DFER weights)"
            )
        kwargs.pop("cache_dir", None)
        cfg = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
        if cfg.label_names and "num_classes" not in kwargs:
            kwargs["num_classes"] = cfg.num_classes
        model = create_model(name, **kwargs)
        model.pretrained_cfg = model.default_cfg = cfg.to_dict()
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"{name} (maedfer.model.create_model) through timm's registry."
    return create


def register() -> None:
    """Record the LGI-Former classifiers (and their dataset tags) in timm's registry, once.

    timm may be imported by the model package itself, before its models are registered: then
    the registration waits for the package's last line (:func:`register_pending`).
    """
    global _registered, _pending
    if _registered:
        return
    package = sys.modules.get("maedfer.model")
    if package is not None and not getattr(package, "_READY", False):
        _pending = True
        return
    from timm.models._registry import generate_default_cfgs, register_model

    from maedfer.manifests import get_protocol

    cfgs = {}
    names = models()
    for name in names:
        cfgs[name] = _cfg(name, num_classes=7)
        for tag, dataset in labelled_datasets().items():
            classes = tuple(get_protocol(dataset).classes)
            cfgs[f"{name}.{tag}"] = _cfg(name, num_classes=len(classes), label_names=classes)
    default_cfgs.update(generate_default_cfgs(cfgs))
    for name in names:
        entry = _entrypoint(name)
        globals()[name] = entry
        register_model(entry)
    _registered = True


def register_pending() -> None:
    """Register now if timm was imported while the model package was still being imported."""
    if _pending:
        register()
