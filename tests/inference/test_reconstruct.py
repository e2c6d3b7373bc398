"""``maedfer reconstruct`` and ``Reconstructor``: pixel-space reconstructions of masked windows,
our pre-training checkpoints and the official layout, the pictures and the table."""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.inference import Reconstructor, window_batch
from maedfer.model import create_model, load_official
from maedfer.model.official import PRETRAIN_TO_MAE, convert_key
from maedfer.preprocess.faces import FaceAligner
from tests.inference.media import TINY, face_video, portrait_frames, save_tiny_checkpoint
from tests.preprocess.media import encode_video

runner = CliRunner()
MAE_TINY = {k: v for k, v in TINY.items()} | {
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}
TO_OFFICIAL = {ours: official for official, ours in PRETRAIN_TO_MAE.items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reconstruct")
    face_video(root / "a.mp4", frames=72)
    save_tiny_checkpoint(root / "mae.pt", name="mae_lgi_former_tiny")
    save_tiny_checkpoint(root / "classifier.pt")
    return root


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """72 aligned 64-px crops of a committed portrait."""
    return FaceAligner(64, "cpu").align_frames(portrait_frames(72)).frames


def _official_pretrain(path: Path) -> torch.nn.Module:
    """A tiny MAE saved as the official pre-training script saves (official keys, run args)."""
    torch.manual_seed(5)
    model = create_model("mae_lgi_former_tiny", official_decoder_order=True, **MAE_TINY).eval()
    state = {}
    for key, tensor in model.state_dict().items():
        matched, official = convert_key(key, TO_OFFICIAL)
        assert matched and official, key
        state[official] = tensor.clone()
    args = argparse.Namespace(
        input_size=64,
        num_frames=16,
        lg_region_size=[2, 2, 2],
        mask_ratio=0.75,
        sampling_rate=4,
        model="pretrain_videomae_base_dim512_no_depth_patch16_160",
    )
    torch.save({"model": state, "args": args, "epoch": 49}, path)
    return model


def _patches(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(T', S, S)`` True on the pixels of the tokens ``mask`` marks."""
    patch = images.shape[1] // mask.shape[1]
    return np.repeat(np.repeat(mask, patch, axis=1), patch, axis=2)


def test_an_unmasked_token_reconstructs_to_its_input_patch(work: Path, crops: np.ndarray) -> None:
    rec = Reconstructor(work / "mae.pt", device="cpu", mask_ratio=0.5, seed=3)
    window = next(rec.iter_frames(((c, True) for c in crops), fps=25.0))
    assert window.face and window.mask.shape == (8, 4, 4)
    assert window.mask.mean() == pytest.approx(0.5)  # 2 of each 2x2 mask window
    visible = _patches(window.frames, ~window.mask)
    first = window.frames[0::2].astype(np.float32) / 255
    second = window.frames[1::2].astype(np.float32) / 255
    np.testing.assert_allclose(window.appearance[visible], first[visible], atol=1e-5)
    np.testing.assert_allclose(window.motion[visible], (second - first)[visible], atol=1e-5)
    np.testing.assert_allclose(window.second[visible], second[visible], atol=1e-5)
    np.testing.assert_allclose(window.motion_input, second - first, atol=1e-5)
    # the masked ones come from the decoder: an untrained one is far from the input
    masked = ~visible
    assert np.abs(window.appearance[masked] - first[masked]).mean() > 0.05
    assert window.pred.shape == (int(window.mask.sum()), 3 * 2 * 16 * 16)
    assert np.isfinite([window.loss, window.loss_appearance, window.loss_motion]).all()
    assert window.loss == pytest.approx((window.loss_appearance + window.loss_motion) / 2, rel=1e-5)


def test_official_pretraining_pth_reconstructs_as_load_official(
    work: Path, crops: np.ndarray
) -> None:
    pth = work / "official" / "checkpoint-49.pth"
    pth.parent.mkdir(exist_ok=True)
    original = _official_pretrain(pth)
    rec = Reconstructor(
        pth, device="cpu", seed=1, model_overrides={"num_heads": 2, "decoder_num_heads": 2}
    )
    assert rec.settings.format == "official" and rec.mask_ratio == 0.75  # from its args
    windows = list(rec.iter_frames(((c, True) for c in crops), fps=25.0))
    # by hand: the official state dict into our model, the same frames and masks
    model = create_model("mae_lgi_former_tiny", official_decoder_order=True, **MAE_TINY).eval()
    load_official(model, torch.load(pth, weights_only=False)["model"])
    for window in windows:
        mask = torch.from_numpy(window.mask.reshape(1, -1))
        video = window_batch([window.frames], False)
        with torch.no_grad():
            expected = model(video, mask)[0].numpy()
            same = original(video, mask)[0].numpy()
        np.testing.assert_allclose(window.pred, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(window.pred, same, rtol=0, atol=1e-6)
        assert np.array_equal(window.frames, crops[window.frame_indices])


def test_cli_writes_grids_videos_and_the_table(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    result = runner.invoke(
        app,
        [
            "reconstruct",
            str(work / "a.mp4"),
            "--checkpoint",
            str(work / "mae.pt"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--mask-ratio",
            "0.75",
            "--seed",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "losses.csv")
    assert table["window"].tolist() == [0, 1] and table["face"].all()
    assert table["start_frame"].tolist() == [0, 8]  # 72 frames: a window, and the tail
    assert np.isfinite(table[["loss", "loss_appearance", "loss_motion"]].to_numpy()).all()
    assert (table["masked_share"] == 0.75).all()
    png = out / "a" / "window_000.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and table["png"].iloc[0] == str(png)
    with av.open(str(out / "a" / "reconstruction.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = float(c.streams.video[0].average_rate)
    assert len(frames) == 2 * 16 and rate == pytest.approx(25 / 4)  # sampled frames, real pace
    assert frames[0].shape[1] > 4 * 64  # four panels side by side
    # the same seed gives the same masks and losses, another seed others
    again = tmp_path / "again"
    runner.invoke(
        app,
        [
            "reconstruct",
            str(work / "a.mp4"),
            "--checkpoint",
            str(work / "mae.pt"),
            "--out",
            str(again),
            "--device",
            "cpu",
            "--mask-ratio",
            "0.75",
            "--seed",
            "7",
        ],
    )
    assert pd.read_csv(again / "losses.csv")["loss"].tolist() == table["loss"].tolist()
    other = Reconstructor(work / "mae.pt", device="cpu", mask_ratio=0.75, seed=8)
    assert other.reconstruct(work / "a.mp4")[0].loss != table["loss"].iloc[0]


def test_a_classifier_checkpoint_is_refused_in_one_line(work: Path, tmp_path: Path) -> None:
    from tests.inference.media import save_official_pth, tiny_official_model

    official_classifier = save_official_pth(tmp_path / "ft.pth", tiny_official_model())
    for ckpt in (work / "classifier.pt", official_classifier):
        result = runner.invoke(
            app,
            [
                "reconstruct",
                str(work / "a.mp4"),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "x"),
            ],
        )
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a pre-training checkpoint" in lines[0], result.stderr
        assert str(ckpt) in lines[0]


def test_a_manifest_of_prepared_clips(work: Path, crops: np.ndarray, tmp_path: Path) -> None:
    """Prepared clips are read as they are (no face search); --limit takes the first."""
    clips = tmp_path / "clips"
    encode_video(crops[:40], clips / "c1.mp4")
    encode_video(crops[20:], clips / "c2.mp4")
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame(
        {
            "clip_id": ["c1", "c2"],
            "path": ["clips/c1.mp4", "clips/c2.mp4"],
            "label": np.array([-1, -1], np.int16),
            "split": ["pretrain", "pretrain"],
            "num_frames": np.array([40, 52], np.int32),
            "fps": np.array([25, 25], np.float32),
        }
    ).to_parquet(manifest)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "reconstruct",
            str(manifest),
            "--checkpoint",
            str(work / "mae.pt"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "losses.csv")
    assert table["input"].tolist() == ["c1", "c2"]  # 40 and 52 frames: one window each
    assert table["face"].all() and (out / "c2" / "window_000.png").is_file()
    result = runner.invoke(
        app,
        [
            "reconstruct",
            str(manifest),
            "--checkpoint",
            str(work / "mae.pt"),
            "--out",
            str(tmp_path / "one"),
            "--limit",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "one" / "losses.csv")["input"].tolist() == ["c1"]


def test_the_official_codes_own_pretraining_state_dict_loads(tmp_path: Path) -> None:
    """tests/model/fixtures/official_tiny.pt holds a pre-training state dict written by the
    official modules (scripts/make_official_fixture.py) and their outputs: saved as the
    official script saves it, the reconstructor's model gives those outputs."""
    fixture = torch.load(
        Path(__file__).parents[1] / "model" / "fixtures" / "official_tiny.pt", weights_only=True
    )
    pth = tmp_path / "checkpoint-49.pth"
    torch.save({"model": fixture["pretrain_state"], "epoch": 49}, pth)
    rec = Reconstructor(pth, device="cpu", model_overrides=["num_heads=2", "decoder_num_heads=2"])
    assert rec.settings.format == "official" and rec.settings.size == 160
    assert rec.model.config["official_decoder_order"] is True  # what the weights learned with
    video = torch.randn(
        1, 3, 16, 160, 160, generator=torch.Generator().manual_seed(fixture["video16_seed"])
    )
    with torch.no_grad():
        pred = rec.model(video, fixture["mask"])
    torch.testing.assert_close(
        pred[:, fixture["rows"]], fixture["pretrain_pred_rows"], atol=1e-4, rtol=0
    )
    widths = runner.invoke(
        app, ["reconstruct", str(tmp_path), "--checkpoint", str(pth), "--out", str(tmp_path / "x")]
    )
    assert widths.exit_code == 1 and "--set num_heads=N" in widths.stderr
