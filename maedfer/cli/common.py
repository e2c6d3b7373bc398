"""What every command of the command line shares: the help layout, the choices, the options
declared once, and the one funnel from a failure to one line and an exit code (docs/design.md,
"The command line").

A command calls the library inside :func:`failures`: a ``MaedferError`` is printed to stderr
as one line and the command exits 1; a failure of the machine (full disk, permission) is worded
by :func:`maedfer.errors.one_line`; anything else is a bug: one line naming a file that holds
its traceback. Ctrl-C and SIGTERM exit 130 and 143, saying how to go on.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from typer.core import TyperCommand, TyperGroup

from maedfer.errors import MaedferError, Terminated, one_line
from maedfer.lock import WRITING_INTO
from maedfer.pipelines.backend import choices as backend_choices
from maedfer.quiet import quiet_library_warnings

_LIST_TYPE = re.compile(r"<list\[(\w+)\]>")


def _quiet_types(params: list[Any], ctx: Any) -> list[Any]:
    """Help without type noise: a flag shows no ``<bool>``, a list ``<path>...`` rather than
    ``<list[Path]>`` (typer's own display, adjusted per parameter)."""
    for param in params:
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.display_type_rich = lambda ctx=None: None
        elif hasattr(param, "display_type"):
            shown = _LIST_TYPE.sub(
                lambda m: f"<{m.group(1).lower()}>...", str(param.display_type(ctx) or "")
            )
            if shown.endswith(">..."):
                param.display_type_rich = lambda ctx=None, s=shown: s
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _quiet_types(super().get_params(ctx), ctx)


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _quiet_types(super().get_params(ctx), ctx)


# ---------------------------------------------------------------------------- the funnel


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """Run a command's library call: every failure ends as one line on stderr and an exit code
    (1 for an error; 130 for Ctrl-C, 143 for SIGTERM, after what was finished was kept)."""
    quiet_library_warnings()
    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException):
        raise  # the command line's own endings, not failures
    except KeyboardInterrupt as exc:
        # What was finished is kept (prepare's journal, the last checkpoint): say how to go on.
        how, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        typer.echo(f"maedfer: {how}; run the same command again to resume", err=True)
        raise typer.Exit(code=code) from None
    except Exception as exc:  # noqa: BLE001 (the funnel: every failure ends as one line)
        typer.echo(f"maedfer: error: {failure_line(exc)}", err=True)
        raise typer.Exit(code=1) from None


def failure_line(exc: Exception) -> str:
    """The one line of a failure: a MaedferError's message (a worker's re-raised one without
    its traceback), a failure of the machine, or an unexpected error, whose traceback is kept
    in a file for a bug report instead of flooding the terminal."""
    line = one_line(exc)
    if line is None and isinstance(exc, MaedferError):
        line = " ".join(str(exc).split("\n")[0].split())
    if line is None:
        line = _unexpected(exc)
    folder = getattr(exc, WRITING_INTO, None)
    if isinstance(exc, OSError) and not getattr(exc, "filename", None) and folder is not None:
        line += f" (while writing into {folder})"
    return line


def _unexpected(exc: Exception) -> str:
    """An error maedfer did not expect (a bug): one line naming a file with the traceback."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    if os.environ.get("MAEDFER_TRACEBACK"):
        typer.echo(text, err=True)
    try:
        fd, name = tempfile.mkstemp(prefix="maedfer-error-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(" ".join(sys.argv) + "\n\n" + text)
        kept = f"; the traceback is in {name} (please attach it to a bug report)"
    except OSError:
        kept = "; run with MAEDFER_TRACEBACK=1 to see the traceback"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}: {first}{kept}"


def usage(message: str) -> NoReturn:
    """A command-line mistake that no library function sees: one line, exit 1."""
    typer.echo(f"maedfer: error: {message}", err=True)
    raise typer.Exit(code=1)


def echo_json(value: Any) -> None:
    """One JSON object on stdout (``--json``)."""
    import json

    typer.echo(json.dumps(value, indent=2))


# ---------------------------------------------------------------------------- choices


def _registered_datasets() -> type[enum.Enum]:
    """The datasets' choices (prepare, test --dataset): every dataset in the registry
    (one module each)."""
    from maedfer.manifests import list_datasets

    return enum.Enum("PrepareDataset", {n.replace("-", "_"): n for n in list_datasets()}, type=str)  # type: ignore[return-value]


PrepareDataset: Any = _registered_datasets()


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Resume(str, enum.Enum):
    auto = "auto"
    true = "true"
    false = "false"


#: ``--backend`` choices: ``auto`` and the backend table's names (maedfer.pipelines.backend)
Backend: Any = enum.Enum("Backend", {name: name for name in backend_choices()}, type=str)  # type: ignore[misc]


def opt_value(option: enum.Enum | None) -> Any:
    return None if option is None else option.value


def opt_device(device: Device | None) -> str | None:
    return None if device is None or device is Device.auto else device.value


# ---------------------------------------------------------------------------- shared options

DeviceOpt = Annotated[
    Device, typer.Option(help="Where to run: cuda (the GPU), cpu, or auto (CUDA when present).")
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="Shipped config name (maedfer config list) or a YAML file; "
        "default: the official recipe.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Dotted override (YAML value), "
        "repeatable, e.g. --set optim.lr=1e-3 --set model.overrides.depth=2; a mapping "
        "sets its entries only, an entry set to null is removed.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option(help="Build the whole recipe, print what would run, train nothing.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="With --dry-run: print one JSON object.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False, help="manifest.parquet (data.manifest)."),
]
ResumeOpt = Annotated[
    Resume | None,
    typer.Option(
        help="auto (default): continue a run of the same recipe in OUT, leave a "
        "finished one alone; true: a checkpoint must be there; false: OUT must hold "
        "no run (run.resume)."
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option(help="Delete the run's files in OUT and start over (run.overwrite).")
]
SaveEveryOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Also keep checkpoints/epoch-NNNN.pt every N epochs "
        "(run.save_every; run.keep_checkpoints of them).",
    ),
]
TrainDeviceOpt = Annotated[
    Device, typer.Option(help="Where to train: cuda, cpu, or auto (CUDA when present; run.device).")
]
CheckpointOpt = Annotated[
    Path,
    typer.Option(
        exists=True,
        dir_okay=False,
        help="A finetune run's last.pt, its final.pt, or an official MAE-DFER fine-tuned .pth.",
    ),
]
DatasetClassesOpt = Annotated[
    PrepareDataset | None,
    typer.Option(
        "--dataset",
        help="Official checkpoints: the dataset it was fine-tuned on; "
        "its label order names the outputs.",
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(help="Official checkpoints: the output names in order, comma-separated."),
]
ModelSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Official checkpoints: model field "
        "key=value the weights do not show (num_heads, img_size, num_frames; a YAML "
        "value), repeatable.",
    ),
]
HopOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Window hop in sampled frames (default: half a window)."),
]
