"""``maedfer profile data`` through the real CLI (docs/design.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from maedfer.cli import app


def test_profile_data_json(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    args = [
        "profile",
        "data",
        "--data",
        str(folder / "manifest.parquet"),
        "--backend",
        "pyav",
        "--batch",
        "2",
        "--batches",
        "2",
        "--workers",
        "0",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["stage"] == "data" and figures["device"] == "cpu"
    assert figures["backend"] == "pyav" and figures["mode"] == "train"
    assert figures["clips_per_s"] > 0 and figures["time_to_first_batch_s"] > 0
    assert abs(figures["frames_per_s"] - 16 * figures["clips_per_s"]) < 1e-6
    assert figures["cpu_cores_used"] > 0 and figures["num_bad"] == 0
    assert figures["clips_per_cpu_s"] > 0  # issue 14: the rate the loader benches compare


def test_profile_data_table_and_errors(
    h264_clips: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    folder, _ = h264_clips
    runner = CliRunner()
    table = runner.invoke(
        app,
        [
            "profile",
            "data",
            "--data",
            str(folder / "manifest.parquet"),
            "--backend",
            "pyav",
            "--batch",
            "2",
            "--batches",
            "1",
            "--workers",
            "0",
        ],
    )
    assert table.exit_code == 0 and "clips / s" in table.stdout
    assert "clips / CPU-second" in table.stdout
    missing = runner.invoke(app, ["profile", "data", "--data", str(tmp_path / "none.parquet")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    absent = runner.invoke(app, ["profile", "data"])
    assert absent.exit_code == 1 and "--data" in absent.output
