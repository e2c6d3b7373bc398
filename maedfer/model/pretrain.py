"""MAE-DFER pre-training model: LGI-Former on visible tokens, ViT decoder, joint targets.

docs/reference.md.

``forward(video, mask) -> pred``: the encoder sees only the visible tokens (equal counts per
region, region-major order); the decoder sees them plus a mask token for every masked position,
each with its fixed sinusoid position, and predicts, for every masked token in raster order,
``3 * tubelet_size * patch_size**2`` values laid out ``(p0, p1, p2, c)`` with c fastest: the
``p0 = 0`` half is the appearance (first frame of the tubelet) and the ``p0 = 1`` half the motion
(frame difference). ``targets(video, mask)`` and ``loss(pred, targets)`` follow docs/reference.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import trunc_normal_
from torch import nn

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD
from maedfer.model.layers import Block, LayerNorm, sinusoid_table
from maedfer.model.lgi_former import LGIFormerEncoder, _layer_id
from maedfer.model.masking import TubeWindowMasking
from maedfer.model.registry import build, register_model


def init_mae_weights(module: nn.Module) -> None:
    """MAE init: Linear xavier-uniform with zero bias, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _trunc_normal_one_sigma_(tensor: torch.Tensor, std: float = 0.02) -> None:
    # The reference pre-training code truncates at +-1 std (docs/reference.md).
    trunc_normal_(tensor, std=std, a=-std, b=std)


class MAEDecoder(nn.Module):
    """Global-attention blocks, final LayerNorm, and the head on the last ``num_masked`` tokens."""

    def __init__(self, *, dim: int, depth: int, num_heads: int, mlp_ratio: float, out_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, num_masked: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -num_masked:]))


class MaskedLGIFormer(nn.Module):
    """MAE-DFER pre-training model.

    Args:
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder heads.
        mlp_ratio: FFN hidden width / width (encoder and decoder).
        img_size: input height and width in pixels.
        patch_size: spatial tubelet size in pixels.
        tubelet_size: temporal tubelet size in frames (2 for the motion target).
        num_frames: input frames.
        region_size: region size in tokens (t, h, w).
        drop_path_rate: encoder stochastic depth (reference: 0).
        qkv_bias: learnable q and v biases.
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder heads.
        mask_ratio: fraction of each window masked by :meth:`random_mask`.
        normalize_target: standardise each tubelet and channel of the target.
        frame_diff_target: the second frame of each tubelet becomes a frame difference.
        official_decoder_order: give the decoder the reference's mismatched positions for the
            visible tokens (docs/reference.md), to continue an official checkpoint exactly.

    Raises:
        ValueError: ``frame_diff_target`` with ``tubelet_size`` other than 2.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 512,
        depth: int = 16,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        img_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        region_size: tuple[int, int, int] = (2, 5, 10),
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        decoder_embed_dim: int = 384,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        mask_ratio: float = 0.9,
        normalize_target: bool = True,
        frame_diff_target: bool = True,
        official_decoder_order: bool = False,
    ) -> None:
        super().__init__()
        if frame_diff_target and tubelet_size != 2:
            raise ValueError(f"frame_diff_target needs tubelet_size 2, got {tubelet_size}")
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.normalize_target = normalize_target
        self.frame_diff_target = frame_diff_target
        self.official_decoder_order = official_decoder_order
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
        self.encoder_norm = LayerNorm(embed_dim)
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder = MAEDecoder(
            dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            out_dim=3 * tubelet_size * patch_size**2,
        )
        self.register_buffer(
            "decoder_pos_embed",
            sinusoid_table(self.encoder.patch_embed.num_tokens, decoder_embed_dim),
            persistent=False,
        )
        self.masking = TubeWindowMasking(
            self.encoder.patch_embed.grid, mask_ratio=mask_ratio, window=region_size[1:]
        )

        self.encoder.apply(init_mae_weights)
        self.encoder_norm.apply(init_mae_weights)
        self.decoder.apply(init_mae_weights)
        _trunc_normal_one_sigma_(self.encoder.region_tokens)
        _trunc_normal_one_sigma_(self.mask_token)

    @property
    def num_tokens(self) -> int:
        return self.encoder.patch_embed.num_tokens

    def random_mask(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Part-window tube masks ``(B, N)`` bool, True = masked (docs/reference.md)."""
        return self.masking(batch_size, generator=generator, device=device)

    def visible_order(self, mask: torch.Tensor) -> torch.Tensor:
        """Raster indices of the visible tokens in region-major order, ``(B, N_visible)``.

        Raises:
            ValueError: the mask's shape is wrong, or the visible count differs between videos or
                between the regions of a video (the encoder needs equal counts per region).
        """
        batch, num_tokens = mask.shape if mask.dim() == 2 else (None, None)
        if num_tokens != self.num_tokens or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool (B, {self.num_tokens}), got {mask.dtype} {tuple(mask.shape)}"
            )
        visible = ~mask
        per_region = torch.zeros(
            batch, self.encoder.num_regions, dtype=torch.long, device=mask.device
        ).index_add_(1, self.encoder.region_of_token, visible.long())
        if (per_region != per_region[:1, :1]).any() or per_region[0, 0] == 0:
            raise ValueError(
                "every video and every region must have the same number of visible tokens; "
                f"visible per region of the first video: {per_region[0].tolist()}"
            )
        rank = self.encoder.region_rank
        key = torch.where(visible, rank, rank + num_tokens)
        return key.argsort(dim=1)[:, : int(per_region[0].sum())]

    def token_order(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`visible_order`, the masked positions ascending) of ``mask`` — made where the
        mask is (the CPU in training), checked there, for :meth:`forward` and :meth:`targets`."""
        order = self.visible_order(mask)
        raster = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        return order, raster[:, order.shape[1] :]

    def forward_encoder(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens ``(B, N_visible, C)`` in region-major order, normalised."""
        return self._encode_visible(video, self.visible_order(mask))

    def _encode_visible(self, video: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.embed(video)
        tokens = tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))
        x = self.encoder.forward_regions(tokens)[:, :, 1:]
        return self.encoder_norm(x.flatten(1, 2))

    def forward(
        self, video: torch.Tensor, mask: torch.Tensor, order: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``video (B, 3, T, H, W)``, ``mask (B, N)`` -> ``pred (B, N_masked, 3*t*p*p)``.

        ``order``: :meth:`visible_order` of ``mask`` if already at hand (the training loop makes
        it on the CPU, where the masks are drawn, so the device never reports a count back)."""
        if order is None:
            order = self.visible_order(mask)
        x = self.encoder_to_decoder(self._encode_visible(video, order))
        num_visible = x.shape[1]
        # Visible positions ascending, then masked positions ascending (stable sort).
        raster = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        visible_pos = raster[:, :num_visible] if self.official_decoder_order else order
        pos = self.decoder_pos_embed.to(x.dtype)
        x = torch.cat(
            (x + pos[visible_pos], self.mask_token.to(x.dtype) + pos[raster[:, num_visible:]]),
            dim=1,
        )
        return self.decoder(x, self.num_tokens - num_visible)

    @torch.no_grad()
    def targets(
        self, video: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstruction targets ``(B, N_masked, 3*t*p*p)`` of the masked tokens
        (docs/reference.md).

        The input is un-normalised to [0, 1]; each tubelet and channel is standardised by its own
        mean and unbiased std (+1e-6); with the frame-difference target the tubelet's second frame
        is replaced by (normalised frame 1 - normalised frame 0). ``masked``: the masked
        positions of each video, ascending (:meth:`token_order`), if at hand.
        """
        video = video.float()
        mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=video.device).view(1, 3, 1, 1, 1)
        pixels = video * std + mean
        p, t = self.patch_size, self.tubelet_size
        patches = rearrange(
            pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) p0 (p1 p2) c", p0=t, p1=p, p2=p
        )
        if self.normalize_target:
            flat = patches.flatten(2, 3)
            mu = flat.mean(dim=2, keepdim=True).unsqueeze(2)
            sigma = flat.var(dim=2, unbiased=True, keepdim=True).sqrt().unsqueeze(2)
            patches = (patches - mu) / (sigma + 1e-6)
        if self.frame_diff_target:
            patches = torch.stack((patches[:, :, 0], patches[:, :, 1] - patches[:, :, 0]), dim=2)
        flat = patches.flatten(2)
        if masked is None:
            return flat[mask].reshape(flat.shape[0], -1, flat.shape[-1])
        # the masked positions ascending, as boolean indexing takes them (no count read back)
        return flat.gather(1, masked[..., None].expand(-1, -1, flat.shape[-1]))

    def loss(
        self, pred: torch.Tensor, targets: torch.Tensor, *, diff_weight: float | None = None
    ) -> torch.Tensor:
        """Mean squared error; ``diff_weight`` w weighs the halves ``(1-w)*appearance + w*motion``.

        ``None`` (the reference's setting) is the plain MSE over all outputs, which equals
        ``0.5 * appearance + 0.5 * motion`` because both halves have the same size.
        """
        pred = pred.float()
        if diff_weight is None:
            return F.mse_loss(pred, targets)
        appearance, motion = self.loss_parts(pred, targets)
        return (1 - diff_weight) * appearance + diff_weight * motion

    def loss_parts(
        self, pred: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE of the appearance (``p0 = 0``) and the motion (``p0 = 1``) halves."""
        pred = pred.float().unflatten(-1, (self.tubelet_size, -1))
        targets = targets.unflatten(-1, (self.tubelet_size, -1))
        return F.mse_loss(pred[..., 0, :], targets[..., 0, :]), F.mse_loss(
            pred[..., 1:, :], targets[..., 1:, :]
        )

    def no_weight_decay(self) -> set[str]:
        """Exempt from weight decay besides 1-D tensors. The reference's pre-training exempts
        ``mask_token`` but, by an exact-name check, not the region tokens (docs/reference.md)."""
        return {"mask_token"}

    @property
    def num_layer_ids(self) -> int:
        return len(self.encoder.blocks) + 2

    def layer_id(self, param_name: str) -> int:
        return _layer_id(param_name, "encoder.", len(self.encoder.blocks))


def _mae(overrides: dict, **variant) -> MaskedLGIFormer:
    return build(MaskedLGIFormer, variant, overrides)


@register_model(kind="pretrain")
def mae_lgi_former_tiny(**overrides) -> MaskedLGIFormer:
    return _mae(overrides, embed_dim=256, num_heads=4)


@register_model(kind="pretrain")
def mae_lgi_former_small(**overrides) -> MaskedLGIFormer:
    return _mae(overrides, embed_dim=384, num_heads=6)


@register_model(kind="pretrain")
def mae_lgi_former_base(**overrides) -> MaskedLGIFormer:
    return _mae(overrides, embed_dim=512, num_heads=8)
