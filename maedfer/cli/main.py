"""The ``maedfer`` application: every command registered, one module each (Typer's
one-file-per-command layout; docs/design.md, "The command line")."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated

import typer
from typer.core import TyperCommand

from maedfer.cli import (
    config,
    demo,
    embed,
    evaluate,
    export,
    finetune,
    predict,
    prepare,
    pretrain,
    profile,
    protocol,
    reconstruct,
    test,
)
from maedfer.cli.common import Command, Group

app = typer.Typer(
    name="maedfer",
    help="Self-supervised dynamic facial expression recognition (MAE-DFER), end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        from maedfer import __version__

        typer.echo(f"maedfer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print maedfer's version and exit."
        ),
    ] = False,
) -> None:
    pass


# In the order `maedfer --help` lists them: the pipeline from raw videos to a score, then the
# tools around it.
_FIRST: list[Callable[..., None]] = [prepare.prepare, pretrain.pretrain, finetune.finetune]
_THEN: list[Callable[..., None]] = [
    evaluate.evaluate,
    test.test,
    protocol.protocol,
    predict.predict,
    reconstruct.reconstruct,
    export.export,
    embed.embed,
    profile.profile,
    demo.demo,
]


def _short(command: Callable[..., None]) -> str:
    """The first paragraph of a command's docstring as one line: the list in `maedfer --help`
    (rich markup keeps a docstring's line breaks, which wrap mid-sentence in that list)."""
    doc = inspect.getdoc(command) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


for _command in _FIRST:
    app.command(cls=Command, short_help=_short(_command))(_command)
app.add_typer(config.app, name="config")
for _command in _THEN:
    app.command(cls=Command, short_help=_short(_command))(_command)
for _info in config.app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = Command


def main() -> None:
    app()
