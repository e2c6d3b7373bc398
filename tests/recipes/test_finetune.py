"""Fine-tuning recipe end to end on tiny data (docs/design.md)."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.evaluation import metrics
from maedfer.recipes import config as config_io
from maedfer.recipes import finetune, pretrain
from maedfer.recipes.finetune import FinetuneRecipe, merge_views
from maedfer.training.distributed import DistEnv
from maedfer.training.loop import TrainLoop
from tests.recipes.clipdata import (
    TINY_FINETUNE_KEYS,
    TINY_PRETRAIN_KEYS,
    cli_sets,
    make_dataset,
    one_thread,
)

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("finetune-data"))  # 3 classes x 8, 2 folds


BASE = {
    **TINY_FINETUNE_KEYS,
    "schedule.epochs": 2,
    "data.batch_size": 4,
    "data.workers": 0,
    "run.log_every": 1,
    "optim.lr": 3e-3,
    "schedule.warmup_epochs": 1,
}


def _run(manifest: Path, out: Path, sets: dict | None = None, **flags) -> dict:
    flags = {"fold": 1, **flags}
    return finetune.run(overrides={**BASE, **(sets or {})}, data=manifest, out=out, **flags)


def _records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_merge_views_averages_distinct_views() -> None:
    p = np.eye(3, dtype=np.float32)
    rows = [
        (["b", "a"], [0, 0], [1, 0], p[[1, 0]]),
        (["b", "a", "a"], [1, 1, 1], [1, 0, 0], p[[2, 2, 0]]),
    ]
    ids, labels, probs, views = merge_views(rows)
    assert ids == ["a", "b"] and labels.tolist() == [0, 1] and views == 2
    np.testing.assert_allclose(probs, [[0.5, 0, 0.5], [0, 0.5, 0.5]])  # a's view 1 counted once


def test_learns_from_a_pretraining_init_and_writes_results(manifest, tmp_path) -> None:
    pretrain.run(
        overrides={
            **TINY_PRETRAIN_KEYS,
            "schedule.epochs": 2,
            "data.batch_size": 4,
            "data.workers": 0,
            "optim.lr": 2e-3,
            "schedule.warmup_epochs": 1,
        },
        data=manifest,
        out=tmp_path / "pt",
    )
    init = tmp_path / "pt" / "checkpoints" / "last.pt"
    result = _run(
        manifest,
        tmp_path / "ft",
        {"schedule.epochs": 20, "eval.eval_every": 10, "run.log_every": 10},
        init=init,
    )
    report = result["report"]
    # 3 classes (chance 1/3); 20 epochs of 3 steps with mixup reached UAR 1.0 when measured
    assert report["uar"] >= 0.75 and report["war"] >= 0.75, report
    assert report["views"] == 2 and report["num_clips"] == 12 and report["fold"] == 1
    saved = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert saved["uar"] == report["uar"] and saved["class_names"] == ["class0", "class1", "class2"]
    columns, classes = metrics.read_predictions(tmp_path / "ft" / "predictions.parquet")
    assert len(columns["clip_id"]) == 12 and all(
        c.endswith(("_00", "_02", "_04", "_06")) for c in columns["clip_id"]
    )  # fold 1 only
    np.testing.assert_allclose(columns["probabilities"].sum(1), 1.0, rtol=1e-5)
    tests = _records(tmp_path / "ft", "test")
    assert [(r["epoch"], r["final"]) for r in tests] == [(10, False), (20, True)]
    ckpt = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["classes"] == classes and ckpt["epoch"] == 20


def test_interrupt_and_resume_equal_an_uninterrupted_run(manifest, tmp_path, monkeypatch):
    _run(manifest, tmp_path / "whole")  # 12 train clips, batch 4 -> 3 steps per epoch, mixup
    original, calls = TrainLoop.optimizer_step, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:  # SIGINT during step 2: the loop stops after step 3 (epoch end)
            signal.raise_signal(signal.SIGINT)
        return original(self)

    monkeypatch.setattr(TrainLoop, "optimizer_step", interrupted)
    stopped = _run(manifest, tmp_path / "parts", {"run.log_every": 2})
    # the command line exits 130 on it (tests/test_cli.py)
    assert stopped["stopped_by"] == "SIGINT" and not (tmp_path / "parts" / "report.json").exists()
    monkeypatch.undo()
    _run(manifest, tmp_path / "parts", {"run.log_every": 2}, resume=True)
    # log_every differs on purpose: the metrics window is part of the resumed state
    whole = [(r["step"], r["loss"]) for r in _records(tmp_path / "whole", "epoch")]
    parts = [(r["step"], r["loss"]) for r in _records(tmp_path / "parts", "epoch")]
    assert whole == parts
    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((tmp_path / "parts" / "report.json").read_text())
    assert a["confusion_matrix"] == b["confusion_matrix"]
    wa = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_of_another_recipe_is_refused_naming_the_keys(manifest, tmp_path) -> None:
    _run(manifest, tmp_path / "run", {"schedule.epochs": 1, "schedule.max_steps": 1})
    four = make_dataset(tmp_path / "four", num_classes=4, clips_per_class=4)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(MaedferError) as err:
        _run(four, tmp_path / "run", {"schedule.epochs": 1}, resume=True)
    message = str(err.value)
    assert "another recipe" in message and "\n" not in message
    assert "data.manifest" in message and "schedule.max_steps 1 -> null" in message
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # nothing of the old run was touched


def test_fold_choice_is_checked(manifest, tmp_path) -> None:
    with pytest.raises(MaedferError, match=r"is a 2-fold protocol: give --fold K \(1..2\)"):
        _run(manifest, tmp_path, fold=None)
    with pytest.raises(MaedferError, match=r"--fold 3 must be in 1..2"):
        _run(manifest, tmp_path, fold=3)
    with pytest.raises(MaedferError, match="batch_size .* must be even"):
        _run(manifest, tmp_path, {"data.batch_size": 3})


def test_dead_tail_is_frozen_and_everything_else_learns(manifest) -> None:
    cfg = config_io.load(
        recipe="finetune",
        overrides={**TINY_FINETUNE_KEYS, "data.manifest": str(manifest), "data.fold": 1},
    )
    recipe = FinetuneRecipe(cfg)
    recipe._env, recipe._state = DistEnv(), None
    model = recipe._setup_model()
    model(torch.randn(2, 3, 8, 32, 32)).logsumexp(-1).sum().backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("encoder.blocks.1.cross_") for n in frozen)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cli_finetune(manifest: Path, tmp_path: Path) -> None:
    sets = cli_sets(
        {
            **TINY_FINETUNE_KEYS,
            "schedule.epochs": 1,
            "data.batch_size": 4,
            "data.workers": 0,
            "loss.mixup": 0,
            "loss.cutmix": 0,
        }
    )
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--data",
            str(manifest),
            "--fold",
            "2",
            "--out",
            str(tmp_path),
            *sets,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "UAR" in result.output and (tmp_path / "predictions.parquet").is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_cuda(manifest: Path, tmp_path: Path, precision: str) -> None:
    result = _run(
        manifest, tmp_path, {"run.precision": precision, "data.backend": "pyav"}, device="cuda"
    )
    assert result["nonfinite_steps"] == 0 and result["report"]["num_clips"] == 12
