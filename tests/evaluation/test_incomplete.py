"""A test set that shrank is never scored as if complete (maedfer.evaluation.coverage).

Fine-tuning on a fold whose clip files are partly deleted or undecodable: report.json and the
printed summary say how many test clips were expected, scored and which are missing; ``maedfer
evaluate`` warns about such a run and marks it in the table and the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.evaluation import metrics
from maedfer.evaluation.coverage import coverage_keys, run_coverage
from tests.evaluation.test_evaluate import make_run
from tests.evaluation.test_metrics import FOLD_A, FOLD_B
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()
# fold 1's test clips of class 0 (the whole class) deleted, one of class 1 made undecodable
DELETED = ["c0_00", "c0_02", "c0_04", "c0_06"]
BROKEN = "c1_00"


def _finetune(data: Path, fold: int, out: Path, **keys):  # noqa: ANN202 (a click Result)
    sets = cli_sets(
        {
            **TINY_FINETUNE_KEYS,
            "schedule.epochs": 1,
            "data.batch_size": 4,
            "data.workers": 0,
            "loss.mixup": 0,
            "loss.cutmix": 0,
            **keys,
        }
    )
    return runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(data),
            "--fold",
            str(fold),
            "--out",
            str(out),
            *sets,
        ],
    )


def test_finetune_reports_missing_test_clips(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data")  # 3 classes x 8, 2 folds: 12 test clips per fold
    for clip_id in DELETED:
        (tmp_path / "data" / "clips" / f"{clip_id}.mp4").unlink()
    (tmp_path / "data" / "clips" / f"{BROKEN}.mp4").write_bytes(b"not a video")
    result = _finetune(manifest, 1, tmp_path / "fold1")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fold1" / "report.json").read_text())
    assert report["clips_expected"] == 12 and report["clips_scored"] == 7
    assert report["missing_clips"] == sorted([*DELETED, BROKEN]) and report["complete"] is False
    assert report["num_clips"] == 7 and report["per_class_recall"]["class0"] is None
    columns, _ = metrics.read_predictions(tmp_path / "fold1" / "predictions.parquet")
    assert len(columns["clip_id"]) == 7
    assert "on 7 of 12 clips" in result.stdout
    assert (
        "INCOMPLETE: 5 of 12 test clips were not scored (files missing or undecodable): "
        "c0_00, c0_02, c0_04, c0_06, c1_00 (all listed in report.json under missing_clips)"
    ) in result.stdout
    # fold 2's test clips are all there: complete, and the summary says nothing is missing;
    # its training clips (fold 1's) lack 5 of 12, tolerated here (data.max_bad_share)
    result = _finetune(manifest, 2, tmp_path / "fold2", **{"data.max_bad_share": 0.5})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fold2" / "report.json").read_text())
    assert (report["clips_expected"], report["clips_scored"]) == (12, 12)
    assert report["bad_train_clips"] == 5
    assert report["missing_clips"] == [] and report["complete"] is True
    assert "on 12 of 12 clips" in result.stdout and "INCOMPLETE" not in result.stdout


def _with_coverage(run: Path, expected: int, missing: list[str]) -> Path:
    path = run / "report.json"
    report = json.loads(path.read_text())
    scored = report["num_clips"]
    report.update(
        clips_expected=expected, clips_scored=scored, missing_clips=missing, complete=not missing
    )
    metrics.write_report(path, report)
    return run


def test_evaluate_flags_an_incomplete_run(tmp_path: Path) -> None:
    # FOLD_A has 8 clips: as if 3 more had been expected; FOLD_B's 6 clips are complete
    short = _with_coverage(make_run(tmp_path / "fold1", *FOLD_A), 11, ["x1", "x2", "x3"])
    whole = _with_coverage(make_run(tmp_path / "fold2", *FOLD_B), 6, [])
    result = runner.invoke(app, ["evaluate", str(short), str(whole)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"maedfer: warning: run {short} is incomplete: 3 of 11 test clips were not scored "
        "(files missing or undecodable); its figures cover only the 8 clips scored"
    ]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in result.stdout.splitlines()
        if line.startswith(str(tmp_path))
    }
    assert rows[str(short)][:3] == ["8", "3", "*"] and rows[str(whole)][:2] == ["6", "0"]
    assert "*" not in rows[str(whole)]
    assert any(line.startswith("* incomplete: ") for line in result.stdout.splitlines())
    result = runner.invoke(app, ["evaluate", str(short), str(whole), "--json"])
    payload = json.loads(result.stdout)
    fold1, fold2 = payload["runs"]
    assert (fold1["complete"], fold1["clips_expected"], fold1["clips_scored"]) == (False, 11, 8)
    assert fold1["missing_clips"] == ["x1", "x2", "x3"] and fold2["complete"] is True
    assert payload["mean_over_folds"]["complete"] is False
    assert payload["pooled"]["complete"] is False
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert [r["complete"] for r in saved["runs"]] == [False, True]


def test_evaluate_without_coverage_keys_says_unknown(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / "fold1", *FOLD_A), make_run(tmp_path / "fold2", *FOLD_B)]
    result = runner.invoke(app, ["evaluate", *map(str, runs), "--json"])
    payload = json.loads(result.stdout)
    assert [r["complete"] for r in payload["runs"]] == [None, None]
    assert payload["mean_over_folds"]["complete"] is None and "warning" not in result.stderr


def test_coverage_counts() -> None:
    keys = coverage_keys(["a", "b", "c", "d"], ["d", "b", "b"])
    assert keys == {
        "clips_expected": 4,
        "clips_scored": 2,
        "missing_clips": ["a", "c"],
        "complete": False,
    }
    # the predictions are the truth: fewer rows than expected is incomplete even with no ids
    assert run_coverage({"clips_expected": 5, "missing_clips": []}, 3)["num_missing"] == 2
    assert run_coverage({"clips_expected": 3, "missing_clips": []}, 3)["complete"] is True
    assert run_coverage({}, 3)["complete"] is None
