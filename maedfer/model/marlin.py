"""MARLIN: the face-video masked autoencoder's ViT encoder, with a classification head.

Cai et al., "MARLIN: Masked Autoencoder for facial video Representation LearnINg", CVPR 2023;
code: https://github.com/ControlNet/MARLIN (``marlin-pytorch``: ``src/marlin_pytorch/model``).
The encoder is a VideoMAE-style ViT with three differences that change outputs: its LayerNorms
keep PyTorch's eps 1e-5, its sinusoid position table is a stored tensor
(``encoder.pos_embedding.emb``, computed in float32), and its final ``norm`` follows the mean
over tokens (``extract_features(x, keep_seq=False)``: mean, then norm). Here that norm is the
classifier's ``fc_norm``, the head is a new linear layer (MARLIN releases no emotion
classifier), and :meth:`MarlinViT.forward_features` is MARLIN's clip feature.

MARLIN was trained on plain [0, 1] pixels (``marlin.py``: frames / 255, no mean or std) of
224 px FaceXZoo face crops, 16 frames 2 apart; the model converts maedfer's ImageNet-normalised
clips to that at its input (:class:`maedfer.model.layers.Renormalise`).

Released layout it loads (:data:`MARLIN`): the encoder file (``marlin_vit_*_ytf.encoder.pt``)
and the full model (``.full.pt``, whose decoder and ``enc_dec_proj`` are dropped), both
``encoder.*`` keys as ``Marlin.from_file`` reads them (a Lightning ``.ckpt``'s
``discriminator.*`` is dropped as ``from_file`` drops it).

Documented in docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD
from maedfer.model.layers import Block, Renormalise, TubeletEmbed, drop_path_rates, sinusoid_table
from maedfer.model.layout import Layout
from maedfer.model.lgi_former import _layer_id, init_finetune_weights
from maedfer.model.registry import InputContract, build, register_model

MARLIN = Layout(
    name="marlin",
    description="a MARLIN encoder or full model (marlin_pytorch Marlin.from_file)",
    table={
        "encoder.patch_embedding.projection.": "patch_embed.proj.",
        "encoder.pos_embedding.emb": "pos_embed",
        "encoder.norm.": "fc_norm.",
        "encoder.blocks.{}.norm1.": "blocks.{}.norm1.",
        "encoder.blocks.{}.attn.": "blocks.{}.attn.",
        "encoder.blocks.{}.norm2.": "blocks.{}.norm2.",
        "encoder.blocks.{}.mlp.layers.0.linear.": "blocks.{}.mlp.fc1.",
        "encoder.blocks.{}.mlp.layers.1.linear.": "blocks.{}.mlp.fc2.",
        "decoder.": None,
        "enc_dec_proj.": None,
        "discriminator.": None,
    },
    markers=("encoder.patch_embedding.projection.weight", "encoder.pos_embedding.emb"),
    fresh=("head.",),
    fits="marlin_*",
)
LAYOUTS = (MARLIN,)
#: MARLIN's pixels: [0, 1], no mean or std.
PLAIN_MEAN, PLAIN_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which MARLIN keeps


class MarlinViT(nn.Module):
    """MARLIN encoder + head: ``forward(video (B, 3, T, H, W)) -> logits (B, num_classes)``.

    ``video`` is normalised as maedfer's loaders do (ImageNet mean and std); the model turns it
    into MARLIN's [0, 1] pixels first.

    Args:
        num_classes: classes of the head (0: no head, ``forward`` returns features).
        embed_dim, depth, num_heads, mlp_ratio: the ViT's size.
        img_size, patch_size, tubelet_size, num_frames: the input and its tubelets.
        drop_path_rate: stochastic depth for fine-tuning (MARLIN's encoder has none; linear
            ramp from 0 to this at the last block).
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
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.renormalise = Renormalise(IMAGENET_MEAN, IMAGENET_STD, PLAIN_MEAN, PLAIN_STD)
        self.patch_embed = TubeletEmbed(
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            num_frames=num_frames,
            dim=embed_dim,
        )
        # MARLIN stores its table (a frozen parameter): a buffer here, loaded with the weights
        table = sinusoid_table(self.patch_embed.num_tokens, embed_dim)[None]
        self.register_buffer("pos_embed", table, persistent=True)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr,
                norm_eps=NORM_EPS,
            )
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=NORM_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_finetune_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` (loader-normalised) -> the last block's tokens ``(B, N, C)``,
        before MARLIN's final norm."""
        x = self.patch_embed(self.renormalise(video))
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """MARLIN's clip feature: the mean over tokens, then the encoder's final norm."""
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


_INPUTS = InputContract(
    num_frames=16,
    img_size=224,
    stride=2,
    mean=PLAIN_MEAN,
    std=PLAIN_STD,
    face_crop="FaceXZoo face detection crop, 224 px (MARLIN's preprocess)",
    source="MARLIN (ControlNet/MARLIN, marlin_pytorch): 16 frames, sample rate 2",
)


def _marlin(overrides: dict, **variant) -> MarlinViT:
    return build(MarlinViT, variant, overrides)


@register_model(inputs=_INPUTS)
def marlin_small(**overrides) -> MarlinViT:
    return _marlin(overrides, embed_dim=384, depth=12, num_heads=6)


@register_model(inputs=_INPUTS)
def marlin_base(**overrides) -> MarlinViT:
    return _marlin(overrides, embed_dim=768, depth=12, num_heads=12)


@register_model(inputs=_INPUTS)
def marlin_large(**overrides) -> MarlinViT:
    return _marlin(overrides, embed_dim=1024, depth=24, num_heads=16)
