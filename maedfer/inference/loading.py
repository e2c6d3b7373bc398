"""Any classifier checkpoint → a model in eval mode and its input settings (docs/inference.md).

Three kinds of file are told apart by their content:

- a maedfer fine-tuning checkpoint (``checkpoints/last.pt``, docs/runs.md): it names its model,
  the model's config, the class names and the recipe's input options (frames, stride, size,
  mean-frame subtraction);
- a weights-only export of one (``final.pt``, :func:`maedfer.training.checkpoint.export_weights`):
  the same, without optimiser state;
- a released fine-tuned ``.pth`` of the lineage (``{'model': state_dict, 'args': ...}``:
  MAE-DFER's, VideoMAE's, SVFAP's, S4D's; docs/models.md): the model and its architecture are
  read off the tensors (:func:`maedfer.model.official.official_classifier`), the weights go
  through :func:`maedfer.model.load_official`. It names no classes: they come from ``dataset``
  (that protocol's label order, ``maedfer.manifests``) or ``classes``, whose count must equal
  the head's rows. Its frame stride is the saved ``args.sampling_rate``, else the model's
  input contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from maedfer.config import parse_model_overrides as parse_overrides
from maedfer.errors import MaedferError
from maedfer.model import input_contract
from maedfer.model.official import build_official_classifier
from maedfer.training import checkpoint as ckpt_io

CheckpointFormat = Literal["maedfer", "weights", "official"]


@dataclass(frozen=True)
class ModelSettings:
    """What a loaded classifier needs of its input, and what its outputs are called.

    Attributes:
        model: registry name (``lgi_former_base``).
        class_names: one per output, in label order.
        num_frames: frames per window; stride: every ``stride``-th video frame is sampled.
        size: side of the square face crops.
        subtract_mean: the clip's mean frame is removed (a recipe option).
        format: ``maedfer`` (a run checkpoint), ``weights`` (``final.pt``) or ``official``.
        model_config: the model's full keyword set (``create_model(model, **model_config)``).
        input_contract: what the model's authors fed it (``maedfer.model.InputContract``,
            docs/models.md): frames, side, stride, normalisation, face crop.
    """

    model: str
    class_names: list[str]
    num_frames: int
    stride: int
    size: int
    subtract_mean: bool
    format: CheckpointFormat
    model_config: dict[str, Any]
    input_contract: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return ckpt_io.plain(dataclasses.asdict(self))


def dataset_classes(dataset: str) -> list[str]:
    """A dataset's class names in label order (its ``maedfer.manifests`` protocol): ``dfew``
    gives 7 names.

    Raises:
        MaedferError: unknown dataset, or one without labels (VoxCeleb2).
    """
    from maedfer.manifests import get_protocol

    protocol = get_protocol(dataset)
    if not protocol.classes:
        raise MaedferError(f"dataset {protocol.name} has no labels (pre-training data only)")
    return list(protocol.classes)


def _datasets_with(count: int) -> list[str]:
    from maedfer.manifests import DATASET_NAMES, get_protocol

    return [n for n in DATASET_NAMES if len(get_protocol(n).classes) == count]


def _class_names(
    path: Path,
    head: int,
    saved: Sequence[str],
    dataset: str | None,
    classes: Sequence[str] | None,
) -> list[str]:
    """The names of ``head`` outputs: saved in the checkpoint, or from --dataset / --classes."""
    if dataset is not None and classes is not None:
        raise MaedferError("give --dataset or --classes, not both")
    given = (
        dataset_classes(dataset)
        if dataset is not None
        else ([str(c).strip() for c in classes] if classes is not None else None)
    )
    source = f"dataset {dataset}" if dataset is not None else "--classes"
    if saved:
        if given is not None and list(given) != list(saved):
            raise MaedferError(
                f"checkpoint {path} names its classes {list(saved)}; {source} gives {given} "
                "(--dataset and --classes are for checkpoints without class names)"
            )
        return list(saved)
    if given is None:
        fits = ", ".join(_datasets_with(head)) or "none of the built-in datasets"
        raise MaedferError(
            f"checkpoint {path} names no classes: give --dataset (a {head}-class head fits "
            f"{fits}) or --classes with {head} comma-separated names"
        )
    if len(given) != head:
        fits = ", ".join(_datasets_with(head)) or "none of the built-in datasets"
        raise MaedferError(
            f"checkpoint {path} has a {head}-class head but {source} names {len(given)} "
            f"classes {given}; a {head}-class head fits {fits}, or give --classes with {head} names"
        )
    if len(set(given)) != len(given) or not all(given):
        raise MaedferError(f"--classes {given} must be {head} distinct, non-empty names")
    return list(given)


def _own(
    ckpt: Mapping[str, Any], path: Path, dataset: str | None, classes: Sequence[str] | None
) -> tuple[nn.Module, ModelSettings]:
    model = ckpt_io.classifier_from_checkpoint(
        ckpt,
        path,
        purpose="inference needs a fine-tuned classifier (a finetune run's "
        "checkpoints/last.pt or final.pt)",
    )
    built = model.config
    # Recipe configs are nested (``data.stride``, ``model.img_size``); checkpoints written
    # before them hold one flat dict (``stride``, ``size``): both are read.
    config = ckpt.get("config") or {}
    nested = isinstance(config.get("data"), Mapping)
    data = config["data"] if nested else config
    model_cfg = (config.get("model") or {}) if nested else config
    size = model_cfg.get("img_size") if nested else config.get("size")
    saved = list(ckpt.get("classes") or config.get("classes") or [])
    if saved and len(saved) != built["num_classes"]:
        raise MaedferError(
            f"{path}: the model has {built['num_classes']} outputs but the checkpoint names "
            f"{len(saved)} classes {saved}"
        )
    contract = input_contract(model)
    settings = ModelSettings(
        model=model.model_name,
        class_names=_class_names(path, built["num_classes"], saved, dataset, classes),
        num_frames=int(model_cfg.get("num_frames") or built["num_frames"]),
        stride=int(data.get("stride") or contract.stride),
        size=int(size or built["img_size"]),
        subtract_mean=bool(data.get("subtract_mean", False)),
        format="weights" if ckpt_io.is_weights_only(ckpt) else "maedfer",
        model_config=ckpt_io.plain(built),
        input_contract=contract.to_dict(),
    )
    for key, field in (("num_frames", "num_frames"), ("size", "img_size")):
        if built[field] != getattr(settings, key):
            raise MaedferError(
                f"{path}: config {key}={getattr(settings, key)} but the model expects "
                f"{field}={built[field]}"
            )
    return model, settings


def load_classifier(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> tuple[nn.Module, ModelSettings]:
    """Load any fine-tuned classifier checkpoint, in eval mode on ``device``.

    Args:
        checkpoint: ``last.pt``, ``final.pt`` or a released fine-tuned ``.pth`` of the lineage.
        dataset: official checkpoints: the dataset it was fine-tuned on; its label order
            names the outputs (``dfew``, ``ferv39k``, ``mafw``, ...).
        classes: official checkpoints: the output names in order (a list, or ``"a,b,c"``).
        model_overrides: official checkpoints: model fields the weights do not show
            (``num_heads``, ``img_size``, ``num_frames``, ``region_size``), as a dict or
            ``key=value`` strings.

    Returns:
        ``(model, settings)``.

    Raises:
        MaedferError: unreadable file, a pre-training checkpoint, a head whose size matches
            neither the checkpoint's names nor ``dataset``/``classes``, or weights that do not fit.
    """
    path = Path(checkpoint)
    model_overrides = parse_overrides(model_overrides) if model_overrides else None
    if isinstance(classes, str):
        classes = [c for c in classes.split(",")]
    obj = ckpt_io.read_any(path)
    if isinstance(obj, Mapping) and obj.get("format") == ckpt_io.FORMAT:
        if model_overrides:
            raise MaedferError(
                f"{sorted(model_overrides)}: a maedfer checkpoint names its own model; model "
                "overrides are for official checkpoints only"
            )
        model, settings = _own(obj, path, dataset, classes)
    else:
        model, args = build_official_classifier(obj, path, model_overrides)
        built = model.config
        contract = input_contract(model)
        settings = ModelSettings(
            model=model.model_name,
            class_names=_class_names(path, int(built["num_classes"]), [], dataset, classes),
            num_frames=int(built["num_frames"]),
            stride=int(args.get("sampling_rate") or contract.stride),
            size=int(built["img_size"]),
            subtract_mean=False,
            format="official",
            model_config=ckpt_io.plain(built),
            input_contract=contract.to_dict(),
        )
    return model.to(device).eval(), settings
