"""``build_loader``: the stream of clip batches that feeds training and evaluation (DESIGN.md §1).

One call reads a manifest, selects the fold or split, and returns a :class:`ClipLoader` that
yields :class:`ClipBatch` dicts from the DALI (GPU) or PyAV (CPU) backend. Both backends sample
frames with :mod:`maedfer.pipelines.sampling`, draw augmentation with
:mod:`maedfer.pipelines.augment` through :class:`~maedfer.pipelines.plan.EpochPlan`, and honour
one output contract, so a loader gives the same clips for the same seed whatever decodes them
(up to decoder rounding and the PyAV-only RandAugment).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

import pandas as pd
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines.augment import RAND_AUGMENT
from maedfer.pipelines.plan import EpochPlan, SampleConfig, describe_augment
from maedfer.pipelines.sampling import TemporalRule
from maedfer.pipelines.select import ClipTable, check_some_clip_exists, load_clip_table

log = logging.getLogger(__name__)

Mode = Literal["pretrain", "train", "test"]
Backend = Literal["auto", "dali", "pyav"]


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
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def resolve_backend(backend: str, device: str | None) -> tuple[str, torch.device | None]:
    """Pick the backend and the device its batches land on (``None``: CPU, not moved).

    ``auto`` is DALI when CUDA and DALI are both present (and no CPU device was asked for),
    else PyAV. DALI without a device takes ``cuda:$LOCAL_RANK``; DALI on ``cpu`` runs the CPU
    pipeline (VP8/VP9/MJPEG only, DESIGN.md §7).
    """
    if backend not in ("auto", "dali", "pyav"):
        raise MaedferError(f"backend {backend!r} is unknown; expected auto, dali or pyav")
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MaedferError(f"device {device} asked for, but torch sees no CUDA device here")
    if backend == "auto":
        cpu_asked = device is not None and torch.device(device).type == "cpu"
        use_dali = torch.cuda.is_available() and dali_available() and not cpu_asked
        backend = "dali" if use_dali else "pyav"
    if backend == "dali":
        if not dali_available():
            raise MaedferError("backend 'dali' needs NVIDIA DALI (the 'gpu' extra); use pyav")
        if device is None:
            local = int(os.environ.get("LOCAL_RANK", 0))
            return "dali", torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        return "dali", torch.device(device)
    return "pyav", None if device is None else torch.device(device)


class ClipLoader:
    """Iterable of :class:`ClipBatch` for one rank; see :func:`build_loader`.

    Attributes:
        dataset_size: clips selected from the manifest (all ranks).
        num_bad: faulty samples replaced during the current (or last) epoch.
        epoch: the epoch the next iteration plays; each iteration advances it unless
            :meth:`set_epoch` pins it (call it every epoch, as with ``DistributedSampler``).
    """

    def __init__(self, table: ClipTable, config: SampleConfig, *, backend: str,
                 device: torch.device | None, batch_size: int, workers: int, rank: int,
                 world_size: int, drop_last: bool) -> None:
        self.table, self.config, self.backend, self.device = table, config, backend, device
        self.batch_size, self.workers, self.drop_last = batch_size, workers, drop_last
        self.rank, self.world_size = rank, world_size
        self.dataset_size = len(table)
        self.num_bad = 0
        self.epoch = 0
        self._bad_paths: set[str] = set()  # known faulty files (DALI skips them up front)
        self._logged: set[str] = set()  # faulty files already logged (once each)
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
        return -(-n // self.world_size)

    def __len__(self) -> int:
        n, b = self.samples_per_epoch, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Play epoch ``epoch`` next (its shuffle and augmentation draws)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[ClipBatch]:
        plan = EpochPlan(self.table, self.config, epoch=self.epoch, rank=self.rank,
                         world_size=self.world_size)
        epoch, self.epoch, self.num_bad = self.epoch, self.epoch + 1, 0
        batches = self._iter_dali(plan) if self.backend == "dali" else self._iter_pyav(plan)
        yield from batches
        if self.num_bad:
            log.warning("epoch %d: %d faulty sample(s) replaced by others", epoch, self.num_bad)
        else:
            log.info("epoch %d: %d batches, no faulty sample", epoch, len(self))

    def _note_faults(self, faults: list[tuple[str, str]]) -> None:
        for path, reason in faults:
            if path not in self._logged:
                self._logged.add(path)
                log.warning("faulty clip replaced by another sample: %s: %s", path, reason)

    def _iter_pyav(self, plan: EpochPlan) -> Iterator[ClipBatch]:
        from torch.utils.data import DataLoader

        from maedfer.pipelines import pyav

        on_cuda = self.device is not None and self.device.type == "cuda"
        loader = DataLoader(
            pyav.ClipDataset(plan), batch_size=self.batch_size, shuffle=False,
            drop_last=self.drop_last, num_workers=self.workers, collate_fn=pyav.collate,
            pin_memory=on_cuda, worker_init_fn=pyav.worker_init,
            prefetch_factor=2 if self.workers else None,
        )  # fmt: skip
        with pyav.fork_safe_opencv():
            batches = iter(loader)  # forks the workers
        for batch in batches:
            faults = batch.pop("bad")
            self.num_bad += len(faults)
            self._note_faults(faults)
            if self.device is not None:
                batch["video"] = batch["video"].to(self.device, non_blocking=True)
                batch["label"] = batch["label"].to(self.device, non_blocking=True)
                batch["view"] = batch["view"].to(self.device, non_blocking=True)
            yield batch

    def _iter_dali(self, plan: EpochPlan) -> Iterator[ClipBatch]:
        from maedfer.pipelines import dali

        assert self.device is not None  # resolve_backend always gives DALI a device
        epoch = dali.DaliEpoch(plan, batch_size=self.batch_size, drop_last=self.drop_last,
                               threads=self.workers, device=self.device,
                               bad_paths=self._bad_paths)
        for batch in epoch:
            self.num_bad = len(epoch.replaced)
            self._note_faults(list(epoch.replaced.values()))
            yield batch
        self.num_bad = len(epoch.replaced)
        self._note_faults(list(epoch.replaced.values()))


def default_workers(backend: str) -> int:
    """PyAV: one worker per core but one (the main process feeds the model); DALI: threads."""
    cores = os.cpu_count() or 2
    return min(8, cores) if backend == "dali" else max(1, min(8, cores - 1))


def _selection_text(mode: str, fold: int | None, split: str | None) -> str:
    """The selected rows in words, e.g. ``the train rows (folds other than 1)``."""
    if fold is not None and mode == "test":
        return f"test fold {fold}"
    if fold is not None:
        return f"the {mode} rows (folds other than {fold})"
    return f"split {split!r}" if split is not None else f"the {mode} rows"


def build_loader(
    manifest: Path | str | pd.DataFrame,
    *,
    mode: Mode,
    fold: int | None = None,
    split: str | None = None,
    batch_size: int,
    num_frames: int = 16,
    stride: int = 4,
    size: int = 160,
    backend: Backend = "auto",
    workers: int | None = None,
    device: str | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    subtract_mean: bool = False,
    augment: bool | None = None,
    test_views: int = 2,
    drop_last: bool | None = None,
    root: Path | None = None,
    temporal_rule: TemporalRule = "stride",
    rand_augment: bool | str | None = None,
    flip_only: bool = False,
    random_sign: bool = False,
) -> ClipLoader:
    """A loader of clip batches from a manifest (DESIGN.md §1, §3; MODEL.md §4).

    Args:
        manifest: ``manifest.parquet`` or a DataFrame with ``clip_id``, ``path``, ``label``,
            ``fold`` or ``split``, ``num_frames`` (probed from the file where absent) and
            ``crop`` (optional).
        mode: ``pretrain`` (§4.1 window, multi-scale crop), ``train`` (training window,
            random resized crop, flip, RandAugment on PyAV, random erasing) or ``test``
            (``test_views`` fixed windows per clip, consecutive in the batches, no augmentation).
        fold: k-fold protocols: train/pretrain take the rows whose fold is not ``fold``, test
            the rows whose fold is ``fold``.
        split: fixed-split protocols: the rows whose split is ``split``.
        batch_size: clips per batch on this rank.
        num_frames, stride, size: frames per clip, frame stride, output side in pixels.
        backend: ``dali`` (GPU decode), ``pyav`` (CPU) or ``auto`` (DALI when CUDA and DALI
            are present).
        workers: PyAV worker processes (0: decode in this process) or DALI threads; default
            from the core count.
        device: where batches land (PyAV default: CPU; DALI default: ``cuda:$LOCAL_RANK``;
            DALI on ``cpu`` decodes VP8/VP9/MJPEG only).
        seed: shuffle and augmentation seed; the same seed gives the same batches.
        rank, world_size: this process's shard (torchrun); each rank gets ``1/world_size``.
        subtract_mean: remove each clip's mean frame (DESIGN.md §8).
        augment: default on for pretrain/train, off for test.
        test_views: windows per clip in test mode (MODEL.md §4.2: 2).
        drop_last: default on for pretrain/train (equal batches), off for test.
        root: folder the manifest's ``path`` is relative to (default: the manifest's folder,
            or its ``maedfer.raw_root`` for clips read in place).
        temporal_rule: ``stride`` (exact stride) or ``reference`` (MODEL.md §4.2's linspace).
        rand_augment: RandAugment in train mode: a timm policy string, ``True`` for the
            reference's ``rand-m7-n4-mstd0.5-inc1``, ``False`` for none; default on with PyAV
            (DALI has none).
        flip_only: with ``augment`` off, train mode still flips half the clips horizontally.
        random_sign: train mode negates half the clips (with ``subtract_mean``, the sign of a
            change depends on the face's colours, not on the movement).

    Raises:
        MaedferError: bad option values, a missing manifest or column, a fold or split the
            manifest lacks, an empty selection, a selection whose clip files are all missing, no
            DALI/CUDA where asked for, or too few samples for one batch with ``drop_last``.
    """
    if batch_size < 1:
        raise MaedferError(f"batch_size ({batch_size}) must be >= 1")
    if workers is not None and workers < 0:
        raise MaedferError(f"workers ({workers}) must be >= 0")
    if world_size < 1 or not 0 <= rank < world_size:
        raise MaedferError(f"rank ({rank}) must be in 0..{world_size - 1} (world_size >= 1)")
    backend_name, dev = resolve_backend(backend, device)
    augment = mode != "test" if augment is None else bool(augment)
    if rand_augment and backend_name == "dali":
        raise MaedferError("RandAugment runs on the PyAV backend only; use backend pyav "
                           "(training: --set data.backend=pyav)")
    if rand_augment is None:
        rand_augment = augment and mode == "train" and backend_name == "pyav"
    policy = rand_augment if isinstance(rand_augment, str) else RAND_AUGMENT
    config = SampleConfig(
        mode=mode, num_frames=num_frames, stride=stride, size=size, augment=augment,
        rand_augment=bool(rand_augment) and augment and mode == "train",
        rand_augment_policy=policy,
        temporal_rule=temporal_rule, test_views=test_views, subtract_mean=subtract_mean,
        flip_only=flip_only, random_sign=random_sign, seed=seed,
    )  # fmt: skip
    table = load_clip_table(manifest, mode=mode, fold=fold, split=split, root=root)
    check_some_clip_exists(table, what=_selection_text(mode, fold, split))
    workers = default_workers(backend_name) if workers is None else workers
    if backend_name == "dali":
        workers = max(1, workers)
    return ClipLoader(
        table, config, backend=backend_name, device=dev, batch_size=batch_size,
        workers=workers, rank=rank, world_size=world_size,
        drop_last=mode != "test" if drop_last is None else bool(drop_last),
    )  # fmt: skip


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
        "augment": describe_augment(loader.config),
    }
