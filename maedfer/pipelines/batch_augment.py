"""The batched torch executors of the augmentation steps: a whole batch at once, on its device.

The GPU backends (DALI, hybrid) augment a batch of frames where it lies. For every step of
:data:`maedfer.pipelines.steps.STEPS` a :class:`BatchExecutor` has two halves:

- ``pack(specs, config, params)`` runs on the host, in the loader's producer (off the training
  thread): it groups the batch's samples by op and puts their arguments (sample indices, affine
  matrices, resize taps, erasing noise) into :class:`Params`, host arrays that travel to the
  device in one copy per dtype, from pinned memory, without blocking;
- ``run(x, packed, tensors, constants, config)`` runs on the device: one set of kernels per
  group of samples, never reading a value back to the host (no ``.item()``, ``.cpu()``,
  ``.tolist()`` or tensor built from host values); constants (ImageNet mean and std, the fill
  colour, pixel grids, look-up ramps) live on the device (:func:`constants`, made once).

`prepare` packs a batch, :func:`augment_batch` runs it: frames ``(B, T, 3, S, S)`` of values
0..255 → the normalised clips ``(B, 3, T, S, S)`` of the backend contract
(:mod:`maedfer.pipelines.backend`). Values equal the per-sample torch executors' (RandAugment
exactly; the crop's bilinear resize within 1e-3/255 of ``interpolate``: one ``grid_sample``
over the batch, whose float32 coordinates differ from the resize's by 1e-5 pixel).

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD
from maedfer.pipelines import augment, rand_augment_batch

if TYPE_CHECKING:
    from maedfer.pipelines.plan import SampleConfig, SampleSpec


class Params:
    """One batch's arguments: host arrays (``put`` gives each a key), staged into one buffer per
    dtype (pinned for a CUDA batch), moved to the device by :meth:`to` without blocking."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []
        self._buffers: dict[np.dtype, torch.Tensor] = {}
        self._layout: list[tuple[np.dtype, int, tuple[int, ...]]] = []

    def put(self, array: np.ndarray) -> int:
        self._arrays.append(np.ascontiguousarray(array))
        return len(self._arrays) - 1

    def stage(self, *, pin: bool) -> None:
        """Concatenate the arrays by dtype (host side; pinned when ``pin``)."""
        by_dtype: dict[np.dtype, list[np.ndarray]] = {}
        for array in self._arrays:
            parts = by_dtype.setdefault(array.dtype, [])
            offset = sum(p.size for p in parts)
            self._layout.append((array.dtype, offset, array.shape))
            parts.append(array.ravel())
        for dtype, parts in by_dtype.items():
            buffer = torch.from_numpy(np.concatenate(parts))
            self._buffers[dtype] = buffer.pin_memory() if pin else buffer
        self._arrays = []

    def pin(self) -> Params:
        """Move the staged buffers to pinned memory (a batch bound for CUDA; in the process
        that copies it to the device)."""
        self._buffers = {
            dt: b if b.is_pinned() else b.pin_memory() for dt, b in self._buffers.items()
        }
        return self

    def to(self, device: torch.device) -> list[torch.Tensor]:
        """The arrays on ``device``, in ``put`` order (one non-blocking copy per dtype)."""
        moved = {dt: b.to(device, non_blocking=True) for dt, b in self._buffers.items()}
        return [
            moved[dt][offset : offset + int(np.prod(shape))].view(shape)
            for dt, offset, shape in self._layout
        ]


@dataclass(frozen=True)
class Constants:
    """Device-resident constants of one (device, frame size, fill colour)."""

    mean: torch.Tensor  # (1, 3, 1, 1, 1), ImageNet mean × 255
    std: torch.Tensor
    rows: torch.Tensor  # (H, 1) float64 pixel rows
    cols: torch.Tensor  # (1, W) float64 pixel columns
    ramp: torch.Tensor  # (256,) int64
    ramp64: torch.Tensor  # (256,) float64
    smooth: torch.Tensor  # (3, 1, 1, 3, 3) Pillow's SMOOTH, per frame (13 divides after)
    fill: torch.Tensor  # (1, 3, 1, 1, 1) float32 fill colour of the affine ops


@functools.lru_cache(maxsize=32)
def constants(
    device: torch.device, height: int, width: int, fill: tuple[int, ...] = (0, 0, 0)
) -> Constants:
    """The constants on ``device`` (made once per process and key: a few small copies)."""
    shape = (1, 3, 1, 1, 1)
    smooth = torch.ones(3, 1, 1, 3, 3)
    smooth[..., 1, 1] = 5
    made = Constants(
        # the float32 values of augment.normalise: the tuple as float32, times 255
        mean=(torch.tensor(IMAGENET_MEAN).view(shape) * 255).to(device),
        std=(torch.tensor(IMAGENET_STD).view(shape) * 255).to(device),
        rows=torch.arange(height, dtype=torch.float64).view(height, 1).to(device),
        cols=torch.arange(width, dtype=torch.float64).view(1, width).to(device),
        ramp=torch.arange(256).to(device),
        ramp64=torch.arange(256, dtype=torch.float64).to(device),
        smooth=smooth.to(device),
        fill=torch.tensor(fill, dtype=torch.float32).view(shape).to(device),
    )
    if device.type == "cuda":  # once: any stream may read them from now on
        torch.cuda.synchronize(device)
    return made


@dataclass(frozen=True)
class BatchExecutor:
    """A step's batched executor: ``pack`` on the host, ``run`` on the device."""

    pack: Callable[[list[SampleSpec], SampleConfig, Params], Any]
    run: Callable[[torch.Tensor, Any, list[torch.Tensor], Constants, SampleConfig], torch.Tensor]


def _subset(specs: list[SampleSpec], chosen: list[int], params: Params) -> int | None:
    """The params key of sample indices ``chosen`` (``None``: the whole batch, in order)."""
    if chosen == list(range(len(specs))):
        return None
    return params.put(np.array(chosen, dtype=np.int64))


def _apply(
    x: torch.Tensor, index: torch.Tensor | None, op: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``op`` on the samples ``index`` of ``x`` (all when ``None``), written back."""
    if index is None:
        return op(x)
    return x.index_copy_(0, index, op(x.index_select(0, index)))


# ------------------------------------------------------------------ the crop


def _sampling_points(start: int, length: int, size: int, frame: int) -> np.ndarray:
    """Where the ``size`` outputs of ``length`` pixels from ``start`` resized (bilinear) sample
    a ``frame``-pixel axis, in ``grid_sample``'s coordinates (-1..1, pixel centres).

    torch's ``interpolate(mode="bilinear", align_corners=False)`` rule in its float32
    arithmetic: source ``scale·(i + 0.5) - 0.5`` clamped into the crop (its edge repeated)."""
    scale = np.float32(length) / np.float32(size)
    src = scale * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.clip(src, np.float32(0), np.float32(length - 1)).astype(np.float64)
    return ((2 * (start + src) + 1) / frame - 1).astype(np.float32)


def _pack_crop(
    specs: list[SampleSpec], config: SampleConfig, params: Params
) -> tuple[int | None, int, int] | None:
    chosen = [i for i, s in enumerate(specs) if s.box is not None]
    if not chosen:
        return None
    size = config.size
    cols = np.stack([_sampling_points(specs[i].box.x, specs[i].box.w, size, size) for i in chosen])
    rows = np.stack([_sampling_points(specs[i].box.y, specs[i].box.h, size, size) for i in chosen])
    return _subset(specs, chosen, params), params.put(cols), params.put(rows)


def _run_crop(
    x: torch.Tensor,
    packed: tuple[int | None, int, int] | None,
    tensors: list[torch.Tensor],
    consts: Constants,
    config: SampleConfig,
) -> torch.Tensor:
    """Each sample's box resized to the frame size: one bilinear ``grid_sample`` with a grid
    per sample (within 1e-3/255 of ``interpolate`` on the cut box: the grid's float32
    coordinates)."""
    if packed is None:
        return x
    index, cols, rows = (
        None if packed[0] is None else tensors[packed[0]],
        tensors[packed[1]],
        tensors[packed[2]],
    )
    s = config.size

    def resize(sub: torch.Tensor) -> torch.Tensor:
        g, c, t, h, w = sub.shape
        grid = torch.stack(
            [cols.view(g, 1, s).expand(g, s, s), rows.view(g, s, 1).expand(g, s, s)], dim=-1
        )
        out = torch.nn.functional.grid_sample(
            sub.reshape(g, c * t, h, w),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return out.view(g, c, t, s, s)

    return _apply(x, index, resize)


# ------------------------------------------------------------------ flip, sign, erasing


def _pack_flip(specs: list[SampleSpec], config: SampleConfig, params: Params) -> Any:
    chosen = [i for i, s in enumerate(specs) if s.flip]
    return (_subset(specs, chosen, params),) if chosen else None


def _run_flip(
    x: torch.Tensor,
    packed: Any,
    tensors: list[torch.Tensor],
    consts: Constants,
    config: SampleConfig,
) -> torch.Tensor:
    if packed is None:
        return x
    index = None if packed[0] is None else tensors[packed[0]]
    return _apply(x, index, lambda sub: sub.flip(-1))


def _pack_sign(specs: list[SampleSpec], config: SampleConfig, params: Params) -> int | None:
    if not any(s.negate for s in specs):
        return None
    return params.put(np.array([-1.0 if s.negate else 1.0 for s in specs], np.float32))


def _run_sign(
    x: torch.Tensor,
    packed: int | None,
    tensors: list[torch.Tensor],
    consts: Constants,
    config: SampleConfig,
) -> torch.Tensor:
    """``-x`` for the negated samples (times -1 or 1: the same bits as ``-x`` and ``x``)."""
    return x if packed is None else x.mul_(tensors[packed].view(-1, 1, 1, 1, 1))


def _pack_erasing(
    specs: list[SampleSpec], config: SampleConfig, params: Params
) -> list[tuple[int, augment.Box, int]]:
    return [
        (
            i,
            s.erase,
            params.put(augment.erase_noise(s.erase, config.num_frames, s.erase_seed).numpy()),
        )
        for i, s in enumerate(specs)
        if s.erase is not None
    ]


def _run_erasing(
    x: torch.Tensor,
    packed: list[tuple[int, augment.Box, int]],
    tensors: list[torch.Tensor],
    consts: Constants,
    config: SampleConfig,
) -> torch.Tensor:
    """The erasing noise (made on the host from each sample's seed, as every backend's) into
    each erased sample's box; boxes are host numbers, so nothing is read back."""
    for i, box, key in packed:
        x[i, :, :, box.y : box.y + box.h, box.x : box.x + box.w] = tensors[key]
    return x


def _run_rand_augment(
    x: torch.Tensor,
    packed: Any,
    tensors: list[torch.Tensor],
    consts: Constants,
    config: SampleConfig,
) -> torch.Tensor:
    return rand_augment_batch.run(x, packed, tensors, consts, config)


CROP = BatchExecutor(_pack_crop, _run_crop)
FLIP = BatchExecutor(_pack_flip, _run_flip)
SIGN = BatchExecutor(_pack_sign, _run_sign)
ERASING = BatchExecutor(_pack_erasing, _run_erasing)
RAND_AUGMENT = BatchExecutor(rand_augment_batch.pack, _run_rand_augment)


# ------------------------------------------------------------------ a batch, end to end


@dataclass
class PreparedBatch:
    """One batch's augmentation, packed on the host: the steps to run and their arguments
    (picklable: PyAV's worker processes prepare batches too)."""

    config: SampleConfig
    steps: list[tuple[str, Any]]  # (step name, its packed arguments), in running order
    params: Params = field(default_factory=Params)

    def pin_memory(self) -> PreparedBatch:
        """For torch's ``DataLoader(pin_memory=True)``: the arguments in pinned memory."""
        self.params.pin()
        return self


def prepare(
    specs: list[SampleSpec],
    config: SampleConfig,
    *,
    stages: frozenset[str] | None = None,
    pin: bool = False,
) -> PreparedBatch:
    """Pack one batch (host side: the loader's producer calls it ahead of the batch).

    ``stages``: the stages still to run (``None``: all; DALI without RandAugment did the crop
    and flip itself); ``pin``: stage the arguments in pinned memory (batches bound for CUDA).
    """
    from maedfer.pipelines import steps as table

    prepared = PreparedBatch(config, [])
    for step in table.applied(config, stages):
        prepared.steps.append((step.name, step.batch.pack(specs, config, prepared.params)))
    prepared.params.stage(pin=pin)
    return prepared


def augment_batch(clips: torch.Tensor, prepared: PreparedBatch) -> torch.Tensor:
    """Clips ``(B, 3, T, S, S)`` of values 0..255 (uint8 or float, any layout, any device) →
    float32 clips ``(B, 3, T, S, S)``, contiguous: the prepared steps in stage order, the
    ImageNet normalisation and the clip-mean subtraction (between the geometry and values
    stages). Reads nothing back from the device. A contiguous float32 input is reused."""
    from maedfer.pipelines.steps import BY_NAME, FRAME_STAGES

    config, device = prepared.config, clips.device
    _, _, _, h, w = clips.shape
    fill = rand_augment_batch.fill(config) if config.rand_augment else (0, 0, 0)
    consts = constants(device, h, w, fill)
    tensors = prepared.params.to(device)
    x = clips
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = torch.empty(x.shape, dtype=torch.float32, device=device).copy_(x)
    steps = [(BY_NAME[name], packed) for name, packed in prepared.steps]
    for step, packed in steps:
        if step.stage in FRAME_STAGES:
            x = step.batch.run(x, packed, tensors, consts, config)
    x = x.sub_(consts.mean).div_(consts.std)
    if config.subtract_mean:
        x = x - x.mean(dim=2, keepdim=True)
    for step, packed in steps:
        if step.stage not in FRAME_STAGES:
            x = step.batch.run(x, packed, tensors, consts, config)
    return x
