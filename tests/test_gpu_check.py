"""bench/gpu_check.py --dry-run: lists every GPU measurement and runs its CPU plumbing (~15 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = {"equality", "dali_throughput", "first_batch", "train_step", "dali_fed_step", "faces"}


def test_gpu_check_dry_run_lists_and_checks_the_plumbing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--out",
         str(tmp_path), "--cache", str(tmp_path / "clips")],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    listed = done.stdout.split("gpu_check measures:")[1]
    assert all(f"  {key}:" in listed for key in KEYS)
    results = json.loads((tmp_path / "gpu_check-dry-run.json").read_text())
    assert results["dry_run"] and set(results["measurements"]) == KEYS
    assert {"date", "commit", "gpu"} <= set(results["system"])
    measured = results["measurements"]
    assert "ours_eager" in measured["train_step"]["finetune"]  # the step ran (tiny, CPU)
    if "missing" not in measured["equality"]:  # DALI installed: its CPU pipeline ran
        train = measured["equality"]["train_rand_augment"]
        assert train["mean"] <= 0.25 and train["share_beyond_2"] <= 0.005
        assert measured["equality"]["test"]["max"] <= 2.0
    assert "GPU only" in measured["faces"]["missing"]
