"""Issue 21, case 6: ``prepare --workers 2`` killed in any way leaves no process behind.

The repro: SIGTERM or SIGKILL of the main process (``kill PID``, ``timeout``, the OOM killer)
used to leave the fork server, the resource tracker and both workers running forever. Real
clips from the committed portraits, real MTCNN, real worker processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.preprocess.test_reliability import STEMS, _journal_count, _tree

REPO = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children, their children, ...)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    parent_of[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    alive.add(pid)
        except OSError:
            continue
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_prepare_leaves_no_worker_fork_server_or_tracker(
    how, tmp_path: Path, portraits
) -> None:
    raw = _tree(tmp_path, portraits, STEMS, frames=40)
    out = tmp_path / "out"
    log = (tmp_path / "prepare.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maedfer.cli",
            "prepare",
            "ravdess",
            "--raw",
            str(raw),
            "--out",
            str(out),
            "--size",
            "64",
            "--workers",
            "2",
        ],
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 180
    helpers: set[int] = set()
    while _journal_count(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        helpers |= _descendants(proc.pid)
        time.sleep(0.05)
    helpers |= _descendants(proc.pid)
    assert proc.poll() is None, (tmp_path / "prepare.log").read_text()
    assert len(_alive(helpers)) >= 4, helpers  # fork server, resource tracker, 2 workers
    proc.send_signal(how)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while _alive(helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(helpers)
    for pid in left:  # do not leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, "processes outlived prepare: " + ", ".join(map(str, sorted(left)))
    text = (tmp_path / "prepare.log").read_text()
    if how == signal.SIGTERM:  # Ctrl-C's clean-up, one line, its own exit status
        assert proc.returncode == 143 and "Traceback" not in text
        assert text.strip().splitlines()[-1].split("\r")[-1] == (
            "maedfer: terminated; run the same command again to resume"
        )
