"""Run checkpoints: atomic ``last.pt``, exact resume, model initialisation (docs/runs.md).

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` reads back:

==================  =====================================================================
``format``          ``"maedfer-checkpoint"`` (how :func:`load_init` tells ours from official)
``version``         1
``model_name``      registry name, e.g. ``lgi_former_base``
``model_config``    the model's full keyword set (``model.config``, tuples as lists)
``model``           the model's state dict (unwrapped from DDP)
``optimizer``       AdamW state dict (groups carry ``lr_scale`` and ``group``)
``scheduler``       :class:`maedfer.training.schedule.WarmupCosine` state (plain numbers)
``scaler``          GradScaler state (empty when disabled)
``epoch``           epochs completed; ``step`` optimiser steps completed in total;
                    ``epoch_step`` optimiser steps completed inside the current epoch
``rng``             RNG states as tensors (torch, CUDA, numpy, Python ``random``)
``config``          the recipe's options as plain types; ``classes`` the label names (or [])
==================  =====================================================================

Besides ``checkpoints/last.pt`` a run keeps numbered copies, ``checkpoints/epoch-0010.pt``
(:func:`save_numbered`, the newest ``keep``), and its final model as ``final.pt``
(:func:`export_weights`): ``kind`` ``"weights"``, with ``model_name``, ``model_config``,
``model``, ``classes``, ``config``, ``epoch`` and ``step`` only (no optimiser, scheduler or RNG
state), about a third of ``last.pt``'s size. :func:`load_checkpoint`,
:func:`model_from_checkpoint`, ``maedfer.inference`` and ``--init`` read it wherever they read a
full checkpoint; only resuming needs the full one.

Every value is a tensor, a number, a string, ``None`` or a list/dict of those, which is what the
``weights_only`` unpickler allows. Initialising a classifier (``--init``) accepts our
pre-training or fine-tuning checkpoints (the encoder is taken, module names are identical:
both models hold a :class:`maedfer.model.LGIFormerEncoder` as ``encoder``: which keys are the
encoder's is :func:`maedfer.model.lgi_former.encoder_state`) and the official
MAE-DFER ones (through :func:`maedfer.model.load_official`).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maedfer.atomic import atomic_path
from maedfer.config import plain
from maedfer.errors import MaedferError
from maedfer.model import LGIFormer, create_model, load_official, model_info
from maedfer.model.lgi_former import ENCODER_FIELDS, encoder_state
from maedfer.training.optim import unwrap

log = logging.getLogger(__name__)

FORMAT = "maedfer-checkpoint"
VERSION = 1
LAST = "last.pt"
FINAL = "final.pt"  # the weights-only export, in the run folder
NUMBERED = re.compile(r"epoch-(\d+)\.pt")
# What a weights-only file keeps of a full checkpoint.
WEIGHTS_KEYS = ("model_name", "model_config", "model", "classes", "config", "epoch", "step")


# ---------------------------------------------------------------- RNG states as tensors


def rng_state() -> dict[str, torch.Tensor]:
    """Every global generator's state, as tensors (``weights_only`` cannot load numpy/tuples)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor(gauss, dtype=torch.float64),
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor(
            [gauss_next is not None, gauss_next or 0.0], dtype=torch.float64
        ),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(state["numpy_gauss"]),
        )
    )
    version, *internal = (int(v) for v in state["python"])
    has_next, value = state["python_gauss"].tolist()
    random.setstate((version, tuple(internal), value if has_next else None))
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"].unbind(0))
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)


# ---------------------------------------------------------------- save / load


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, rename),
    so a crash mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(dict(state), handle)
        handle.flush()
        os.fsync(handle.fileno())


def numbered_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoints/epoch-NNNN.pt``, oldest epoch first."""
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("epoch-*.pt") if NUMBERED.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.stem.removeprefix("epoch-")))


def save_numbered(
    run_dir: Path, state: Mapping[str, Any] | Path, epoch: int, *, keep: int | None
) -> Path:
    """Write ``RUN/checkpoints/epoch-NNNN.pt`` (atomic) and keep the newest ``keep`` of them.

    Args:
        run_dir: the run folder.
        state: the checkpoint dict, or the path of one just saved (``last.pt``): it is then
            hard-linked (copied where links are impossible), which costs no second write; a
            later ``last.pt`` replaces its own name only, so the numbered one keeps this epoch.
        epoch: epochs completed (the number in the name, 4 digits or more).
        keep: how many numbered checkpoints stay (older ones are deleted); ``None`` keeps all.
    Returns:
        The path written.
    Raises:
        MaedferError: ``keep`` below 1.
    """
    if keep is not None and keep < 1:
        raise MaedferError(f"keep ({keep}) must be at least 1, or None to keep every checkpoint")
    path = Path(run_dir) / "checkpoints" / f"epoch-{int(epoch):04d}.pt"
    if isinstance(state, Mapping):
        save_checkpoint(path, state)
    else:
        with atomic_path(path, fsync=True) as tmp:
            tmp.unlink()
            try:
                os.link(state, tmp)
            except OSError:  # another file system, or one without hard links
                shutil.copyfile(state, tmp)
    if keep is not None:
        for old in numbered_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def is_weights_only(ckpt: Mapping[str, Any]) -> bool:
    """True for a :func:`export_weights` file (no optimiser state: it cannot be resumed)."""
    return ckpt.get("kind") == "weights" or "optimizer" not in ckpt


def export_weights(source: Path, out_path: Path | None = None) -> Path:
    """Write the weights-only file of a run's model (``final.pt``): for inference and ``--init``.

    Args:
        source: a run folder (its ``checkpoints/last.pt`` is read) or a checkpoint file.
        out_path: where to write; default ``final.pt`` in the run folder (for a checkpoint
            file: in the run folder it belongs to, the parent of ``checkpoints/``).
    Returns:
        The path written (atomically).
    Raises:
        MaedferError: an unreadable source or one that is not a maedfer checkpoint.
    """
    source = Path(source)
    path = source / "checkpoints" / LAST if source.is_dir() else source
    ckpt = load_checkpoint(path)
    if out_path is None:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        out_path = run_dir / FINAL
    weights = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "weights",
        **{k: ckpt[k] for k in WEIGHTS_KEYS if k in ckpt},
    }
    weights.setdefault("classes", [])
    save_checkpoint(Path(out_path), weights)
    return Path(out_path)


def _unreadable(path: Path, exc: Exception) -> MaedferError:
    """One line on why ``torch.load(weights_only=True)`` refused ``path``.

    Torch's own text is not passed on: it suggests ``weights_only=False``, which would run any
    code the file holds, and maedfer never loads a checkpoint that way.
    """
    with open(path, "rb") as handle:
        legacy = handle.read(1) == b"\x80"  # a pickle: torch.save before torch 1.6
    if not (legacy or zipfile.is_zipfile(path)):  # torch.save writes zip archives
        return MaedferError(f"{path} is not a PyTorch checkpoint (torch.load cannot read it)")
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    why = (
        f"it holds a {found.group(1)}, which is neither a tensor nor a plain value"
        if found
        else "it is damaged or holds objects other than tensors and plain values"
    )
    return MaedferError(f"checkpoint {path} cannot be read safely: {why}")


def _torch_load(path: Path) -> Any:
    # Official MAE-DFER checkpoints also hold the run's argparse.Namespace: harmless, allowed.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MaedferError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise MaedferError(f"checkpoint {path} is a folder; expected a .pt file") from None
    except OSError as exc:  # permissions and the like: the file, not its content
        raise MaedferError(f"cannot open checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 (unpickling raises many types; all mean "unreadable")
        raise _unreadable(path, exc) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one of our checkpoints (``weights_only=True``).

    Raises:
        MaedferError: unreadable, or not a maedfer checkpoint.
    """
    obj = _torch_load(Path(path))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise MaedferError(
            f"{path} is not a maedfer checkpoint (no format={FORMAT!r} key); official MAE-DFER "
            "checkpoints are read by predict, export, embed, evaluate --checkpoint and "
            "finetune --init"
        )
    return obj


def _describe(name: str, config: Mapping[str, Any], keys: list[str]) -> str:
    return name + (" with " + ", ".join(f"{k} {config.get(k)!r}" for k in keys) if keys else "")


def config_mismatch(
    saved_name: str,
    saved: Mapping[str, Any],
    name: str,
    config: Mapping[str, Any],
    fields: tuple[str, ...] | None = None,
) -> str | None:
    """One phrase naming how two model configs differ, or ``None`` when they agree.

    With ``fields``, only those are compared (the names may differ: an encoder comparison).
    """
    saved, config = plain(dict(saved)), plain(dict(config))
    keys = sorted(set(saved) | set(config)) if fields is None else list(fields)
    differ = [k for k in keys if saved.get(k) != config.get(k)]
    if (saved_name == name or fields is not None) and not differ:
        return None
    theirs, ours = _describe(saved_name, saved, differ), _describe(name, config, differ)
    return f"{theirs}, but this run builds {ours}"


def check_model_matches(ckpt: Mapping[str, Any], model: nn.Module, *, path: Path) -> None:
    """Refuse a checkpoint written for another architecture or class count, in one line.

    Raises:
        MaedferError: e.g. ``checkpoint runs/x/checkpoints/last.pt holds lgi_former_tiny with
            num_classes 7, but this run builds lgi_former_tiny with num_classes 5``.
    """
    net = unwrap(model)
    problem = config_mismatch(ckpt["model_name"], ckpt["model_config"], net.model_name, net.config)
    if problem:
        raise MaedferError(f"checkpoint {path} holds {problem}")


def model_from_checkpoint(ckpt: Mapping[str, Any], **overrides: Any) -> Any:
    """Rebuild the model a checkpoint was written for and load its weights (strictly)."""
    config = {**ckpt["model_config"], **overrides}
    model = create_model(ckpt["model_name"], **config)
    model.load_state_dict(ckpt["model"])
    return model


def classifier_from_checkpoint(ckpt: Mapping[str, Any], path: Path, *, purpose: str) -> Any:
    """The fine-tuned classifier of one of our checkpoints (``last.pt``, ``final.pt``), its
    weights loaded: the one loader ``test`` and inference share (docs/design.md, "Checkpoints").

    Args:
        purpose: who needs it and what to give instead, for the message refusing a
            pre-training checkpoint (``"inference needs a fine-tuned classifier (...)"``).

    Raises:
        MaedferError: a checkpoint of a model that is not a classifier, or weights that do not
            fit the model it names.
    """
    name = ckpt.get("model_name")
    kind = None
    if isinstance(name, str):
        try:
            kind = model_info(name)["kind"]
        except MaedferError:
            kind = None
    if kind == "pretrain" or not isinstance(name, str):
        raise MaedferError(f"{path} is a pre-training checkpoint ({name}); {purpose}")
    try:
        return model_from_checkpoint(ckpt)
    except RuntimeError as exc:  # load_state_dict: missing, unexpected or mis-shaped tensors
        first = str(exc).strip().splitlines()[0]
        raise MaedferError(f"{path}: the weights do not fit {name}: {first}") from None


# ---------------------------------------------------------------- initialisation (--init)


# What a classifier of the lineage holds beside its encoder: left fresh by an --init.
HEAD_PREFIXES = ("fc_norm.", "head.", "image_head.")


def _encoder_parts(model: nn.Module, ckpt: Mapping[str, Any]):  # noqa: ANN202 (3 values)
    """(config fields that must agree, our encoder tensors, theirs) for ``--init`` from one of
    ours. LGI-Former: the fields that fix its encoder (region tokens depend on the input
    size). The other families: the tensors alone decide (a fixed position table leaves the
    input size free, as the authors' fine-tuning uses weights pre-trained at another size)."""
    if isinstance(model, LGIFormer):  # its encoder is `encoder.*` in both MAE-DFER models
        return ENCODER_FIELDS, encoder_state(model.state_dict()), encoder_state(ckpt["model"])
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIXES)}
    source = {k: v for k, v in ckpt["model"].items() if not k.startswith(HEAD_PREFIXES)}
    return (), ours, source


def _load_own_encoder(model: Any, ckpt: Mapping[str, Any], path: Path) -> str:
    fields, ours, source = _encoder_parts(model, ckpt)
    problem = config_mismatch(
        ckpt["model_name"], ckpt["model_config"], model.model_name, model.config, fields
    )
    if problem:
        raise MaedferError(f"--init {path} holds {problem}; their encoders differ")
    shaped = [k for k in ours if k in source and source[k].shape != ours[k].shape]
    if shaped or (fields == () and set(source) - set(ours)):
        extra = sorted(set(source) - set(ours))
        what = (
            f"{shaped[0]} {list(source[shaped[0]].shape)} vs {list(ours[shaped[0]].shape)}"
            if shaped
            else f"tensors this model lacks: {', '.join(extra[:5])}"
        )
        raise MaedferError(
            f"--init {path} holds {ckpt['model_name']}, but this run builds "
            f"{model.model_name}; their encoders differ ({what})"
        )
    missing = sorted(set(ours) - set(source))
    if missing:
        raise MaedferError(f"--init {path} lacks encoder tensors: {', '.join(missing[:5])}")
    with torch.no_grad():
        for key, tensor in ours.items():
            tensor.copy_(source[key])
    return f"encoder of {ckpt['model_name']} (epoch {ckpt.get('epoch')}) from {path}"


def load_init(model: nn.Module, path: Path) -> str:
    """Initialise a classifier from ``path``: ours (pre-training or fine-tuning) or official.

    Returns:
        A one-line description of what was loaded, for the log.
    Raises:
        MaedferError: unreadable file, another encoder architecture, or an official state dict
            that does not fit (the message names the keys).
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _load_own_encoder(model, obj, path)
    state = obj
    for key in ("model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    tensors = isinstance(state, Mapping) and all(
        isinstance(v, torch.Tensor) for v in state.values()
    )
    if not tensors:
        raise MaedferError(f"--init {path} holds no state dict (expected a dict of tensors)")
    report = load_official(model, state)
    return (
        f"official {report.source_layout} weights from {path}: {len(report.loaded)} tensors, "
        f"{len(report.dropped)} dropped, {len(report.fresh)} fresh"
    )


def read_any(path: Path) -> Any:
    """Read any checkpoint file safely (``weights_only=True``): ours, or an official one (which
    may hold the run's ``argparse.Namespace``). The caller tells which it is.

    Raises:
        MaedferError: missing, a folder, unreadable, or holding objects other than tensors and
            plain values.
    """
    return _torch_load(Path(path))
