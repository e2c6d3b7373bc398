"""Issue 21, case 2: one command writes a folder at a time (``maedfer.lock``).

The repro: two ``finetune`` processes into one ``--out``, the second started while the first
runs: the second is refused in one line naming the first's pid and host, and the folder holds
the first run alone. The same lock guards ``pretrain``, ``protocol``, ``prepare`` (shards side
by side, an unsharded run refused beside them), ``export`` and ``evaluate --checkpoint``; a
killed holder leaves nothing to clean up; a file system without locks is said, not fatal.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.recipes.clipdata import (
    TINY_FINETUNE_KEYS,
    TINY_PRETRAIN_KEYS,
    cli_sets,
    make_dataset,
    one_thread,
)

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
HOLD = """
import sys, time
from maedfer.lock import hold
with hold(sys.argv[1], shard=sys.argv[2] or None):
    print("held", flush=True)
    time.sleep(120)
"""


def _app():
    from maedfer.cli import app

    return app


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("locks"), clips_per_class=4)


def _finetune_args(manifest: Path, out: Path, epochs: int) -> list[str]:
    return [
        "finetune",
        "--data",
        str(manifest),
        "--fold",
        "1",
        "--out",
        str(out),
        *cli_sets(
            {
                **TINY_FINETUNE_KEYS,
                "schedule.epochs": epochs,
                "data.batch_size": 2,
                "data.workers": 0,
                "loss.mixup": 0,
                "loss.cutmix": 0,
            }
        ),
    ]


def _refused(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line.split("\r")[-1] for line in result.output.splitlines()]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: "), lines
    assert "is in use by" in lines[0]
    return lines[0]


class Holder:
    """Another process holding a folder's lock, as any maedfer command does."""

    def __init__(self, folder: Path, shard: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder), shard],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # as the OOM killer does: no clean-up at all
        self.proc.wait(timeout=30)


@pytest.mark.usefixtures(one_thread.__name__)
def test_two_finetunes_into_one_folder(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [sys.executable, "-m", "maedfer.cli", *_finetune_args(manifest, out, epochs=500)],
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "config.yaml").exists() and first.poll() is None:
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        line = _refused(runner.invoke(_app(), _finetune_args(manifest, out, epochs=2)))
        assert (
            f"{out} is in use by maedfer finetune (pid {first.pid} on {socket.gethostname()}"
            in line
            and line.endswith("choose another --out (run.out)")
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # the kernel released the killed run's lock: the folder is the first run's to resume
    result = runner.invoke(
        _app(),
        _finetune_args(manifest, out, epochs=500)[:-2]
        + ["--set", "schedule.max_steps=1", "--dry-run"],
    )
    assert result.exit_code in (0, 1), result.output
    assert "in use" not in result.output


@pytest.mark.parametrize("command", ["pretrain", "protocol", "export", "evaluate", "prepare"])
def test_every_writing_command_is_refused_while_its_folder_is_held(
    command: str, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not read: the lock is taken first")
    args = {
        "pretrain": [
            "pretrain",
            "--data",
            str(manifest),
            "--out",
            str(out),
            *cli_sets({**TINY_PRETRAIN_KEYS, "data.workers": 0}),
        ],
        "protocol": [
            "protocol",
            "demo-finetune",
            "--data",
            str(manifest),
            "--init",
            str(fake),
            "--out",
            str(out),
        ],
        "export": ["export", str(fake), "--format", "onnx", "--out", str(out)],
        "evaluate": [
            "evaluate",
            "--checkpoint",
            str(fake),
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(out),
        ],
        "prepare": ["prepare", "ravdess", "--raw", str(tmp_path / "raw"), "--out", str(out)],
    }[command]
    holder = Holder(out)
    try:
        line = _refused(runner.invoke(_app(), args))
        assert f"(pid {holder.proc.pid} on {socket.gethostname()}" in line
    finally:
        holder.kill()


def test_prepare_shards_share_a_folder_and_a_kill_leaves_nothing_held(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    for name in ("x.mp4", "y.mp4"):
        (raw / "a" / name).write_bytes(b"")
    index_only = [
        "prepare",
        "folder",
        "--raw",
        str(raw),
        "--out",
        str(out),
        "--index-only",
        "--folds",
        "2",
    ]
    shard = Holder(out, shard="shard-1-of-2")
    try:
        other = runner.invoke(_app(), [*index_only, "--shard", "2/2"])
        assert other.exit_code == 0, other.output  # another shard runs beside it
        line = _refused(runner.invoke(_app(), index_only))
        assert "shard runs of `maedfer prepare --shard`" in line
        line = _refused(runner.invoke(_app(), [*index_only, "--shard", "1/2"]))
        assert f"(pid {shard.proc.pid} on" in line
    finally:
        shard.kill()
    done = runner.invoke(_app(), index_only)
    assert done.exit_code == 0, done.output  # SIGKILL released both locks


def test_a_file_system_without_locks_is_said_not_fatal(tmp_path: Path, monkeypatch, caplog) -> None:
    def no_locks(*args, **kwargs):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    for name in ("x.mp4", "y.mp4"):
        (raw / "a" / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="maedfer"):
        result = runner.invoke(
            _app(),
            [
                "prepare",
                "folder",
                "--raw",
                str(raw),
                "--out",
                str(tmp_path / "out"),
                "--index-only",
                "--folds",
                "2",
            ],
        )
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records if "cannot lock" in r.getMessage()]
    assert said and "does not support locks: No locks available" in said[0]
