"""``maedfer embed``: features per window of a video, per clip of a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.inference import load_classifier
from maedfer.manifests import write_manifest
from tests.inference.media import face_video, grey_frames, portrait_frames, save_tiny_checkpoint
from tests.pipelines.media import make_manifest
from tests.preprocess.media import encode_video

runner = CliRunner()


def test_video_features_per_window(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    video = tmp_path / "face_then_grey.mp4"
    encode_video(np.stack([*portrait_frames(72), *grey_frames(80)]), video)
    out = tmp_path / "features.parquet"
    result = runner.invoke(
        app, ["embed", str(video), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.field("features").type.value_type == "float"
    assert table.schema.metadata[b"maedfer.dim"] == b"32"
    frame = table.to_pandas()
    assert frame["face"].tolist() == [True, True, False, False]
    faced = np.stack(frame["features"][frame["face"]])
    assert faced.shape == (2, 32) and np.isfinite(faced).all()
    assert frame["features"][~frame["face"]].isna().all()
    # fc_norm output: per-window LayerNorm, mean ~0 before its affine (fresh: weight 1, bias 0)
    np.testing.assert_allclose(faced.mean(1), 0, atol=1e-5)


def test_manifest_features_per_clip(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    rows = make_manifest(tmp_path, [40, 70, 30], size=64, num_classes=3)
    manifest = tmp_path / "manifest.parquet"
    write_manifest(
        rows.assign(
            dataset="ravdess",
            source=rows["path"],
            subject="1",
            label_name=[["a", "b", "c"][i] for i in rows["label"]],
        ),
        manifest,
        dataset="ravdess",
        protocol="test",
        classes=["a", "b", "c"],
        num_folds=2,
        raw_root=tmp_path,
    )
    out = tmp_path / "clips.parquet"
    result = runner.invoke(
        app,
        [
            "embed",
            str(manifest),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["clip_id"].tolist() == ["clip0", "clip1", "clip2"]
    assert (frame["views"] == 2).all() and len(frame["features"][0]) == 32
    # the same by hand for clip1: the mean of the model's features over its two test views
    from maedfer.pipelines import build_loader

    model, _ = load_classifier(ckpt)
    loader = build_loader(
        manifest,
        mode="test",
        batch_size=8,
        num_frames=16,
        stride=4,
        size=64,
        backend="pyav",
        workers=0,
    )
    batch = next(iter(loader))
    with torch.no_grad():
        feats = model.forward_features(batch["video"]).numpy()
    mine = feats[[i for i, c in enumerate(batch["clip_id"]) if c == "clip1"]].mean(0)
    np.testing.assert_allclose(frame["features"][1], mine, atol=1e-5)


def test_embed_refuses_mixed_inputs(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    video = face_video(tmp_path / "a.mp4", frames=20)
    for args, message in (
        ([str(video), "--out", str(tmp_path / "f.csv")], "must end in .parquet"),
        ([str(video), "--fold", "1", "--out", str(tmp_path / "f.parquet")], "select manifest"),
    ):
        result = runner.invoke(app, ["embed", *args, "--checkpoint", str(ckpt)])
        assert result.exit_code == 1 and message in result.stderr, result.output
