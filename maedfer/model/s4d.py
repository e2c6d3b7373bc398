"""S4D (UniLearn): a VideoMAE ViT-B with mixture-of-adapter-experts blocks and two heads.

Chen et al., "Static for Dynamic: Towards a Deeper Understanding of Dynamic Facial Expressions
Using Static Expression Data", IEEE TAC 2025 (arXiv 2409.06154, first titled "UniLearn");
code: https://github.com/MSA-LMC/S4D (``finetune/s4d/videomae.py``,
``VisionTransformerMoE`` with ``moe_type=moe_adapters``, as ``finetune/run.sh`` runs it).

The blocks from ``moe_start`` on add a mixture of small expert MLPs to the FFN:
``x + DropPath(MLP(LN(x)) + MoE(LN(x)))``. A noisy top-k router picks ``top_k`` experts per
token (logits plus Gaussian noise scaled by a learned softplus, then softmax over the chosen);
each expert takes at most ``capacity`` tokens per batch (``int(B * N * top_k / experts *
capacity_factor)``, the first ones in token order: the rest get no expert output). The model was
fine-tuned on videos and still images together: the video head classifies clips, the image head
(``image_head``, the released ``head.image``) single frames, which the tubelet embedding
repeats over the tubelet's frames and places at the first token-frame's positions.

Two facts of the authors' code that this model keeps by default: the router adds its noise in
evaluation too (outputs depend on the global torch RNG; ``router_noise="train"`` turns it off
outside training), and the capacity makes a clip's output depend on the batch it is in.

Released layout it loads (:data:`FINETUNE`): the fine-tuned classifier, whose keys are ours
but for ``head.video`` -> ``head`` and ``head.image`` -> ``image_head``.

Documented in docs/models.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from maedfer.model.layers import (
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

FINETUNE = Layout(
    name="s4d-finetune",
    description="an S4D fine-tuned classifier (VisionTransformerMoE, moe_adapters)",
    table={
        "patch_embed.proj.": "patch_embed.proj.",
        "blocks.{}.": "blocks.{}.",
        "fc_norm.": "fc_norm.",
        "head.video.": "head.",
        "head.image.": "image_head.",
    },
    markers=("head.video.weight", "blocks.0.attn.qkv.weight"),
    absent=("encoder.",),
    fits="s4d_*",
)
LAYOUTS = (FINETUNE,)
RouterNoise = Literal["always", "train"]


class NoisyTopKRouter(nn.Module):
    """Expert gates of each token: ``(..., C) -> (gates (..., E), chosen experts (..., k))``;
    a gate is the softmax over the chosen experts' (noisy) logits, 0 elsewhere."""

    def __init__(self, dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.topkroute_linear = nn.Linear(dim, num_experts)
        self.noise_linear = nn.Linear(dim, num_experts)

    def forward(
        self, x: torch.Tensor, *, noise: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(gates, chosen, logits)``; ``logits`` (noisy when ``noise``) feed the
        load-balancing loss."""
        logits = self.topkroute_linear(x)
        if noise:
            scale = F.softplus(self.noise_linear(x))
            logits = logits + torch.randn_like(logits) * scale
        top, chosen = logits.topk(self.top_k, dim=-1)
        sparse = torch.full_like(logits, float("-inf")).scatter(-1, chosen, top)
        return sparse.softmax(-1), chosen, logits


def _exporting() -> bool:
    return bool(
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


class MixtureOfAdapters(nn.Module):
    """Top-k routed expert MLPs with a per-expert capacity (S4D's ``SparseMoEWithCapacity``).

    Eager mode runs each expert on its tokens only, as the authors do; under ``torch.export``
    and ONNX export every expert runs on every token and the gates of tokens it did not take
    are zero (same values, no data-dependent shapes).
    """

    def __init__(
        self, dim: int, hidden: int, *, num_experts: int, top_k: int, capacity_factor: float
    ) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.router = NoisyTopKRouter(dim, num_experts, top_k)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))
        self.balance: torch.Tensor | None = None  # the last training batch's balancing loss

    def forward(self, x: torch.Tensor, *, noise: bool) -> torch.Tensor:
        batch, length, dim = x.shape
        gates, chosen, logits = self.router(x, noise=noise)
        if self.training and torch.is_grad_enabled():
            self.balance = self._balance(chosen, logits)
        flat, gates, chosen = (
            x.reshape(-1, dim),
            gates.reshape(-1, self.num_experts),
            chosen.reshape(-1, self.top_k),
        )
        out = torch.zeros_like(flat)
        if _exporting():
            # the capacity from the traced token count (a Python int would freeze the batch)
            tokens = torch.ones_like(flat[:, 0], dtype=torch.float64).sum()
            capacity = (tokens * self.top_k / self.num_experts * self.capacity_factor).floor()
            taken = (chosen.unsqueeze(-1) == torch.arange(self.num_experts, device=x.device)).any(1)
            taken = taken & (taken.long().cumsum(0) <= capacity)  # (tokens, experts)
            weights = gates * taken.to(gates.dtype)
            for e, expert in enumerate(self.experts):
                out = out + expert(flat) * weights[:, e : e + 1]
            return out.view(batch, length, dim)
        capacity = int(batch * length * self.top_k / self.num_experts * self.capacity_factor)
        for e, expert in enumerate(self.experts):
            rows = (chosen == e).any(-1).nonzero().squeeze(-1)[:capacity]
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * gates[rows, e : e + 1])
            elif self.training:  # an expert with no token still joins the graph (adds 0): DDP
                out = out + expert(flat[:0]).sum()  # reduces its gradients (zeros) all the same
        return out.view(batch, length, dim)

    def _balance(self, chosen: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The authors' load-balancing term: the share of tokens routed to each expert times the
        mean of its (noisy) router logit, averaged, times experts squared."""
        routed = F.one_hot(chosen, self.num_experts).amax(-2).float().mean(-2)
        return (routed * logits.mean(-2)).mean() * self.num_experts**2


class MoEAdapterBlock(nn.Module):
    """A ViT block whose FFN output gains the mixture of adapters' (S4D's
    ``BlockMoEAdapters``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        num_experts: int,
        top_k: int,
        capacity_factor: float,
        expert_ratio: float,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = FusedSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.moe_layer = MixtureOfAdapters(
            dim,
            int(dim * expert_ratio),
            num_experts=num_experts,
            top_k=top_k,
            capacity_factor=capacity_factor,
        )
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, *, noise: bool) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        normed = self.norm2(x)
        return x + self.drop_path(self.mlp(normed) + self.moe_layer(normed, noise=noise))


class S4DViT(nn.Module):
    """S4D classifier: ``forward(video (B, 3, T, H, W)) -> logits (B, num_classes)``; a batch of
    images ``(B, 3, H, W)`` goes to the image head.

    Args:
        num_classes: classes of the video head (0: no head).
        num_image_classes: classes of the image head (0: none; the released models: 7,
            AffectNet-7).
        embed_dim, depth, num_heads, mlp_ratio: the ViT's size.
        moe_start: the first block with the mixture of adapters (it runs to the last).
        num_experts, top_k, capacity_factor: the mixture's experts, experts per token, and
            the capacity factor.
        expert_ratio: an expert's hidden width / embed_dim.
        router_noise: ``always`` (the authors': noisy routing in evaluation too) or ``train``.
        aux_loss_weight: weight of the load-balancing loss added in fine-tuning (the authors'
            ``--aux_loss_coeff``).
        img_size, patch_size, tubelet_size, num_frames: the input and its tubelets.
        drop_path_rate: stochastic depth of the last block (linear ramp from 0).
        qkv_bias: learnable q and v biases.
        init_scale: multiplier of the heads' initial weights and bias.
    """

    official_layouts = LAYOUTS

    def __init__(
        self,
        *,
        num_classes: int = 7,
        num_image_classes: int = 0,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        moe_start: int = 6,
        num_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float = 1.0,
        expert_ratio: float = 0.25,
        router_noise: RouterNoise = "always",
        aux_loss_weight: float = 1e-3,
        img_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        drop_path_rate: float = 0.1,
        qkv_bias: bool = True,
        init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        if router_noise not in ("always", "train"):
            raise ValueError(f"router_noise ({router_noise!r}) must be 'always' or 'train'")
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k ({top_k}) must be in 1..num_experts ({num_experts})")
        self.num_classes = num_classes
        self.router_noise = router_noise
        self.aux_loss_weight = aux_loss_weight
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
        self.blocks = nn.ModuleList()
        for i, dpr in enumerate(drop_path_rates(drop_path_rate, depth)):
            common = {"mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias, "drop_path": dpr}
            self.blocks.append(
                Block(embed_dim, num_heads, **common)
                if i < moe_start
                else MoEAdapterBlock(
                    embed_dim,
                    num_heads,
                    **common,
                    num_experts=num_experts,
                    top_k=top_k,
                    capacity_factor=capacity_factor,
                    expert_ratio=expert_ratio,
                )
            )
        self.fc_norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.image_head = nn.Linear(embed_dim, num_image_classes) if num_image_classes > 0 else None
        self.apply(init_finetune_weights)
        for head in (self.head, self.image_head):
            if isinstance(head, nn.Linear):
                head.weight.data.mul_(init_scale)
                head.bias.data.mul_(init_scale)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.training or self.router_noise == "always"
        for block in self.blocks:
            x = block(x, noise=noise) if isinstance(block, MoEAdapterBlock) else block(x)
        return self.fc_norm(x.mean(1))

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video)
        return self._run(x + self.pos_embed.to(x.dtype))

    def forward_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> features: the image repeated over one tubelet, at the first
        token-frame's positions (the authors' ``PadIm2Video`` and position interpolation)."""
        tubelet = self.patch_embed.proj.kernel_size[0]
        clip = images.unsqueeze(2).expand(-1, -1, tubelet, -1, -1)
        x = self.patch_embed.proj(clip).flatten(2).transpose(1, 2)
        return self._run(x + self.pos_embed[: x.shape[1]].to(x.dtype))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() == 4:
            if self.image_head is None:
                raise ValueError("this model has no image head (num_image_classes 0)")
            return self.image_head(self.forward_image_features(video))
        return self.forward_head(self.forward_features(video))

    def aux_loss(self) -> torch.Tensor | None:
        """The weighted load-balancing loss of the last training forward pass (None outside
        training or with ``aux_loss_weight`` 0)."""
        terms = [
            b.moe_layer.balance
            for b in self.blocks
            if isinstance(b, MoEAdapterBlock) and b.moe_layer.balance is not None
        ]
        if not terms or not self.aux_loss_weight:
            return None
        for block in self.blocks:
            if isinstance(block, MoEAdapterBlock):
                block.moe_layer.balance = None  # each forward pass's term is added once
        return torch.stack(terms).sum() * self.aux_loss_weight

    def no_weight_decay(self) -> set[str]:
        return set()

    @property
    def num_layer_ids(self) -> int:
        return len(self.blocks) + 2

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("image_head."):
            return len(self.blocks) + 1
        return _layer_id(param_name, "", len(self.blocks))


_BLOCK = re.compile(r"blocks\.(\d+)\.")
_EXPERT = re.compile(r"blocks\.\d+\.moe_layer\.experts\.(\d+)\.")


def official_classifier(
    state: Mapping[str, torch.Tensor], args: Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """The registered model and config of an S4D fine-tuned state dict, or ``None`` when
    ``state`` is not one. The tensors give the sizes, the MoE blocks, experts and both heads'
    classes; ``top_k`` and ``capacity_factor`` leave no trace and come from the saved ``args``
    where present, else ``finetune/run.sh``'s (2, 1.0)."""
    if not FINETUNE.matches(state.keys()):
        return None
    width, _, tubelet, patch, _ = state["patch_embed.proj.weight"].shape
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    moe = [i for i in blocks if f"blocks.{i}.moe_layer.router.topkroute_linear.weight" in state]
    experts = {int(m.group(1)) for k in state if (m := _EXPERT.match(k))}
    config: dict[str, Any] = {
        "embed_dim": int(width),
        "num_heads": heads_of(int(width)),
        "depth": len(blocks),
        "patch_size": int(patch),
        "tubelet_size": int(tubelet),
        "num_classes": int(state["head.video.weight"].shape[0]),
        "num_image_classes": int(state["head.image.weight"].shape[0])
        if "head.image.weight" in state
        else 0,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "moe_start": moe[0] if moe else len(blocks),
        "num_experts": len(experts) or 1,
        "qkv_bias": "blocks.0.attn.q_bias" in state,
    }
    if moe:
        hidden = state[f"blocks.{moe[0]}.moe_layer.experts.0.fc1.weight"].shape[0]
        config["expert_ratio"] = hidden / width
    for arg, name in (
        ("top_k", "top_k"),
        ("capacity_factor", "capacity_factor"),
        ("input_size", "img_size"),
        ("num_frames", "num_frames"),
    ):
        if args.get(arg) is not None:
            config[name] = args[arg] if name == "capacity_factor" else int(args[arg])
    return "s4d_base", config


_UNILEARN = "UniLearn (Chen et al., arXiv 2409.06154 v1, abstract): WAR only"
PUBLISHED = {
    "dfew": Published(None, 76.68, "as published", _UNILEARN),
    "ferv39k": Published(None, 53.65, "fixed test split", _UNILEARN),
    "mafw": Published(None, 58.44, "as published", _UNILEARN),
}
_INPUTS = InputContract(
    num_frames=16,
    img_size=160,
    stride=4,
    face_crop="the datasets' face crops (DFEW clip_224, MAFW frames_crop_align_224), as MAE-DFER",
    source="S4D (MSA-LMC/S4D finetune/run.sh): 16 frames, sampling rate 4, 160 px",
)


@register_model(inputs=_INPUTS, published=PUBLISHED)
def s4d_base(**overrides) -> S4DViT:
    return build(S4DViT, {}, overrides)
