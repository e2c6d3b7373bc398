"""``maedfer demo --quick``: the whole pipeline, shortened, through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.demo import render


def test_quick_demo_runs_every_stage_and_writes_reports(tmp_path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output[-2000:]

    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [
        "render",
        "prepare (faces)",
        "pretrain",
        "finetune fold 1",
        "finetune fold 2",
        "evaluate",
    ]
    assert all(s["seconds"] > 0 and s["rate"] > 0 for s in summary["stages"])
    assert summary["clips"]["rendered"] == 4 * len(render.CLASSES) * 2
    assert summary["clips"]["prepared"] == summary["clips"]["rendered"]  # MTCNN found every face
    assert summary["chance"] == 1 / len(render.CLASSES)
    assert (out / "prepared" / "manifest.parquet").is_file()
    assert (out / "pretrain" / "checkpoints" / "last.pt").is_file()

    for fold in (1, 2):
        report = json.loads((out / "finetune" / f"fold_{fold}" / "report.json").read_text())
        assert {"uar", "war", "confusion_matrix"} <= set(report)
        assert 0 <= report["uar"] <= 1 and 0 <= report["war"] <= 1
        # the test fold holds one portrait: its clips, every demo class
        assert sum(map(sum, report["confusion_matrix"])) == len(render.CLASSES) * 2
    fold_uars = [f["uar"] for f in summary["folds"]]
    assert abs(summary["uar"] - sum(fold_uars) / 2) < 1e-9
    assert "UAR" in result.output and "x chance" in result.output
    assert str(out / "prepared" / "manifest.parquet") in result.output
    assert json.loads((out / "profile.json").read_text())["stages"][0]["unit"] == "clips"
