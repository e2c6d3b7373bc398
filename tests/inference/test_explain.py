"""``maedfer predict --explain`` and ``Prediction.explain``: relevance that follows the evidence,
the maps' shapes, the table's frame curve, the overlay's heat and the plot's strips."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import maedfer
from maedfer.cli import app
from maedfer.inference.explain import explain_batch, frame_relevance
from maedfer.inference.windows import window_batch
from maedfer.model import create_model
from tests.inference.media import face_video, save_tiny_checkpoint
from tests.inference.mouth import mouth_clip, mouth_share, train_mouth_model
from tests.preprocess.media import encode_video

runner = CliRunner()


@pytest.fixture(scope="module")
def mouth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain")
    encode_video(mouth_clip("mouth_open"), root / "mouth_open.mp4")
    return {
        "model": train_mouth_model(root / "mouth.pt"),
        "video": root / "mouth_open.mp4",
        "root": root,
    }


def test_relevance_sits_on_the_mouth_when_only_the_mouth_moves(mouth: dict[str, Path]) -> None:
    predictor = maedfer.Predictor(mouth["model"], device="cpu")
    result = predictor.predict(mouth["video"], explain=True)
    assert result.windows["face"].all() and len(result.windows) == 1  # 16 frames, stride 1
    assert result.windows["top_class"].iloc[0] == "mouth_open"
    explanation = result.explain
    assert explanation.grid == (8, 4, 4) and explanation.class_index.tolist() == [1]
    share = mouth_share(explanation.gradcam[0])
    assert share > 0.5, f"the mouth's 4 of 16 tokens hold {share:.0%} of the relevance"
    # the probabilities are the plain prediction's: explaining changes nothing
    plain = predictor.predict(mouth["video"])
    np.testing.assert_allclose(result.probabilities, plain.probabilities, atol=1e-6)
    assert "frame_relevance" not in plain.windows and plain.explain is None


def test_the_cli_draws_heat_strips_and_the_frame_curve(
    mouth: dict[str, Path], tmp_path: Path
) -> None:
    out, overlay, plot = tmp_path / "w.json", tmp_path / "o.mp4", tmp_path / "p.png"
    result = runner.invoke(
        app,
        [
            "predict",
            str(mouth["video"]),
            "--checkpoint",
            str(mouth["model"]),
            "--explain",
            "--out",
            str(out),
            "--overlay",
            str(overlay),
            "--plot",
            str(plot),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    window = json.loads(out.read_text())["windows"][0]
    curve = window["frame_relevance"]
    assert len(curve) == 8 and sum(curve) == pytest.approx(1, abs=1e-3)
    assert window["peak_frame"] == 2 * int(np.argmax(curve))  # tubelets of 2 frames, stride 1
    # the overlay: heat over the face (warm colours) where a plain overlay has none
    plain = tmp_path / "plain.mp4"
    runner.invoke(
        app,
        [
            "predict",
            str(mouth["video"]),
            "--checkpoint",
            str(mouth["model"]),
            "--overlay",
            str(plain),
            "--device",
            "cpu",
        ],
    )
    with av.open(str(overlay)) as c, av.open(str(plain)) as d:
        hot = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        cold = [f.to_ndarray(format="rgb24") for f in d.decode(video=0)]
    assert len(hot) == len(cold) == 16
    changed = np.abs(hot[8].astype(int) - cold[8].astype(int)).max(2) > 30
    assert 0.01 < changed.mean() < 0.5  # over the face only
    rows, cols = np.nonzero(changed)
    assert rows.mean() > 48 - 4  # the heat is on the lower face (the mouth), not the brow
    # the plot: taller than the plain timeline (the strip is drawn under it)
    from PIL import Image

    plain_plot = tmp_path / "plain.png"
    runner.invoke(
        app,
        [
            "predict",
            str(mouth["video"]),
            "--checkpoint",
            str(mouth["model"]),
            "--plot",
            str(plain_plot),
            "--device",
            "cpu",
        ],
    )
    assert Image.open(plot).size[1] > Image.open(plain_plot).size[1] + 100


def test_maps_for_every_window_and_none_without_a_face(tmp_path: Path) -> None:
    """A face for 72 frames, then grey: the grey windows' maps are NaN; CSV keeps the lists."""
    from tests.inference.media import grey_frames, portrait_frames

    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    predictor = maedfer.Predictor(ckpt, device="cpu")
    frames = [*portrait_frames(72), *grey_frames(80)]
    result = predictor.predict_frames(iter(frames), fps=25, explain=True)
    e = result.explain
    assert e.gradcam.shape == (4, 8, 4, 4) and e.attention.shape == (4, 8, 4, 4)
    assert np.isnan(e.gradcam[2:]).all() and not np.isnan(e.gradcam[:2]).any()
    assert e.class_index.tolist()[2:] == [-1, -1]
    assert np.nanmax(e.gradcam[:2], axis=(1, 2, 3)).tolist() == pytest.approx([1.0, 1.0])
    # each region's representative token spreads a total of 1 over its 8 tokens (2x2x2)
    region = e.attention[0, :2, :2, :2]
    assert region.sum() == pytest.approx(1.0, abs=1e-5)
    rows = result.windows
    assert rows["frame_relevance"].iloc[2] is None and pd.isna(rows["peak_frame"].iloc[2])
    np.testing.assert_allclose(rows["frame_relevance"].iloc[0], e.frame_relevance[0], atol=1e-4)


def test_gradcam_by_hand_on_a_vit() -> None:
    """A ViT has no representative tokens: Grad-CAM alone, computed as its definition says."""
    torch.manual_seed(0)
    model = create_model(
        "vit_base", num_classes=3, img_size=32, depth=2, embed_dim=32, num_heads=2, num_frames=4
    ).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    found = explain_batch(model, video)
    assert found["attention"] is None and found["gradcam"].shape == (2, 2, 2, 2)
    # by hand: the last block's input, its gradient for the top class, channel weights
    tokens = {}

    def leaf(module: torch.nn.Module, args: tuple) -> tuple:
        tokens["x"] = args[0].detach().requires_grad_(True)
        return (tokens["x"],)

    hook = model.blocks[-1].register_forward_pre_hook(leaf)
    logits = model(video)
    blank = tokens["x"]
    model(torch.zeros(1, 3, 4, 32, 32))  # the tokens of a blank window, the reference
    blank, tokens["x"] = tokens["x"].detach(), blank
    hook.remove()
    top = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), tokens["x"])
    cam = torch.relu(((tokens["x"] - blank) * grad.mean(1, keepdim=True)).sum(-1)).detach()
    cam = cam / cam.amax(1, keepdim=True)
    np.testing.assert_allclose(found["gradcam"].reshape(2, -1), cam.numpy(), atol=1e-5)
    np.testing.assert_allclose(found["probs"], logits.softmax(1).detach().numpy(), atol=1e-6)
    curve = frame_relevance(found["gradcam"])
    np.testing.assert_allclose(curve.sum(1), 1.0, atol=1e-6)


def test_explain_through_the_python_api_on_committed_media(tmp_path: Path) -> None:
    video = face_video(tmp_path / "a.mp4", frames=72)
    predictor = maedfer.Predictor(save_tiny_checkpoint(tmp_path / "c.pt"), device="cpu")
    result = predictor.predict(video, explain=True)
    assert result.explain.gradcam.shape == (2, 8, 4, 4)
    assert (result.windows["peak_frame"] <= result.windows["end_frame"]).all()
    from maedfer.inference.predict import format_single

    table = format_single(result)
    assert "which frames mattered" in table and "peak f" in table
    # a still, featureless window: no evidence anywhere, the map is all zero, the curve flat
    x = window_batch([np.full((16, 64, 64, 3), 128, np.uint8)], False)
    found = explain_batch(predictor.model, x)
    assert found["gradcam"].shape == (1, 8, 4, 4)
