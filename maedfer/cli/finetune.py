"""``maedfer finetune``: fine-tune and test one fold (:func:`maedfer.recipes.finetune.run`).

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


def finetune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    fold: Annotated[
        int | None,
        typer.Option(
            help="Test fold of a k-fold dataset, 1..K (data.fold); none for a "
            "fixed train/test split.",
            show_default="none",
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Pre-trained checkpoint (model.init)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (run.out).", show_default="runs/finetune/<dataset>_fold<K>"),
    ] = None,
    device: TrainDeviceOpt = Device.auto,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    save_every: SaveEveryOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune a classifier on one fold and test it (default config: finetune-dfew)."""
    from maedfer.cli.training import finetune_summary, present

    with failures():
        from maedfer.recipes.finetune import run

        result = run(
            config,
            overrides=set_,
            data=data,
            fold=fold,
            init=init,
            out=out,
            device=opt_device(device),
            resume=opt_value(resume),
            overwrite=overwrite or None,
            save_every=save_every,
            dry_run=dry_run,
        )
    present(result, dry_run=dry_run, as_json=json_, summary=finetune_summary(result))
