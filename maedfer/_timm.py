"""LGI-Former in timm's registry: ``timm.create_model("lgi_former_base", num_classes=7)``.

Registered when timm is imported after ``import maedfer`` (or at once, if timm already was):
``maedfer/__init__.py`` installs the hook, so ``import maedfer`` alone stays light. The
entrypoints build :func:`maedfer.model.create_model` models; ``pretrained_cfg`` carries the
input settings, and the tags name the classes of each labeled dataset in its label order
(``maedfer.manifests``): ``timm.create_model("lgi_former_base.dfew")`` is a 7-class head whose
``pretrained_cfg["label_names"]`` are DFEW's. No weights are ever downloaded: ``pretrained=True``
is refused with what to do instead (load a checkpoint: ``maedfer.Predictor`` or
``maedfer.model.load_official``).
"""

from __future__ import annotations

from typing import Any

from maedfer.errors import MaedferError

MODELS = ("lgi_former_tiny", "lgi_former_small", "lgi_former_base")
# tag -> dataset protocol; tags cannot hold '-'
LABELED = {"dfew": "dfew", "ferv39k": "ferv39k", "mafw": "mafw", "crema_d": "crema-d",
           "ravdess": "ravdess", "enterface05": "enterface05"}  # fmt: skip
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pipelines' normalisation (pipelines/augment.py)
_IMAGENET_STD = (0.229, 0.224, 0.225)
default_cfgs: dict[str, Any] = {}  # timm reads this module attribute when registering
_registered = False


def _cfg(**extra: Any) -> dict[str, Any]:
    return {"url": "", "hf_hub_id": None, "input_size": (3, 16, 160, 160), "fixed_input_size": True,
            "mean": _IMAGENET_MEAN, "std": _IMAGENET_STD, "crop_pct": 1.0,
            "first_conv": "encoder.patch_embed.proj", "classifier": "head",
            "license": "see the checkpoint's source", **extra}  # fmt: skip


def _entrypoint(name: str):
    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
               **kwargs: Any):  # fmt: skip
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
    """Record the LGI-Former classifiers (and their dataset tags) in timm's registry, once."""
    global _registered
    if _registered:
        return
    from timm.models._registry import generate_default_cfgs, register_model

    from maedfer.manifests import get_protocol

    cfgs = {}
    for name in MODELS:
        cfgs[name] = _cfg(num_classes=7)
        for tag, dataset in LABELED.items():
            classes = tuple(get_protocol(dataset).classes)
            cfgs[f"{name}.{tag}"] = _cfg(num_classes=len(classes), label_names=classes)
    default_cfgs.update(generate_default_cfgs(cfgs))
    for name in MODELS:
        entry = _entrypoint(name)
        globals()[name] = entry
        register_model(entry)
    _registered = True
