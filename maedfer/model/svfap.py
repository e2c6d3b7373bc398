"""SVFAP's encoder, TPSBT: a temporal pyramid and spatial bottleneck Transformer.

Sun et al., "SVFAP: Self-supervised Video Facial Affect Perceiver", IEEE TAC 2024; code:
https://github.com/sunlicai/SVFAP (``modeling_finetune.TPSBT``, ``svfap_base_patch16_160``).

The first stage is plain ViT blocks on all ``T' x H' x W'`` tokens. Each later stage

1. halves time (``temporal_kernel_size``): a ``Conv1d`` over each spatial position's tokens;
2. squeezes each token-frame's ``H' x W'`` tokens into a few bottleneck tokens: a small MLP
   scores every token for each bottleneck slot, a softmax over the frame's tokens weighs them;
3. runs cross-self blocks on the bottleneck tokens (cross-attention to the stage's full tokens,
   then self-attention and an MLP), and a last one the other way round: the stage's full tokens
   attend to the bottleneck tokens, which restores the spatial resolution.

The classifier averages the last stage's tokens (``fc_norm``, head). Module names follow the
authors', so their fine-tuned keys are ours; a pre-trained MAE's ``encoder.*`` start
fine-tuning as ``run_class_finetuning.py`` does (the encoder's final ``norm``, the decoder,
``encoder_to_decoder`` and ``mask_token`` dropped; ``fc_norm`` and the head fresh).

A fact of the released code: ``pretrain_svfap_base_patch16_160`` builds a 768-wide, 12-head
encoder while the fine-tuning model ``svfap_base_patch16_160`` is 512 wide with 8 heads, and
the authors' loader skips tensors whose shapes differ. ``svfap_base`` is the fine-tuning model;
a pre-trained file of the other width fails here in one line naming the shapes (give
``--set model.overrides.embed_dim=768 --set model.overrides.num_heads=12`` to fine-tune that
width).

Documented in docs/models.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from timm.layers import DropPath, Mlp
from torch import nn

from maedfer.errors import MaedferError
from maedfer.model.layers import (
    Attention,
    Block,
    FusedSelfAttention,
    LayerNorm,
    TubeletEmbed,
    drop_path_rates,
    sinusoid_table,
)
from maedfer.model.layout import Layout, heads_of
from maedfer.model.lgi_former import _layer_id, init_finetune_weights
from maedfer.model.registry import InputContract, Published, build, register_model

_OWN = ("patch_embed.proj.", "blocks.{}.", "temporal_downsamples.{}.", "spatial_downsamples.{}.")
FINETUNE = Layout(
    name="svfap-finetune",
    description="an SVFAP fine-tuned classifier (modeling_finetune.TPSBT)",
    table={**{k: k for k in _OWN}, "fc_norm.": "fc_norm.", "head.": "head."},
    markers=("temporal_downsamples.0.weight", "fc_norm.weight"),
    absent=("encoder.",),
    fits="svfap_*",
)
PRETRAIN = Layout(
    name="svfap-pretrain",
    description="an SVFAP pre-trained MAE (modeling_pretrain.PretrainVisionTransformer)",
    table={
        **{"encoder." + k: k for k in _OWN},
        "encoder.norm.": None,
        "encoder_to_decoder.": None,
        "mask_token": None,
        "decoder.": None,
    },
    markers=("encoder.temporal_downsamples.0.weight",),
    fresh=("fc_norm.", "head."),
    fits="svfap_*",
)
LAYOUTS = (FINETUNE, PRETRAIN)


class SpatialBottleneck(nn.Module):
    """Per token-frame, ``num_tokens`` softmax-weighted sums of its spatial tokens (SVFAP's
    ``SpatialAttention``): ``(B, t * n, C) -> (B, t * num_tokens, C)``."""

    def __init__(self, dim: int, num_tokens: int, frames: int, hidden: int = 128) -> None:
        super().__init__()
        self.frames = frames
        self.norm = LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, out_features=num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.mlp(self.norm(x))  # (B, t * n, k): a score per token and slot
        weights = rearrange(scores, "b (t n) k -> (b t) k n", t=self.frames).softmax(-1)
        tokens = rearrange(x, "b (t n) c -> (b t) n c", t=self.frames)
        return rearrange(weights @ tokens, "(b t) k c -> b (t k) c", t=self.frames)


class CrossSelfBlock(nn.Module):
    """Cross-attention of ``x`` to ``context``, then self-attention and an MLP, each pre-norm
    with a residual and one shared stochastic-depth module (SVFAP's ``CSBlock``)."""

    def __init__(
        self, dim: int, num_heads: int, *, mlp_ratio: float, qkv_bias: bool, drop_path: float
    ) -> None:
        super().__init__()
        self.cross_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.cross_norm1 = LayerNorm(dim)
        self.cross_norm2 = LayerNorm(dim)
        self.norm1 = LayerNorm(dim)
        self.attn = FusedSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(
            self.cross_attn(self.cross_norm1(x), context=self.cross_norm2(context))
        )
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TPSBT(nn.Module):
    """SVFAP classifier: ``forward(video (B, 3, T, H, W)) -> logits (B, num_classes)``.

    Args:
        num_classes: classes of the head (0: no head, ``forward`` returns features).
        embed_dim, num_heads, mlp_ratio: the Transformer's width, heads and MLP ratio.
        stage_depths: blocks per stage; the first stage is plain ViT blocks, each later one
            cross-self blocks after a temporal and a spatial reduction.
        num_bottleneck_tokens: bottleneck tokens per token-frame of each later stage (one value:
            the same for all).
        temporal_kernel_size: time reduction (kernel and stride of the Conv1d) per later stage.
        spatial_hidden: hidden width of the bottleneck's scoring MLP.
        img_size, patch_size, tubelet_size, num_frames: the input and its tubelets.
        drop_path_rate: stochastic depth of the last block (linear ramp over all blocks).
        qkv_bias: learnable q and v biases.
        init_scale: multiplier of the head's initial weights and bias.
    """

    official_layouts = LAYOUTS

    def __init__(
        self,
        *,
        num_classes: int = 7,
        embed_dim: int = 512,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        stage_depths: Sequence[int] = (12, 6, 3),
        num_bottleneck_tokens: Sequence[int] = (8,),
        temporal_kernel_size: int = 2,
        spatial_hidden: int = 128,
        img_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        drop_path_rate: float = 0.1,
        qkv_bias: bool = True,
        init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        stages = [int(d) for d in stage_depths]
        tokens = [int(n) for n in num_bottleneck_tokens]
        if len(tokens) == 1:
            tokens *= len(stages) - 1
        if len(stages) < 1 or min(stages) < 1 or len(tokens) != len(stages) - 1:
            raise ValueError(
                f"stage_depths {tuple(stages)} needs one bottleneck token count, "
                f"or one per later stage; got {tuple(tokens)}"
            )
        self.num_classes = num_classes
        self.stage_depths = tuple(stages)
        self.temporal_kernel_size = temporal_kernel_size
        self.patch_embed = TubeletEmbed(
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            num_frames=num_frames,
            dim=embed_dim,
        )
        frames, height, width = self.patch_embed.grid
        if frames % temporal_kernel_size ** (len(stages) - 1):
            raise ValueError(
                f"{frames} token-frames cannot be reduced by "
                f"{temporal_kernel_size} in each of {len(stages) - 1} stages"
            )
        self.spatial_tokens = height * width
        self.register_buffer(
            "pos_embed", sinusoid_table(self.patch_embed.num_tokens, embed_dim), persistent=False
        )
        rates = iter(drop_path_rates(drop_path_rate, sum(stages)))
        self.blocks = nn.ModuleList()
        self.temporal_downsamples = nn.ModuleList()
        self.spatial_downsamples = nn.ModuleList()
        self.frames_per_stage = [frames]
        for stage, depth in enumerate(stages):
            if stage == 0:
                self.blocks.extend(
                    Block(
                        embed_dim,
                        num_heads,
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        drop_path=next(rates),
                    )
                    for _ in range(depth)
                )
                continue
            frames //= temporal_kernel_size
            self.frames_per_stage.append(frames)
            self.temporal_downsamples.append(
                nn.Conv1d(embed_dim, embed_dim, temporal_kernel_size, stride=temporal_kernel_size)
            )
            self.spatial_downsamples.append(
                SpatialBottleneck(embed_dim, tokens[stage - 1], frames, spatial_hidden)
            )
            self.blocks.extend(
                CrossSelfBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=next(rates),
                )
                for _ in range(depth)
            )
        self.fc_norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_finetune_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> the last stage's tokens ``(B, t_last * H' * W', C)``."""
        x = self.patch_embed(video)
        x = x + self.pos_embed.to(x.dtype)
        blocks = iter(self.blocks)
        for _ in range(self.stage_depths[0]):
            x = next(blocks)(x)
        for stage, depth in enumerate(self.stage_depths[1:]):
            # temporal pyramid: each spatial position's token sequence, shortened by a conv
            x = rearrange(x, "b (t n) c -> (b n) c t", t=self.frames_per_stage[stage])
            x = self.temporal_downsamples[stage](x)
            full = rearrange(x, "(b n) c t -> b (t n) c", n=self.spatial_tokens)
            # spatial bottleneck: the few tokens attend to the full ones, then back
            x = self.spatial_downsamples[stage](full)
            for _ in range(depth - 1):
                x = next(blocks)(x, context=full)
            x = next(blocks)(full, context=x)
        return x

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(self.forward_tokens(video).mean(1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    def no_weight_decay(self) -> set[str]:
        return set()

    @property
    def num_layer_ids(self) -> int:
        return len(self.blocks) + 2

    def layer_id(self, param_name: str) -> int:
        """0 for the embedding, i+1 for block i, the last id for the rest (the reductions,
        ``fc_norm``, head), as the authors' ``get_num_layers`` counts the blocks."""
        return _layer_id(param_name, "", len(self.blocks))


_BLOCK = re.compile(r"blocks\.(\d+)\.")
_RELEASED_STAGES = (12, 6, 3)


def official_classifier(
    state: Mapping[str, torch.Tensor], args: Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """The registered model and config of an SVFAP fine-tuned state dict, or ``None`` when
    ``state`` is not one.

    The tensors give the width (heads: 64 wide each), the MLP ratio, patch and tubelet sizes,
    the classes, the time reduction, the bottleneck tokens of each later stage and how many
    blocks are plain or cross-self. How the cross-self blocks split into stages leaves no trace:
    it comes from the saved ``args.stage_depths``, else the released (12, 6, 3) where the counts
    agree.

    Raises:
        MaedferError: counts that fit no split and no ``stage_depths`` in the args.
    """
    if not FINETUNE.matches(state.keys()):
        return None
    width, _, tubelet, patch, _ = state["patch_embed.proj.weight"].shape
    indices = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    cross = [i for i in indices if f"blocks.{i}.cross_attn.q.weight" in state]
    later = len({int(k.split(".")[1]) for k in state if k.startswith("temporal_downsamples.")})
    tokens = [int(state[f"spatial_downsamples.{s}.mlp.fc2.weight"].shape[0]) for s in range(later)]
    stages = args.get("stage_depths")
    if stages is None and (len(indices) - len(cross), len(cross), later) == (12, 9, 2):
        stages = _RELEASED_STAGES
    if stages is None or sum(stages) != len(indices) or len(stages) != later + 1:
        raise MaedferError(
            f"an SVFAP state dict of {len(indices) - len(cross)} plain and {len(cross)} "
            f"cross-self blocks in {later + 1} stages: give the stages, e.g. --set "
            "stage_depths=[12,6,3]"
        )
    config: dict[str, Any] = {
        "embed_dim": int(width),
        "num_heads": heads_of(int(width)),
        "patch_size": int(patch),
        "tubelet_size": int(tubelet),
        "num_classes": int(state["head.weight"].shape[0]),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "stage_depths": [int(d) for d in stages],
        "num_bottleneck_tokens": tokens,
        "temporal_kernel_size": int(state["temporal_downsamples.0.weight"].shape[-1]),
        "spatial_hidden": int(state["spatial_downsamples.0.mlp.fc1.weight"].shape[0]),
        "qkv_bias": "blocks.0.attn.q_bias" in state,
    }
    for arg, name in (("input_size", "img_size"), ("num_frames", "num_frames")):
        if args.get(arg) is not None:
            config[name] = int(args[arg])
    return "svfap_base", config


_SOURCE = "SVFAP (Sun et al., IEEE TAC 2024), the paper's figure as its README restates it"
PUBLISHED = {
    "dfew": Published(
        62.83,
        74.27,
        "mean over 5 folds",
        _SOURCE,
        "the README's released checkpoints reproduce 63.89 / 74.81",
    ),
    "ferv39k": Published(
        42.14,
        52.29,
        "fixed test split",
        _SOURCE,
        "the README's released checkpoint reproduces 43.05 / 52.86",
    ),
    "mafw": Published(
        41.19,
        54.28,
        "mean over 5 folds",
        _SOURCE,
        "the README's released checkpoints reproduce 43.51 / 56.31",
    ),
}
_INPUTS = InputContract(
    num_frames=16,
    img_size=160,
    stride=4,
    face_crop="the datasets' face crops, as MAE-DFER (SVFAP's split files are MAE-DFER's)",
    source="SVFAP (sunlicai/SVFAP): 16 frames, sampling rate 4, 160 px",
)


@register_model(inputs=_INPUTS, published=PUBLISHED)
def svfap_base(**overrides) -> TPSBT:
    return build(TPSBT, {}, overrides)
