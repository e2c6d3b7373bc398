"""Loading official MAE-DFER state dicts into our modules (DESIGN.md §5, reference/*.json).

One table per source layout maps official keys to ours, as torchtune's ``convert_weights.py``
does: ``{}`` stands for a block index, a pattern ending in ``.`` maps every key below that prefix,
and ``None`` drops a key on purpose. Anything unknown, unused or mis-shaped is an error naming it.

Supported: an official fine-tuning state dict into ``lgi_former_*``; an official pre-training
state dict into ``mae_lgi_former_*`` (strict) or into ``lgi_former_*`` (the fine-tuning start:
the encoder is taken, the decoder, ``mask_token``, ``encoder_to_decoder`` and the encoder's final
``norm`` are dropped, ``fc_norm`` and the head stay freshly initialised); a VideoMAE ViT
fine-tuning state dict into ``vit_base``.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from maedfer.errors import MaedferError
from maedfer.model.lgi_former import LGIFormer
from maedfer.model.pretrain import MaskedLGIFormer
from maedfer.model.vit import VideoViT

# The LGI-Former encoder, relative to the official fine-tuning model (or to `encoder.` of the
# pre-training model) -> relative to our `encoder.`.
_LGI_ENCODER = {
    "lg_region_tokens": "region_tokens",
    "patch_embed.proj.": "patch_embed.proj.",
    "blocks.{}.first_attn_norm0.": "blocks.{}.intra_norm.",
    "blocks.{}.first_attn.": "blocks.{}.intra_attn.",
    "blocks.{}.second_attn_norm0.": "blocks.{}.inter_norm.",
    "blocks.{}.second_attn.": "blocks.{}.inter_attn.",
    "blocks.{}.third_attn_norm0.": "blocks.{}.cross_norm.",
    "blocks.{}.third_attn_norm1.": "blocks.{}.cross_context_norm.",
    "blocks.{}.third_attn.": "blocks.{}.cross_attn.",
    "blocks.{}.norm2.": "blocks.{}.ffn_norm.",
    "blocks.{}.mlp.": "blocks.{}.mlp.",
}

FINETUNE_TO_CLASSIFIER: dict[str, str | None] = {
    **{k: "encoder." + v for k, v in _LGI_ENCODER.items()},
    "fc_norm.": "fc_norm.",
    "head.": "head.",
}

PRETRAIN_TO_MAE: dict[str, str | None] = {
    **{"encoder." + k: "encoder." + v for k, v in _LGI_ENCODER.items()},
    "encoder.norm.": "encoder_norm.",
    "encoder_to_decoder.": "encoder_to_decoder.",
    "mask_token": "mask_token",
    "decoder.blocks.{}.": "decoder.blocks.{}.",
    "decoder.norm.": "decoder.norm.",
    "decoder.head.": "decoder.head.",
}

PRETRAIN_TO_CLASSIFIER: dict[str, str | None] = {
    **{"encoder." + k: "encoder." + v for k, v in _LGI_ENCODER.items()},
    "encoder.norm.": None,
    "encoder_to_decoder.": None,
    "mask_token": None,
    "decoder.": None,
}

VIDEOMAE_FINETUNE_TO_VIT: dict[str, str | None] = {
    "patch_embed.proj.": "patch_embed.proj.",
    "blocks.{}.": "blocks.{}.",
    "fc_norm.": "fc_norm.",
    "head.": "head.",
}


class OfficialCheckpointError(MaedferError):
    """An official state dict that does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_official` did: our keys loaded, official keys dropped by rule, and our
    keys left as initialised (``fc_norm`` and head when starting fine-tuning from pre-training)."""

    source_layout: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)


@functools.cache
def _compile(table_items: tuple[tuple[str, str | None], ...]) -> list:
    compiled = []
    for pattern, target in table_items:
        regex = re.escape(pattern).replace(r"\{\}", r"(\d+)")
        is_prefix = pattern.endswith(".")
        compiled.append(
            (re.compile("^" + regex + ("(.+)$" if is_prefix else "$")), is_prefix, target)
        )
    return compiled


def convert_key(key: str, table: Mapping[str, str | None]) -> tuple[bool, str | None]:
    """Map one official key. Returns (matched, our key, or None when dropped by rule)."""
    for regex, is_prefix, target in _compile(tuple(table.items())):
        match = regex.match(key)
        if match is None:
            continue
        if target is None:
            return True, None
        groups = match.groups()
        index, rest = (groups[:-1], groups[-1]) if is_prefix else (groups, "")
        return True, target.format(*index) + rest
    return False, None


def _source_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(("encoder.", "decoder.")) for k in state_dict):
        return "pretrain"
    return "finetune"


def _table_for(model: nn.Module, layout: str) -> tuple[dict, tuple[str, ...]]:
    """The key table, and the prefixes of our keys allowed to stay freshly initialised."""
    if isinstance(model, MaskedLGIFormer):
        if layout == "pretrain":
            return PRETRAIN_TO_MAE, ()
        raise OfficialCheckpointError(
            "a fine-tuning state dict has no decoder: it cannot initialise a pre-training model "
            "(load it into lgi_former_* instead)"
        )
    if isinstance(model, LGIFormer):
        if layout == "pretrain":
            return PRETRAIN_TO_CLASSIFIER, ("fc_norm.", "head.")
        return FINETUNE_TO_CLASSIFIER, ()
    if isinstance(model, VideoViT):
        if layout == "finetune":
            return VIDEOMAE_FINETUNE_TO_VIT, ()
        raise OfficialCheckpointError("only VideoMAE fine-tuning state dicts load into vit_base")
    raise OfficialCheckpointError(f"load_official does not know {type(model).__name__}")


def _listing(label: str, items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{label} ({len(items)}): {shown}{more}"


def load_official(model: nn.Module, state_dict: Mapping[str, torch.Tensor | Mapping]) -> LoadReport:
    """Load an official MAE-DFER (or VideoMAE ViT) state dict into ``model`` in place.

    Args:
        model: a model of :func:`maedfer.model.create_model`.
        state_dict: official keys to tensors, or a checkpoint ``{"model": state_dict}``.
    Returns:
        A :class:`LoadReport`.
    Raises:
        OfficialCheckpointError: naming every unexpected, missing or mis-shaped key.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    layout = _source_layout(state_dict)
    table, fresh_prefixes = _table_for(model, layout)
    ours = model.state_dict()
    report = LoadReport(source_layout=layout)
    converted: dict[str, torch.Tensor] = {}
    unexpected, mis_shaped = [], []
    for key, tensor in state_dict.items():
        matched, target = convert_key(key, table)
        if matched and target is None:
            report.dropped.append(key)
            continue
        if not matched or target not in ours:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(ours[target].shape):
            mis_shaped.append(
                f"{key} (checkpoint {list(tensor.shape)} vs model {list(ours[target].shape)})"
            )
            continue
        converted[target] = tensor
    missing = [k for k in ours if k not in converted and not k.startswith(fresh_prefixes)]
    # Keys whose tensor was mis-shaped are reported once, as mis-shaped.
    shaped_targets = {convert_key(m.split(" ")[0], table)[1] for m in mis_shaped}
    missing = [k for k in missing if k not in shaped_targets]
    if unexpected or missing or mis_shaped:
        parts = [
            _listing("unexpected", unexpected) if unexpected else "",
            _listing("missing", missing) if missing else "",
            _listing("shape mismatch", mis_shaped) if mis_shaped else "",
        ]
        raise OfficialCheckpointError(
            f"official {layout} state dict does not fit {type(model).__name__}: "
            + "; ".join(p for p in parts if p)
        )
    with torch.no_grad():
        for key, tensor in converted.items():
            ours[key].copy_(tensor)
    report.loaded = sorted(converted)
    report.fresh = sorted(k for k in ours if k not in converted)
    return report


# ---------------------------------------------------------------- a fine-tuned checkpoint's model

#: What the official fine-tuning scripts train (``vit_base_dim512_no_depth_patch16_160``); the
#: fields a checkpoint's tensors do not show come from here.
OFFICIAL_CLASSIFIER = "lgi_former_base"
_BASE_WIDTH, _BASE_HEADS = 512, 8
# Run options the official checkpoint's saved ``args`` may hold -> our model field.
_ARGS_FIELDS = {"input_size": "img_size", "num_frames": "num_frames",
                "lg_region_size": "region_size"}  # fmt: skip


def official_classifier_config(
    state_dict: Mapping[str, torch.Tensor],
    *,
    args: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> tuple[str, dict[str, object]]:
    """The classifier an official fine-tuning state dict belongs to: ``(model name, overrides)``.

    The tensors give the width, depth, MLP ratio, patch and tubelet sizes, the q/v biases and
    ``num_classes`` (the head's rows). ``img_size``, ``num_frames`` and ``region_size`` leave no
    trace but the number of region tokens: they come from the checkpoint's saved run ``args``
    (``input_size``, ``num_frames``, ``lg_region_size``) where present, else from
    ``lgi_former_base``, and must give as many regions as the checkpoint holds. The head count
    leaves none at all: the official width 512 means 8 heads; another width needs ``num_heads``
    in ``overrides``. ``overrides`` win over everything inferred.

    Example: ``lg_region_tokens`` ``[8, 512]``, ``patch_embed.proj.weight`` ``[512, 3, 2, 16,
    16]``, 16 blocks, ``head.weight`` ``[7, 512]``: ``lgi_former_base`` with 7 classes; its
    160 px, 16 frames give a token grid (8, 10, 10), cut by regions (2, 5, 10) into
    4 × 2 × 1 = 8 regions, as held.

    Raises:
        OfficialCheckpointError: not a fine-tuned LGI-Former state dict, a head count that
            cannot be told, or a region count the input size and frames do not give.
    """
    given = dict(overrides or {})
    if any(k.startswith(("encoder.", "decoder.")) for k in state_dict):
        raise OfficialCheckpointError(
            "this is an official pre-training state dict (encoder./decoder. keys); a fine-tuned "
            "classifier is needed (or fine-tune from it with finetune --init)"
        )
    needed = ("lg_region_tokens", "patch_embed.proj.weight", "head.weight",
              "blocks.0.mlp.fc1.weight")  # fmt: skip
    absent = [k for k in needed if k not in state_dict]
    if absent:
        raise OfficialCheckpointError(
            f"not an official MAE-DFER fine-tuned state dict: no {', '.join(absent)} "
            "(expected the layout of the released fine-tuned checkpoints)"
        )
    width, _, tubelet, patch, _ = state_dict["patch_embed.proj.weight"].shape
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    config: dict[str, object] = {
        "embed_dim": int(width), "depth": len(blocks), "patch_size": int(patch),
        "tubelet_size": int(tubelet), "num_classes": int(state_dict["head.weight"].shape[0]),
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "qkv_bias": "blocks.0.first_attn.q_bias" in state_dict,
    }  # fmt: skip
    for arg, name in _ARGS_FIELDS.items():
        if args and args.get(arg) is not None:
            value = args[arg]
            config[name] = tuple(int(v) for v in value) if name == "region_size" else int(value)
    if width == _BASE_WIDTH:
        config["num_heads"] = _BASE_HEADS
    elif "num_heads" not in given:
        raise OfficialCheckpointError(
            f"the weights do not tell the number of attention heads for width {width} (the "
            f"official width {_BASE_WIDTH} has {_BASE_HEADS}); give it, e.g. --set num_heads=N"
        )
    config.update(given)
    defaults = inspect.signature(LGIFormer).parameters  # what lgi_former_base leaves as is
    size, frames, region = (config.get(k, defaults[k].default)
                            for k in ("img_size", "num_frames", "region_size"))  # fmt: skip
    grid = (int(frames) // int(config["tubelet_size"]), int(size) // int(config["patch_size"]),
            int(size) // int(config["patch_size"]))  # fmt: skip
    regions = 1
    for g, r in zip(grid, region, strict=True):
        regions *= g // int(r)
    held = int(state_dict["lg_region_tokens"].shape[0])
    if held != regions:
        raise OfficialCheckpointError(
            f"the checkpoint holds {held} region tokens but img_size {size}, num_frames {frames} "
            f"and region_size {tuple(region)} give {regions}; give the input it was trained on, "
            "e.g. --set img_size=160 --set num_frames=16"
        )
    return OFFICIAL_CLASSIFIER, config
