"""RandAugment's batched torch executor: every sample of a batch at once, on the batch's device.

The plan's ops (:meth:`maedfer.pipelines.rand_augment.RandAugmentPolicy.draw`) are grouped on
the host: the ``k``-th op of every sample forms layer ``k``, and within a layer the samples with
the same kind of op form one group, run as one set of kernels over those samples (one bicubic
``grid_sample`` with a matrix per sample for every affine of the layer, one histogram pass for
every equalize, ...). The groups' sample indices and per-sample arguments are host arrays made
by :func:`pack` (in the loader's producer, off the training thread), moved to the device in one
non-blocking copy; :func:`run` then reads no value back (no ``.item()``, ``.cpu()`` or
host-built tensor): autocontrast's and equalize's tables are computed on the device.

Values: the same as :func:`maedfer.pipelines.rand_augment.apply_torch` sample by sample on the
same device, the same expressions written over a batch dimension (exactly equal on the CPU, as
tests/pipelines/test_batch_augment.py checks); hence the same tolerance against the numpy
executor: colour ops exact, the affine warp within 1/255.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from maedfer.pipelines.rand_augment import EQUALIZE_DIV, RandAugmentOp, policy_for

if TYPE_CHECKING:
    from maedfer.pipelines.batch_augment import Constants, Params
    from maedfer.pipelines.plan import SampleConfig, SampleSpec


@dataclass(frozen=True)
class Group:
    """The samples whose ``layer``-th op is of kind ``kind``: ``index`` (a params key, or
    ``None`` for the whole batch in order) and the keys of their per-sample arguments."""

    kind: str
    index: int | None
    args: tuple[int, ...]


def _arguments(kind: str, ops: list[RandAugmentOp]) -> list[np.ndarray]:
    """The per-sample arguments a group of ``kind`` ops needs, as arrays (one row per op)."""
    if kind == "affine":  # OpenCV's inverse map on pixel indices, as _warp_torch adjusts it
        rows = []
        for op in ops:
            a, b, c, d, e, f = op.matrix
            rows.append((a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5))
        return [np.array(rows, dtype=np.float64)]
    if kind == "posterize":
        bits = [int(op.args[0]) for op in ops]
        return [np.array([2.0 ** (8 - b) if b < 8 else 1.0 for b in bits], np.float32)]
    if kind == "solarize":
        return [np.array([op.args[0] for op in ops], np.float32)]
    if kind == "solarize_add":
        return [
            np.array([op.args[0] for op in ops], np.float32),
            np.array([op.args[1] if len(op.args) > 1 else 128 for op in ops], np.float32),
        ]
    if kind in ("brightness", "color", "contrast", "sharpness"):
        return [np.array([op.args[0] for op in ops], np.float32)]
    return []  # invert, autocontrast, equalize


def pack(specs: list[SampleSpec], config: SampleConfig, params: Params) -> list[Group]:
    """The groups of one batch's ops, layer by layer; their arrays go into ``params``."""
    chains = [spec.rand_augment or () for spec in specs]
    groups = []
    for layer in range(max((len(c) for c in chains), default=0)):
        members: dict[str, list[tuple[int, RandAugmentOp]]] = {}
        for i, chain in enumerate(chains):
            if layer < len(chain):
                members.setdefault(chain[layer].kind, []).append((i, chain[layer]))
        for kind, pairs in members.items():
            index = [i for i, _ in pairs]
            key = (
                None
                if index == list(range(len(specs)))
                else params.put(np.array(index, dtype=np.int64))
            )
            args = tuple(params.put(a) for a in _arguments(kind, [op for _, op in pairs]))
            groups.append(Group(kind, key, args))
    return groups


def run(
    x: torch.Tensor,
    groups: list[Group],
    tensors: list[torch.Tensor],
    consts: Constants,
    config: SampleConfig,
) -> torch.Tensor:
    """``x`` float32 clips ``(B, 3, T, H, W)``, whole numbers 0..255 → the ops applied (in
    place where possible; the result is returned)."""
    for group in groups:
        args = [tensors[k] for k in group.args]
        if group.index is None:
            x = _OPS[group.kind](x, args, consts)
        else:
            index = tensors[group.index]
            x.index_copy_(0, index, _OPS[group.kind](x.index_select(0, index), args, consts))
    return x


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB → L on clips ``(G, 3, T, H, W)``: ``(R·19595 + G·38470 + B·7471 + 2^15)
    >> 16``, ``(G, 1, T, H, W)`` int32."""
    q = x.to(torch.int32)
    return (q[:, 0:1] * 19595 + q[:, 1:2] * 38470 + q[:, 2:3] * 7471 + 32768) >> 16


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend`` with one factor per sample, float32, clipped and truncated."""
    out = degenerate + _per_sample(factor) * (x - degenerate)
    return out.clamp_(0, 255).trunc_()


def _lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel, frame) tables ``lut`` ``(G, 3, T, 256)`` applied to ``x``."""
    index = x.to(torch.int64).flatten(-2)
    return torch.gather(lut.to(x.dtype), -1, index).view_as(x)


def _affine(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    g, c, t, h, w = x.shape
    m = args[0].view(g, 6, 1, 1)
    a, b, cc, d, e, f = (m[:, k] for k in range(6))
    ys, xs = consts.rows, consts.cols
    # OpenCV's fixed point, as _warp_torch: each term rounded to 1/1024 px, floored to 1/32
    sx = torch.round((b * ys + cc) * 1024) + torch.round(a * xs * 1024) + 16
    sy = torch.round((e * ys + f) * 1024) + torch.round(d * xs * 1024) + 16
    sx, sy = torch.floor(sx / 32) / 32, torch.floor(sy / 32) / 32
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1).to(x.dtype)
    shifted = (x - consts.fill).view(g, c * t, h, w)
    out = (
        F.grid_sample(
            shifted, grid, mode="bicubic", padding_mode="zeros", align_corners=False
        ).view(g, c, t, h, w)
        + consts.fill
    )
    return out.round_().clamp_(0, 255)


def _invert(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    return 255 - x


def _posterize(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    step = _per_sample(args[0])
    return torch.floor(x / step) * step


def _solarize(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    return torch.where(x < _per_sample(args[0]), x, 255 - x)


def _solarize_add(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    added = (x + _per_sample(args[0])).clamp(max=255)
    return torch.where(x < _per_sample(args[1]), added, x)


def _brightness(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    return _blend(torch.zeros((), dtype=x.dtype, device=x.device), x, args[0])


def _color(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    return _blend(_grey(x).float(), x, args[0])


def _contrast(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    mean = _grey(x).double().mean(dim=(1, 3, 4), keepdim=True)  # per frame
    return _blend(torch.floor(mean + 0.5).float(), x, args[0])


def _sharpness(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    # a 1×3×3 kernel per channel: each frame filtered alone (integer sums: exact in float32)
    inner = F.conv3d(x, consts.smooth, groups=3) / 13
    smooth = x.clone()  # Pillow's SMOOTH keeps the border pixels
    smooth[..., 1:-1, 1:-1] = (inner + 0.5).floor().clamp(0, 255)
    return _blend(smooth, x, args[0])


def _autocontrast(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    """Pillow's float64 table ``int(i·s + o)``, ``s = 255/(hi-lo)``, ``o = -lo·s``, on the
    device: a tensor-by-tensor division is correctly rounded, as Python's is (a division by a
    scalar may multiply by its reciprocal instead, which moves ``int()`` at some entries)."""
    lo = x.amin(dim=(-2, -1)).double()
    hi = x.amax(dim=(-2, -1)).double()
    spread = hi > lo
    width = torch.where(spread, hi - lo, 1.0)
    scale = torch.where(spread, torch.full_like(width, 255.0) / width, 1.0)
    offset = torch.where(spread, -lo * scale, 0.0)
    lut = consts.ramp64 * scale[..., None] + offset[..., None]
    return _lut(x, lut.trunc_().clamp_(0, 255))


def _equalize(x: torch.Tensor, args: list[torch.Tensor], consts: Constants) -> torch.Tensor:
    """Pillow's equalize tables from per-frame histograms counted on the device."""
    g, c, t, h, w = x.shape
    index = x.to(torch.int64).view(g * c * t, h * w)
    hist = torch.zeros(g * c * t, 256, dtype=torch.int64, device=x.device)
    hist = hist.scatter_add_(1, index, torch.ones_like(index)).view(g, c, t, 256)
    ramp = consts.ramp
    last = torch.where(hist > 0, ramp, -1).amax(dim=-1, keepdim=True)  # last non-empty bin
    top = torch.gather(hist, -1, last.clamp(min=0))
    step = (hist.sum(dim=-1, keepdim=True) - top) // EQUALIZE_DIV
    before = torch.cumsum(hist, dim=-1) - hist
    lut = (step // 2 + before) // step.clamp(min=1)
    return _lut(x, torch.where(step > 0, lut.clamp(0, 255), ramp))


_OPS: dict[str, Any] = {
    "affine": _affine,
    "invert": _invert,
    "posterize": _posterize,
    "solarize": _solarize,
    "solarize_add": _solarize_add,
    "brightness": _brightness,
    "color": _color,
    "contrast": _contrast,
    "sharpness": _sharpness,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}


def fill(config: SampleConfig) -> tuple[int, ...]:
    """The fill colour of the policy's affine ops."""
    return policy_for(config.rand_augment_policy, config.size).fill
