"""Any pre-training checkpoint → the MAE model in eval mode and its input settings.

What ``maedfer reconstruct`` loads (docs/inference.md, "Reconstructions"). Two kinds of file are
told apart by their content, as :mod:`maedfer.inference.loading` does for classifiers:

- a maedfer pre-training checkpoint (a ``pretrain`` run's ``checkpoints/last.pt`` or its
  ``final.pt``): it names its model (``mae_lgi_former_*``), the model's config and the recipe's
  input options (frames, stride, size, mean-frame subtraction, mask ratio);
- an official MAE-DFER pre-trained ``.pth`` (``{'model': state_dict, 'args': ...}`` with
  ``encoder.``/``decoder.`` keys): the architecture is read off the tensors
  (:func:`official_pretrain_config`), the weights go through
  :func:`maedfer.model.load_official`, and the decoder gets the official code's visible-token
  positions (``official_decoder_order``), which those weights were trained with.

A fine-tuned classifier (ours or official) has no decoder and is refused in one line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maedfer.config import parse_model_overrides as parse_overrides
from maedfer.errors import MaedferError
from maedfer.model import MaskedLGIFormer, create_model, input_contract, load_official
from maedfer.model.official import check_region_tokens, official_state
from maedfer.training import checkpoint as ckpt_io

#: What the official pre-training script trains
#: (``pretrain_videomae_base_dim512_no_depth_patch16_160``).
OFFICIAL_PRETRAIN = "mae_lgi_former_base"
# Widths whose head counts the released model fixes (head dim 64): encoder 512, decoder 384.
_KNOWN_HEADS = {512: 8, 384: 6}
# The official run's saved args -> our model field.
_ARGS_FIELDS = {
    "input_size": "img_size",
    "num_frames": "num_frames",
    "lg_region_size": "region_size",
    "mask_ratio": "mask_ratio",
}


@dataclass(frozen=True)
class PretrainSettings:
    """What a loaded pre-training model needs of its input.

    Attributes:
        model: registry name (``mae_lgi_former_base``).
        num_frames: frames per window; stride: every ``stride``-th video frame is sampled.
        size: side of the square face crops.
        subtract_mean: the clip's mean frame is removed before the model (a recipe option).
        mask_ratio: the ratio the model was trained with (the default of ``reconstruct``).
        format: ``maedfer`` (a run checkpoint), ``weights`` (``final.pt``) or ``official``.
        model_config: the model's full keyword set.
    """

    model: str
    num_frames: int
    stride: int
    size: int
    subtract_mean: bool
    mask_ratio: float
    format: str
    model_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return ckpt_io.plain(dataclasses.asdict(self))


def _not_pretraining(path: Path, what: str) -> MaedferError:
    return MaedferError(
        f"{path} is {what}, not a pre-training checkpoint; reconstruct needs a pretrain run's "
        "checkpoints/last.pt or final.pt, or an official MAE-DFER pre-trained .pth"
    )


def official_pretrain_config(
    state_dict: Mapping[str, torch.Tensor],
    *,
    args: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> tuple[str, dict[str, object]]:
    """The MAE model an official pre-training state dict belongs to: ``(name, config)``.

    The tensors give the encoder's width, depth, MLP ratio, patch and tubelet sizes and q/v
    biases, the decoder's width and depth; input size, frames, region size and mask ratio come
    from the saved ``args`` where present (else ``mae_lgi_former_base``'s), and must give as
    many regions as the checkpoint holds. Head counts leave no trace: widths 512 and 384 (the
    released model's) mean 8 and 6 heads; others need ``num_heads`` / ``decoder_num_heads``.

    Raises:
        MaedferError: not a pre-training state dict (a fine-tuned one is named as such), a
            head count that cannot be told, or a region count the input does not give.
    """
    given = dict(overrides or {})
    if not any(k.startswith("encoder.") for k in state_dict):
        what = (
            "an official fine-tuned classifier (no encoder./decoder. keys)"
            if "head.weight" in state_dict
            else "no MAE-DFER state dict"
        )
        raise MaedferError(what)
    needed = (
        "encoder.lg_region_tokens",
        "encoder.patch_embed.proj.weight",
        "encoder.blocks.0.mlp.fc1.weight",
        "encoder_to_decoder.weight",
        "decoder.head.weight",
    )
    absent = [k for k in needed if k not in state_dict]
    if absent:
        raise MaedferError(
            f"not an official MAE-DFER pre-training state dict: no "
            f"{', '.join(absent)} (an encoder without its decoder cannot "
            "reconstruct)"
        )
    width, _, tubelet, patch, _ = state_dict["encoder.patch_embed.proj.weight"].shape
    decoder_width = int(state_dict["encoder_to_decoder.weight"].shape[0])

    def depth(prefix: str) -> int:
        pattern = re.compile(rf"{re.escape(prefix)}blocks\.(\d+)\.")
        return len({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})

    config: dict[str, object] = {
        "embed_dim": int(width),
        "depth": depth("encoder."),
        "patch_size": int(patch),
        "tubelet_size": int(tubelet),
        "decoder_embed_dim": decoder_width,
        "decoder_depth": depth("decoder."),
        "mlp_ratio": state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0] / width,
        "qkv_bias": "encoder.blocks.0.first_attn.q_bias" in state_dict,
        "official_decoder_order": True,
    }
    for arg, name in _ARGS_FIELDS.items():
        if args and args.get(arg) is not None:
            value = args[arg]
            config[name] = (
                tuple(int(v) for v in value)
                if name == "region_size"
                else float(value)
                if name == "mask_ratio"
                else int(value)
            )
    for field, size in (("num_heads", int(width)), ("decoder_num_heads", decoder_width)):
        if size in _KNOWN_HEADS:
            config[field] = _KNOWN_HEADS[size]
        elif field not in given:
            raise MaedferError(
                f"the weights do not tell {field} for width {size}; give it, e.g. --set {field}=N"
            )
    config.update(given)
    check_region_tokens(config, MaskedLGIFormer, state_dict["encoder.lg_region_tokens"])
    return OFFICIAL_PRETRAIN, config


def _own(
    ckpt: Mapping[str, Any], path: Path, overrides: Mapping[str, Any]
) -> tuple[nn.Module, PretrainSettings]:
    name = ckpt.get("model_name")
    if not isinstance(name, str) or not name.startswith("mae_"):
        raise _not_pretraining(path, f"a fine-tuned classifier ({name})")
    try:
        model = ckpt_io.model_from_checkpoint(ckpt, **overrides)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MaedferError(f"{path}: the weights do not fit {name}: {first}") from None
    built = model.config
    config = ckpt.get("config") or {}
    nested = isinstance(config.get("data"), Mapping)
    data = config["data"] if nested else config
    settings = PretrainSettings(
        model=name,
        num_frames=int(built["num_frames"]),
        stride=int(data.get("stride") or input_contract(model).stride),
        size=int(built["img_size"]),
        subtract_mean=bool(data.get("subtract_mean", False)),
        mask_ratio=float(built["mask_ratio"]),
        format="weights" if ckpt_io.is_weights_only(ckpt) else "maedfer",
        model_config=ckpt_io.plain(built),
    )
    return model, settings


def _official(
    obj: Any, path: Path, overrides: Mapping[str, Any]
) -> tuple[nn.Module, PretrainSettings]:
    state, args = official_state(obj, path)
    try:
        name, config = official_pretrain_config(state, args=args, overrides=overrides)
    except MaedferError as exc:
        if str(exc).startswith(("an official fine-tuned", "no MAE-DFER")):
            raise _not_pretraining(path, str(exc)) from None
        raise MaedferError(f"{path}: {exc}") from None
    try:
        model = create_model(name, **config)
    except (ValueError, TypeError) as exc:
        raise MaedferError(f"{path}: model {name} with {config}: {exc}") from None
    try:
        load_official(model, state)
    except MaedferError as exc:
        raise MaedferError(f"{path}: {exc}") from None
    built = model.config
    settings = PretrainSettings(
        model=name,
        num_frames=int(built["num_frames"]),
        stride=int(args.get("sampling_rate") or input_contract(model).stride),
        size=int(built["img_size"]),
        subtract_mean=False,
        mask_ratio=float(built["mask_ratio"]),
        format="official",
        model_config=ckpt_io.plain(built),
    )
    return model, settings


def load_pretrainer(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
    model_overrides: Mapping[str, Any] | list[str] | None = None,
) -> tuple[MaskedLGIFormer, PretrainSettings]:
    """Load a pre-training checkpoint (ours or official), in eval mode on ``device``.

    Args:
        checkpoint: a pretrain run's ``last.pt`` / ``final.pt``, or an official MAE-DFER
            pre-trained ``.pth``.
        model_overrides: model fields, as a dict or ``key=value`` strings: for official
            checkpoints those the weights do not show (``num_heads``, ``decoder_num_heads``,
            ``img_size``, ``num_frames``, ``region_size``); for both, ``official_decoder_order``.

    Raises:
        MaedferError: unreadable file, a classifier checkpoint, weights that do not fit.
    """
    path = Path(checkpoint)
    overrides = parse_overrides(model_overrides) if model_overrides else {}
    obj = ckpt_io.read_any(path)
    if isinstance(obj, Mapping) and obj.get("format") == ckpt_io.FORMAT:
        allowed = {"official_decoder_order"}
        if set(overrides) - allowed:
            raise MaedferError(
                f"{sorted(set(overrides) - allowed)}: a maedfer checkpoint names "
                "its own model; only official_decoder_order may be set"
            )
        model, settings = _own(obj, path, overrides)
    else:
        model, settings = _official(obj, path, overrides)
    return model.to(device).eval(), settings


__all__ = ["OFFICIAL_PRETRAIN", "PretrainSettings", "load_pretrainer", "official_pretrain_config"]
