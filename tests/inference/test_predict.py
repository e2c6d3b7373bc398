"""``maedfer predict`` and ``maedfer.Predictor``: any checkpoint, many videos, faceless windows,
the plot and the overlay (maedfer.inference)."""

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
from maedfer.inference import window_batch, window_indices
from maedfer.inference.render import merged_columns, plot_timeline
from maedfer.model import create_model, load_official
from maedfer.preprocess.faces import FaceAligner
from tests.inference.media import (
    CLASSES,
    TINY,
    face_video,
    grey_frames,
    grey_video,
    portrait_frames,
    save_official_pth,
    save_tiny_checkpoint,
    tiny_official_model,
)

runner = CliRunner()
# DFEW's label order (maedfer/manifests/dfew.py)
DFEW = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two face videos, a grey one without a face, a run checkpoint and an official .pth."""
    root = tmp_path_factory.mktemp("predict")
    face_video(root / "videos" / "a.mp4", frames=72)
    face_video(root / "videos" / "b.mp4", frames=100, stem="grace_hopper", seed=1)
    grey_video(root / "videos" / "c_grey.mp4")
    save_tiny_checkpoint(root / "last.pt")
    save_official_pth(root / "official" / "checkpoint-best.pth", tiny_official_model())
    return root


def test_official_checkpoint_predicts_load_official_probabilities(work: Path) -> None:
    """CLI and Python API on an official-layout .pth give what load_official + forward give."""
    pth, video = work / "official" / "checkpoint-best.pth", work / "videos" / "a.mp4"
    predictor = maedfer.Predictor(
        pth, device="cpu", dataset="dfew", model_overrides={"num_heads": 2}
    )
    assert predictor.class_names == DFEW and predictor.settings.format == "official"
    result = predictor.predict(video)
    # by hand: the official state dict into our model, the aligned frames, the same windows
    model = create_model("lgi_former_tiny", num_classes=7, **TINY).eval()
    load_official(model, torch.load(pth, weights_only=False)["model"])
    with av.open(str(video)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    crops = FaceAligner(64, "cpu").align_frames(frames).frames
    windows = window_indices(len(frames), num_frames=16, stride=4)
    with torch.no_grad():
        expected = model(window_batch([crops[w] for w in windows], False)).softmax(1).numpy()
    assert result.windows["face"].all()
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-6)
    assert expected.std(0).max() > 1e-4 or expected.max() > 0.5  # the weights do something
    out = work / "official.json"
    cli = runner.invoke(
        app,
        [
            "predict",
            str(video),
            "--checkpoint",
            str(pth),
            "--dataset",
            "dfew",
            "--set",
            "num_heads=2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert cli.exit_code == 0, cli.output
    saved = json.loads(out.read_text())
    got = np.array([[w[f"prob_{c}"] for c in DFEW] for w in saved["windows"]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert saved["videos"][0]["status"] == "ok" and saved["videos"][0]["top_class"] in DFEW


def test_official_checkpoint_class_names_are_checked(work: Path) -> None:
    pth = str(work / "official" / "checkpoint-best.pth")
    video = str(work / "videos" / "a.mp4")
    cases = [
        ([], "names no classes: give --dataset (a 7-class head fits dfew, ferv39k"),
        (["--dataset", "mafw"], "has a 7-class head but dataset mafw names 11 classes"),
        (["--classes", "a,b"], "has a 7-class head but --classes names 2 classes"),
        (["--dataset", "dfew", "--classes", "a,b"], "give --dataset or --classes, not both"),
    ]
    for extra, message in cases:
        result = runner.invoke(
            app, ["predict", video, "--checkpoint", pth, "--set", "num_heads=2", *extra]
        )
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
    names = "a,b,c,d,e,f,g"
    predictor = maedfer.Predictor(pth, device="cpu", classes=names, model_overrides=["num_heads=2"])
    assert predictor.class_names == list("abcdefg")


def test_a_folder_gives_one_table_with_the_faceless_video_recorded(work: Path) -> None:
    out = work / "tables" / "results.parquet"
    result = runner.invoke(
        app,
        [
            "predict",
            str(work / "videos"),
            "--checkpoint",
            str(work / "last.pt"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    videos = pd.read_parquet(out.with_name("results.videos.parquet"))
    assert [Path(v).name for v in videos["video"]] == ["a.mp4", "b.mp4", "c_grey.mp4"]
    assert videos["status"].tolist() == ["ok", "ok", "failed"]
    assert videos["reason"].iloc[2] == "no face found" and videos["reason"].iloc[:2].isna().all()
    assert videos["num_frames"].iloc[:2].tolist() == [72, 100]
    windows = pd.read_parquet(out)
    per_video = windows.groupby("video").size()
    assert per_video.tolist() == [2, 3]  # 72 frames: 2 windows; 100 frames: 3
    probs = windows[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert "2 of 3 videos predicted, 1 failed" in result.stdout
    # a glob of the same folder, CSV: the same rows
    csv = work / "tables" / "r.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            str(work / "videos" / "*.mp4"),
            "--checkpoint",
            str(work / "last.pt"),
            "--out",
            str(csv),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(csv)) == 5 and len(pd.read_csv(work / "tables" / "r.videos.csv")) == 3


def test_faceless_windows_carry_no_probabilities(work: Path) -> None:
    """A face for 72 frames, then 80 grey ones: the grey windows are flagged and empty, and
    the summary averages the face windows only."""
    predictor = maedfer.Predictor(work / "last.pt", device="cpu")
    frames = [*portrait_frames(72), *grey_frames(80)]
    result = predictor.predict_frames(iter(frames), fps=25)
    w = result.windows
    assert w["start_frame"].tolist() == window_indices(152)[:, 0].tolist()
    assert w["face"].tolist() == [True, True, False, False]
    faceless = w[~w["face"]]
    assert faceless[[f"prob_{c}" for c in CLASSES]].isna().all().all()
    assert faceless["top_class"].isna().all() and faceless["top_p"].isna().all()
    s = result.summary
    assert s["face_windows"] == 2 and s["num_windows"] == 4
    assert s["face_ratio"] == pytest.approx(72 / 152, abs=0.02)
    face_probs = result.probabilities[:2]
    np.testing.assert_allclose(
        [s["mean_probabilities"][c] for c in CLASSES], face_probs.mean(0), atol=1e-9
    )
    document = result.to_dict()  # JSON: null, not NaN
    assert document["windows"][3]["prob_smile"] is None
    json.dumps(document, allow_nan=False)
    # the plot shades them: merged columns without a face are NaN
    edges, probs, face = merged_columns(result)
    assert np.isnan(probs[:, -1]).all() and face[-1] == 0 and not np.isnan(probs[:, 0]).any()


def test_long_predictions_plot_merged(work: Path, tmp_path: Path) -> None:
    predictor = maedfer.Predictor(work / "last.pt", device="cpu")
    short = predictor.predict(work / "videos" / "a.mp4")
    # 600 windows (a 2-hour video at a long hop, say): merged into 240 columns
    rows = pd.concat([short.windows.iloc[[0]]] * 600, ignore_index=True)
    rows["start_s"] = np.arange(600) * 12.0
    rows["end_s"] = rows["start_s"] + 2.4
    rows.loc[300:350, [f"prob_{c}" for c in CLASSES]] = np.nan
    rows.loc[300:350, "face"] = False
    short.windows = rows
    short.num_frames = int(600 * 12 * short.fps)
    edges, probs, _ = merged_columns(short)
    assert len(edges) == 241 and np.isnan(probs).any() and not np.isnan(probs).all()
    path = plot_timeline(short, tmp_path / "long.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_overlay_has_the_inputs_frames_and_size(work: Path, tmp_path: Path) -> None:
    video = work / "videos" / "b.mp4"
    overlay, plot = tmp_path / "overlay.mp4", tmp_path / "timeline.png"
    result = runner.invoke(
        app,
        [
            "predict",
            str(video),
            "--checkpoint",
            str(work / "last.pt"),
            "--overlay",
            str(overlay),
            "--plot",
            str(plot),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "top class (mean probability over face windows)" in result.stdout
    with av.open(str(video)) as c:
        source = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(overlay)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(25.0)
        drawn = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(drawn) == len(source) == 100
    assert drawn[0].shape == source[0].shape == (128, 160, 3)
    # something is drawn (box, bars), the rest of the picture is the input's
    diff = np.abs(drawn[50].astype(int) - source[50].astype(int)).max(axis=2)
    assert 0.02 < (diff > 40).mean() < 0.6
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_single_faceless_video_is_one_line(work: Path, media_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "predict",
            str(media_dir / "no_face.mp4"),
            "--checkpoint",
            str(work / "last.pt"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no face found in" in lines[0] and "no_face.mp4" in lines[0]


def test_real_face_video_and_weights_only_file(work: Path, media_dir: Path, tmp_path: Path) -> None:
    from maedfer.training.checkpoint import export_weights

    final = export_weights(work / "last.pt", tmp_path / "final.pt")
    out = tmp_path / "windows.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            str(media_dir / "single_face.mp4"),
            "--checkpoint",
            str(final),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--hop",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    expected = window_indices(72, num_frames=16, stride=4, hop=1)  # starts 0, 4, 8
    assert rows["start_frame"].tolist() == expected[:, 0].tolist()
    assert rows["end_frame"].tolist() == expected[:, -1].tolist()
    assert rows["face"].all()
    probs = rows[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (rows["top_class"] == [CLASSES[i] for i in probs.argmax(1)]).all()


def test_bad_checkpoints_and_outputs_are_refused(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not read: the checks come first")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    mae = save_tiny_checkpoint(tmp_path / "mae.pt", name="mae_lgi_former_tiny")
    size = save_tiny_checkpoint(tmp_path / "size.pt", size=96)
    good = save_tiny_checkpoint(tmp_path / "last.pt")
    cases = [
        (junk, [], "is not a PyTorch checkpoint"),
        (mae, [], "pre-training checkpoint"),
        (size, [], "config size=96 but the model expects img_size=64"),
        (good, ["--classes", "x,y,z"], "names its classes"),
        (good, ["--out", str(tmp_path / "w.txt")], "must end in .parquet, .csv, .json"),
        (good, ["--overlay", str(tmp_path / "o.avi")], "must end in .mp4"),
    ]
    for ckpt, extra, message in cases:
        result = runner.invoke(app, ["predict", str(video), "--checkpoint", str(ckpt), *extra])
        assert result.exit_code == 1, result.output
        assert message in result.stderr, result.stderr
    result = runner.invoke(
        app, ["predict", str(tmp_path / "nothing*.mp4"), "--checkpoint", str(good)]
    )
    assert result.exit_code == 1 and "no file, folder or matching pattern" in result.stderr
