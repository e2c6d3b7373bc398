"""The stream of clips that feeds training and evaluation (DESIGN.md §1, MODEL.md §4).

``build_loader(manifest, mode=..., batch_size=...)`` returns a :class:`ClipLoader` of
:class:`ClipBatch` dicts. Modules: ``sampling`` (frame indices, shared by every backend),
``augment`` (crop boxes, RandAugment, erasing, mean-frame subtraction, ``make_mixup``),
``select`` (manifest rows, fold/split), ``plan`` (one epoch's samples), ``pyav`` (CPU backend),
``dali`` (GPU backend, imported only when chosen), ``profile`` (``maedfer profile data``).
"""

from maedfer.pipelines.augment import make_mixup
from maedfer.pipelines.loader import ClipBatch, ClipLoader, build_loader

__all__ = ["ClipBatch", "ClipLoader", "build_loader", "make_mixup"]
