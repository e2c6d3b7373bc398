"""``maedfer config list`` and ``maedfer config show``: the shipped recipe configs
(:mod:`maedfer.recipes.config`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Annotated

import typer

from maedfer.cli.common import Group, SetOpt, failures

app = typer.Typer(
    help="Recipe configs: the shipped ones, and any config resolved with overrides.",
    no_args_is_help=True,
    cls=Group,
)


@app.command("list")
def config_list() -> None:
    """Names of the shipped configs (use them with --config NAME)."""
    with failures():
        from maedfer.recipes.config import describe_config, list_configs

        width = max(60, shutil.get_terminal_size((100, 24)).columns)
        for name in list_configs():
            typer.echo(
                textwrap.fill(
                    describe_config(name),
                    width=width,
                    initial_indent=f"{name:24s} ",
                    subsequent_indent=" " * 25,
                )
            )


@app.command("show")
def config_show(
    name: Annotated[str, typer.Argument(help="Shipped config name or a YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Print a config resolved with its overrides, as YAML (copy it, edit it, run it)."""
    with failures():
        from maedfer.recipes.config import load, to_yaml

        typer.echo(to_yaml(load(name, overrides=set_)), nl=False)
