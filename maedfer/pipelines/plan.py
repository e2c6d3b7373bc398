"""One epoch's samples for one rank: order, sharding, and every random choice of each sample.

A :class:`SampleSpec` says all a backend needs to produce one sample — the file, the frame
indices, the manifest crop, the augmentation box, the flip, the RandAugment ops (drawn from the
sample's seed by :mod:`maedfer.pipelines.rand_augment`), the erasing box and seed —
and it is a pure function of (seed, epoch, position, attempt). DALI and PyAV both turn specs into
pixels, so they give the same clips for the same indices whatever the worker count or timing.

Order and sharding (the rule of torch's ``DistributedSampler``): train/pretrain rows are permuted
by ``(seed, epoch)``, padded by wrapping to a multiple of ``world_size``, and rank ``r`` takes
positions ``r, r + W, r + 2W, …``; test rows are kept in manifest order, split the same way
without padding (ranks may differ by one clip), and each gives ``test_views`` consecutive samples.
With ``num_sample`` > 1 (VideoMAE V2's repeated sampling, off by default) each train/pretrain row
gives ``num_sample`` consecutive samples of one temporal window with their own spatial draws, so
the CPU backend decodes the window once for all of them.
The plan is built lazily: one permutation per epoch, nothing per row, so a million-row manifest
costs milliseconds.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from maedfer.constants import MODES, RAND_AUGMENT, TEMPORAL_RULES, TemporalRule
from maedfer.errors import MaedferError
from maedfer.pipelines import sampling, steps
from maedfer.pipelines.augment import Box
from maedfer.pipelines.options import DataOptions
from maedfer.pipelines.rand_augment import RandAugmentOp
from maedfer.pipelines.select import ClipTable


@dataclass(frozen=True)
class SampleConfig:
    """What every sample of a loader shares: the ``data`` section resolved for one mode and
    one model input (:meth:`from_data` makes it; nothing here has a default of its own)."""

    mode: str
    num_frames: int
    stride: int
    size: int
    augment: bool
    rand_augment: bool
    rand_augment_policy: str
    temporal_rule: TemporalRule
    test_views: int
    num_sample: int
    subtract_mean: bool
    flip_only: bool
    random_sign: bool
    seed: int

    @classmethod
    def from_data(
        cls, data: DataOptions, *, mode: str, num_frames: int, size: int, seed: int, test_views: int
    ) -> SampleConfig:
        """The config of ``mode`` from a ``data`` section (:mod:`maedfer.pipelines.options`).

        Options of train mode absent from the section (a pre-training section) are off; test
        mode is never augmented and has one sample per view (``num_sample`` is a training
        option).
        """
        policy = getattr(data, "rand_augment", None)
        augment = bool(data.augment) and mode != "test"
        return cls(
            mode=mode,
            num_frames=num_frames,
            stride=data.stride,
            size=size,
            augment=augment,
            rand_augment=policy is not None and augment and mode == "train",
            rand_augment_policy=policy or RAND_AUGMENT,
            temporal_rule=data.temporal_rule,
            test_views=test_views,
            num_sample=1 if mode == "test" else data.num_sample,
            subtract_mean=data.subtract_mean,
            flip_only=getattr(data, "flip_only", False),
            random_sign=getattr(data, "random_sign", False),
            seed=seed,
        )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MaedferError(f"mode {self.mode!r} is unknown; expected one of {MODES}")
        if self.size < 8 or self.num_frames < 1 or self.stride < 1 or self.test_views < 1:
            raise MaedferError(
                f"size ({self.size}) >= 8, num_frames ({self.num_frames}) >= 1, stride "
                f"({self.stride}) >= 1 and test_views ({self.test_views}) >= 1 are required"
            )
        if self.num_sample < 1 or (self.mode == "test" and self.num_sample != 1):
            raise MaedferError(
                f"num_sample ({self.num_sample}) must be >= 1, and 1 in test "
                "mode (its views are test_views)"
            )
        if self.temporal_rule not in TEMPORAL_RULES:
            raise MaedferError(
                f"temporal rule {self.temporal_rule!r} is unknown; expected one of {TEMPORAL_RULES}"
            )


@dataclass
class SampleSpec:
    """Everything one sample needs; boxes are in pixels of the decoded frame (``crop``) and of
    the ``size``×``size`` frame after it (``box``, ``erase``). The augmentation fields are the
    steps' draws (:mod:`maedfer.pipelines.steps`); a step not drawn leaves its default."""

    position: int
    row: int
    view: int
    clip_id: str
    path: str
    label: int
    frame_indices: np.ndarray
    crop: Box | None
    box: Box | None = None
    flip: bool = False
    rand_augment_seed: int | None = None
    erase: Box | None = None
    erase_seed: int = 0
    negate: bool = False
    #: the RandAugment ops drawn from ``rand_augment_seed`` (which ops, coins, magnitudes, signs
    #: resolved to arguments), applied to every frame by whichever backend runs
    rand_augment: tuple[RandAugmentOp, ...] | None = None


class EpochPlan:
    """The samples of one epoch on one rank; ``spec(i)`` is sample ``i`` (``0 <= i < len``)."""

    def __init__(
        self,
        table: ClipTable,
        config: SampleConfig,
        *,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise MaedferError(f"rank ({rank}) must be in 0..{world_size - 1}")
        self.table, self.config, self.epoch = table, config, int(epoch)
        self.rank, self.world_size = rank, world_size
        n = len(table)
        # consecutive samples per row: test views, or repeated samples of one window
        self.views = config.test_views if config.mode == "test" else config.num_sample
        if config.mode == "test":
            self.rows = np.arange(rank, n, world_size, dtype=np.int64)
        else:
            order = np.random.default_rng([config.seed, self.epoch]).permutation(n)
            padded = -(-n // world_size) * world_size
            order = np.resize(order, padded)  # wraps around, as DistributedSampler pads
            self.rows = order[rank::world_size]

    def __len__(self) -> int:
        return len(self.rows) * self.views

    def _global_position(self, i: int) -> int:
        return (i // self.views) * self.world_size + self.rank

    def spec(
        self, i: int, *, attempt: int = 0, probe: Callable[[str], int] | None = None
    ) -> SampleSpec:
        """Sample ``i``; ``attempt > 0`` is the ``attempt``-th replacement for a faulty one.

        ``probe(path) -> frame count`` is called when the manifest does not know the count.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} is outside this epoch's {len(self)} samples")
        row, view = int(self.rows[i // self.views]), i % self.views
        key = [self.config.seed, self.epoch, self._global_position(i), view]
        rng = np.random.default_rng(key)
        # repeated samples of a row share the first one's window (its stream's first draws)
        window_rng = (
            rng if view == 0 or self.config.mode == "test" else np.random.default_rng([*key[:3], 0])
        )
        if attempt:
            # a replacement: another row, drawn from its own stream so the others do not move
            row = int(np.random.default_rng([*key, attempt, 1]).integers(len(self.table)))
            rng = window_rng = np.random.default_rng([*key, attempt])
        return self._make(i, row, view, rng, window_rng, probe)

    def _make(
        self,
        i: int,
        row: int,
        view: int,
        rng: np.random.Generator,
        window_rng: np.random.Generator,
        probe: Callable[[str], int] | None,
    ) -> SampleSpec:
        cfg, table = self.config, self.table
        path = table.clip_path(row)
        count = int(table.num_frames[row])
        if count < 1:
            if probe is None:
                raise MaedferError(f"the manifest has no frame count for {path}")
            count = probe(path)
        t_kw = {"num_frames": cfg.num_frames, "stride": cfg.stride}
        if cfg.mode == "test":
            indices = sampling.test_window(count, view=view, views=cfg.test_views, **t_kw)
        else:  # pretrain and train: the configured training window (pretrain: stride)
            indices = sampling.train_window(
                count, rule=cfg.temporal_rule, generator=window_rng, **t_kw
            )
        crop = Box(*map(int, table.crop[row])) if table.crop[row][0] >= 0 else None
        return SampleSpec(
            position=i,
            row=row,
            view=view,
            clip_id=table.row_clip_id(row),
            path=path,
            label=int(table.label[row]),
            frame_indices=indices,
            crop=crop,
            **steps.draw(rng, cfg),
        )


def describe_augment(config: SampleConfig) -> list[dict]:
    """The augmentations a loader applies, in order, with their parameters (for ``describe``)."""
    return steps.describe(config)
