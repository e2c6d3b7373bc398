"""``maedfer embed``: pooled features per window or clip (:mod:`maedfer.inference.embed`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import (
    CheckpointOpt,
    ClassesOpt,
    DatasetClassesOpt,
    Device,
    DeviceOpt,
    HopOpt,
    failures,
    opt_device,
    opt_value,
)


def embed(
    inputs: Annotated[
        list[str], typer.Argument(help="Videos (files, folders, globs), or one manifest.parquet.")
    ],
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(dir_okay=False, help="features.parquet")],
    fold: Annotated[
        int | None,
        typer.Option(help="Manifest: only this fold's clips.", show_default="every clip"),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Manifest: only this split.", show_default="every clip")
    ] = None,
    dataset: DatasetClassesOpt = None,
    classes: ClassesOpt = None,
    device: DeviceOpt = Device.auto,
    hop: HopOpt = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Manifest: clips per batch.", show_default="8")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Manifest: loader worker processes.", show_default="from the core count"
        ),
    ] = None,
) -> None:
    """Pooled, normalised features per window of each video, or per clip of a manifest."""
    with failures():
        from maedfer.inference.embed import run as embed_run

        embed_run(
            inputs=inputs,
            checkpoint=checkpoint,
            out=out,
            device=opt_device(device),
            fold=fold,
            split=split,
            hop=hop,
            dataset=opt_value(dataset),
            classes=classes,
            batch_size=batch_size,
            workers=workers,
            show=typer.echo,
        )
