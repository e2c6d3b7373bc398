"""The stream of clips that feeds training and evaluation (docs/design.md, docs/recipe.md).

``build_loader(manifest, data, mode=...)`` (or ``build_loader(manifest, mode=...,
batch_size=...)``) returns a :class:`ClipLoader` of :class:`ClipBatch` dicts. Modules:
``options`` (the ``data`` section: every loader option, declared once), ``backend`` (the backend
contract and the one table of backends), ``sampling`` (frame indices, shared by every backend and
by inference), ``steps`` (the augmentation steps, one ordered table), ``augment`` (crop boxes,
erasing, mean-frame subtraction, ``normalise``, ``make_mixup``), ``rand_augment`` (RandAugment
draws, its numpy and per-sample torch executors), ``cpu_augment`` / ``batch_augment`` /
``rand_augment_batch`` (the steps' per-sample CPU and batched torch executors), ``select``
(manifest rows, fold/split), ``plan`` (one epoch's samples), ``feeding`` (producer thread, side
stream), ``pyav`` (CPU backend), ``hybrid`` (PyAV decodes, the GPU converts: ``yuv``, and
augments), ``dali`` (GPU backend, imported only when chosen), ``profile``
(``maedfer profile data``).

Names are imported on first use, so ``maedfer.pipelines.backend`` (the table the command line
and the recipe configs read) costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "ClipBatch": "maedfer.pipelines.loader",
    "ClipLoader": "maedfer.pipelines.loader",
    "build_loader": "maedfer.pipelines.loader",
    "make_mixup": "maedfer.pipelines.augment",
    "normalise": "maedfer.pipelines.augment",
    "normalize": "maedfer.pipelines.augment",
    "clip_from_frames": "maedfer.pipelines.augment",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        module = importlib.import_module(_NAMES[name])
        return getattr(module, "normalise" if name == "normalize" else name)
    raise AttributeError(f"module 'maedfer.pipelines' has no attribute {name!r}")
