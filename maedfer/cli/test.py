"""``maedfer test CHECKPOINT --data M.parquet --out DIR``: the reference test of any fine-tuned
checkpoint on one fold (:func:`maedfer.evaluation.testing.run`). The same options, declared
here once, also serve ``maedfer evaluate --checkpoint``, its old spelling.

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from maedfer.cli.common import (
    Backend,
    Device,
    PrepareDataset,
    echo_json,
    failures,
    opt_device,
)

TestDataOpt = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="--checkpoint: manifest.")
]
FoldOpt = Annotated[
    int | None, typer.Option(help="--checkpoint: test fold, 1..K (k-fold datasets).")
]
SplitOpt = Annotated[
    str | None, typer.Option(help="--checkpoint: test split (fixed split; default test).")
]
DatasetOpt = Annotated[
    PrepareDataset | None,
    typer.Option(help="--checkpoint: refuse a manifest of another dataset."),
]
TestDeviceOpt = Annotated[
    Device,
    typer.Option(help="--checkpoint: where to run: cuda, cpu, or auto (CUDA when present)."),
]
BackendOpt = Annotated[Backend, typer.Option(help="--checkpoint: decoding.")]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="--checkpoint: clips per batch.",
        show_default="the checkpoint's recipe's, else 32",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="--checkpoint: loader worker processes (PyAV) or threads (DALI).",
        show_default="from the core count",
    ),
]
TestSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="--checkpoint, official: model field "
        "key=value the weights do not show (num_heads, img_size, num_frames; a YAML "
        "value), repeatable.",
    ),
]


def _plain(help_text: str) -> str:
    """``test``'s own help: the ``--checkpoint:`` prefix is ``evaluate``'s."""
    return help_text.removeprefix("--checkpoint, official: ").removeprefix("--checkpoint: ")


def _own(option: Any) -> Any:
    """The same option for ``test``, its help without ``evaluate``'s prefix."""
    base, info = option.__origin__, option.__metadata__[0]
    copy = typer.Option(
        info.default,
        *info.param_decls,
        help=_plain(info.help or ""),
        min=info.min,
        exists=info.exists,
        dir_okay=info.dir_okay,
        metavar=info.metavar,
        show_default=info.show_default,
    )
    return Annotated[base, copy]


def run_test(
    *,
    checkpoint: Path,
    data: Path | None,
    out: Path | None,
    fold: int | None,
    split: str | None,
    dataset: Any,
    device: Device,
    backend: Any,
    batch_size: int | None,
    workers: int | None,
    set_: list[str] | None,
    as_json: bool,
) -> None:
    """Test ``checkpoint``; print the report's summary (or the report as JSON)."""
    from maedfer.cli.common import usage

    if data is None or out is None:
        usage("testing a checkpoint needs --data M.parquet and --out DIR")
    started = time.perf_counter()
    with failures():
        from maedfer.evaluation import testing

        report = testing.run(
            checkpoint=checkpoint,
            data=data,
            out=out,
            fold=fold,
            split=split,
            dataset=dataset.value if dataset else None,
            device=opt_device(device),
            backend=backend.value,
            batch_size=batch_size,
            workers=workers,
            model_overrides=set_,
        )
    if as_json:
        echo_json(report)
    else:
        typer.echo(testing.format_summary(report, out, time.perf_counter() - started))


def test(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="A finetune run's last.pt or final.pt, "
            "or an official fine-tuned .pth of the lineage.",
        ),
    ],
    data: _own(TestDataOpt) = None,  # type: ignore[valid-type]
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Folder for report.json, predictions.parquet and report.html (required).",
        ),
    ] = None,
    fold: _own(FoldOpt) = None,  # type: ignore[valid-type]
    split: _own(SplitOpt) = None,  # type: ignore[valid-type]
    dataset: _own(DatasetOpt) = None,  # type: ignore[valid-type]
    device: _own(TestDeviceOpt) = Device.auto,  # type: ignore[valid-type]
    backend: _own(BackendOpt) = Backend("auto"),  # type: ignore[valid-type]
    batch_size: _own(BatchSizeOpt) = None,  # type: ignore[valid-type]
    workers: _own(WorkersOpt) = None,  # type: ignore[valid-type]
    set_: _own(TestSetOpt) = None,  # type: ignore[valid-type]
    json_: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
) -> None:
    """The reference test of a fine-tuned checkpoint on one fold (2 views, softmax mean): what
    a finetune run reports, for any checkpoint (ours or an official one)."""
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
