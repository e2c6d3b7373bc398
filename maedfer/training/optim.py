"""AdamW with the reference's parameter groups (docs/recipe.md; docs/runs.md).

Rules, as in MAE-DFER's ``optim_factory.get_parameter_groups``:

- no weight decay for every 1-D tensor, every ``*.bias`` and the names the model lists in
  ``no_weight_decay()`` (exact names: the classifier lists ``encoder.region_tokens``, the
  pre-training model only ``mask_token``, docs/reference.md);
- layer-wise lr decay (fine-tuning): a parameter of layer ``i`` (``model.layer_id``) gets the
  lr scale ``decay ** (num_layer_ids - 1 - i)``; with 16 blocks, 18 layer ids and decay 0.75 the
  patch embedding gets ``0.75**17 ≈ 0.0075``, block 0 ``0.75**16``, block 15 ``0.75``, and the
  head, ``fc_norm`` and the region tokens ``1`` (docs/reference.md);
- frozen parameters (``requires_grad=False``) are left out;
- the peak lr is ``base lr × total batch / 256`` (:func:`scaled_lr`), total batch = per-device
  batch × gradient-accumulation steps × processes.

Each group carries ``lr_scale``; the schedule sets ``lr = schedule value × lr_scale``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from maedfer.errors import MaedferError

REFERENCE_BATCH = 256


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """``base_lr × total_batch / 256``, e.g. 1e-3 at total batch 96 -> 3.75e-4."""
    if total_batch < 1:
        raise MaedferError(f"total batch ({total_batch}) must be at least 1")
    return base_lr * total_batch / REFERENCE_BATCH


def unwrap(model: nn.Module) -> Any:
    """The module inside a DDP (or ``torch.compile``) wrapper, so names match the model's own:
    a model of the registry, with its API (``config``, ``model_name``, ``layer_id``, ...)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def layer_scales(num_layers: int, decay: float | None) -> list[float]:
    """lr scale of each layer id: ``decay ** (num_layers - 1 - i)``; all 1 without decay."""
    if decay is None or decay == 1.0:
        return [1.0] * num_layers
    if not 0.0 < decay <= 1.0:
        raise MaedferError(f"layer decay ({decay}) must be in (0, 1]")
    return [decay ** (num_layers - 1 - i) for i in range(num_layers)]


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float | None = None,
    skip: Iterable[str] | None = None,
) -> list[dict]:
    """AdamW parameter groups of ``model`` (rules in the module docstring).

    Args:
        model: a model of :func:`maedfer.model.create_model` (or a DDP wrapper of one).
        weight_decay: decay of the decaying groups.
        layer_decay: layer-wise lr decay factor; ``None`` for none (pre-training).
        skip: names exempt from weight decay; default ``model.no_weight_decay()``.
    Returns:
        Groups ordered by (layer id, decay first), each with ``params``, ``weight_decay``,
        ``lr_scale`` and ``group`` (a name such as ``layer_3_decay``).
    """
    net = unwrap(model)
    skip = set(skip if skip is not None else getattr(net, "no_weight_decay", set)())
    use_layers = layer_decay is not None
    scales = layer_scales(net.num_layer_ids, layer_decay) if use_layers else [1.0]
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        layer = net.layer_id(name) if use_layers else 0
        key = (layer, no_decay)
        if key not in groups:
            label = f"layer_{layer}_" if use_layers else ""
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scales[layer],
                "group": label + ("no_decay" if no_decay else "decay"),
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def create_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: float | None = None,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; each group starts at ``lr × lr_scale``.

    Pre-training uses betas (0.9, 0.95) and no layer decay; fine-tuning (0.9, 0.999) and 0.75.
    ``fused`` (default: when every parameter is on CUDA) runs the update as one kernel.
    """
    groups = param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, weight_decay=0.0, fused=fused or None
    )
