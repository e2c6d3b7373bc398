"""Numeric precision of a training run (docs/runs.md).

``auto``: bf16 autocast on a GPU that supports it, fp16 autocast with a gradient scaler on an
older GPU, fp32 on CPU. ``fp16`` (the reference's choice, docs/recipe.md) always uses the scaler;
``bf16`` needs no scaler (same exponent range as fp32). Weights and optimiser state stay fp32.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from maedfer.errors import MaedferError

Precision = Literal["auto", "bf16", "fp16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The concrete precision (``bf16``/``fp16``/``fp32``) for ``device``.

    Raises:
        MaedferError: unknown name, or a half precision asked for on CPU (slow and unsupported
            there by the scaler).
    """
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise MaedferError(f"precision {precision!r} is unknown; choose one of {PRECISIONS}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise MaedferError(
                f"precision {precision} needs a CUDA device (this run is on {device}); use fp32"
            )
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's autocast context (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A scaler that is active for fp16 only (disabled ones pass losses through unchanged)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
