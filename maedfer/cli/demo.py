"""``maedfer demo``: the whole pipeline on built-in data (:mod:`maedfer.demo`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import (
    Device,
    DeviceOpt,
    failures,
    opt_device,
)


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "runs/demo"
    ),
    device: DeviceOpt = Device.auto,
    quick: Annotated[bool, typer.Option(help="A shortened run (what the tests use).")] = False,
) -> None:
    """The whole pipeline on built-in demo data, on CPU in minutes."""
    with failures():
        from maedfer.demo import run as demo_run

        demo_run(out=out, device=opt_device(device), quick=quick, show=typer.echo, notify=_stderr)


def _stderr(line: str) -> None:
    typer.echo(line, err=True)
