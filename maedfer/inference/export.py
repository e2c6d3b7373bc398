"""``maedfer export CKPT --format safetensors|onnx --out DIR`` (docs/inference.md).

Any classifier checkpoint :func:`~maedfer.inference.loading.load_classifier` reads (ours,
``final.pt``, official) is written for use outside maedfer's checkpoints:

- ``safetensors``: ``model.safetensors`` (the state dict) and ``config.json``, the keyword
  set of :func:`maedfer.model.create_model`, so that
  ``create_model(**json.load(open("config.json"))).load_state_dict(load_file("model.safetensors"))``
  rebuilds the model;
- ``onnx``: ``model.onnx`` (input ``video`` ``(batch, 3, T, S, S)`` float32 with a dynamic
  batch axis, output ``logits`` ``(batch, C)``), exported by ``torch.onnx`` and checked with
  onnxruntime on CPU against PyTorch (largest logit difference at most 1e-4, else an error).

Both get ``inference.json``: the class names, the window settings (``num_frames``,
``stride``, ``size``), the normalisation (``mean``/``std`` on 0..255 values,
``subtract_mean``) and the input layout; ``examples/onnx_predict.py`` runs the ONNX model with
it on a prepared clip using onnxruntime and numpy only. Every model takes maedfer's
normalisation (a model whose authors fed other values converts at its input, inside the
exported graph); ``input_contract`` records what the model's authors fed it (docs/models.md).

S4D's router adds random noise in evaluation too (its authors' code; ``router_noise``): a graph
cannot replay torch's random draws, so the ONNX export routes without the noise, says so, and
records ``router_noise: "train"`` in its ``inference.json``.

An export is one bundle: its files are written into a new folder beside ``--out`` and checked
there (the ONNX model against PyTorch), then that folder replaces ``--out`` whole
(:func:`maedfer.atomic.atomic_folder`), so a killed or failed export leaves the previous one as
it was, never a model beside another model's ``inference.json``. ``--out`` therefore holds an
export and nothing else: a folder with other files is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from maedfer.atomic import atomic_folder, atomic_path, write_text
from maedfer.errors import MaedferError
from maedfer.inference.loading import ModelSettings, load_classifier
from maedfer.lock import hold
from maedfer.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

ExportFormat = Literal["safetensors", "onnx"]
FORMATS: tuple[str, ...] = ("safetensors", "onnx")
ONNX_TOLERANCE = 1e-4  # float32 on CPU; measured differences are ~1e-6 (bench/RESULTS.md)
ONNX_OPSET = 18
#: The files an export folder may hold (either format's): what it replaces.
BUNDLE_FILES = frozenset({"model.safetensors", "config.json", "model.onnx", "inference.json"})


def inference_config(settings: ModelSettings) -> dict[str, Any]:
    """What a program outside maedfer needs to feed the model and name its outputs."""
    return {
        "model": settings.model,
        "class_names": list(settings.class_names),
        "num_frames": settings.num_frames,
        "stride": settings.stride,
        "size": settings.size,
        "input": "video (batch, 3, num_frames, size, size) float32, RGB, aligned face crops",
        "mean": [round(m * 255, 6) for m in IMAGENET_MEAN],  # on 0..255 values
        "std": [round(s * 255, 6) for s in IMAGENET_STD],
        "subtract_mean": settings.subtract_mean,
        "source_format": settings.format,
        "input_contract": settings.input_contract,
    }


def model_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """``create_model(**kwargs)`` of a registry model: its name and full config, JSON types."""
    return json.loads(json.dumps({"name": model.model_name, **model.config}))


def _write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def export_safetensors(model: torch.nn.Module, settings: ModelSettings, out: Path) -> list[Path]:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    with atomic_path(weights) as tmp:
        save_file(
            state,
            str(tmp),
            metadata={
                "format": "pt",
                "model": settings.model,
                "class_names": json.dumps(settings.class_names),
            },
        )
    _write_json(out / "config.json", model_kwargs(model))
    _write_json(out / "inference.json", inference_config(settings))
    return [weights, out / "config.json", out / "inference.json"]


def check_onnx(
    path: Path,
    model: torch.nn.Module,
    settings: ModelSettings,
    batches: Sequence[int] = (1, 3),
    seed: int = 0,
) -> float:
    """Largest |logit difference| between onnxruntime (CPU) and PyTorch on random inputs of
    each batch size.

    Raises:
        MaedferError: over :data:`ONNX_TOLERANCE`.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.cpu().eval()
    for batch in batches:
        video = torch.randn(
            (batch, 3, settings.num_frames, settings.size, settings.size), generator=generator
        )
        with torch.inference_mode():
            expected = model(video).numpy()
        got = session.run(["logits"], {"video": video.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= ONNX_TOLERANCE:
        raise MaedferError(
            f"the ONNX model's logits differ from PyTorch's by {worst:.2e} "
            f"(more than {ONNX_TOLERANCE:g}); {path} is not usable"
        )
    return worst


def export_onnx(
    model: torch.nn.Module,
    settings: ModelSettings,
    out: Path,
    opset: int = ONNX_OPSET,
    show: Callable[[str], None] | None = None,
) -> tuple[list[Path], float]:
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    extra: dict[str, Any] = {}
    if getattr(model, "router_noise", None) == "always":
        model.router_noise = "train"  # the graph cannot replay torch's random draws
        extra["router_noise"] = "train"
        if show is not None:
            show(
                f"note: {settings.model}'s router adds noise in evaluation in its authors' code; "
                "the ONNX model routes without it (deterministic)"
            )
    example = torch.zeros((2, 3, settings.num_frames, settings.size, settings.size))
    batch = torch.export.Dim("batch", min=1, max=4096)
    target = out / "model.onnx"
    with atomic_path(target) as tmp:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["video"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
        # one self-contained file (the official model is ~340 MB, far under ONNX's 2 GB)
        program.save(str(tmp), external_data=False)
    worst = check_onnx(target, model, settings)
    _write_json(
        out / "inference.json",
        {**inference_config(settings), "onnx_opset": opset, "onnx_max_abs_diff": worst, **extra},
    )
    return [target, out / "inference.json"], worst


def _check_out(out: Path) -> None:
    """``--out`` is new, or a folder holding an earlier export only (it is replaced whole)."""
    if out.exists() and not out.is_dir():
        raise MaedferError(f"--out {out} is a file; give a folder")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in BUNDLE_FILES)
        if others:
            raise MaedferError(
                f"--out {out} holds files an export does not write ({', '.join(others[:5])}); an "
                "export replaces its folder whole: give a new or empty folder"
            )


def run(
    checkpoint: str | Path,
    *,
    format: ExportFormat,
    out: str | Path,
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    show: Callable[[str], None] | None = None,
) -> list[Path]:
    """Export ``checkpoint`` (any classifier of docs/models.md) to ``out`` in ``format``; what
    was written goes to ``show`` (the command line prints it; nothing is printed here).

    Raises:
        MaedferError: an unknown format, a checkpoint that cannot be used, or an ONNX model
            whose logits differ from PyTorch's.
    """
    if format not in FORMATS:
        raise MaedferError(f"--format {format!r} must be one of {', '.join(FORMATS)}")
    out = Path(out)
    with hold(out):
        _check_out(out)
        model, settings = load_classifier(
            checkpoint,
            device="cpu",
            dataset=dataset,
            classes=classes,
            model_overrides=model_overrides,
        )
        with atomic_folder(out) as bundle:
            if format == "safetensors":
                written = export_safetensors(model, settings, bundle)
                note = ""
            else:
                written, worst = export_onnx(model, settings, bundle, show=show)
                note = f"; onnxruntime matches PyTorch to {worst:.1e}"
    written = [out / path.name for path in written]
    emit = show or (lambda _line: None)
    emit(
        f"exported {settings.model} ({len(settings.class_names)} classes: "
        f"{', '.join(settings.class_names)}) from {checkpoint} as {format}{note}"
    )
    for path in written:
        emit(f"wrote {path}")
    return written
