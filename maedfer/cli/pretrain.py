"""``maedfer pretrain``: MAE pre-training (:func:`maedfer.recipes.pretrain.run`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import (
    ConfigOpt,
    DataOpt,
    Device,
    DryRunOpt,
    JsonOpt,
    OverwriteOpt,
    ResumeOpt,
    SaveEveryOpt,
    SetOpt,
    TrainDeviceOpt,
    failures,
    opt_device,
    opt_value,
)


def pretrain(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (run.out).", show_default="runs/pretrain"),
    ] = None,
    device: TrainDeviceOpt = Device.auto,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    save_every: SaveEveryOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """MAE pre-training of LGI-Former on a manifest (default config: pretrain-voxceleb2)."""
    from maedfer.cli.training import present, pretrain_summary

    with failures():
        from maedfer.recipes.pretrain import run

        result = run(
            config,
            overrides=set_,
            data=data,
            out=out,
            device=opt_device(device),
            resume=opt_value(resume),
            overwrite=overwrite or None,
            save_every=save_every,
            dry_run=dry_run,
        )
    present(result, dry_run=dry_run, as_json=json_, summary=pretrain_summary(result))
