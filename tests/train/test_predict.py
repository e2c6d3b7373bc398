"""``maedfer predict``: windows, checkpoint loading, real face videos (maedfer.train.predict)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.model import create_model
from maedfer.train import checkpoint, predict

runner = CliRunner()
CLASSES = ["neutral", "smile", "surprise"]


@pytest.mark.parametrize(
    ("frames", "hop", "starts", "last"),
    [
        (72, None, [0, 8], 68),  # 18 subsampled frames: the two test views 0..60 and 8..68
        (64, None, [0], 60),  # exactly one window
        (100, None, [0, 32, 36], 96),  # hops 0, 8 then a last window ending at 96
        (30, None, [0], 28),  # shorter than a window: 0..28 padded with 28
        (1, None, [0], 0),
        (200, 16, [0, 64, 128, 136], 196),  # 50 subsampled: hop 16 → 0, 16, 32, tail 34
    ],
)
def test_window_indices(frames: int, hop: int | None, starts: list[int], last: int) -> None:
    windows = predict.window_indices(frames, num_frames=16, stride=4, hop=hop)
    assert windows.shape == (len(starts), 16)
    assert windows[:, 0].tolist() == starts
    assert windows[-1, -1] == last
    assert (windows < frames).all() and (np.diff(windows, axis=1) >= 0).all()
    full = windows[:, -1] - windows[:, 0] == 60
    assert full.all() or frames < 64  # every window spans 16 frames at stride 4 when it can


def test_window_indices_refuses_bad_arguments() -> None:
    with pytest.raises(MaedferError, match="hop"):
        predict.window_indices(72, hop=0)
    with pytest.raises(MaedferError, match="video frame"):
        predict.window_indices(0)


def save_tiny_checkpoint(path: Path, name: str = "lgi_former_tiny", **options) -> Path:
    """A run checkpoint (DESIGN.md §6) of a one-block LGI-Former on 64-pixel faces."""
    torch.manual_seed(0)
    overrides = dict(depth=1, img_size=64, embed_dim=32, num_heads=2, region_size=(2, 2, 2))
    if not name.startswith("mae_"):  # the pre-training model has no head
        overrides["num_classes"] = len(CLASSES)
    model = create_model(name, **overrides)
    if hasattr(model, "head"):
        with torch.no_grad():  # a head far from uniform, so the softmax is exercised
            model.head.weight.normal_(0, 1.0)
    # As the fine-tuning recipe writes it: options under "config" (None = the model's value).
    config = dict(num_frames=None, size=None, stride=4, subtract_mean=False)
    classes = options.pop("classes", CLASSES)
    config.update(options)
    state = dict(format=checkpoint.FORMAT, version=checkpoint.VERSION, model_name=name,
                 model_config=checkpoint.plain(model.config), model=model.state_dict(),
                 epoch=1, step=1, config=config, classes=classes)  # fmt: skip
    checkpoint.save_checkpoint(path, state)
    return path


def test_single_face_gives_one_row_per_window(media_dir: Path, tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    out, plot = tmp_path / "windows.csv", tmp_path / "timeline.png"
    result = runner.invoke(
        app,
        ["predict", str(media_dir / "single_face.mp4"), "--checkpoint", str(ckpt),
         "--out", str(out), "--plot", str(plot), "--device", "cpu", "--hop", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    expected = predict.window_indices(72, num_frames=16, stride=4, hop=1)  # starts 0, 4, 8
    assert len(expected) == 3
    assert len(rows) == len(expected)
    assert [int(r["start_frame"]) for r in rows] == expected[:, 0].tolist()
    assert [int(r["end_frame"]) for r in rows] == expected[:, -1].tolist()
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert row["top_class"] == CLASSES[int(np.argmax(probs))]
        assert float(row["end_s"]) > float(row["start_s"]) >= 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "top class (mean probability):" in result.stdout


def test_no_face_is_refused(media_dir: Path, tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    out = tmp_path / "windows.json"
    result = runner.invoke(
        app,
        ["predict", str(media_dir / "no_face.mp4"), "--checkpoint", str(ckpt), "--out", str(out),
         "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no face found in" in lines[0] and "no_face.mp4" in lines[0]
    assert not out.exists()


def test_json_output_and_summary(tmp_path: Path, monkeypatch) -> None:
    # The JSON path, checked on a synthetic aligned clip so the test needs no second alignment.
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt", subtract_mean=True)
    faces = np.random.default_rng(0).integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)

    def fake_align(video, settings, hop, device):
        windows = predict.window_indices(100, num_frames=16, stride=4, hop=hop)
        return dict(crops=lambda: iter(faces), windows=windows, fps=25.0, num_frames=100,
                    face_ratio=1.0)  # fmt: skip

    monkeypatch.setattr(predict, "_read_and_align", fake_align)
    out = tmp_path / "w.json"
    result = predict.run(tmp_path / "video.mp4", ckpt, out=out, device="cpu")
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"]
    assert saved["settings"]["subtract_mean"] is True and saved["settings"]["hop"] == 8
    assert [w["start_s"] for w in saved["windows"]] == [0.0, 1.28, 1.44]
    assert saved["windows"][0]["end_s"] == pytest.approx(61 / 25)
    probs = np.array([[w["probabilities"][c] for c in CLASSES] for w in saved["windows"]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    summary = saved["summary"]
    mean = [summary["mean_probabilities"][c] for c in CLASSES]
    np.testing.assert_allclose(mean, probs.mean(axis=0), atol=1e-6)
    assert summary["top_class"] == CLASSES[int(np.argmax(mean))]
    share = np.bincount(probs.argmax(axis=1), minlength=3) / 3
    np.testing.assert_allclose([summary["window_share"][c] for c in CLASSES], share)


def test_bad_checkpoints_and_outputs_are_refused(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not read: the checks come first")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    mae = save_tiny_checkpoint(tmp_path / "mae.pt", name="mae_lgi_former_tiny")
    wrong = save_tiny_checkpoint(tmp_path / "wrong.pt", classes=["a", "b"])
    size = save_tiny_checkpoint(tmp_path / "size.pt", size=96)
    good = save_tiny_checkpoint(tmp_path / "last.pt")
    cases = [
        (junk, [], "is not a PyTorch checkpoint"),
        (mae, [], "pre-training checkpoint"),
        (wrong, [], "the model has 3 outputs but the checkpoint names 2 classes"),
        (size, [], "config size=96 but the model expects img_size=64"),
        (good, ["--out", str(tmp_path / "w.txt")], "must end in .csv or .json"),
    ]
    for ckpt, extra, message in cases:
        result = runner.invoke(app, ["predict", str(video), "--checkpoint", str(ckpt), *extra])
        assert result.exit_code == 1, result.output
        assert message in result.stderr


def test_window_inputs_are_normalised_like_the_pipelines() -> None:
    # Frames of constant value v give (v - 255·mean_c) / (255·std_c) per channel (the loader's
    # ImageNet normalisation); with subtract_mean a clip whose frames only brighten by 8 per
    # frame gives (v_t - mean_t v) / (255·std_c), the same in every pixel.
    from maedfer.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD

    values = np.arange(100, 100 + 8 * 20, 8)[:20]
    faces = np.broadcast_to(values[:, None, None, None], (20, 4, 4, 3)).astype(np.uint8)
    windows = predict.window_indices(20, num_frames=4, stride=2)  # frames 0,2,4,6 ... 12..18
    plain = predict._window_batch([faces[w] for w in windows], subtract_mean=False)
    assert plain.shape == (len(windows), 3, 4, 4, 4)
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    expected = (values[windows[0]][None, :] - mean[:, None]) / std[:, None]  # (3, T)
    np.testing.assert_allclose(plain[0, :, :, 0, 0].numpy(), expected, rtol=1e-5)
    centred = predict._window_batch([faces[w] for w in windows], subtract_mean=True)
    steps = values[windows[0]] - values[windows[0]].mean()
    np.testing.assert_allclose(
        centred[0, :, :, 2, 3].numpy(), steps[None, :] / std[:, None], rtol=1e-5, atol=1e-6
    )


def test_windows_stream_from_the_aligned_frames() -> None:
    """Each window is cut as soon as its last frame arrives, equals the frames it names, and
    frames after the last window's last frame are never asked for."""
    faces = np.random.default_rng(1).integers(0, 256, (103, 4, 4, 3), dtype=np.uint8)
    windows = predict.window_indices(103, num_frames=16, stride=4)
    asked = []

    def crops():
        for t, face in enumerate(faces):
            asked.append(t)
            yield face

    got = list(predict._windows_of(crops(), windows))
    assert len(got) == len(windows)
    for window, clip in zip(windows, got, strict=True):
        np.testing.assert_array_equal(clip, faces[window])
    assert asked[-1] == windows.max()
