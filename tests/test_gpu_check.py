"""bench/gpu_check.py --dry-run: every measurement's subprocess, budget and JSON path on the CPU.

The GPU run is the same code with the GPU's sizes; here it must give every measurement a status,
keep the other figures when one measurement's process is killed, and turn a missing package
into ``not run`` for exactly the measurements that need it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maedfer.pipelines.loader import dali_available

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "bench" / "gpu_check.py"
sys.path.insert(0, str(REPO / "bench"))
from gpu_check import MEASUREMENTS  # noqa: E402

pytestmark = pytest.mark.skipif(not dali_available(), reason="the dry run decodes with DALI")

# Hides PyAV from every step of the check but its set-up (which makes the clips).
HIDE_PYAV = """
import os, sys
if os.environ.get("MAEDFER_GPU_CHECK_STEP", "setup") != "setup":
    class _HidePyAV:
        def find_spec(self, name, path=None, target=None):
            if name == "av" or name.startswith("av."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _HidePyAV())
"""


def check(out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(CHECK),
            "--dry-run",
            "--out",
            str(out),
            "--cache",
            str(out / "clips"),
            *args,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def read(out: Path) -> dict:
    return json.loads((out / "gpu_check.json").read_text())


def test_dry_run_gives_every_measurement_a_status_and_survives_a_kill(tmp_path: Path) -> None:
    proc = check(tmp_path)
    victim, killed = "step_eager", None
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            entry = read(tmp_path)["measurements"][victim]
        except (OSError, ValueError):
            entry = {}
        if entry.get("status") == "running" and killed is None:
            killed = entry["pid"]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-3000:]
    assert killed is not None
    results = read(tmp_path)
    measured = results["measurements"]
    assert list(measured) == [m.name for m in MEASUREMENTS]
    assert results["mode"] == "dry" and results["setup"]["status"] == "ok"
    assert measured[victim]["status"] == "killed"
    assert "SIGKILL" in measured[victim]["reason"]
    others = {name: e["status"] for name, e in measured.items() if name != victim}
    assert set(others.values()) == {"ok"}, others
    figures = {name: e["figures"] for name, e in measured.items() if name != victim}
    assert (
        figures["frame_identity"]["exact"]
        and figures["frame_identity"]["test_views"]["samples"] > 0
    )
    assert figures["pixel_equality"]["within_tolerance"]
    assert figures["loader_dali"]["train"]["enough_batches"]
    assert figures["loader_pyav"]["train"]["clips_per_s"] > 0
    assert figures["preflight"]["system"]["commit"]
    assert figures["step_compiled"]["finetune"]["graph_breaks"] >= 0
    # the recipe itself: 3 log windows of 2 steps, each window's rate logged by its loop
    assert figures["recipe_step"]["steps"] == 6
    assert len(figures["recipe_step"]["clips_per_s_per_window"]) == 3
    assert figures["recipe_step"]["backend"] == "pyav"
    assert results["summary"]["loader_train_dali_over_pyav"] > 0
    # the table at the end: one line per measurement
    table = output[output.index("measurement      status") :]
    assert all(f"\n{m.name:16} " in table for m in MEASUREMENTS)


def test_a_missing_package_stops_only_what_needs_it(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PYAV)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hide), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    chosen = ["preflight", "frame_identity", "pixel_equality", "loader_pyav", "syncs", "faces"]
    proc = check(tmp_path, "--only", ",".join(chosen), env=env)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    measured = read(tmp_path)["measurements"]
    needing = {m.name for m in MEASUREMENTS if "av" in m.needs and m.name in chosen}
    assert needing == {"pixel_equality", "loader_pyav", "faces"}
    for name in chosen:
        if name in needing:
            assert measured[name]["status"] == "not run", measured[name]
            assert "PyAV is not importable" in measured[name]["reason"]
        else:
            assert measured[name]["status"] == "ok", measured[name]
    assert "missing" in measured["preflight"]["figures"]["modules"]["av"]
    unchosen = {n: e for n, e in measured.items() if n not in chosen}
    assert all(e["reason"] == "not selected (--only)" for e in unchosen.values())


def test_out_is_required_and_only_names_are_checked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAEDFER_OUT"}
    done = subprocess.run(
        [sys.executable, str(CHECK), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 2 and "--out DIR is required" in done.stderr
    done = subprocess.run(
        [sys.executable, str(CHECK), "--out", str(tmp_path), "--only", "preflight,warp_drive"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "unknown measurement(s) warp_drive" in done.stderr


def test_a_terminated_check_stops_its_step_and_says_so(tmp_path: Path) -> None:
    proc = check(tmp_path, "--only", "step_eager")
    child = None
    deadline = time.monotonic() + 120
    while child is None and proc.poll() is None and time.monotonic() < deadline:
        try:
            entry = read(tmp_path)["measurements"]["step_eager"]
            child = entry.get("pid") if entry["status"] == "running" else None
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert child is not None
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output[-2000:]
    entry = read(tmp_path)["measurements"]["step_eager"]
    assert entry == {"status": "not run", "reason": "interrupted", "needs": ["cuda"]}
    with pytest.raises(ProcessLookupError):  # the step's process went with the check
        os.kill(child, 0)
