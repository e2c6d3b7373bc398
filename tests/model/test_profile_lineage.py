"""``maedfer profile model --name lineage``: every model beside LGI-Former, one row each."""

import json

import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.model import profile
from maedfer.model.flops import count_gmacs
from tests.lineage import FAMILIES, tiny_model

runner = CliRunner()


def _fake_measure(name: str, *, batch: int, batches: int, device: torch.device) -> dict:
    """Real parameters and MACs of the tiny models, fixed times: the table's arithmetic."""
    model = tiny_model(name if name != "lgi_former_base" else "lgi_former_tiny")
    return {
        "name": name,
        "input": "8x32x32",
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": count_gmacs(model),
        "fwd_s_per_clip": 0.5 if name == "lgi_former_base" else 1.0,
        "fwd_bwd_s_per_clip": 2.0,
    }


def test_lineage_rows_with_ratios_to_lgi_former(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "measure", _fake_measure)
    result = runner.invoke(
        app, ["profile", "model", "--name", ",".join(FAMILIES), "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["baseline"] == "lgi_former_base"
    rows = figures["models"]
    assert [r["name"] for r in rows] == ["lgi_former_base", *FAMILIES]
    assert rows[0]["ratio_to_lgi_former"]["gmacs"] == 1.0
    for row in rows[1:]:
        assert row["ratio_to_lgi_former"]["params"] == pytest.approx(
            row["params"] / rows[0]["params"]
        )
        assert row["ratio_to_lgi_former"]["fwd_time"] == 2.0
    table = runner.invoke(app, ["profile", "model", "--name", "lineage", "--device", "cpu"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert "ratio to lgi_former_base" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == list(profile.LINEAGE)


def test_the_lineage_table_names_every_family() -> None:
    assert {n.split("_")[0] for n in profile.LINEAGE} == {
        "lgi",
        "videomae",
        "marlin",
        "svfap",
        "s4d",
        "hicmae",
    }
