"""A run folder records and replays its recipe; a re-run never harms a finished run (issue 12 §3).

Real tiny fine-tuning runs on real clips (`tests.recipes.clipdata`), through the Python API and
the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.recipes import finetune
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

BASE = {
    **TINY_FINETUNE_KEYS,
    "schedule.epochs": 2,
    "data.batch_size": 4,
    "data.workers": 0,
    "eval.test_batch_size": 4,
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("records"), num_classes=3, clips_per_class=4)


def _run(manifest: Path, out: Path, sets: dict | None = None, **flags) -> dict:
    flags = {"fold": 1, **flags}
    return finetune.run(overrides={**BASE, **(sets or {})}, data=manifest, out=out, **flags)


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def _files(out: Path) -> dict[Path, tuple[int, bytes]]:
    return {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()
    }


def test_a_run_records_its_recipe_environment_and_events(manifest, tmp_path) -> None:
    out = tmp_path / "run"
    _run(manifest, out, {"run.save_every": 1, "run.keep_checkpoints": 1})
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["recipe"] == "finetune" and config["data"]["backend"] == "pyav"
    assert config["run"]["precision"] == "fp32" and config["model"]["num_classes"] == 3
    assert config["data"]["temporal_rule"] == "reference"
    facts = config["resolved"]
    assert facts["world_size"] == 1 and facts["total_batch"] == 4 and facts["peak_lr"] > 0
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["torch"] == torch.__version__ and env["world_size"] == 1
    assert env["maedfer"]["version"]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert json.loads((out / "run_state.json").read_text())["status"] == "finished"
    assert [p.name for p in (out / "checkpoints").glob("epoch-*.pt")] == ["epoch-0002.pt"]
    weights = torch.load(out / "final.pt", weights_only=True)
    assert "optimizer" not in weights and len(weights["classes"]) == 3


def test_replaying_config_yaml_gives_the_same_losses(manifest, tmp_path) -> None:
    first = tmp_path / "first"
    _run(manifest, first)
    replay = tmp_path / "replay"
    finetune.run(first / "config.yaml", out=replay)
    assert _losses(replay) == _losses(first) and len(_losses(first)) >= 2
    a = json.loads((first / "report.json").read_text())
    b = json.loads((replay / "report.json").read_text())
    assert (a["uar"], a["war"]) == (b["uar"], b["war"])


def test_a_finished_run_is_left_untouched(manifest, tmp_path) -> None:
    out = tmp_path / "run"
    _run(manifest, out)
    before = _files(out)
    result = _run(manifest, out)  # the same command again
    assert result["finished"] is True and "finished run" in result["message"]
    assert _files(out) == before
    with pytest.raises(MaedferError, match="another recipe: optim.blr"):
        _run(manifest, out, {"optim.blr": 5e-4})
    assert _files(out) == before
    _run(manifest, out, overwrite=True)  # the one way to start it over
    assert json.loads((out / "run_state.json").read_text())["status"] == "finished"


def test_the_cli_says_a_finished_run_is_done_and_exits_0(manifest, tmp_path) -> None:
    args = [
        "finetune",
        "--data",
        str(manifest),
        "--fold",
        "1",
        "--out",
        str(tmp_path / "run"),
        *cli_sets(BASE),
    ]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    before = _files(tmp_path / "run")
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "finished run" in result.output
    assert _files(tmp_path / "run") == before
    refused = runner.invoke(app, [*args, "--resume", "false"])
    assert refused.exit_code == 1 and "--resume is false" in refused.output
