"""VideoMAE ViT-B baseline with global (joint space-time) attention (MODEL.md §2.5).

Tong et al., "VideoMAE", NeurIPS 2022 (``vit_base_patch16_160`` of the MAE-DFER code): no class
token, the fixed sinusoid table, pre-norm blocks with q/v biases, mean pooling over all tokens,
``fc_norm`` and a linear head. Same interface as :class:`maedfer.model.lgi_former.LGIFormer`.
"""

from __future__ import annotations

import torch
from torch import nn

from maedfer.model.layers import Block, LayerNorm, TubeletEmbed, drop_path_rates, sinusoid_table
from maedfer.model.lgi_former import _layer_id, init_finetune_weights
from maedfer.model.registry import build, register_model


class VideoViT(nn.Module):
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

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x.mean(1))

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


@register_model
def vit_base(**overrides) -> VideoViT:
    return build(VideoViT, {}, overrides)
