"""``maedfer export``: the classifier as safetensors or ONNX (:mod:`maedfer.inference.export`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import (
    ClassesOpt,
    DatasetClassesOpt,
    ModelSetOpt,
    failures,
    opt_value,
)


class ExportFormat(str, enum.Enum):
    safetensors = "safetensors"
    onnx = "onnx"


def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="last.pt, final.pt or an official MAE-DFER fine-tuned .pth.",
        ),
    ],
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="safetensors (+ config.json) or onnx.")
    ],
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for the files.")],
    dataset: DatasetClassesOpt = None,
    classes: ClassesOpt = None,
    set_: ModelSetOpt = None,
) -> None:
    """Write the classifier as safetensors + config.json, or as ONNX checked with onnxruntime."""
    with failures():
        from maedfer.inference.export import run as export_run

        export_run(
            checkpoint=checkpoint,
            format=format_.value,
            out=out,
            dataset=opt_value(dataset),
            classes=classes,
            model_overrides=set_,
            show=typer.echo,
        )
