"""Issue 21, case 8: the command line's own gaps.

``maedfer --version``; help that states the default of every option whose default is not a
plain value (``--out``, ``--fold``, evaluate's and embed's ``--batch-size``/``--workers``,
profile's options); ``--device`` with help everywhere; no ``<list[str]>``/``<bool>`` type
noise; ``maedfer config list`` gives each config's first sentence whole.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import maedfer
from maedfer.cli import app
from maedfer.recipes.config import CONFIG_DIR, list_configs

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    "prepare",
    "pretrain",
    "finetune",
    "evaluate",
    "protocol",
    "predict",
    "export",
    "embed",
    "profile",
    "demo",
    "config list",
    "config show",
]


def _help(command: str) -> str:
    result = runner.invoke(
        app, [*command.split(), "--help"], env={"COLUMNS": "200"}, terminal_width=200
    )
    assert result.exit_code == 0, result.output
    return result.output


def _row(text: str, option: str) -> str:
    """The help text of ``option`` (its row and the wrapped lines after it)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(rf"\s{option}\s", line))
    rows = [lines[start]]
    for line in lines[start + 1 :]:
        if re.match(r"^│\s+(--|\*\s+--|[a-z]+\.\.\.)", line) or line.startswith("╰"):
            break
        rows.append(line)
    return " ".join(" ".join(rows).replace("│", " ").split())


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"maedfer {maedfer.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "maedfer.cli", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == f"maedfer {maedfer.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_no_type_noise_and_every_device_has_help(command: str) -> None:
    text = _help(command)
    assert "<bool>" not in text and "list[" not in text, text
    if "--device" in text:
        row = _row(text, "--device")
        assert re.search(r"<auto\|cpu\|cuda>\s+\S", row) and "cuda" in row.split(">", 1)[1], row


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("finetune", "--out", "runs/finetune/<dataset>_fold<K>"),
        ("pretrain", "--out", "runs/pretrain"),
        ("finetune", "--fold", "none"),
        ("evaluate", "--batch-size", "the checkpoint's recipe's, else 32"),
        ("evaluate", "--workers", "from the core count"),
        ("embed", "--batch-size", "8"),
        ("embed", "--workers", "from the core count"),
        ("profile", "--name", "lgi_former_base"),
        ("profile", "--batch", "model 1, train 2, data 8, faces 32 on CPU"),
        ("profile", "--batches", "model/train/faces 2, data 5 on CPU"),
        ("profile", "--workers", "from the core count"),
    ],
)
def test_help_states_the_defaults(command: str, option: str, default: str) -> None:
    row = _row(_help(command), option)
    assert "[default:" in row and default in row, row


def test_config_list_gives_whole_first_sentences() -> None:
    result = runner.invoke(app, ["config", "list"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name in list_configs():
        comment = [
            line.lstrip("#").strip()
            for line in (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()
            if line.startswith("#")
        ]
        joined = " ".join(" ".join(comment).split())
        sentence = joined[: re.search(r"[.!?](\s|$)", joined).start() + 1]
        assert f"{name} {sentence}" in text, name
        assert sentence.endswith((".", "!", "?")), sentence


def test_the_command_list_gives_each_first_paragraph_in_full_lines() -> None:
    """Wide enough, `maedfer --help` shows each command's summary on one line (docstring line
    breaks are not carried into the list)."""
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for command in ("evaluate", "test", "protocol", "predict", "reconstruct"):
        row = next(line for line in lines if line.strip("│ ").startswith(command + " "))
        following = lines[lines.index(row) + 1].strip("│ ")
        names = {c.callback.__name__ for c in app.registered_commands} | {"config"}
        assert following == "" or following.split()[0] in names, (command, following)
