"""Where the evidence for a window's top class lies, over the model's token grid.

``Predictor.predict(video, explain=True)`` (``maedfer predict --explain``, docs/inference.md)
computes, with the same forward pass that gives the probabilities:

- **Grad-CAM on tokens** (Selvaraju et al. 2017, with the tokens entering the model's last block
  in place of a CNN's last feature map): the gradient of the top class's logit with respect to
  those tokens, averaged over the tokens into one weight per channel; a token's relevance is
  the ReLU of its channels, weighted so, minus what the same token holds for a blank window
  (all zeros after normalisation: for a model fed clips minus their mean frame, a face that
  does not move; otherwise a grey clip). A transformer's tokens all carry their position
  embedding and the embedding's bias, which plain Grad-CAM counts as evidence wherever they
  align with the weights; measured from the blank window's tokens, only what the window
  itself brings counts. The map is ``(T', H', W')``, the token grid (8×10×10 for the 160 px,
  16-frame official model), scaled to a maximum of 1 per window.
- **the representative tokens' attention** (LGI-Former only; a ViT has no such tokens): in the
  last block's intra-region attention, how each region's representative token spreads its
  attention over the region's tokens, averaged over heads (each region's map sums to 1).
- **which frames mattered**: the Grad-CAM mass of each token-frame (a tubelet of
  ``tubelet_size`` sampled frames), as shares summing to 1.

A map can be all zero: no token raises the class above what a blank window gives (its frame
curve is then all zero too, and ``peak_frame`` empty). Windows without a face get NaN maps.

How far to trust the maps (measured, docs/inference.md "Explanations"): in an LGI-Former every
block's cross-attention hands each local token the representative tokens' summary of the whole
clip, so the tokens entering the last block hold much that is not their own patch. On a
one-block model trained on the demo's mouth-open class, the mouth holds 61-84 % of the
relevance of a clip where only the mouth moves (three training seeds); on the demo's two-block
classifier the maps are weaker (the mouth's 4 of 16 tokens hold 0-64 % on its mouth-open clips,
all zero on two of six) and the brows hold 52-100 % on its brow-raise clips. The last block's
input is used all the same because it is the deepest place where every token still stands for
a patch and a time: after the last block, region pooling keeps only the representative tokens.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maedfer.errors import MaedferError
from maedfer.model.lgi_former import LGIFormer


@dataclass
class Explanation:
    """The relevance maps of a :class:`~maedfer.inference.Prediction`'s windows.

    Attributes:
        grid: ``(T', H', W')`` the token grid; tubelet: sampled frames per token-frame; patch:
            pixels per token side in the aligned crop.
        class_index: ``(W,)`` the class explained (the window's top class; -1 without a face).
        gradcam: ``(W, T', H', W')`` float32 in [0, 1], NaN without a face.
        attention: ``(W, T', H', W')`` float32, each region summing to 1; None for models
            without representative tokens.
        frame_relevance: ``(W, T')`` float32, each row summing to 1 (NaN without a face).
    """

    grid: tuple[int, int, int]
    tubelet: int
    patch: int
    class_index: np.ndarray
    gradcam: np.ndarray
    attention: np.ndarray | None
    frame_relevance: np.ndarray

    def frame_of_token_frame(self, indices: np.ndarray, k: int) -> int:
        """The first video frame of token-frame ``k`` of a window sampling ``indices``."""
        return int(indices[min(k * self.tubelet, len(indices) - 1)])


def _site(model: nn.Module) -> tuple[nn.Module, tuple[int, int, int]]:
    """The last block (whose input is explained) and the token grid.

    LGI-Former; or any encoder with ``blocks`` and a tubelet ``patch_embed`` whose last block
    takes the grid's tokens in raster order (the ViTs of the lineage: VideoMAE, MARLIN,
    HiCMAE, S4D), checked when the tokens arrive (:func:`_to_raster`).
    """
    if isinstance(model, LGIFormer):
        return model.encoder.blocks[-1], model.encoder.patch_embed.grid
    blocks, embed = getattr(model, "blocks", None), getattr(model, "patch_embed", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) and hasattr(embed, "grid"):
        return blocks[-1], tuple(embed.grid)
    raise MaedferError(
        f"--explain knows LGI-Former and ViT-style encoders (blocks over the "
        f"token grid); {type(model).__name__} is neither"
    )


def _to_raster(model: nn.Module, tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """The local tokens of the last block's input, ``(B, N, ...)`` in raster order."""
    if isinstance(model, LGIFormer):
        local = tokens[:, 1:]  # (B * n, L, ...): region-major, representative token first
        local = local.reshape(batch, -1, *local.shape[2:])
        return local[:, model.encoder.region_rank]
    _, grid = _site(model)
    if tokens.dim() != 3 or tokens.shape[1] != grid[0] * grid[1] * grid[2]:
        raise MaedferError(
            f"--explain: {type(model).__name__}'s last block takes "
            f"{tuple(tokens.shape)}, not the tokens of the {grid} grid"
        )
    return tokens


def _rep_attention(model: LGIFormer, normed: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B, N)`` raster: each representative token's attention over its region's tokens."""
    attn = model.encoder.blocks[-1].intra_attn
    heads = attn.num_heads
    rows, seq, dim = normed.shape
    q = F.linear(normed[:, :1], attn.q.weight, attn.q_bias)  # the representative token only
    k = F.linear(normed, attn.kv.weight[:dim])  # keys carry no bias (VideoMAE convention)
    q = q.view(rows, 1, heads, -1).transpose(1, 2)
    k = k.view(rows, seq, heads, -1).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    local = weights[:, :, 0, 1:].mean(1)  # (B * n, L): heads averaged, itself left out
    local = local / local.sum(-1, keepdim=True).clamp_min(1e-12)
    return local.reshape(batch, -1)[:, model.encoder.region_rank]


_BLANK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {shape: tokens}


def blank_tokens(
    model: nn.Module, block: nn.Module, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """The last block's input for one blank window (zeros), computed once per model."""
    cache = _BLANK.setdefault(model, {})
    key = (tuple(shape), str(device))
    if key not in cache:
        seen: dict[str, torch.Tensor] = {}

        def take(module: nn.Module, args: tuple) -> None:
            seen["tokens"] = args[0].detach()

        hook = block.register_forward_pre_hook(take)
        try:
            with torch.inference_mode(False), torch.no_grad():
                model(torch.zeros((1, *shape), device=device))
        finally:
            hook.remove()
        cache[key] = seen["tokens"]
    return cache[key]


def explain_batch(
    model: nn.Module, video: torch.Tensor, class_index: Sequence[int] | None = None
) -> dict[str, Any]:
    """Probabilities and relevance maps of a batch of windows.

    Args:
        model: an LGI-Former or ViT classifier in eval mode.
        video: ``(B, 3, T, H, W)`` model inputs.
        class_index: the class to explain per window (default: the top class).

    Returns:
        ``probs`` ``(B, C)``, ``class_index`` ``(B,)``, ``gradcam`` and ``attention`` (None
        for a ViT) ``(B, T', H', W')`` numpy float32.
    """
    block, grid = _site(model)
    batch = video.shape[0]
    seen: dict[str, torch.Tensor] = {}

    def take_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = args[0].detach().requires_grad_(True)  # a leaf: its gradient is all we need
        seen["tokens"] = x
        return (x, *args[1:]), kwargs

    def take_normed(module: nn.Module, args: tuple) -> None:
        seen["normed"] = args[0].detach()

    hooks = [block.register_forward_pre_hook(take_input, with_kwargs=True)]
    if isinstance(model, LGIFormer):
        hooks.append(block.intra_attn.register_forward_pre_hook(take_normed))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            video = video.clone()  # not an inference tensor: autograd may save it
            logits = model(video).float()
            chosen = (
                logits.argmax(1)
                if class_index is None
                else torch.as_tensor(list(class_index), device=logits.device)
            )
            score = logits.gather(1, chosen[:, None]).sum()
            (grad,) = torch.autograd.grad(score, seen["tokens"])
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        blank = blank_tokens(model, block, tuple(video.shape[1:]), video.device)
        acts = _to_raster(model, seen["tokens"].detach(), batch).float()  # (B, N, C)
        acts = acts - _to_raster(model, blank, 1).float()
        grads = _to_raster(model, grad, batch).float()
        weights = grads.mean(1, keepdim=True)  # one weight per channel (Grad-CAM)
        cam = torch.relu((acts * weights).sum(-1))  # (B, N)
        cam = cam / cam.amax(1, keepdim=True).clamp_min(1e-12)
        attention = None
        if "normed" in seen:
            attention = _rep_attention(model, seen["normed"], batch).reshape(batch, *grid)
            attention = attention.cpu().numpy().astype(np.float32)
        probs = torch.softmax(logits.detach(), dim=1).cpu().numpy()
    return {
        "probs": probs,
        "class_index": chosen.cpu().numpy(),
        "gradcam": cam.reshape(batch, *grid).cpu().numpy().astype(np.float32),
        "attention": attention,
    }


def frame_relevance(gradcam: np.ndarray) -> np.ndarray:
    """``(..., T')`` the share of each token-frame in the Grad-CAM mass of ``(..., T', H', W')``
    maps (all zero where a map is)."""
    mass = np.nan_to_num(gradcam).sum(axis=(-2, -1)).astype(np.float64)
    total = mass.sum(-1, keepdims=True)
    out = mass / np.where(total > 0, total, 1)  # an all-zero map: an all-zero curve
    return np.where(np.isnan(gradcam).any(axis=(-2, -1)), np.nan, out).astype(np.float32)


def build_explanation(model: nn.Module, maps: Sequence[dict[str, Any] | None]) -> Explanation:
    """The :class:`Explanation` of a prediction's windows from the per-window maps of
    :func:`explain_batch` (None for windows without a face)."""
    _, grid = _site(model)
    embed = model.encoder.patch_embed if isinstance(model, LGIFormer) else model.patch_embed
    tubelet = int(embed.proj.kernel_size[0])
    patch = int(embed.proj.kernel_size[1])
    count = len(maps)
    gradcam = np.full((count, *grid), np.nan, np.float32)
    has_attention = isinstance(model, LGIFormer)
    attention = np.full((count, *grid), np.nan, np.float32) if has_attention else None
    index = np.full(count, -1, np.int64)
    for w, item in enumerate(maps):
        if item is None:
            continue
        gradcam[w] = item["gradcam"]
        index[w] = int(item["class_index"])
        if attention is not None:
            attention[w] = item["attention"]
    return Explanation(
        grid=tuple(grid),
        tubelet=tubelet,
        patch=patch,
        class_index=index,
        gradcam=gradcam,
        attention=attention,
        frame_relevance=frame_relevance(gradcam),
    )


__all__ = ["Explanation", "build_explanation", "explain_batch", "frame_relevance"]
