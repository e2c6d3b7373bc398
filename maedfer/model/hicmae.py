"""HiCMAE's visual encoder, used alone: a ViT whose layers are pooled by learned weights.

Sun et al., "HiCMAE: Hierarchical Contrastive Masked Autoencoder for Self-Supervised
Audio-Visual Emotion Recognition", Information Fusion 2024; code:
https://github.com/sunlicai/HiCMAE (``modeling_finetune_av.AudioVisionTransformer``,
``avit_dim512_patch16_160_a256`` with ``--depth 10``).

HiCMAE is audio-visual. Its fine-tuned classifier reads four features: the video encoder's, the
audio encoder's, and both streams of a cross-modal fusion encoder, concatenated under one
``fc_norm`` and head; that head cannot be used without audio. What can be used alone is the
video encoder and the video branch of its hierarchical feature fusion: every block's tokens go
through the encoder's ``norm``, are averaged over tokens, and the layers are summed with
``softmax(video_layer_weights)`` (the authors' ``video_feature``). This model is that, followed
by a new ``fc_norm`` and head of its own width.

Released layouts it loads (:data:`LAYOUTS`): the pre-trained audio-visual MAE (the video
encoder is taken; audio, fusion, decoders, their projections and mask tokens are dropped;
``video_layer_weights``, ``fc_norm`` and the head start fresh, the weights at 1/depth as the
authors initialise them) and the fine-tuned audio-visual classifier (the video encoder and
``video_layer_weights`` are taken; the audio and fusion encoders, ``audio_layer_weights`` and the
audio-visual ``fc_norm`` and head are dropped, so ``fc_norm`` and the head start fresh: a
starting point for fine-tuning on video, not a classifier).

Documented in docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from maedfer.model.layers import LayerNorm
from maedfer.model.layout import Layout
from maedfer.model.registry import InputContract, Published, build, register_model
from maedfer.model.videomae import VideoMAEViT

_ENCODER = {
    "encoder.patch_embed.proj.": "patch_embed.proj.",
    "encoder.blocks.{}.": "blocks.{}.",
    "encoder.norm.": "norm.",
}
FINETUNE_AV = Layout(
    name="hicmae-finetune-av",
    description="a HiCMAE fine-tuned audio-visual classifier (AudioVisionTransformer)",
    table={
        **_ENCODER,
        "video_layer_weights": "video_layer_weights",
        "encoder_audio.": None,
        "encoder_fusion.": None,
        "audio_layer_weights": None,
        "fc_norm.": None,
        "head.": None,
    },
    markers=("video_layer_weights", "encoder_audio.patch_embed.proj.weight"),
    fresh=("fc_norm.", "head."),
    fits="hicmae_*",
)
PRETRAIN_AV = Layout(
    name="hicmae-pretrain-av",
    description="a HiCMAE pre-trained audio-visual MAE (PretrainAudioVisionTransformer)",
    table={
        **_ENCODER,
        "encoder_audio.": None,
        "encoder_fusion.": None,
        "decoder.": None,
        "decoder_audio.": None,
        "encoder_to_decoder.": None,
        "encoder_to_decoder_audio.": None,
        "mask_token": None,
        "mask_token_audio": None,
    },
    markers=("encoder_audio.patch_embed.proj.weight", "decoder.head.weight"),
    absent=("video_layer_weights",),
    fresh=("video_layer_weights", "fc_norm.", "head."),
    fits="hicmae_*",
)
LAYOUTS = (FINETUNE_AV, PRETRAIN_AV)


class HiCMAEVisual(VideoMAEViT):
    """HiCMAE video encoder + layer-weighted pooling + head:
    ``forward(video (B, 3, T, H, W)) -> logits (B, num_classes)``.

    VideoMAE's ViT (:class:`maedfer.model.videomae.VideoMAEViT`: the same tubelets, fixed
    position table, blocks, ``fc_norm``, head and initialisation) with HiCMAE's own pooling:
    the encoder's ``norm`` and the ``video_layer_weights`` over every block's tokens.

    Args:
        num_classes: classes of the head (0: no head, ``forward`` returns features).
        embed_dim, depth, num_heads, mlp_ratio: the ViT's size.
        img_size, patch_size, tubelet_size, num_frames: the input and its tubelets.
        drop_path_rate: stochastic depth of the last block (linear ramp from 0).
        qkv_bias: learnable q and v biases.
        init_scale: multiplier of the head's initial weights and bias.
    """

    official_layouts = LAYOUTS

    def __init__(
        self,
        *,
        num_classes: int = 7,
        embed_dim: int = 512,
        depth: int = 10,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        img_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        drop_path_rate: float = 0.1,
        qkv_bias: bool = True,
        init_scale: float = 0.001,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            num_frames=num_frames,
            drop_path_rate=drop_path_rate,
            qkv_bias=qkv_bias,
            init_scale=init_scale,
        )
        # initialised as init_finetune_weights would (a LayerNorm: ones and zeros; no draws),
        # the layer weights at 1/depth as the authors do
        self.norm = LayerNorm(embed_dim)
        self.video_layer_weights = nn.Parameter(torch.full((depth,), 1.0 / depth))

    def pooled(self, video: torch.Tensor) -> torch.Tensor:
        """HiCMAE's ``video_feature`` ``(B, C)``: each block's normalised tokens averaged, the
        layers summed with ``softmax(video_layer_weights)``."""
        x = self.patch_embed(video)
        x = x + self.pos_embed.to(x.dtype)
        layers = []
        for block in self.blocks:
            x = block(x)
            layers.append(self.norm(x).mean(1))
        weights = self.video_layer_weights.softmax(0).to(x.dtype)
        return (torch.stack(layers, 1) * weights.view(1, -1, 1)).sum(1)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(self.pooled(video))


_AV = (
    "HiCMAE (Sun et al., Information Fusion 2024), its README's per-fold mean; "
    "audio-visual, not the visual encoder alone"
)
PUBLISHED = {
    "crema-d": Published(84.94, 84.91, "mean over 5 folds, audio-visual", _AV),
    "mafw": Published(42.69, 56.21, "mean over 5 folds, audio-visual", _AV),
}
_INPUTS = InputContract(
    num_frames=16,
    img_size=160,
    stride=4,
    face_crop="OpenFace-aligned face frames (HiCMAE preprocess/face_and_audio/extract_face.py)",
    source="HiCMAE (sunlicai/HiCMAE): the video stream, 16 frames, sampling rate 4, 160 px",
)


@register_model(inputs=_INPUTS, published=PUBLISHED)
def hicmae_base(**overrides) -> HiCMAEVisual:
    return build(HiCMAEVisual, {}, overrides)
