"""``maedfer protocol --model ...``: several models of the lineage through the same folds, one
table (per fold, mean, pooled, published, difference), on the demo's data (rendered from the
committed portraits, faces found by MTCNN, as ``maedfer demo`` makes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.demo import render
from maedfer.evaluation import comparison
from maedfer.recipes import config as config_io
from maedfer.recipes import protocol
from tests.evaluation.test_evaluate import make_run
from tests.evaluation.test_metrics import FOLD_A, FOLD_B
from tests.recipes.clipdata import one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()
# the families that share the plain ViT's size fields: one recipe fits them all
MODELS = ["videomae_base", "marlin_base", "hicmae_base"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The quick demo's data (one actor per portrait, 2 clips per class, the first 2
    portraits' folds) and a tiny recipe every model of MODELS can run."""
    from maedfer.preprocess import driver

    root = tmp_path_factory.mktemp("lineage-demo")
    portraits = render.default_portraits()[:2]
    render.render_dataset(
        root / "raw",
        portraits=portraits,
        actors_per_portrait=1,
        clips_per_class=2,
        num_frames=16,
        frame_size=192,
        seed=0,
        workers=1,
    )
    driver.run(
        dataset="folder",
        raw=root / "raw",
        out=root / "prepared",
        size=32,
        workers=1,
        device="cpu",
        dataset_options={
            "labels": root / "raw" / render.LABELS,
            "classes": [c.name for c in render.CLASSES],
        },
    )
    config = root / "tiny.yaml"
    config.write_text(
        config_io.to_yaml(
            config_io.load(
                "demo-finetune",
                overrides={
                    "model.num_frames": 8,
                    "model.img_size": 32,
                    "schedule.epochs": 1,
                    "model.overrides": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                    "data.batch_size": 4,
                    "data.workers": 0,
                },
            )
        )
    )
    return {"data": root / "prepared" / "manifest.parquet", "config": config}


def test_several_models_one_table(demo: dict, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    torch.manual_seed(0)
    args = [
        "protocol",
        str(demo["config"]),
        "--data",
        str(demo["data"]),
        "--out",
        str(out),
        *[a for m in MODELS for a in ("--model", m)],
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = json.loads((out / comparison.COMPARISON).read_text())
    assert [m["model"] for m in table["models"]] == MODELS and table["folds"] == [1, 2]
    for entry in table["models"]:
        summary = json.loads((out / entry["model"] / protocol.SUMMARY).read_text())
        assert summary["model"] == entry["model"]
        assert [f["uar"] for f in entry["folds"]] == [f["uar"] for f in summary["folds"]]
        assert entry["mean_over_folds"]["uar"] == pytest.approx(
            sum(f["uar"] for f in entry["folds"]) / 2
        )
        assert (out / entry["model"] / "fold_2" / "report.json").is_file()
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    assert all(
        word in header for word in ("fold 1", "fold 2", "mean", "pooled", "published", "difference")
    )
    assert sum(line.startswith(tuple(MODELS)) for line in lines) == len(MODELS)
    # a second run trains nothing and prints the same table
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "finished earlier" in again.output
    assert json.loads((out / comparison.COMPARISON).read_text()) == table


def test_each_model_beside_its_own_papers_figure(tmp_path: Path) -> None:
    """SVFAP on DFEW beside SVFAP's published 62.83 / 74.27, LGI-Former beside MAE-DFER's."""
    summaries = []
    for name in ("lgi_former_base", "svfap_base", "videomae_base"):
        make_run(tmp_path / name / "fold_1", *FOLD_A, dataset="dfew")
        make_run(tmp_path / name / "fold_2", *FOLD_B, dataset="dfew")
        summaries.append(
            (name, None, protocol.summarize(tmp_path / name, [1, 2], "dfew", "finetune-dfew", name))
        )
    table = comparison.compare(tmp_path, summaries, "finetune-dfew")
    rows = {m["model"]: m for m in table["models"]}
    assert rows["svfap_base"]["published"]["uar"] == pytest.approx(0.6283)
    assert rows["svfap_base"]["published"]["label"] == "published SVFAP"
    assert rows["svfap_base"]["difference"]["uar"] == pytest.approx(41 / 72 - 0.6283)
    assert rows["lgi_former_base"]["published"]["uar"] == pytest.approx(0.6341)
    assert rows["videomae_base"]["published"] is None
    assert rows["videomae_base"]["difference"] is None
    text = comparison.format_table(table)
    svfap = next(line for line in text.splitlines() if line.startswith("svfap_base"))
    assert "62.83 / 74.27" in svfap and f"{100 * (41 / 72 - 0.6283):+.2f}" in svfap


def test_bad_model_lists_are_one_line(demo: dict, tmp_path: Path) -> None:
    base = [
        "protocol",
        str(demo["config"]),
        "--data",
        str(demo["data"]),
        "--out",
        str(tmp_path / "x"),
    ]
    for extra, says in (
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "videomae_base", "--model", "vit_base"], "given twice"),
        (["--model", f"marlin_base={tmp_path / 'missing.pt'}"], "does not exist"),
        ([], "give --init CKPT"),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1 and says in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
