"""``maedfer profile`` with no stage: every stage in one table, or one JSON object."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from maedfer import profile_all
from maedfer.cli import app


def test_profile_without_a_stage_measures_every_stage() -> None:
    result = CliRunner().invoke(app, ["profile", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output[-2000:]
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["stage"] == "all" and data["device"] == "cpu"
    assert {"torch", "nvidia-dali-cuda130", "av"} <= set(data["versions"])
    assert data["versions"]["torch"].startswith("2.")
    stages = data["stages"]
    assert stages["data"]["clips_per_s"] > 0 and stages["data"]["time_to_first_batch_s"] > 0
    assert stages["faces"]["frames_per_s"] > 0
    assert stages["model"]["params"] > 80e6 and stages["model"]["gmacs"] > 40
    assert stages["model"]["fwd_s_per_clip"] > 0 and stages["model"]["fwd_bwd_s_per_clip"] > 0
    assert stages["train"]["clips_per_s"] > 0

    table = profile_all.format_table(data)
    for row in ("decode + augment", "faces", "model forward", "train step"):
        assert row in table
    assert f"torch {data['versions']['torch']}" in table and "PyAV" in table and "DALI" in table
