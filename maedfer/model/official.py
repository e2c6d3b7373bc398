"""Loading released state dicts of the MAE-DFER lineage into our modules (reference/*.json).

Every model class lists the released layouts it loads (``official_layouts``, each a
:class:`maedfer.model.layout.Layout` defined in the model's own module); :func:`load_official`
recognises which one a state dict is in and loads it strictly. MAE-DFER's own layouts are here:
an official fine-tuning state dict into ``lgi_former_*``; an official pre-training state dict
into ``mae_lgi_former_*`` (strict) or into ``lgi_former_*`` (the fine-tuning start: the encoder
is taken, the decoder, ``mask_token``, ``encoder_to_decoder`` and the encoder's final ``norm``
are dropped, ``fc_norm`` and the head stay freshly initialised). VideoMAE, MARLIN, SVFAP, S4D
and HiCMAE layouts live in :mod:`maedfer.model.videomae`, :mod:`~maedfer.model.marlin`,
:mod:`~maedfer.model.svfap`, :mod:`~maedfer.model.s4d` and :mod:`~maedfer.model.hicmae`.

:func:`official_classifier` tells which registered classifier a released fine-tuned state dict
belongs to (and its config), for ``test``, ``predict`` and ``export``;
:func:`build_official_classifier` builds it and loads the weights (the one builder evaluation
and inference share, docs/design.md).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maedfer.errors import MaedferError
from maedfer.model import hicmae, marlin, s4d, svfap, videomae
from maedfer.model.layout import (
    Layout,
    LoadReport,
    OfficialCheckpointError,
    convert_key,
    load_layout,
)
from maedfer.model.lgi_former import LGIFormer
from maedfer.model.pretrain import MaskedLGIFormer
from maedfer.model.registry import create_model, model_info

__all__ = [
    "LoadReport",
    "OfficialCheckpointError",
    "build_official_classifier",
    "convert_key",
    "load_official",
    "official_classifier",
    "official_classifier_config",
    "official_state",
]

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

VIDEOMAE_FINETUNE_TO_VIT: dict[str, str | None] = dict(videomae.FINETUNE.table)

MAE_DFER_FINETUNE = Layout(
    name="finetune",
    description="an official MAE-DFER fine-tuning state dict",
    table=FINETUNE_TO_CLASSIFIER,
    markers=("lg_region_tokens",),
    absent=("encoder.",),
    fits="lgi_former_*",
)
MAE_DFER_PRETRAIN = Layout(
    name="pretrain",
    description="an official MAE-DFER pre-training state dict",
    table=PRETRAIN_TO_MAE,
    markers=("encoder.lg_region_tokens",),
    fits="mae_lgi_former_*",
)
MAE_DFER_PRETRAIN_TO_CLASSIFIER = Layout(
    name="pretrain",
    description="an official MAE-DFER pre-training state dict",
    table=PRETRAIN_TO_CLASSIFIER,
    markers=("encoder.lg_region_tokens",),
    fresh=("fc_norm.", "head."),
    fits="lgi_former_* (fine-tuning start), mae_lgi_former_*",
)
LGIFormer.official_layouts = (MAE_DFER_FINETUNE, MAE_DFER_PRETRAIN_TO_CLASSIFIER)
MaskedLGIFormer.official_layouts = (MAE_DFER_PRETRAIN,)

#: Every released layout, most specific first: how a state dict is recognised.
ALL_LAYOUTS: tuple[Layout, ...] = (
    MAE_DFER_FINETUNE,
    MAE_DFER_PRETRAIN_TO_CLASSIFIER,
    *hicmae.LAYOUTS,
    *s4d.LAYOUTS,
    *svfap.LAYOUTS,
    *marlin.LAYOUTS,
    *videomae.LAYOUTS,
)


def identify(state_dict: Mapping[str, Any]) -> Layout | None:
    """The released layout ``state_dict`` is in, or ``None`` when it is none of them."""
    keys = set(state_dict)
    return next((layout for layout in ALL_LAYOUTS if layout.matches(keys)), None)


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        return state_dict["model"]
    return state_dict


def layout_for(model: nn.Module, state_dict: Mapping[str, Any]) -> Layout:
    """The layout of ``model.official_layouts`` that ``state_dict`` is in.

    Raises:
        OfficialCheckpointError: a model that loads no released layout, or a state dict of a
            layout it does not load (the message says which models that one fits).
    """
    name = getattr(model, "model_name", type(model).__name__)
    layouts = getattr(model, "official_layouts", ())
    if not layouts:
        raise OfficialCheckpointError(f"{name} loads no released checkpoint layout")
    keys = set(state_dict)
    chosen = next((layout for layout in layouts if layout.matches(keys)), None)
    if chosen is not None:
        return chosen
    other = identify(state_dict)
    if other is not None:
        raise OfficialCheckpointError(
            f"this is {other.description}: it loads into {other.fits}, not {name}"
        )
    sample = ", ".join(sorted(keys)[:3])
    raise OfficialCheckpointError(
        f"{name} loads {' or '.join(layout.description for layout in layouts)}; this state "
        f"dict is neither (keys {sample}, ...)"
    )


def load_official(model: nn.Module, state_dict: Mapping[str, torch.Tensor | Mapping]) -> LoadReport:
    """Load a released state dict of the lineage into ``model`` in place, strictly.

    Args:
        model: a model of :func:`maedfer.model.create_model`.
        state_dict: their keys to tensors, or a checkpoint ``{"model": state_dict}``.
    Returns:
        A :class:`LoadReport`.
    Raises:
        OfficialCheckpointError: a layout the model does not load, or (one line) every
            unexpected, missing or mis-shaped key.
    """
    state_dict = _unwrap(state_dict)
    return load_layout(model, state_dict, layout_for(model, state_dict))


# ---------------------------------------------------------------- a fine-tuned checkpoint's model

#: What the official fine-tuning scripts train (``vit_base_dim512_no_depth_patch16_160``); the
#: fields a checkpoint's tensors do not show come from here.
OFFICIAL_CLASSIFIER = "lgi_former_base"
_BASE_WIDTH, _BASE_HEADS = 512, 8
# Run options the official checkpoint's saved ``args`` may hold -> our model field.
_ARGS_FIELDS = {
    "input_size": "img_size",
    "num_frames": "num_frames",
    "lg_region_size": "region_size",
}


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
    needed = (
        "lg_region_tokens",
        "patch_embed.proj.weight",
        "head.weight",
        "blocks.0.mlp.fc1.weight",
    )
    absent = [k for k in needed if k not in state_dict]
    if absent:
        raise OfficialCheckpointError(
            f"not an official MAE-DFER fine-tuned state dict: no {', '.join(absent)} "
            "(expected the layout of the released fine-tuned checkpoints)"
        )
    width, _, tubelet, patch, _ = state_dict["patch_embed.proj.weight"].shape
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    config: dict[str, object] = {
        "embed_dim": int(width),
        "depth": len(blocks),
        "patch_size": int(patch),
        "tubelet_size": int(tubelet),
        "num_classes": int(state_dict["head.weight"].shape[0]),
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "qkv_bias": "blocks.0.first_attn.q_bias" in state_dict,
    }
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
    # what lgi_former_base leaves as is
    check_region_tokens(config, LGIFormer, state_dict["lg_region_tokens"], OfficialCheckpointError)
    return OFFICIAL_CLASSIFIER, config


def check_region_tokens(
    config: Mapping[str, Any],
    model: type[nn.Module],
    tokens: torch.Tensor,
    error: type[MaedferError] = MaedferError,
) -> None:
    """Check that the input in ``config`` (else ``model``'s defaults) and its region size give
    as many local-global region tokens as the checkpoint's ``tokens`` holds; the region tokens
    are the only tensor that tells the input a checkpoint was trained on.

    Raises:
        error: the counts differ, naming both and the options to give.
    """
    defaults = inspect.signature(model).parameters

    def given(key: str) -> Any:
        return config.get(key, defaults[key].default)

    size, frames, region = given("img_size"), given("num_frames"), given("region_size")
    grid = (
        int(frames) // int(config["tubelet_size"]),
        int(size) // int(config["patch_size"]),
        int(size) // int(config["patch_size"]),
    )
    regions = 1
    for g, r in zip(grid, region, strict=True):
        regions *= g // int(r)
    held = int(tokens.shape[0])
    if held != regions:
        raise error(
            f"the checkpoint holds {held} region tokens but img_size {size}, num_frames {frames} "
            f"and region_size {tuple(region)} give {regions}; give the input it was trained on, "
            "e.g. --set img_size=160 --set num_frames=16"
        )


# Released fine-tuned classifiers of the other families: each module tells its own.
_FAMILY_CLASSIFIERS = (
    videomae.official_classifier,
    svfap.official_classifier,
    s4d.official_classifier,
)


def official_classifier(
    state_dict: Mapping[str, torch.Tensor],
    *,
    args: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The registered classifier a released fine-tuned state dict of the lineage belongs to:
    ``(model name, config)``; ``overrides`` win over what is inferred.

    MAE-DFER's go through :func:`official_classifier_config`; VideoMAE's, SVFAP's and S4D's
    through their modules' ``official_classifier``.

    Raises:
        OfficialCheckpointError: a pre-trained MAE or encoder (fine-tune from it instead),
            HiCMAE's audio-visual classifier, or a state dict of no known layout.
    """
    args = dict(args or {})
    layout = identify(state_dict)
    if layout is MAE_DFER_FINETUNE or layout is None:
        return official_classifier_config(state_dict, args=args, overrides=overrides)
    for family in _FAMILY_CLASSIFIERS:
        found = family(state_dict, args)
        if found is not None:
            name, config = found
            config = {**config, **dict(overrides or {})}
            if config["num_heads"] is None:
                raise OfficialCheckpointError(
                    f"the weights do not tell the number of attention heads for width "
                    f"{config['embed_dim']} (the released ones have 64 channels per head); "
                    "give it, e.g. --set num_heads=N"
                )
            return name, config
    model = layout.fits.split()[0].replace("*", "base")
    if layout is hicmae.FINETUNE_AV:
        raise OfficialCheckpointError(
            f"this is {layout.description}: its head reads audio features too, which maedfer "
            f"does not feed; fine-tune its visual encoder instead: maedfer finetune --set "
            f"model.name={model} --init FILE"
        )
    raise OfficialCheckpointError(
        f"this is {layout.description}, not a classifier; fine-tune from it: maedfer finetune "
        f"--set model.name={model} --init FILE"
    )


def official_state(obj: Any, path: Path) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    """The state dict and saved run ``args`` of an official checkpoint object.

    Raises:
        MaedferError: no dict of tensors under ``model``, ``module``, ``state_dict`` or on top.
    """
    state, args = obj, {}
    if isinstance(obj, Mapping):
        for key in ("model", "module", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
        raw_args = obj.get("args")
        args = vars(raw_args) if hasattr(raw_args, "__dict__") else dict(raw_args or {})
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise MaedferError(
            f"{path} is neither a maedfer checkpoint nor an official one (expected "
            "{'model': state_dict, ...} of tensors)"
        )
    return state, args


def build_official_classifier(
    obj: Any, path: Path, overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The classifier a released fine-tuned checkpoint of the lineage fits, its weights loaded;
    and its args.

    Raises:
        MaedferError: not a released fine-tuned state dict, or weights that do not fit.
    """
    state, args = official_state(obj, path)
    try:
        name, config = official_classifier(state, args=args, overrides=dict(overrides or {}))
    except MaedferError as exc:
        raise MaedferError(f"{path}: {exc}") from None
    if model_info(name)["unused_tail"]:
        # Region pooling never reads the last block's cross-attention: skip it (same logits).
        config.setdefault("skip_unused_tail", config.get("pooling", "region") == "region")
    try:
        model = create_model(name, **config)
    except (ValueError, TypeError) as exc:
        raise MaedferError(f"{path}: model {name} with {config}: {exc}") from None
    try:
        load_official(model, state)
    except MaedferError as exc:
        raise MaedferError(f"{path}: {exc}") from None
    return model, args
