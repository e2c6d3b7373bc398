"""``build_loader``: the stream of clip batches that feeds training and evaluation (docs/design.md).

One call reads a manifest, selects the fold or split, and returns a :class:`ClipLoader` that
yields :class:`ClipBatch` dicts from one backend of the table
(:data:`maedfer.pipelines.backend.BACKENDS`: DALI on the GPU, PyAV on the CPU). Every backend
samples frames with :mod:`maedfer.pipelines.sampling`, takes its augmentation (RandAugment ops
included) from one :class:`~maedfer.pipelines.plan.EpochPlan`, and honours one output contract
(:mod:`maedfer.pipelines.backend`), so a loader gives the same clips for the same seed whatever
decodes them, up to the tolerances stated there. An option a backend cannot honour is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd
import torch

from maedfer.config import field_default, option_names
from maedfer.constants import Mode, TemporalRule
from maedfer.errors import MaedferError
from maedfer.pipelines import backend as backends
from maedfer.pipelines.options import DataOptions, TrainDataOptions
from maedfer.pipelines.plan import EpochPlan, SampleConfig, describe_augment
from maedfer.pipelines.select import ClipTable, check_some_clip_exists, load_clip_table

log = logging.getLogger(__name__)
Backend = str  # "auto" or a name of maedfer.pipelines.backend.BACKENDS


class ClipBatch(TypedDict):
    """One batch. ``video``: float32 ``(B, 3, T, H, W)``, ImageNet-normalised (minus the clip's
    mean frame with ``subtract_mean``); ``label``: long ``(B,)`` (-1 unlabelled); ``clip_id``:
    ``B`` strings; ``view``: long ``(B,)``, the test view (0 outside test mode)."""

    video: torch.Tensor
    label: torch.Tensor
    clip_id: list[str]
    view: torch.Tensor


def dali_available() -> bool:
    """Whether NVIDIA DALI is installed (checked without importing it)."""
    return backends.installed("dali")


def resolve_backend(backend: str, device: str | None) -> tuple[str, torch.device | None]:
    """Pick the backend and the device its batches land on (``None``: CPU, not moved).

    ``auto`` takes the first backend of the table that is installed and, for a GPU backend,
    has CUDA (and no CPU device asked for): DALI on a CUDA machine with the ``gpu`` extra, else
    PyAV. A GPU backend without a device takes ``cuda:$LOCAL_RANK`` (``cpu`` where CUDA is
    absent: DALI's CPU pipeline, VP8/VP9/MJPEG only, docs/design.md).
    """
    if backend not in backends.choices():
        raise backends.unknown_backend(backend)
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MaedferError(f"device {device} asked for, but torch sees no CUDA device here")
    if backend == "auto":
        cpu_asked = device is not None and torch.device(device).type == "cpu"
        backend = next(
            name
            for name, row in backends.BACKENDS.items()
            if backends.installed(name)
            and (not row.gpu or (torch.cuda.is_available() and not cpu_asked))
        )  # the CPU reference backend is always installed
    row = backends.entry(backend)
    if not backends.installed(backend):
        backends.load(backend)  # raises, naming the package and the extra
    if row.gpu and device is None:
        local = int(os.environ.get("LOCAL_RANK", 0))
        return backend, torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    return backend, None if device is None else torch.device(device)


class TooManyBadClips(MaedferError):
    """More of a loader's clips are missing or undecodable than ``max_bad_share`` allows.

    ``bad`` maps each faulty file met to its reason; ``clips`` is the number of clips they are
    counted against (this rank's share of the selection).
    """

    def __init__(self, message: str, bad: dict[str, str], clips: int) -> None:
        super().__init__(message)
        self.bad, self.clips = dict(bad), clips


class ClipLoader:
    """Iterable of :class:`ClipBatch` for one rank; see :func:`build_loader`.

    Attributes:
        dataset_size: clips selected from the manifest (all ranks).
        num_bad: faulty samples replaced during the current (or last) epoch.
        max_bad_share: stop (:class:`TooManyBadClips`) as soon as more than this share of this
            rank's clips turned out missing or undecodable; None: never.
        epoch: the epoch the next iteration plays; each iteration advances it unless
            :meth:`set_epoch` pins it (call it every epoch, as with ``DistributedSampler``).
    """

    def __init__(
        self,
        table: ClipTable,
        config: SampleConfig,
        *,
        backend: str,
        device: torch.device | None,
        batch_size: int,
        workers: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        max_bad_share: float | None = None,
    ) -> None:
        self.table, self.config, self.backend, self.device = table, config, backend, device
        self.batch_size, self.workers, self.drop_last = batch_size, workers, drop_last
        self.rank, self.world_size = rank, world_size
        self.dataset_size = len(table)
        self.num_bad = 0
        self.max_bad_share = max_bad_share
        self.epoch = 0
        self.faults = backends.Faults()  # faulty files: counted per epoch, logged once each
        self.session: dict[str, Any] = {}  # what a backend keeps from epoch to epoch
        if len(self) == 0:
            raise MaedferError(
                f"{self.samples_per_epoch} samples per epoch on rank {rank} make no batch of "
                f"{batch_size} with drop_last; lower the batch size"
            )

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank gives per epoch (test mode: clips × views)."""
        n = self.dataset_size
        if self.config.mode == "test":
            return len(range(self.rank, n, self.world_size)) * self.config.test_views
        return -(-n // self.world_size) * self.config.num_sample

    def __len__(self) -> int:
        n, b = self.samples_per_epoch, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Play epoch ``epoch`` next (its shuffle and augmentation draws)."""
        self.epoch = int(epoch)

    def _check_bad_share(self) -> None:
        """Stop once more than ``max_bad_share`` of this rank's clips proved faulty: a few bad
        files are replaced and counted, a broken or half-copied clips folder is said at once."""
        if self.max_bad_share is None or not self.faults.reasons:
            return
        clips = max(1, -(-self.dataset_size // self.world_size))  # this rank's share
        bad = len(self.faults.reasons)
        if bad > self.max_bad_share * clips:
            path, reason = next(iter(self.faults.reasons.items()))
            raise TooManyBadClips(
                f"{bad} of {clips} training clips are missing or undecodable ({bad / clips:.1%}, "
                f"more than data.max_bad_share {self.max_bad_share:.1%}), e.g. {path}: {reason}",
                self.faults.reasons,
                clips,
            )

    def __iter__(self) -> Iterator[ClipBatch]:
        plan = EpochPlan(
            self.table, self.config, epoch=self.epoch, rank=self.rank, world_size=self.world_size
        )
        epoch, self.epoch, self.num_bad = self.epoch, self.epoch + 1, 0
        self.faults.start_epoch()
        batches = backends.load(self.backend).epoch(
            plan,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            workers=self.workers,
            device=self.device,
            faults=self.faults,
            session=self.session,
        )
        for batch in batches:
            self.num_bad = self.faults.count
            self._check_bad_share()
            yield batch
        self.num_bad = self.faults.count
        if self.num_bad:
            log.warning("epoch %d: %d faulty sample(s) replaced by others", epoch, self.num_bad)
        else:
            log.info("epoch %d: %d batches, no faulty sample", epoch, len(self))


def default_workers(backend: str) -> int:
    """The backend's default (PyAV: a worker process per core but one; DALI: threads)."""
    return backends.load(backend).default_workers()


def _selection_text(mode: str, fold: int | None, split: str | None) -> str:
    """The selected rows in words, e.g. ``the train rows (folds other than 1)``."""
    if fold is not None and mode == "test":
        return f"test fold {fold}"
    if fold is not None:
        return f"the {mode} rows (folds other than {fold})"
    return f"split {split!r}" if split is not None else f"the {mode} rows"


def build_loader(
    manifest: Path | str | pd.DataFrame,
    data: DataOptions | None = None,
    *,
    mode: Mode,
    fold: int | None = None,
    split: str | None = None,
    root: Path | None = None,
    num_frames: int = 16,
    size: int = 160,
    seed: int = 0,
    device: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    test_views: int = 2,
    drop_last: bool | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    backend: Backend | None = None,
    stride: int | None = None,
    temporal_rule: TemporalRule | None = None,
    augment: bool | None = None,
    subtract_mean: bool | None = None,
    num_sample: int | None = None,
    rand_augment: bool | str | None = None,
    flip_only: bool | None = None,
    random_sign: bool | None = None,
    max_bad_share: float | None = None,
) -> ClipLoader:
    """A loader of clip batches from a manifest (docs/design.md; docs/recipe.md).

    The options of the clip stream are a ``data`` section
    (:class:`~maedfer.pipelines.options.TrainDataOptions`, or a recipe's ``data`` section,
    which is one): pass it whole, as the recipes do, or give its options as keywords, as the
    benchmarks do (``build_loader(m, mode="train", batch_size=8, backend="pyav")``); a keyword
    given with a section overrides that option of it. Every option's default and meaning is
    declared there, once; ``None`` here means "the section's".

    Args:
        manifest: ``manifest.parquet`` or a DataFrame with ``clip_id``, ``path``, ``label``,
            ``fold`` or ``split``, ``num_frames`` (probed from the file where absent) and
            ``crop`` (optional).
        data: the ``data`` section (default: :class:`TrainDataOptions`'s defaults).
        mode: ``pretrain`` (the pre-training window, multi-scale crop), ``train`` (training window,
            RandAugment, random resized crop, flip, random erasing) or ``test``
            (``test_views`` fixed windows per clip, consecutive in the batches, never augmented).
        fold: k-fold protocols: train/pretrain take the rows whose fold is not ``fold``, test
            the rows whose fold is ``fold``.
        split: fixed-split protocols: the rows whose split is ``split``.
        root: folder the manifest's ``path`` is relative to (default: the manifest's folder,
            or its ``maedfer.raw_root`` for clips read in place).
        num_frames, size: frames per clip and output side in pixels (the model's input).
        seed: shuffle and augmentation seed; the same seed gives the same batches.
        device: where batches land (PyAV default: CPU; GPU backends: ``cuda:$LOCAL_RANK``;
            DALI on ``cpu`` decodes VP8/VP9/MJPEG only).
        rank, world_size: this process's shard (torchrun); each rank gets ``1/world_size``.
        test_views: windows per clip in test mode (docs/recipe.md: 2).
        drop_last: default on for pretrain/train (equal batches), off for test.
        batch_size, workers, backend, stride, temporal_rule, augment, subtract_mean,
            num_sample, flip_only, random_sign: the section's options of those names.
        rand_augment: the section's policy string; ``True`` for the default policy, ``False``
            for none.
        max_bad_share: train/pretrain modes: stop with :class:`TooManyBadClips` once more than
            this share of the clips proved missing or undecodable (each is replaced and
            counted until then; a training run's policy, ``data.max_bad_share`` of the
            recipes); None: never stop.

    Raises:
        MaedferError: bad option values, a missing manifest or column, a fold or split the
            manifest lacks, an empty selection, a selection whose clip files are all missing, no
            DALI/CUDA where asked for, an option the backend cannot honour (named with the
            backend), or too few samples for one batch with ``drop_last``.
    """
    given = {
        "batch_size": batch_size,
        "workers": workers,
        "backend": backend,
        "stride": stride,
        "temporal_rule": temporal_rule,
        "augment": augment,
        "subtract_mean": subtract_mean,
        "num_sample": num_sample,
        "rand_augment": rand_augment,
        "flip_only": flip_only,
        "random_sign": random_sign,
    }
    if mode == "test" and num_sample not in (None, 1):
        raise MaedferError(
            f"num_sample ({num_sample}) must be 1 in test mode (its views are test_views)"
        )
    data = with_options(
        TrainDataOptions() if data is None else data,
        {k: v for k, v in given.items() if v is not None},
    )
    if max_bad_share is not None and not 0 <= max_bad_share <= 1:
        raise MaedferError(f"data.max_bad_share ({max_bad_share}) must be between 0 and 1")
    return _open_loader(
        manifest,
        data,
        mode=mode,
        fold=fold,
        split=split,
        root=root,
        num_frames=num_frames,
        size=size,
        seed=seed,
        device=device,
        rank=rank,
        world_size=world_size,
        test_views=test_views,
        drop_last=drop_last,
        max_bad_share=None if mode == "test" else max_bad_share,
    )


def with_options(data: DataOptions, options: dict[str, Any]) -> DataOptions:
    """``data`` with ``options`` replaced (``rand_augment``: ``True`` is the section's default
    policy, ``False`` none).

    Raises:
        MaedferError: an option the section does not have.
    """
    names = option_names(data)
    for name in options:
        if name not in names:
            raise MaedferError(
                f"{name} is not an option of a {type(data).__name__} section "
                f"(its options: {', '.join(names)})"
            )
    if isinstance(options.get("rand_augment"), bool):
        on = options["rand_augment"]
        options = {
            **options,
            "rand_augment": field_default(TrainDataOptions, "rand_augment") if on else None,
        }
    return dataclasses.replace(data, **options)


def _open_loader(
    manifest: Path | str | pd.DataFrame,
    data: DataOptions,
    *,
    mode: Mode,
    fold: int | None,
    split: str | None,
    root: Path | None,
    num_frames: int,
    size: int,
    seed: int,
    device: str | None,
    rank: int,
    world_size: int,
    test_views: int,
    drop_last: bool | None,
    max_bad_share: float | None = None,
) -> ClipLoader:
    """:func:`build_loader` with the section complete (see there)."""
    if data.batch_size < 1:
        raise MaedferError(f"batch_size ({data.batch_size}) must be >= 1")
    if data.workers is not None and data.workers < 0:
        raise MaedferError(f"workers ({data.workers}) must be >= 0")
    if world_size < 1 or not 0 <= rank < world_size:
        raise MaedferError(f"rank ({rank}) must be in 0..{world_size - 1} (world_size >= 1)")
    backend_name, dev = resolve_backend(data.backend, device)
    config = SampleConfig.from_data(
        data, mode=mode, num_frames=num_frames, size=size, seed=seed, test_views=test_views
    )
    chosen = backends.load(backend_name)
    backends.check_supported(chosen, config)
    if config.rand_augment:  # an unknown policy fails here, in one line, not in a worker
        from maedfer.pipelines.rand_augment import policy_for

        policy_for(config.rand_augment_policy, config.size)
    table = load_clip_table(manifest, mode=mode, fold=fold, split=split, root=root)
    check_some_clip_exists(table, what=_selection_text(mode, fold, split))
    workers = chosen.default_workers() if data.workers is None else data.workers
    if backends.entry(backend_name).threads:
        workers = max(1, workers)  # threads: at least one
    return ClipLoader(
        table,
        config,
        backend=backend_name,
        device=dev,
        batch_size=data.batch_size,
        workers=workers,
        rank=rank,
        world_size=world_size,
        drop_last=mode != "test" if drop_last is None else bool(drop_last),
        max_bad_share=max_bad_share,
    )


def describe(loader: ClipLoader) -> dict[str, Any]:
    """The loader's resolved settings (for logs and ``maedfer profile data``)."""
    return {
        "backend": loader.backend,
        "device": str(loader.device or "cpu"),
        "workers": loader.workers,
        "mode": loader.config.mode,
        "clips": loader.dataset_size,
        "batch_size": loader.batch_size,
        "batches": len(loader),
        "temporal_rule": loader.config.temporal_rule,
        "num_sample": loader.config.num_sample,
        "augment": describe_augment(loader.config),
    }
