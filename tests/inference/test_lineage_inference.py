"""``predict``, ``Predictor``, ``export`` and ``embed`` for each family of the lineage, on the
committed media (a portrait video), tiny models (``tests.lineage``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import maedfer
from maedfer.cli import app
from maedfer.model import create_model, input_contract
from tests.inference.media import face_video
from tests.lineage import FAMILIES, save_run_checkpoint, tiny_model

runner = CliRunner()
CLASSES = ["neutral", "smile", "surprise"]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_video(tmp_path_factory.mktemp("lineage-media") / "face.mp4", frames=48)


@pytest.mark.parametrize("name", FAMILIES)
def test_predict_export_and_embed(name: str, video: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)  # S4D's router noise in evaluation draws from it
    ckpt = save_run_checkpoint(tmp_path / "last.pt", tiny_model(name), CLASSES)
    # predict: the window settings are the model's contract (MARLIN: every 2nd frame)
    result = runner.invoke(
        app,
        [
            "predict",
            str(video),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "res.json"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "res.json").read_text())
    assert [v["status"] for v in doc["videos"]] == ["ok"]
    stride = input_contract(name).stride
    windows = pd.DataFrame(doc["windows"])  # 8 frames, `stride` apart
    assert windows["face"].all() and windows["end_frame"].iloc[0] == 7 * stride
    probs = windows[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # export: safetensors rebuilds the model; ONNX is checked against PyTorch by export itself
    out = tmp_path / "st"
    assert (
        runner.invoke(
            app, ["export", str(ckpt), "--format", "safetensors", "--out", str(out)]
        ).exit_code
        == 0
    )
    from safetensors.torch import load_file

    rebuilt = create_model(**json.loads((out / "config.json").read_text()))
    rebuilt.load_state_dict(load_file(out / "model.safetensors"))
    info = json.loads((out / "inference.json").read_text())
    assert info["model"] == name and info["input_contract"]["stride"] == stride
    onnx = runner.invoke(
        app, ["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "onnx")]
    )
    assert onnx.exit_code == 0, onnx.output
    assert "onnxruntime matches PyTorch" in onnx.stdout
    # embed: the features of each window (the head's input)
    emb = runner.invoke(
        app,
        [
            "embed",
            str(video),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "f.parquet"),
            "--device",
            "cpu",
        ],
    )
    assert emb.exit_code == 0, emb.output
    frame = pd.read_parquet(tmp_path / "f.parquet")
    assert len(frame) == len(windows) and len(frame["features"].iloc[0]) == 32


def test_predictor_gives_marlin_features_per_window(video: Path, tmp_path: Path) -> None:
    """A MARLIN user's face-video features with maedfer's face tracking: the features are
    MARLIN's clip feature (mean over tokens, then its norm) of each aligned window."""
    ckpt = save_run_checkpoint(tmp_path / "m.pt", tiny_model("marlin_base"), CLASSES)
    predictor = maedfer.Predictor(ckpt, device="cpu")
    assert predictor.settings.size == 32 and predictor.settings.stride == 2
    table = predictor.embed(video)
    assert table["face"].all() and len(table) >= 2
    assert all(np.isfinite(f).all() and f.shape == (32,) for f in table["features"])


def test_s4d_predictions_repeat_despite_its_router_noise(video: Path, tmp_path: Path) -> None:
    ckpt = save_run_checkpoint(tmp_path / "s.pt", tiny_model("s4d_base"), CLASSES)
    predictor = maedfer.Predictor(ckpt, device="cpu")
    first = predictor.predict(video).probabilities
    torch.manual_seed(123)  # whatever the caller's generator holds
    assert np.array_equal(predictor.predict(video).probabilities, first)
