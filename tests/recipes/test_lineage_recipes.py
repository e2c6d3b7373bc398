"""The lineage's models through the same recipes: ``finetune --dry-run --json`` with each name,
the input contract read from the registry, ``--init`` from a released pre-trained layout, and
``evaluate --checkpoint`` on released fine-tuned layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.model import canonical_name
from maedfer.recipes import config as config_io
from maedfer.recipes.finetune import FinetuneRecipe
from tests.lineage import CLASSIFIERS, FRAMES, SIZE, save_released, tiny_model, tiny_overrides
from tests.recipes.clipdata import cli_sets, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "model" / "fixtures" / "lineage"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("lineage-data"))  # 3 classes x 8, 2 folds


def _dry_run(manifest: Path, out: Path, keys: dict) -> dict:
    args = [
        "finetune",
        "--config",
        "finetune-dfew",
        "--data",
        str(manifest),
        "--fold",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dry-run",
        "--json",
        *cli_sets({"model.num_classes": None, "data.batch_size": 4, "data.workers": 0, **keys}),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_finetune_dry_run_json_with_each_model(name: str, manifest: Path, tmp_path: Path) -> None:
    described = _dry_run(
        manifest,
        tmp_path / "run",
        {
            "model.name": name,
            "model.num_frames": FRAMES,
            "model.img_size": SIZE,
            "model.overrides": tiny_overrides(name),
        },
    )
    assert described["model"]["name"] == name
    assert described["model"]["params"] > 0 and described["data"]["train_clips"] == 12
    assert described["config"]["model"]["img_size"] == SIZE
    assert not (tmp_path / "run").exists()


def test_the_input_contract_sets_frames_side_and_stride(manifest: Path, tmp_path: Path) -> None:
    """MARLIN wants 16 frames of 224 px, 2 apart: the 32-px prepared clips are resized to it."""
    described = _dry_run(
        manifest,
        tmp_path / "run",
        {"model.name": "marlin_base", "data.stride": None, "model.overrides": {"depth": 1}},
    )
    assert described["config"]["model"]["img_size"] == 224
    assert described["config"]["model"]["num_frames"] == 16
    assert described["config"]["data"]["stride"] == 2
    # the shipped recipe's stride wins where it sets one (DFEW: the official 4)
    pinned = _dry_run(
        manifest, tmp_path / "run2", {"model.name": "marlin_base", "model.overrides": {"depth": 1}}
    )
    assert pinned["config"]["data"]["stride"] == 4


def test_finetune_init_from_a_released_videomae_pretraining(manifest: Path, tmp_path: Path) -> None:
    """``--set model.name=videomae_base --init K400.pth``: the encoder is the file's."""
    pre = torch.load(FIXTURES / "videomae.pt", weights_only=True)["pretrain"]
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": pre["state"]}, path)
    cfg = config_io.resolve(
        "finetune-dfew",
        recipe="finetune",
        overrides={
            "model.name": "videomae_base",
            "model.img_size": 32,
            "model.num_frames": FRAMES,
            "model.overrides": {"embed_dim": 32, "depth": 2, "num_heads": 2},
            "model.num_classes": None,
            "data.batch_size": 4,
            "data.workers": 0,
            "run.device": "cpu",
        },
        flags={
            "data.manifest": str(manifest),
            "data.fold": 1,
            "model.init": str(path),
            "run.out": str(tmp_path / "r"),
        },
    )
    recipe = FinetuneRecipe(cfg)
    recipe.dry_run = True
    recipe.setup()
    key = "blocks.1.attn.qkv.weight"
    assert torch.equal(recipe._raw.state_dict()[key], pre["state"]["encoder." + key])


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("videomae_base", {"input_size": SIZE, "num_frames": FRAMES}),
        (
            "svfap_base",
            {
                "input_size": SIZE,
                "num_frames": FRAMES,
                "stage_depths": [1, 1, 1],
                "sampling_rate": 2,
            },
        ),
        ("s4d_base", {"input_size": SIZE, "num_frames": FRAMES, "top_k": 1}),
    ],
)
def test_evaluate_a_released_fine_tuned_checkpoint(
    name: str, args: dict, manifest: Path, tmp_path: Path
) -> None:
    """``evaluate --checkpoint THEIRS.pth --data ... --fold K``: their layout is recognised, the
    model built from the tensors and the saved args, the fold tested."""
    model = tiny_model(name)  # (S4D's router noise: drawn after the torch seed below)
    pth = save_released(tmp_path / "theirs.pth", model, **args)
    out = tmp_path / "eval"
    torch.manual_seed(0)
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(pth),
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--json",
            "--set",
            "num_heads=2",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == canonical_name(name) and report["checkpoint_format"] == "official"
    assert report["clips_scored"] == report["clips_expected"] == 12
    assert report["stride"] == args.get("sampling_rate", 4)


def test_a_released_encoder_is_not_evaluated(manifest: Path, tmp_path: Path) -> None:
    data = torch.load(FIXTURES / "marlin.pt", weights_only=True)
    path = tmp_path / "marlin.encoder.pt"
    torch.save(data["encoder_state"], path)
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(path),
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert result.exit_code == 1
    assert (
        "not a classifier; fine-tune from it: maedfer finetune --set model.name=marlin_base"
        in result.output
        and len(result.output.strip().splitlines()) == 1
    )
