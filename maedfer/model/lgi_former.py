"""LGI-Former: the local-global interaction video encoder of MAE-DFER (docs/reference.md).

Sun et al., "MAE-DFER: Efficient Masked Autoencoder for Self-supervised Dynamic Facial Expression
Recognition", ACM MM 2023; official code: https://github.com/sunlicai/MAE-DFER.

The token grid (T', H', W') is cut into regions of ``region_size`` tokens. Each region gets one
learnable representative token, prepended once at the input. Every block then runs

1. intra-region self-attention over ``[rep, locals]`` of each region,
2. inter-region self-attention over the representative tokens of a video,
3. cross-attention of every local token to all (updated) representative tokens of its video,
4. an FFN on all tokens,

each pre-norm with a residual and stochastic depth. Tokens are kept region-major: the working
tensor is ``(B * num_regions, 1 + L, C)`` with batch outer and region inner.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from maedfer.model.layers import (
    Attention,
    LayerNorm,
    TubeletEmbed,
    drop_path_rates,
    sinusoid_table,
)
from maedfer.model.registry import build, register_model

Pooling = Literal["region", "org", "all"]


class LGIBlock(nn.Module):
    """One LGI-Former block on ``(B * n, 1 + L, C)`` region sequences (docs/reference.md).

    One DropPath module serves all four residual branches with independent draws; as in the
    reference, its decision is per (video, region) row in steps 1 and 4 and per video in 2 and 3.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.intra_norm = LayerNorm(dim)
        self.intra_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.inter_norm = LayerNorm(dim)
        self.inter_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.cross_norm = LayerNorm(dim)
        self.cross_context_norm = LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ffn_norm = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, batch_size: int, *, reps_only: bool = False) -> torch.Tensor:
        """Run the block.

        Args:
            x: ``(B * n, 1 + L, C)``, representative token first in each region sequence.
            batch_size: B.
            reps_only: skip what cannot reach the representative tokens (step 3 and the FFN on
                local tokens); the local tokens are then returned as they left step 1. Used for
                the last block under region pooling, where that work is dead compute.
        Returns:
            ``(B * n, 1 + L, C)``.
        """
        rows, seq, dim = x.shape
        num_regions = rows // batch_size
        x = x + self.drop_path(self.intra_attn(self.intra_norm(x)))

        reps = x[:, 0].reshape(batch_size, num_regions, dim)
        reps = reps + self.drop_path(self.inter_attn(self.inter_norm(reps)))
        if reps_only:
            reps = reps.reshape(rows, 1, dim)
            reps = reps + self.drop_path(self.mlp(self.ffn_norm(reps)))
            return torch.cat((reps, x[:, 1:]), dim=1)

        local = x[:, 1:].reshape(batch_size, num_regions * (seq - 1), dim)
        local = local + self.drop_path(
            self.cross_attn(self.cross_norm(local), context=self.cross_context_norm(reps))
        )
        x = torch.cat((reps.reshape(rows, 1, dim), local.reshape(rows, seq - 1, dim)), dim=1)
        return x + self.drop_path(self.mlp(self.ffn_norm(x)))


class LGIFormerEncoder(nn.Module):
    """Tubelet embedding, fixed positions, region tokens and the LGI blocks.

    Shared by the classifier (all tokens) and the MAE encoder (visible tokens only).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        img_size: int,
        patch_size: int,
        tubelet_size: int,
        num_frames: int,
        region_size: tuple[int, int, int],
        drop_path_rate: float,
        qkv_bias: bool,
    ) -> None:
        super().__init__()
        self.patch_embed = TubeletEmbed(
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            num_frames=num_frames,
            dim=embed_dim,
        )
        grid = self.patch_embed.grid
        region_size = tuple(int(r) for r in region_size)
        if len(region_size) != 3 or any(g % r for g, r in zip(grid, region_size, strict=False)):
            raise ValueError(
                f"region_size {region_size} must divide the token grid {grid} in (t, h, w)"
            )
        self.region_size = region_size
        self.region_grid = tuple(g // r for g, r in zip(grid, region_size, strict=True))
        self.num_regions = self.region_grid[0] * self.region_grid[1] * self.region_grid[2]
        self.tokens_per_region = region_size[0] * region_size[1] * region_size[2]

        num_tokens = self.patch_embed.num_tokens
        self.register_buffer("pos_embed", sinusoid_table(num_tokens, embed_dim), persistent=False)
        # region_order[j] = raster index of the j-th token in region-major order;
        # region_rank is its inverse (raster index -> region-major position).
        (nt, nh, nw), (t, h, w) = self.region_grid, region_size
        order = torch.arange(num_tokens).view(nt, t, nh, h, nw, w).permute(0, 2, 4, 1, 3, 5)
        order = order.reshape(-1)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(num_tokens)
        self.register_buffer("region_order", order, persistent=False)
        self.register_buffer("region_rank", rank, persistent=False)
        self.register_buffer("region_of_token", rank // self.tokens_per_region, persistent=False)

        self.region_tokens = nn.Parameter(torch.zeros(self.num_regions, embed_dim))
        self.blocks = nn.ModuleList(
            LGIBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr)
            for dpr in drop_path_rates(drop_path_rate, depth)
        )

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, N, C)`` tokens in raster order, positions added."""
        tokens = self.patch_embed(video)
        return tokens + self.pos_embed.to(tokens.dtype)

    def forward_regions(
        self, tokens: torch.Tensor, *, reps_only_last: bool = False
    ) -> torch.Tensor:
        """Run the blocks on region-major tokens.

        Args:
            tokens: ``(B, n * L, C)``, region-major (region ``r`` holds rows ``r*L .. r*L+L-1``).
            reps_only_last: skip the last block's dead compute (see :meth:`LGIBlock.forward`).
        Returns:
            ``(B, n, 1 + L, C)``: each region's representative token, then its L tokens.
        """
        batch, length, dim = tokens.shape
        n = self.num_regions
        if length % n:
            raise ValueError(f"{length} tokens cannot be split into {n} equal regions")
        x = tokens.reshape(batch * n, length // n, dim)
        reps = self.region_tokens.to(x.dtype).expand(batch, n, dim).reshape(batch * n, 1, dim)
        x = torch.cat((reps, x), dim=1)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, batch, reps_only=reps_only_last and i == last)
        return x.view(batch, n, 1 + length // n, dim)

    def forward(self, video: torch.Tensor, *, reps_only_last: bool = False) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, n, 1 + L, C)`` over all tokens."""
        tokens = self.embed(video)[:, self.region_order]
        return self.forward_regions(tokens, reps_only_last=reps_only_last)


def init_finetune_weights(module: nn.Module) -> None:
    """VideoMAE fine-tuning init: Linear trunc-normal(0.02) with zero bias, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class LGIFormer(nn.Module):
    """LGI-Former classifier: ``forward(video (B, 3, T, H, W)) -> logits (B, num_classes)``.

    Args:
        num_classes: classes of the head (0: no head, ``forward`` returns features).
        embed_dim: token width C.
        depth: number of LGI blocks.
        num_heads: attention heads (head dim = C / heads).
        mlp_ratio: FFN hidden width / C.
        img_size: input height and width in pixels.
        patch_size: spatial tubelet size in pixels.
        tubelet_size: temporal tubelet size in frames.
        num_frames: input frames T.
        region_size: region size in tokens (t, h, w); must divide the token grid.
        pooling: tokens averaged for the head: ``region`` (representative tokens, the
            reference's choice), ``org`` (local tokens) or ``all``.
        drop_path_rate: stochastic depth of the last block (linear ramp from 0).
        qkv_bias: learnable q and v biases.
        init_scale: multiplier of the head's initial weights and bias.
        skip_unused_tail: with ``region`` pooling, skip the last block's cross-attention and
            local FFN, which cannot affect the logits (same outputs, ~4% fewer MACs).
    """

    def __init__(
        self,
        *,
        num_classes: int = 7,
        embed_dim: int = 512,
        depth: int = 16,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        img_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        region_size: tuple[int, int, int] = (2, 5, 10),
        pooling: Pooling = "region",
        drop_path_rate: float = 0.1,
        qkv_bias: bool = True,
        init_scale: float = 0.001,
        skip_unused_tail: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("region", "org", "all"):
            raise ValueError(f"pooling ({pooling!r}) must be one of 'region', 'org', 'all'")
        if skip_unused_tail and pooling != "region":
            raise ValueError("skip_unused_tail needs pooling='region'")
        self.pooling = pooling
        self.skip_unused_tail = skip_unused_tail
        self.num_classes = num_classes
        self.encoder = LGIFormerEncoder(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            num_frames=num_frames,
            region_size=region_size,
            drop_path_rate=drop_path_rate,
            qkv_bias=qkv_bias,
        )
        self.fc_norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.encoder.region_tokens, std=0.02)
        self.apply(init_finetune_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)
        if skip_unused_tail:
            for module in self.unused_tail():
                module.requires_grad_(False)

    def unused_tail(self) -> list[nn.Module]:
        """Modules that cannot reach the logits under ``region`` pooling (docs/reference.md): the
        last block's cross-attention and its norms. With ``skip_unused_tail`` they are skipped
        and frozen, so DDP needs no ``find_unused_parameters``."""
        last = self.encoder.blocks[-1]
        return [last.cross_attn, last.cross_norm, last.cross_context_norm]

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> pooled, normalised features ``(B, C)``."""
        x = self.encoder(video, reps_only_last=self.skip_unused_tail)
        if self.pooling == "region":
            pooled = x[:, :, 0].mean(1)
        elif self.pooling == "org":
            pooled = x[:, :, 1:].mean((1, 2))
        else:
            pooled = rearrange(x, "b n s c -> b (n s) c").mean(1)
        return self.fc_norm(pooled)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides 1-D tensors (docs/recipe.md)."""
        return {"encoder.region_tokens"}

    @property
    def num_layer_ids(self) -> int:
        return len(self.encoder.blocks) + 2

    def layer_id(self, param_name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: 0 embedding, i+1 block i, last the rest."""
        return _layer_id(param_name, "encoder.", len(self.encoder.blocks))


#: Fields that fix the encoder's tensors and token grid: an init must agree on all of them.
ENCODER_FIELDS: tuple[str, ...] = (
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "img_size",
    "patch_size",
    "tubelet_size",
    "num_frames",
    "region_size",
    "qkv_bias",
)
ENCODER_PREFIX = "encoder."


def encoder_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors (``encoder.*``) of a pre-training or classifier state dict (ours).

    Both models hold a :class:`LGIFormerEncoder` as ``encoder``; the pre-training model's
    ``encoder_norm``, ``encoder_to_decoder``, ``mask_token`` and decoder are left behind, as are
    a classifier's ``fc_norm`` and head: the fine-tuning start of the reference.
    """
    return {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}


def _layer_id(param_name: str, prefix: str, depth: int) -> int:
    if param_name.startswith(prefix + "patch_embed"):
        return 0
    if param_name.startswith(prefix + "blocks."):
        return int(param_name[len(prefix) + len("blocks.") :].split(".")[0]) + 1
    return depth + 1


def _lgi_former(overrides: dict, **variant) -> LGIFormer:
    return build(LGIFormer, variant, overrides)


@register_model(unused_tail=True)
def lgi_former_tiny(**overrides) -> LGIFormer:
    return _lgi_former(overrides, embed_dim=256, num_heads=4)


@register_model(unused_tail=True)
def lgi_former_small(**overrides) -> LGIFormer:
    return _lgi_former(overrides, embed_dim=384, num_heads=6)


@register_model(unused_tail=True)
def lgi_former_base(**overrides) -> LGIFormer:
    return _lgi_former(overrides, embed_dim=512, num_heads=8)
