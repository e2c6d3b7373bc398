"""Building blocks shared by the LGI-Former, the ViT baseline and the MAE decoder
(docs/reference.md).

One concept per class, as in ``timm/layers``: the tubelet embedding, the fixed sinusoid position
table, multi-head attention with the VideoMAE/BEiT bias convention (learnable q and v biases, no k
bias) computed by ``F.scaled_dot_product_attention``, and the pre-norm ViT block. ``DropPath``,
``Mlp`` and ``trunc_normal_`` come from timm.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

# Every LayerNorm of the reference model uses eps 1e-6 (docs/reference.md preamble).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin/cos table ``(num_positions, dim)`` of "Attention is all you need".

    Column ``2i`` holds ``sin(pos / 10000^(2i/dim))`` and column ``2i+1`` the cosine of the same
    angle. Computed in float64 and cast once: a float32 computation drifts by up to 2e-5.
    """
    position = np.arange(num_positions, dtype=np.float64)[:, None]
    exponent = 2 * (np.arange(dim) // 2) / dim
    angle = position / np.power(10000.0, exponent)[None, :]
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(table).float()


class TubeletEmbed(nn.Module):
    """Non-overlapping ``tubelet_size x patch_size x patch_size`` cubes to tokens.

    ``(B, C_in, T, H, W)`` -> ``(B, N, dim)`` with N = T/t * H/p * W/p in raster order
    (time slowest, then height, width fastest).
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        tubelet_size: int,
        num_frames: int,
        in_chans: int = 3,
        dim: int,
    ) -> None:
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size ({img_size}) must be a multiple of patch_size ({patch_size}) and "
                f"num_frames ({num_frames}) a multiple of tubelet_size ({tubelet_size})"
            )
        self.input_shape = (in_chans, num_frames, img_size, img_size)
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv3d(
            in_chans,
            dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or tuple(video.shape[1:]) != self.input_shape:
            raise ValueError(
                f"video must have shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(video.shape)}"
            )
        return self.proj(video).flatten(2).transpose(1, 2)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, H*D)`` -> ``(B, H, L, D)``."""
    batch, length, _ = x.shape
    return x.view(batch, length, num_heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, D)`` -> ``(B, L, H*D)``."""
    batch, _, length, _ = x.shape
    return x.transpose(1, 2).reshape(batch, length, -1)


class Attention(nn.Module):
    """Multi-head self- or cross-attention with separate ``q`` and ``kv`` projections.

    The LGI-Former's three attentions (docs/reference.md): ``q`` and ``kv`` carry no bias of their
    own; with ``qkv_bias`` a learnable ``q_bias`` and ``v_bias`` are added and the key bias is
    fixed at zero. Queries come from ``x``; keys and values from ``context`` (default ``x``).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        kv_bias = None
        if self.v_bias is not None:
            kv_bias = torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        q = _heads(F.linear(x, self.q.weight, self.q_bias), self.num_heads)
        k, v = F.linear(context, self.kv.weight, kv_bias).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(
            q, _heads(k, self.num_heads), _heads(v, self.num_heads)
        )
        return self.proj(_merge_heads(out))


class FusedSelfAttention(nn.Module):
    """Self-attention with one fused ``qkv`` projection (rows ``[q; k; v]``), VideoMAE style.

    Same bias convention as :class:`Attention`: ``q_bias`` and ``v_bias``, zero key bias.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        q, k, v = (
            _heads(t, self.num_heads) for t in F.linear(x, self.qkv.weight, bias).chunk(3, -1)
        )
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    """Pre-norm transformer block with global self-attention (ViT baseline, MAE decoder).

    ``norm_eps``: the LayerNorms' epsilon (1e-6 in the VideoMAE family; MARLIN keeps PyTorch's
    1e-5).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = FusedSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic depth ramp ``linspace(0, drop_path_rate, depth)`` over the blocks (on the CPU
    whatever the default device: a model built on ``meta`` still gets its numbers)."""
    return [float(r) for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]


class Renormalise(nn.Module):
    """From the loaders' normalisation (ImageNet mean and std of values in [0, 1]) to a model's
    own, per channel: ``((x * std_in + mean_in) - mean) / std`` on ``(B, 3, T, H, W)``.

    maedfer's loaders normalise every clip one way; a model whose authors fed another (MARLIN:
    plain [0, 1] values) converts at its input with this exact affine map, so the loaders, the
    predictor and an exported model feed every model the same tensor.
    """

    def __init__(
        self,
        source_mean: tuple[float, ...],
        source_std: tuple[float, ...],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        # x_model = x * scale + shift, computed in float64 and cast once
        src_mean, src_std, own_mean, own_std = (
            torch.tensor(v, dtype=torch.float64) for v in (source_mean, source_std, mean, std)
        )
        scale = src_std / own_std
        shift = (src_mean - own_mean) / own_std
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1, 1), persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video * self.scale.to(video.dtype) + self.shift.to(video.dtype)
