"""``maedfer profile``: the throughput of one stage on this machine, or of all of them.

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import Backend, Device, DeviceOpt, failures, opt_device


class Stage(str, enum.Enum):
    data = "data"
    faces = "faces"
    model = "model"
    train = "train"


def profile(
    stage: Annotated[
        Stage | None, typer.Argument(help="Which stage to measure; all of them when absent.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="model/train: model name; model: also a comma-separated list, or "
            "'lineage' (every model of docs/models.md beside LGI-Former).",
            show_default="lgi_former_base",
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Clips per batch (faces: frames per network batch).",
            show_default="model 1, train 2, data 8, faces 32 on CPU; model 8, train "
            "32, data 32 on CUDA",
        ),
    ] = None,
    batches: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Batches to time.",
            show_default="model/train/faces 2, data 5 on CPU; more on CUDA",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="data: manifest.parquet to read (required for the data stage)."),
    ] = None,
    backend: Annotated[Backend, typer.Option(help="data: decoding backend.")] = Backend("auto"),
    workers: Annotated[
        int | None,
        typer.Option(help="data: loader worker processes.", show_default="from the core count"),
    ] = None,
    device: DeviceOpt = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Throughput of one stage on this machine (table, or JSON with --json)."""
    dev = opt_device(device)
    with failures():
        if stage is None:
            from maedfer import profile_all

            result = profile_all.run(device=dev)
            text = profile_all.format_table
        elif stage is Stage.model:
            from maedfer.model import profile as model_profile

            result = model_profile.run(name=name, batch=batch, batches=batches, device=dev)
            lineage = "models" in result  # --name lineage, or several names
            text = model_profile.format_lineage if lineage else model_profile.format_table
        elif stage is Stage.train:
            from maedfer.recipes import profile as train_profile

            result = train_profile.run(name=name, batch=batch, batches=batches, device=dev)
            text = train_profile.format_table
        elif stage is Stage.faces:
            from maedfer.preprocess import profile as faces_profile

            result = faces_profile.run(batch=batch, batches=batches, device=dev)
            text = faces_profile.format_table
        else:
            from maedfer.pipelines import profile as data_profile

            result = data_profile.run(
                data=data,
                backend=backend.value,
                batch=batch,
                batches=batches,
                workers=workers,
                device=dev,
            )
            text = data_profile.format_table
    typer.echo(json.dumps(result) if as_json else text(result))
