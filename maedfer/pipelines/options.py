"""The loader's ``data`` section: every option of the clip stream, declared once.

:func:`~maedfer.pipelines.loader.build_loader` takes this section whole (torchtune hands a
component its config section the same way); the recipes' ``data`` sections
(:mod:`maedfer.recipes.config`) are these classes plus the recipe's own keys (the manifest, the
fold), so a loader option has one default and one help line, here. Which augmentation steps an
option turns on, and in which modes, is the step table's (:mod:`maedfer.pipelines.steps`).

Torch-free: the command line and the configs import it cheaply.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from maedfer.config import Choices, field_default, opt, option_names
from maedfer.constants import RAND_AUGMENT, TemporalRule
from maedfer.errors import MaedferError
from maedfer.pipelines.backend import choices as backend_choices


@dataclass
class DataOptions:
    """How clips are sampled, decoded and augmented, in every mode (both recipes)."""

    batch_size: int = opt(32, "clips per device and micro-batch (official: 32 per GPU)")
    workers: int | None = opt(
        None, "PyAV worker processes or DALI threads (null: from the core count)"
    )
    backend: Annotated[str, Choices(backend_choices)] = opt(
        "auto",
        "clip decoder: dali (GPU), hybrid (PyAV decodes, the GPU converts and "
        "augments), pyav (CPU) or auto (DALI when CUDA and DALI are present, else hybrid on "
        "CUDA, else pyav)",
    )
    temporal_rule: TemporalRule = opt(
        "stride",
        "training window: stride = num_frames frames exactly `stride` apart at a "
        "random start (the official pre-training rule)",
    )
    stride: int | None = opt(
        4,
        "frame step of the windows (official sampling rate: 4; FERV39k "
        "1; null: the model's input contract, docs/models.md)",
    )
    augment: bool = opt(
        True,
        "the official spatial augmentation of this recipe (training "
        "modes; test clips are never augmented)",
    )
    subtract_mean: bool = opt(
        False, "feed each clip minus its mean frame (not in the official recipe; the demo uses it)"
    )
    num_sample: int = opt(
        1,
        "training samples per clip and epoch from one decoded window, "
        "each with its own crop (VideoMAE V2's repeated sampling, a maedfer "
        "option: fewer decodes per sample, num_sample x the steps per epoch; "
        "official: 1)",
    )

    def validate(self) -> None:
        """Check the section's values (a null ``stride`` is the model's, filled in before).

        Raises:
            MaedferError: ``data.batch_size`` or ``data.stride`` below 1, negative
                ``data.workers``.
        """
        for key in ("batch_size", "stride"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise MaedferError(f"data.{key} ({value}) must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise MaedferError(f"data.workers ({self.workers}) must be at least 0")


@dataclass
class TrainDataOptions(DataOptions):
    """:class:`DataOptions` plus the options of ``train`` mode (the fine-tuning augmentation)."""

    rand_augment: str | None = opt(
        RAND_AUGMENT,
        "timm RandAugment policy, same ops on every frame, on every backend (null: off)",
    )
    flip_only: bool = opt(False, "with augment false: still flip half the training clips")
    random_sign: bool = opt(
        False, "negate half the training clips (with subtract_mean; not in the official recipe)"
    )


__all__ = ["RAND_AUGMENT", "DataOptions", "TrainDataOptions", "field_default", "option_names"]
