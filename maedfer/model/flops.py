"""Parameter and MAC counts (docs/design.md, docs/reference.md).

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (GMACs = FLOPs / 2 / 1e9). Its CPU
count of SDPA's fused kernel is 0 (torch 2.13), so attention is counted under the MATH backend,
where it appears as the two matmuls the reference counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as fixed positions are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def clip_shape(model: nn.Module) -> tuple[int, int, int, int]:
    """The ``(3, T, H, W)`` input the model was built for, from its config."""
    cfg = getattr(model, "config", {})
    size = cfg.get("img_size", 160)
    return (3, cfg.get("num_frames", 16), size, size)


@torch.no_grad()
def count_gmacs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> float:
    """GMACs of one forward pass on a single clip (batch 1), in eval mode.

    Args:
        model: a classifier taking ``(B, 3, T, H, W)``.
        input_shape: ``(3, T, H, W)``; default from the model's config.
    """
    shape = input_shape or clip_shape(model)
    device = next(model.parameters()).device
    video = torch.zeros(1, *shape, device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(video)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
