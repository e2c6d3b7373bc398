"""The ``maedfer`` command line (docs/design.md, "The command line").

One module per command (``maedfer/cli/prepare.py``, ``finetune.py``, ...), each declaring its
options and calling the library function it presents, imported inside the command (the CLI
starts fast); :mod:`maedfer.cli.common` holds the shared options and the one error funnel;
:mod:`maedfer.cli.main` registers them all. ``maedfer`` (the entry point) and
``python -m maedfer.cli`` run :data:`app`.
"""

from maedfer.cli.main import app, main

__all__ = ["app", "main"]
