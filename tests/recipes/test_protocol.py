"""``maedfer protocol``: every fold fine-tuned and tested, resumable, then the summary.

Issue 12 §4.

Real tiny runs on a real 2-fold manifest of H.264 clips (``tests.recipes.clipdata``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.model import create_model
from maedfer.recipes import config as config_io
from maedfer.recipes import protocol
from maedfer.training import checkpoint as ckpt_io
from tests.evaluation.test_evaluate import make_run
from tests.evaluation.test_metrics import FOLD_A, FOLD_B
from tests.recipes.clipdata import TINY_CLASSIFIER, TINY_FINETUNE_KEYS, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-fold manifest (3 classes x 8 clips), a tiny init checkpoint and a recipe config."""
    root = tmp_path_factory.mktemp("protocol")
    manifest = make_dataset(root / "data")
    torch.manual_seed(0)
    model = create_model("lgi_former_tiny", num_classes=3, **TINY_CLASSIFIER)
    init = root / "init.pt"
    torch.save(
        {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "model_name": model.model_name,
            "model_config": ckpt_io.plain(model.config),
            "model": model.state_dict(),
            "epoch": 0,
        },
        init,
    )
    config = root / "tiny.yaml"  # a user's copy of a shipped config, edited
    config.write_text(
        config_io.to_yaml(
            config_io.load(
                "finetune-dfew",
                overrides={
                    **TINY_FINETUNE_KEYS,
                    "model.num_classes": 3,
                    "schedule.epochs": 1,
                    "data.batch_size": 4,
                    "data.workers": 0,
                    "optim.lr": 3e-3,
                    "schedule.warmup_epochs": 1,
                },
            )
        )
    )
    return {"data": manifest, "init": init, "config": config}


def _args(setup: dict, out: Path, *extra: str) -> list[str]:
    return [
        "protocol",
        str(setup["config"]),
        "--data",
        str(setup["data"]),
        "--init",
        str(setup["init"]),
        "--out",
        str(out),
        *extra,
    ]


def _state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime, bytes) of every file a fold's training wrote (the cross-fold evaluation redraws
    its confusion.png)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "confusion.png"
    }


def test_runs_both_folds_resumes_after_a_kill_and_prints_the_table(
    setup, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "dfew_like"
    calls: list = []
    original = protocol._finetune_fold

    def counted(config, data, fold, init, folder, overrides):  # noqa: ANN001
        calls.append(fold)
        return original(config, data, fold, init, folder, overrides)

    monkeypatch.setattr(protocol, "_finetune_fold", counted)
    # a run killed between the folds: only fold 1 got done
    first = runner.invoke(app, _args(setup, out, "--folds", "1"))
    assert first.exit_code == 0, first.output
    assert calls == [1] and (out / "fold_1" / "report.json").is_file()
    assert not (out / "fold_2").exists()
    before = _state(out / "fold_1")
    assert {"report.json", "predictions.parquet", "checkpoints/last.pt"} <= set(before)
    # the full command continues at fold 2 and leaves fold 1 as it was
    result = runner.invoke(app, _args(setup, out))
    assert result.exit_code == 0, result.output
    assert calls == [1, 2]
    assert "fold 1 finished earlier" in result.stderr
    assert _state(out / "fold_1") == before
    summary = json.loads((out / "summary.json").read_text())
    reports = [json.loads((out / f"fold_{k}" / "report.json").read_text()) for k in (1, 2)]
    assert [f["fold"] for f in summary["folds"]] == [1, 2]
    assert [f["uar"] for f in summary["folds"]] == [r["uar"] for r in reports]
    mean, pooled = summary["mean_over_folds"], summary["pooled"]
    assert mean["uar"] == pytest.approx(np.mean([r["uar"] for r in reports]))
    assert mean["war"] == pytest.approx(np.mean([r["war"] for r in reports]))
    assert mean["label"] == "mean over folds (as MAE-DFER reports)" and mean["num_folds"] == 2
    assert pooled["label"] == "pooled over 24 clips" and pooled["num_clips"] == 24
    assert summary["published"] is None and summary["dataset"] == "ravdess"
    lines = result.stdout.splitlines()
    fold_lines = [line for line in lines if line.startswith(("fold 1", "fold 2"))]
    assert len(fold_lines) == 2 and f"{100 * reports[1]['war']:.2f}" in fold_lines[1]
    assert any(line.startswith("mean over folds (as MAE-DFER reports)") for line in lines)
    assert any(line.startswith("pooled over 24 clips") for line in lines)
    assert "published MAE-DFER: none for ravdess" in result.stdout
    # a third run trains nothing
    again = runner.invoke(app, _args(setup, out))
    assert again.exit_code == 0 and calls == [1, 2]


def test_summary_sits_beside_the_published_figures(tmp_path) -> None:
    out = tmp_path / "dfew"
    make_run(out / "fold_1", *FOLD_A, dataset="dfew")
    make_run(out / "fold_2", *FOLD_B, dataset="dfew")
    summary = protocol.summarize(out, [1, 2], "dfew", "finetune-dfew")
    published = summary["published"]
    assert published["uar"] == pytest.approx(0.6341) and published["war"] == pytest.approx(0.7443)
    assert published["as_published"] == "UAR 63.41 %, WAR 74.43 %"
    assert summary["mean_over_folds"]["uar"] == pytest.approx(41 / 72)  # (7/12 + 5/9) / 2
    assert summary["pooled"]["uar"] == pytest.approx(0.65)
    table = protocol.format_summary(summary)
    row = next(line for line in table.splitlines() if line.startswith("published MAE-DFER"))
    assert "mean over 5 folds" in row and row.split()[-2:] == ["63.41", "74.43"]
    assert json.loads((out / "summary.json").read_text()) == summary


def test_print_commands(setup, tmp_path) -> None:
    out = tmp_path / "p"
    result = runner.invoke(app, _args(setup, out, "--print-commands", "--set", "schedule.epochs=3"))
    assert result.exit_code == 0, result.output
    c, d, i = (shlex.quote(str(setup[k])) for k in ("config", "data", "init"))
    assert result.stdout.splitlines() == [
        f"maedfer finetune --config {c} --data {d} --fold 1 --init {i} --out {out}/fold_1 "
        "--set schedule.epochs=3",
        f"maedfer finetune --config {c} --data {d} --fold 2 --init {i} --out {out}/fold_2 "
        "--set schedule.epochs=3",
        f"maedfer evaluate {out}/fold_1 {out}/fold_2 --out {out}",
    ]
    assert not out.exists()  # nothing ran


def test_sbatch_script_runs_each_fold_then_evaluates(setup, tmp_path) -> None:
    out, script = tmp_path / "my runs", tmp_path / "job.sh"  # a space: quoting matters
    result = runner.invoke(app, _args(setup, out, "--sbatch", str(script), "--folds", "2"))
    assert result.exit_code == 0, result.output
    text = script.read_text()
    assert "#SBATCH --array=2\n" in text and "#SBATCH --job-name=maedfer-ravdess" in text
    assert not (out / "fold_2").exists()
    all_folds = tmp_path / "all.sh"
    assert runner.invoke(app, _args(setup, out, "--sbatch", str(all_folds))).exit_code == 0
    assert "#SBATCH --array=1-2\n" in all_folds.read_text()
    # run one array task with a stand-in `maedfer` that records its arguments
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    stub = f'#!/bin/bash\nprintf "%s|" "$@" >> "{log}"\necho >> "{log}"\n'
    (bin_dir / "maedfer").write_text(stub)
    (bin_dir / "maedfer").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "2"}
    subprocess.run(["bash", str(script)], env=env, check=True)
    calls = [line.split("|")[:-1] for line in log.read_text().splitlines()]
    assert calls == [
        [
            "finetune",
            "--config",
            str(setup["config"]),
            "--data",
            str(setup["data"]),
            "--fold",
            "2",
            "--init",
            str(setup["init"]),
            "--out",
            f"{out}/fold_2",
        ]
    ]
    # once the fold's report exists, the task runs the cross-fold evaluation
    (out / "fold_2").mkdir(parents=True)
    (out / "fold_2" / "report.json").write_text("{}")
    subprocess.run(["bash", str(script)], env=env, check=True)
    calls = [line.split("|")[:-1] for line in log.read_text().splitlines()]
    assert calls[-1] == ["evaluate", f"{out}/fold_2", "--out", str(out)]
    # outside an array job the script refuses to run
    bare = {k: v for k, v in env.items() if k != "SLURM_ARRAY_TASK_ID"}
    assert subprocess.run(["bash", str(script)], env=bare, capture_output=True).returncode != 0


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_inputs_are_one_line(setup, tmp_path) -> None:
    out = tmp_path / "o"
    assert "--folds (3) must be in 1..2" in _error(_args(setup, out, "--folds", "1,3"))
    assert "fold numbers" in _error(_args(setup, out, "--folds", "one"))
    assert "not both" in _error(
        _args(setup, out, "--print-commands", "--sbatch", str(tmp_path / "j.sh"))
    )
    assert "unknown config key 'learning_rate'" in _error(
        _args(setup, out, "--set", "learning_rate=1")
    )
    assert "sets those per fold" in _error(_args(setup, out, "--set", "data.fold=2"))
    bad = tmp_path / "missing.yaml"
    assert "nor a file" in _error(
        [
            "protocol",
            str(bad),
            "--data",
            str(setup["data"]),
            "--init",
            str(setup["init"]),
            "--out",
            str(out),
        ]
    )
    assert not out.exists()
