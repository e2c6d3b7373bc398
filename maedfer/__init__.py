"""maedfer: self-supervised dynamic facial expression recognition (MAE-DFER) at scale.

Sub-packages: ``manifests`` (dataset protocols), ``preprocess`` (faces and clips),
``pipelines`` (clip loading), ``model`` (LGI-Former, ViT baseline, MAE pre-training),
``train`` (recipes), ``inference`` (predict, the Predictor, export, embed). See docs/design.md for
the contracts.

``maedfer.Predictor`` is :class:`maedfer.inference.Predictor` (imported on first use). After
``import maedfer``, timm's registry knows ``lgi_former_*`` (:mod:`maedfer._timm`): the models
are registered when timm is imported, so ``import maedfer`` itself stays light.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

from maedfer.errors import MaedferError

__version__ = "0.1.0"
__all__ = ["MaedferError", "Predictor", "__version__"]


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``timm`` is imported, registers our models right after."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib's protocol)
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; find timm the ordinary way
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module) -> None:  # noqa: ANN001
            exec_module(module)
            from maedfer import _timm

            _timm.register()

        spec.loader.exec_module = exec_and_register
        return spec


if "timm" in sys.modules:
    from maedfer import _timm

    _timm.register()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from maedfer.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'maedfer' has no attribute {name!r}")
