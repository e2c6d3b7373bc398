"""VideoMAE ViT: the plain video ViT with joint space-time attention (docs/reference.md).

Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
Pre-Training", NeurIPS 2022; code: https://github.com/MCG-NJU/VideoMAE (``modeling_finetune.py``,
``vit_base_patch16_224``; MAE-DFER's baseline is the same network at 160 px). No class token,
the fixed sinusoid table, pre-norm blocks with q/v biases, mean pooling over all tokens,
``fc_norm`` and a linear head. Same interface as :class:`maedfer.model.lgi_former.LGIFormer`.

Released layouts it loads (:data:`LAYOUTS`): a VideoMAE fine-tuned classifier (its keys are ours)
and a VideoMAE pre-trained MAE (``encoder.*``, the decoder; fine-tuning starts from the encoder,
as the authors' ``run_class_finetuning.py`` does: the encoder's final ``norm``, the decoder,
``encoder_to_decoder`` and ``mask_token`` are dropped, ``fc_norm`` and the head start fresh).
The position table is fixed and not stored, so weights pre-trained at 224 px (Kinetics-400)
serve a 160 px model unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from maedfer.model.layers import Block, LayerNorm, TubeletEmbed, drop_path_rates, sinusoid_table
from maedfer.model.layout import Layout, heads_of
from maedfer.model.lgi_former import _layer_id, init_finetune_weights
from maedfer.model.registry import (
    InputContract,
    build,
    register_alias,
    register_model,
)

FINETUNE = Layout(
    name="videomae-finetune",
    description="a VideoMAE fine-tuned classifier (modeling_finetune.VisionTransformer)",
    table={
        "patch_embed.proj.": "patch_embed.proj.",
        "blocks.{}.": "blocks.{}.",
        "fc_norm.": "fc_norm.",
        "head.": "head.",
    },
    markers=("blocks.0.attn.qkv.weight", "fc_norm.weight"),
    absent=("encoder.", "temporal_downsamples.", "lg_region_tokens", "head.video."),
    fits="videomae_*",
)
PRETRAIN = Layout(
    name="videomae-pretrain",
    description="a VideoMAE pre-trained MAE (modeling_pretrain.PretrainVisionTransformer)",
    table={
        "encoder.patch_embed.proj.": "patch_embed.proj.",
        "encoder.blocks.{}.": "blocks.{}.",
        "encoder.norm.": None,
        "encoder_to_decoder.": None,
        "mask_token": None,
        "decoder.": None,
    },
    markers=("encoder.blocks.0.attn.qkv.weight", "encoder_to_decoder.weight"),
    absent=("encoder.temporal_downsamples.", "encoder_audio.", "encoder.lg_region_tokens"),
    fresh=("fc_norm.", "head."),
    fits="videomae_*",
)
LAYOUTS = (FINETUNE, PRETRAIN)


class VideoMAEViT(nn.Module):
    """ViT video classifier: ``forward(video (B, 3, T, H, W)) -> logits (B, num_classes)``.

    Args:
        num_classes: classes of the head (0: no head).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width / embed_dim.
        img_size: input height and width in pixels.
        patch_size: spatial tubelet size in pixels.
        tubelet_size: temporal tubelet size in frames.
        num_frames: input frames.
        drop_path_rate: stochastic depth of the last block (linear ramp from 0).
        qkv_bias: learnable q and v biases.
        init_scale: multiplier of the head's initial weights and bias.
    """

    official_layouts = LAYOUTS

    def __init__(
        self,
        *,
        num_classes: int = 7,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        img_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        drop_path_rate: float = 0.1,
        qkv_bias: bool = True,
        init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.patch_embed = TubeletEmbed(
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            num_frames=num_frames,
            dim=embed_dim,
        )
        self.register_buffer(
            "pos_embed", sinusoid_table(self.patch_embed.num_tokens, embed_dim), persistent=False
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr)
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.fc_norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_finetune_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> the last block's tokens ``(B, N, C)``."""
        x = self.patch_embed(video)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
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
        return _layer_id(param_name, "", len(self.blocks))


VideoViT = VideoMAEViT  # the name before the lineage had several ViTs

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def official_classifier(
    state: Mapping[str, torch.Tensor], args: Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """The registered model and config of a VideoMAE fine-tuned state dict, or ``None`` when
    ``state`` is not one. Width, depth, patch, tubelet, MLP ratio and classes come from the
    tensors, heads from the width (64 per head, as every VideoMAE size), the input side and
    frames from the saved ``args`` (``input_size``, ``num_frames``) where present."""
    if not FINETUNE.matches(state.keys()):
        return None
    width, _, tubelet, patch, _ = state["patch_embed.proj.weight"].shape
    config: dict[str, Any] = {
        "embed_dim": int(width),
        "num_heads": heads_of(int(width)),
        "patch_size": int(patch),
        "tubelet_size": int(tubelet),
        "num_classes": int(state["head.weight"].shape[0]),
        "depth": len({int(m.group(1)) for k in state if (m := _BLOCK.match(k))}),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "qkv_bias": "blocks.0.attn.q_bias" in state,
    }
    size = args.get("input_size")
    if args.get("num_frames") is not None:
        config["num_frames"] = int(args["num_frames"])
    if size is not None and int(size) == 224:
        return "videomae_base_224", config
    if size is not None:
        config["img_size"] = int(size)
    return "videomae_base", config


# The MAE-DFER paper's baseline: VideoMAE ViT-B at MAE-DFER's 160 px, 16 frames of stride 4.
_DFER_INPUTS = InputContract(
    num_frames=16,
    img_size=160,
    stride=4,
    face_crop="the datasets' face crops, as MAE-DFER (VoxCeleb2: its face-centred frames)",
    source="VideoMAE (MCG-NJU/VideoMAE) at MAE-DFER's 160 px",
)
# Kinetics-400's own input: 16 frames of 224 px, stride 4 (the 16x4 schedule).
_K400_INPUTS = InputContract(
    num_frames=16,
    img_size=224,
    stride=4,
    face_crop="none: Kinetics-400 scene frames (short side resized, 224 centre crop)",
    source="VideoMAE (MCG-NJU/VideoMAE), Kinetics-400 16x4",
)


@register_model(inputs=_DFER_INPUTS)
def videomae_base(**overrides) -> VideoMAEViT:
    return build(VideoMAEViT, {}, overrides)


@register_model(inputs=_K400_INPUTS)
def videomae_base_224(**overrides) -> VideoMAEViT:
    return build(VideoMAEViT, {}, overrides)  # 224 px: the contract's side


register_alias("vit_base", "videomae_base")
