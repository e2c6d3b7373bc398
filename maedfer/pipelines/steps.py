"""The augmentation steps, one ordered table: what each draws, where it runs, its executors.

A :class:`Step` declares

- the loader modes it belongs to and when the plan draws its parameters (``drawn``) and when
  it changes the clips (``runs``; RandAugment's seed is drawn whenever the train augmentation is
  on, so the erasing draws after it do not depend on the RandAugment option);
- ``draw(rng, config)``: its parameters for one sample, as fields of
  :class:`~maedfer.pipelines.plan.SampleSpec`, from the sample's generator (the plan calls the
  steps in the table's order, so the draws are a pure function of the sample's seed);
- its ``stage``, where in the pipeline it runs (:data:`STAGES`: on the uint8-valued frames before
  the crop, the crop geometry, values of the normalised clip, regions of it);
- ``describe(config)``, the entry ``describe()`` and ``--dry-run`` print;
- its executors: ``cpu``, per sample with numpy/OpenCV (:mod:`maedfer.pipelines.cpu_augment`,
  the PyAV backend) and ``batch``, over a whole batch on its device
  (:mod:`maedfer.pipelines.batch_augment`, the GPU backends).

Adding an augmentation is one row here plus its two executors. The clip-mean subtraction and
the ImageNet normalisation are not steps: they run in every mode, between the ``geometry`` and
``values`` stages.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from maedfer.pipelines import augment, batch_augment, cpu_augment, rand_augment

if TYPE_CHECKING:
    from maedfer.pipelines.plan import SampleConfig

#: Where a step runs, in pipeline order: the uint8-valued ``size``×``size`` frames (before the
#: crop), the crop geometry, then (after normalisation and mean subtraction) values of the clip
#: and regions of it.
STAGES: tuple[str, ...] = ("frames", "geometry", "values", "regions")
#: the stages before normalisation (frames ``(T, 3, H, W)`` of values 0..255)
FRAME_STAGES = frozenset({"frames", "geometry"})


@dataclass(frozen=True)
class Step:
    """One augmentation (see the module notes)."""

    name: str
    modes: frozenset[str]
    stage: str
    wanted: Callable[[SampleConfig], bool]  # drawn when wanted, in one of ``modes``
    draw: Callable[[np.random.Generator, SampleConfig], dict[str, Any]]
    describe: Callable[[SampleConfig], dict[str, Any]]
    cpu: Callable[..., Any]
    batch: batch_augment.BatchExecutor
    applied: Callable[[SampleConfig], bool] | None = None  # runs when drawn and this holds

    def drawn(self, config: SampleConfig) -> bool:
        """Whether the plan draws this step's parameters for ``config``'s samples."""
        return config.mode in self.modes and self.wanted(config)

    def runs(self, config: SampleConfig) -> bool:
        """Whether this step changes ``config``'s clips."""
        return self.drawn(config) and (self.applied is None or self.applied(config))


def _augment(config: SampleConfig) -> bool:
    return config.augment


def _multi_scale_crop(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    size = config.size
    return {"box": augment.multi_scale_crop_box(size, size, out_size=size, generator=rng)}


def _resized_crop(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    return {"box": augment.random_resized_crop_box(config.size, config.size, generator=rng)}


def _flip(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    return {"flip": bool(rng.random() < augment.FLIP_PROB)}


def _rand_augment(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    seed = int(rng.integers(2**31))  # drawn even when unused (see ``applied``)
    if not config.rand_augment:
        return {}
    ops = rand_augment.policy_for(config.rand_augment_policy, config.size).draw(seed)
    return {"rand_augment_seed": seed, "rand_augment": ops}


def _erasing(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    if rng.random() >= augment.ERASE_PROB:
        return {}
    box = augment.random_erasing_box(config.size, config.size, generator=rng)
    return {"erase": box, "erase_seed": int(rng.integers(2**31))}


def _sign(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    return {"negate": bool(rng.random() < 0.5)}


_TRAIN, _PRETRAIN = frozenset({"train"}), frozenset({"pretrain"})

#: The steps in the order the plan draws them (the order of application is by stage).
STEPS: tuple[Step, ...] = (
    Step(
        "multi_scale_crop",
        _PRETRAIN,
        "geometry",
        _augment,
        _multi_scale_crop,
        lambda c: {
            "name": "multi_scale_crop",
            "scales": list(augment.MULTI_SCALES),
            "max_distort": 1,
            "fixed_offsets": 13,
            "size": c.size,
        },
        cpu_augment.crop,
        batch_augment.CROP,
    ),
    Step(
        "random_resized_crop",
        _TRAIN,
        "geometry",
        _augment,
        _resized_crop,
        lambda c: {
            "name": "random_resized_crop",
            "scale": [0.08, 1.0],
            "ratio": [3 / 4, 4 / 3],
            "size": c.size,
        },
        cpu_augment.crop,
        batch_augment.CROP,
    ),
    Step(
        "horizontal_flip",
        _TRAIN,
        "geometry",
        lambda c: c.augment or c.flip_only,
        _flip,
        lambda c: {"name": "horizontal_flip", "p": augment.FLIP_PROB},
        cpu_augment.flip,
        batch_augment.FLIP,
    ),
    Step(
        "rand_augment",
        _TRAIN,
        "frames",
        _augment,
        _rand_augment,
        lambda c: {
            "name": "rand_augment",
            "policy": c.rand_augment_policy,
            "interpolation": "bicubic",
            "same_for_all_frames": True,
        },
        cpu_augment.rand_augment,
        batch_augment.RAND_AUGMENT,
        applied=lambda c: c.rand_augment,
    ),
    Step(
        "random_erasing",
        _TRAIN,
        "regions",
        _augment,
        _erasing,
        lambda c: {"name": "random_erasing", "p": augment.ERASE_PROB, "mode": "pixel", "count": 1},
        cpu_augment.random_erasing,
        batch_augment.ERASING,
    ),
    # drawn last, so that the draws above do not depend on the option
    Step(
        "random_sign",
        _TRAIN,
        "values",
        lambda c: c.random_sign,
        _sign,
        lambda c: {"name": "random_sign", "p": 0.5},
        cpu_augment.random_sign,
        batch_augment.SIGN,
    ),
)


#: The steps by name.
BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}


def applied(config: SampleConfig, stages: frozenset[str] | None = None) -> list[Step]:
    """The steps that change ``config``'s clips, in the order they run (optionally only those
    of ``stages``)."""
    steps = [s for s in STEPS if s.runs(config) and (stages is None or s.stage in stages)]
    return sorted(steps, key=lambda s: STAGES.index(s.stage))


def draw(rng: np.random.Generator, config: SampleConfig) -> dict[str, Any]:
    """One sample's augmentation parameters (``SampleSpec`` fields), every step in order."""
    fields: dict[str, Any] = {}
    for step in STEPS:
        if step.drawn(config):
            fields.update(step.draw(rng, config))
    return fields


def describe(config: SampleConfig) -> list[dict[str, Any]]:
    """The augmentations a loader applies, in order, with their parameters."""
    return [step.describe(config) for step in applied(config)]
