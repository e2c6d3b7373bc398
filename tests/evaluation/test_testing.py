"""``maedfer evaluate --checkpoint``: the reference test of any fine-tuned checkpoint (issue 12 §4).

Real tiny models, real Parquet manifests and real H.264 clips (``tests.recipes.clipdata``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.evaluation import metrics
from maedfer.evaluation.heldout import merge_views, view_probabilities
from maedfer.model import create_model, load_official
from maedfer.model.official import FINETUNE_TO_CLASSIFIER, convert_key
from maedfer.pipelines import build_loader
from maedfer.recipes import finetune
from tests.recipes.clipdata import TINY_CLASSIFIER, TINY_FINETUNE_KEYS, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()
# The test-report keys a fine-tuning run writes (maedfer.recipes.finetune, FinetuneRecipe.test).
RUN_KEYS = {
    "uar",
    "war",
    "per_class_recall",
    "per_class_support",
    "confusion_matrix",
    "class_names",
    "views",
    "num_clips",
    "uar_classes",
    "dataset",
    "fold",
    "epoch",
    "step",
    "clips_expected",
    "clips_scored",
    "missing_clips",
    "complete",
}
# Official keys from ours: the official table read backwards (same {} and prefix patterns).
TO_OFFICIAL = {ours: official for official, ours in FINETUNE_TO_CLASSIFIER.items()}
TINY_SETS = [
    "--set",
    "num_heads=2",
    "--set",
    "img_size=32",
    "--set",
    "num_frames=8",
    "--set",
    "region_size=[2,2,2]",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("evalckpt-data"))  # 3 classes x 8, 2 folds


def official_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the official fine-tuning keys."""
    state = {}
    for key, tensor in model.state_dict().items():
        matched, official = convert_key(key, TO_OFFICIAL)
        assert matched and official, key
        state[official] = tensor.clone()
    return state


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An official-layout ``.pth`` of a tiny LGI-Former with random weights (3 classes)."""
    torch.manual_seed(1)
    model = create_model("lgi_former_tiny", num_classes=3, **TINY_CLASSIFIER)
    with torch.no_grad():  # a visible head: the released init scales it by 0.001
        model.head.weight.normal_(0, 1)
    state = official_layout(model)
    reference = json.loads(
        (
            Path(__file__).parents[1]
            / "model"
            / "fixtures"
            / "reference"
            / "official_finetune_state_dict.json"
        ).read_text()
    )["keys"]
    # same key set as the released checkpoints, block indices aside (tiny depth 2)
    assert {k for k in state if not k.startswith("blocks.")} == {
        k for k in reference if not k.startswith("blocks.")
    }
    assert {k.split(".", 2)[2] for k in state if k.startswith("blocks.")} == {
        k.split(".", 2)[2] for k in reference if k.startswith("blocks.")
    }
    path = tmp_path_factory.mktemp("official") / "checkpoint-99.pth"
    torch.save({"model": state, "epoch": 99}, path)
    return path, state


def test_official_checkpoint_gives_load_official_probabilities(
    manifest, official_pth, tmp_path
) -> None:
    path, state = official_pth
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(path),
            "--data",
            str(manifest),
            "--fold",
            "2",
            "--out",
            str(tmp_path),
            "--workers",
            "0",
            "--device",
            "cpu",
            *TINY_SETS,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "official checkpoint" in result.stdout and "UAR" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert RUN_KEYS <= set(report) and report["checkpoint_format"] == "official"
    assert report["fold"] == 2 and report["views"] == 2 and report["epoch"] == 99
    assert report["clips_expected"] == report["clips_scored"] == 12 and report["complete"]
    columns, classes = metrics.read_predictions(tmp_path / "predictions.parquet")
    assert classes == ["class0", "class1", "class2"]
    # the same by hand: load_official into the tiny model, forward over the same 2 views
    model = create_model("lgi_former_tiny", num_classes=3, **TINY_CLASSIFIER)
    load_official(model, {"model": state})
    loader = build_loader(
        manifest,
        mode="test",
        fold=2,
        batch_size=5,
        num_frames=8,
        stride=4,
        size=32,
        backend="pyav",
        workers=0,
        test_views=2,
    )
    rows = view_probabilities(
        model, loader, device=torch.device("cpu"), precision="fp32", progress=False
    )
    ids, labels, probs, views = merge_views(rows)
    assert list(columns["clip_id"]) == ids and columns["label"].tolist() == labels.tolist()
    # batch composition differs (32 vs 5 clips): float32 sums in another order, ~1e-7
    np.testing.assert_allclose(columns["probabilities"], probs, rtol=0, atol=1e-6)
    assert columns["prediction"].tolist() == probs.argmax(1).tolist()
    assert probs.std(0).max() > 1e-3  # the weights make a difference between clips


def test_own_checkpoint_reproduces_the_runs_report(manifest, tmp_path) -> None:
    run = tmp_path / "run"
    finetune.run(
        data=manifest,
        fold=1,
        out=run,
        overrides={
            **TINY_FINETUNE_KEYS,
            "schedule.epochs": 2,
            "data.batch_size": 4,
            "data.workers": 0,
            "optim.lr": 3e-3,
            "schedule.warmup_epochs": 1,
        },
    )
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(run / "checkpoints" / "last.pt"),
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(out),
            "--workers",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    theirs = json.loads((run / "report.json").read_text())
    ours = json.loads((out / "report.json").read_text())
    assert printed == ours and set(theirs) <= set(ours)
    assert {k: ours[k] for k in theirs} == theirs  # every key of the run's report, equal
    a, _ = metrics.read_predictions(run / "predictions.parquet")
    b, _ = metrics.read_predictions(out / "predictions.parquet")
    assert list(a["clip_id"]) == list(b["clip_id"])
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=0, atol=1e-6)
    again = runner.invoke(app, ["evaluate", str(out), "--json"])  # the folder reads as a run
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["runs"][0]["complete"] is True


def test_official_run_args_give_the_input(manifest, official_pth, tmp_path) -> None:
    """The official checkpoints hold their run's argparse.Namespace: input size, frames, regions
    and frame stride are read from it (only the head count stays to be given here)."""
    path, state = official_pth
    args = argparse.Namespace(
        input_size=32,
        num_frames=8,
        lg_region_size=[2, 2, 2],
        sampling_rate=4,
        test_num_segment=2,
        nb_classes=3,
    )
    with_args = tmp_path / "with-args.pth"
    torch.save({"model": state, "args": args, "epoch": 7}, with_args)
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(with_args),
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(tmp_path / "a"),
            "--workers",
            "0",
            "--set",
            "num_heads=2",
            "--dataset",
            "ravdess",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["epoch"] == 7 and report["stride"] == 4 and report["num_clips"] == 12
    line = _error(
        [
            "--checkpoint",
            str(with_args),
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(tmp_path / "b"),
            "--set",
            "num_heads=2",
            "--dataset",
            "dfew",
        ]
    )
    assert "--dataset dfew, but" in line and "ravdess manifest" in line


def _error(args: list[str]) -> str:
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_head_size_mismatch_is_one_line(official_pth, tmp_path) -> None:
    four = make_dataset(tmp_path / "four", num_classes=4, clips_per_class=2)
    line = _error(
        [
            "--checkpoint",
            str(official_pth[0]),
            "--data",
            str(four),
            "--fold",
            "1",
            "--out",
            str(tmp_path / "o"),
            *TINY_SETS,
        ]
    )
    assert "has a 3-class head but the manifest names 4 classes" in line


def test_missing_fold_and_bad_forms_are_one_line(manifest, official_pth, tmp_path) -> None:
    ckpt, out = str(official_pth[0]), str(tmp_path / "o")
    line = _error(
        ["--checkpoint", ckpt, "--data", str(manifest), "--fold", "3", "--out", out, *TINY_SETS]
    )
    assert "--fold 3 must be in 1..2" in line
    line = _error(["--checkpoint", ckpt, "--data", str(manifest), "--out", out, *TINY_SETS])
    assert "is a 2-fold protocol: give --fold K (1..2)" in line and "None" not in line
    line = _error([str(tmp_path), "--checkpoint", ckpt, "--data", str(manifest), "--out", out])
    assert "not both" in line
    assert "--data" in _error([str(tmp_path), "--data", str(manifest)])
    assert "--checkpoint" in _error([])
    assert "needs --data" in _error(["--checkpoint", ckpt, "--out", out])
    # an official width other than 512 does not tell its head count
    assert "--set num_heads=N" in _error(
        ["--checkpoint", ckpt, "--data", str(manifest), "--fold", "1", "--out", out]
    )
    assert "region tokens" in _error(
        [
            "--checkpoint",
            ckpt,
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            out,
            "--set",
            "num_heads=2",
        ]
    )
    assert not (tmp_path / "o").exists()
