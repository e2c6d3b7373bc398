"""``maedfer protocol``: fine-tune and test every fold, then the cross-fold summary
(:func:`maedfer.recipes.protocol.run`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import failures


def protocol(
    config: Annotated[
        str,
        typer.Argument(
            help="Fine-tuning config for every fold: a shipped config "
            "name (maedfer config list) or a YAML file."
        ),
    ],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="manifest.parquet")],
    out: Annotated[Path, typer.Option(file_okay=False, help="fold_K/ and summary.json go here.")],
    init: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="Pre-trained checkpoint (every fold starts from it; "
            "with --model, the start of each model given without its own).",
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="NAME or NAME=INIT: run the protocol for each model in "
            "OUT/NAME, then one table of all (comparison.json); repeatable.",
        ),
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="Only these folds, e.g. 1,3 (default: every fold).")
    ] = None,
    print_commands: Annotated[
        bool, typer.Option(help="Print the per-fold commands instead of running them.")
    ] = False,
    sbatch: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Write a SLURM array job (a task per fold) instead."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe override key=value for every fold, repeatable."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
) -> None:
    """Fine-tune and test every fold in turn (finished folds are kept), then the cross-fold
    summary beside the model's published figures; with --model, several models and one table."""
    from maedfer.cli.common import echo_json

    def notify(line: str) -> None:
        typer.echo(line, err=True)

    with failures():
        from maedfer.recipes.protocol import run

        result = run(
            config=config,
            data=data,
            init=init,
            out=out,
            folds=folds,
            print_commands=print_commands,
            sbatch=sbatch,
            overrides=set_,
            models=model,
            notify=notify,
        )
    if "commands" in result:
        typer.echo("\n".join(result["commands"]))
    elif "sbatch" in result:
        return
    elif json_:
        echo_json(result)
    elif model:
        from maedfer.evaluation import comparison

        typer.echo(comparison.format_table(result))
        typer.echo(f"\nwrote {out / comparison.COMPARISON}")
    else:
        from maedfer.recipes.protocol import SUMMARY, format_summary

        typer.echo(format_summary(result))
        typer.echo(f"\nwrote {out / SUMMARY}, {out / 'report.html'}")
