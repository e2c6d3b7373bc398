"""``maedfer evaluate``: one run and the cross-fold summary (maedfer.evaluation.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.evaluation import metrics
from tests.evaluation.test_metrics import CLASSES, FOLD_A, FOLD_B

runner = CliRunner()


def make_run(
    folder: Path, labels: np.ndarray, preds: np.ndarray, classes=CLASSES, dataset="ravdess"
) -> Path:
    """A finished run folder: predictions whose argmax is ``preds``, plus report.json."""
    probs = np.full((len(preds), len(classes)), 0.1)
    probs[np.arange(len(preds)), preds] = 1.0 - 0.1 * (len(classes) - 1)
    ids = [f"{folder.name}/{i}" for i in range(len(labels))]
    metrics.write_predictions(folder / "predictions.parquet", ids, labels, probs, classes)
    report = metrics.classification_report(labels, preds, classes, views=2)
    metrics.write_report(folder / "report.json", {**report, "dataset": dataset})  # as finetune
    return folder


def test_one_run_table_and_png(tmp_path) -> None:
    run = make_run(tmp_path / "fold1", *FOLD_A)
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "58.33" in result.stdout  # UAR 7/12
    assert "62.50" in result.stdout  # WAR 5/8
    assert "per-class recall" in result.stdout and "confusion matrix" in result.stdout
    assert (run / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_folds_json_has_both_aggregations(tmp_path) -> None:
    runs = [make_run(tmp_path / "fold1", *FOLD_A), make_run(tmp_path / "fold2", *FOLD_B)]
    result = runner.invoke(app, ["evaluate", *map(str, runs), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [r["report"]["uar"] for r in payload["runs"]] == pytest.approx([7 / 12, 5 / 9])
    mean, pooled = payload["mean_over_folds"], payload["pooled"]
    assert mean["uar"] == pytest.approx(41 / 72) and mean["war"] == pytest.approx(31 / 48)
    assert pooled["uar"] == pytest.approx(0.65) and pooled["war"] == pytest.approx(9 / 14)
    assert mean["label"] == "mean over folds (as MAE-DFER reports)"
    assert pooled["label"] == "pooled over 14 clips"
    assert json.loads((tmp_path / "evaluation.json").read_text())["pooled"]["num_clips"] == 14
    for png in (tmp_path / "confusion_pooled.png", *(r / "confusion.png" for r in runs)):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_folds_table_labels_each_aggregation(tmp_path) -> None:
    runs = [make_run(tmp_path / "fold1", *FOLD_A), make_run(tmp_path / "fold2", *FOLD_B)]
    out = tmp_path / "summary"
    result = runner.invoke(app, ["evaluate", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    mean_line = next(line for line in lines if line.startswith("mean over folds"))
    pooled_line = next(line for line in lines if line.startswith("pooled over 14 clips"))
    assert "UAR 56.94 %" in mean_line and "WAR 64.58 %" in mean_line
    assert "UAR 65.00 %" in pooled_line and "WAR 64.29 %" in pooled_line
    assert (out / "evaluation.json").is_file() and (out / "confusion_pooled.png").is_file()


def test_bad_run_folder_is_named(tmp_path) -> None:
    good = make_run(tmp_path / "fold1", *FOLD_A)
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    result = runner.invoke(app, ["evaluate", str(good), str(empty)])
    assert result.exit_code == 1
    assert "not_a_run" in result.stderr and "predictions.parquet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_runs_with_different_classes_are_refused(tmp_path) -> None:
    a = make_run(tmp_path / "a", *FOLD_A)
    b = make_run(tmp_path / "b", *FOLD_B, classes=["x", "y", "z"])
    result = runner.invoke(app, ["evaluate", str(a), str(b)])
    assert result.exit_code == 1
    assert "different classes" in result.stderr


def test_same_run_twice_is_refused(tmp_path) -> None:
    a = make_run(tmp_path / "a", *FOLD_A)
    result = runner.invoke(app, ["evaluate", str(a), str(a / "predictions.parquet")])
    assert result.exit_code == 1
    assert "same run" in result.stderr


def test_runs_of_different_datasets_are_refused(tmp_path) -> None:
    a = make_run(tmp_path / "a", *FOLD_A)
    b = make_run(tmp_path / "b", *FOLD_B, dataset="crema-d")
    result = runner.invoke(app, ["evaluate", str(a), str(b)])
    assert result.exit_code == 1
    assert "different datasets ['crema-d', 'ravdess']" in result.stderr


def test_run_without_report_uses_parquet_classes(tmp_path) -> None:
    run = make_run(tmp_path / "fold1", *FOLD_B)
    (run / "report.json").unlink()
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["runs"][0]["report"]
    assert report["class_names"] == CLASSES and report["uar"] == pytest.approx(5 / 9)
