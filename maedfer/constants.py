"""Facts the whole package shares, in one torch-free place (as timm keeps
``timm/data/constants.py``).

Everything here is imported where it is used, never copied: the config trees
(:mod:`maedfer.pipelines.options`, :mod:`maedfer.recipes.config`), the pipelines' normalisation
and augmentation, the models' input contracts and timm's registry entries all read these names.
docs/design.md ("Facts in one place") lists them.
"""

from __future__ import annotations

from typing import Literal, get_args

#: The normalisation every model of the lineage was trained with (ImageNet's per-channel mean
#: and standard deviation of RGB values in [0, 1]; docs/design.md, "Clips").
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: timm's RandAugment policy of the official fine-tuning recipe (docs/recipe.md).
RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"

#: How a training window is placed in a clip (:func:`maedfer.pipelines.sampling.train_window`):
#: ``stride`` (frames exactly ``stride`` apart) or ``reference`` (the official fine-tuning rule).
TemporalRule = Literal["stride", "reference"]
TEMPORAL_RULES: tuple[str, ...] = get_args(TemporalRule)

#: What a loader feeds: pre-training clips, augmented training clips, or test views.
Mode = Literal["pretrain", "train", "test"]
MODES: tuple[str, ...] = get_args(Mode)
