"""``maedfer profile faces``: the figures it reports, on a small input (docs/design.md)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.preprocess import profile

runner = CliRunner()


def test_profile_faces_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real measurement at a small size and length, so the test takes seconds.
    monkeypatch.setattr(profile, "INPUTS", {"180p": (320, 180)})
    monkeypatch.setattr(profile, "CLIP_FRAMES", 16)
    result = runner.invoke(
        app, ["profile", "faces", "--device", "cpu", "--json", "--batch", "8", "--batches", "1"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stage"] == "faces" and data["device"] == "cpu" and data["input"] == "180p"
    figures = data["by_input"]["180p"]
    assert data["frames_per_s"] == figures["end_to_end"]["fps"] > 0
    assert set(figures["detect_every"]) == {"1", "4", "8"}
    assert set(figures["batching"]) == {"1", "8"}
    assert set(figures["mtcnn_baseline"]) == {"batch_1", "batch_8"}
    assert figures["face_ratio"] == 1.0  # the animated portrait is found in every frame
    for f in [figures["decode"], figures["encode"], *figures["detect_every"].values()]:
        assert f["fps_p25"] <= f["fps"] <= f["fps_p75"]


def test_profile_faces_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "INPUTS", {"180p": (320, 180)})
    monkeypatch.setattr(profile, "CLIP_FRAMES", 8)
    result = runner.invoke(app, ["profile", "faces", "--device", "cpu", "--batches", "1"])
    assert result.exit_code == 0, result.output
    assert "end to end (decode+align+encode)" in result.stdout and "180p" in result.stdout
