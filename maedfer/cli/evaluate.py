"""``maedfer evaluate RUN...``: metrics of one run, or the cross-fold summary of several
(:func:`maedfer.evaluation.evaluate.evaluate_runs`).

``evaluate --checkpoint CKPT --data M.parquet --out DIR``, the old spelling of ``maedfer test``,
still works: it says once that the command is now ``test`` and runs it.

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import Backend, Device, echo_json, failures, usage
from maedfer.cli.test import (
    BackendOpt,
    BatchSizeOpt,
    DatasetOpt,
    FoldOpt,
    SplitOpt,
    TestDataOpt,
    TestDeviceOpt,
    TestSetOpt,
    WorkersOpt,
    run_test,
)


def evaluate(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(exists=True, help="Run folder(s); or none, with --checkpoint."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Several runs: folder for evaluation.json and confusion_pooled.png "
            "(default: the folder holding all runs). --checkpoint: folder for report.json "
            "and predictions.parquet (required).",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Test this fine-tuned checkpoint "
            "(a finetune run's last.pt, or an official MAE-DFER .pth) instead; now "
            "`maedfer test CHECKPOINT`.",
        ),
    ] = None,
    data: TestDataOpt = None,
    fold: FoldOpt = None,
    split: SplitOpt = None,
    dataset: DatasetOpt = None,
    device: TestDeviceOpt = Device.auto,
    backend: BackendOpt = Backend("auto"),
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    set_: TestSetOpt = None,
) -> None:
    """Metrics of one run, or the cross-fold summary of several (per-fold mean and pooled); or,
    with --checkpoint, the reference test of a checkpoint (now `maedfer test`)."""
    if checkpoint is not None:
        if runs:
            usage("give run folders or --checkpoint, not both")
        if data is None or out is None:
            usage("--checkpoint needs --data M.parquet and --out DIR")
        run_test(
            checkpoint=checkpoint,
            data=data,
            out=out,
            fold=fold,
            split=split,
            dataset=dataset,
            device=device,
            backend=backend,
            batch_size=batch_size,
            workers=workers,
            set_=set_,
            as_json=json_,
        )
        # said once, after the work (a failure stays one line)
        typer.echo(
            "maedfer: note: `evaluate --checkpoint` is now `maedfer test CHECKPOINT "
            "--data M.parquet --out DIR`",
            err=True,
        )
        return
    given = [
        f"--{name.replace('_', '-')}"
        for name, value in (
            ("data", data),
            ("fold", fold),
            ("split", split),
            ("dataset", dataset),
            ("batch_size", batch_size),
            ("workers", workers),
            ("set", set_),
        )
        if value is not None
    ]
    if not runs:
        usage(
            "give run folder(s), or --checkpoint CKPT --data M.parquet --out DIR (now: "
            "maedfer test CKPT --data M.parquet --out DIR)"
        )
    if given:
        usage(f"{', '.join(given)} go with a checkpoint only (maedfer test), not with run folders")
    with failures():
        from maedfer.evaluation.evaluate import evaluate_runs

        evaluation = evaluate_runs(runs, out)
    for line in evaluation.warnings():
        typer.echo(line, err=True)
    if json_:
        echo_json(evaluation.payload)
    else:
        typer.echo(evaluation.text())
