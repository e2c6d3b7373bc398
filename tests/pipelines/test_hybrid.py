"""The hybrid backend (PyAV decodes planes, torch converts and augments the batch) against the
PyAV backend on the same plans, run on the CPU device (the code the GPU runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maedfer.pipelines import build_loader, pyav
from maedfer.pipelines.augment import IMAGENET_STD, Box
from maedfer.pipelines.rand_augment import CLIP_TOLERANCE
from maedfer.pipelines.yuv import planes_to_rgb

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255  # back to 0..255 units


def both(manifest, **kw) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    out = {}
    for backend in ("pyav", "hybrid"):
        loader = build_loader(
            manifest,
            backend=backend,
            workers=kw.pop("workers", 0),
            device="cpu" if backend == "hybrid" else None,
            **kw,
        )
        batches = list(loader)
        out[backend] = (
            torch.cat([b["video"] for b in batches]),
            [c for b in batches for c in b["clip_id"]],
            torch.cat([b["label"] for b in batches]),
        )
    assert out["pyav"][1] == out["hybrid"][1]
    assert torch.equal(out["pyav"][2], out["hybrid"][2])
    return out["pyav"][0], out["hybrid"][0]


@pytest.mark.parametrize("crop", [None, Box(5, 7, 41, 37), Box(-3, 50, 40, 30)])
def test_planes_convert_to_pyav_s_rgb_exactly(
    h264_clips: tuple[Path, pd.DataFrame], crop: Box | None
) -> None:
    folder, rows = h264_clips
    path = str(folder / rows.path[4])
    wanted = np.array([0, 3, 4, 9, 30, 52])
    have, rgb = pyav.decode_found(path, wanted, crop)
    have_planes, planes = pyav.decode_planes(path, wanted, crop)
    assert np.array_equal(have, have_planes)
    one = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    got = planes_to_rgb(
        one(planes.y),
        one(planes.u),
        one(planes.v),
        oy=planes.oy,
        ox=planes.ox,
        full_range=planes.full_range,
        kr=planes.kr,
        kb=planes.kb,
    )[0]
    assert torch.equal(got, torch.from_numpy(rgb).permute(2, 3, 0, 1))


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("test", {}),
        ("train", {"rand_augment": False}),
        ("pretrain", {}),
        ("train", {"rand_augment": False, "subtract_mean": True, "random_sign": True}),
        ("train", {"augment": False, "flip_only": True}),
    ],
)
def test_hybrid_matches_pyav(h264_clips: tuple[Path, pd.DataFrame], mode: str, extra: dict) -> None:
    folder, _ = h264_clips
    pyav_video, hybrid_video = both(
        folder / "manifest.parquet", mode=mode, fold=1, batch_size=2, size=32, **extra
    )
    assert hybrid_video.shape == pyav_video.shape and hybrid_video.dtype == torch.float32
    assert ((hybrid_video - pyav_video) * STD).abs().max() <= 2.0


def test_hybrid_rand_augment_matches_pyav(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    pyav_video, hybrid_video = both(
        folder / "manifest.parquet", mode="train", batch_size=3, size=48, seed=4, rand_augment=True
    )
    diff = ((hybrid_video - pyav_video) * STD).abs()
    mean, share = CLIP_TOLERANCE
    assert diff.mean() <= mean and (diff > 2).float().mean() <= share


def test_hybrid_crops_partial_batches_and_a_worker(
    h264_clips: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """Manifest crops of two shapes in one batch (two conversion groups, put back in order), a
    partial last batch, a faulty file replaced, decoding in a worker process."""
    folder, rows = h264_clips
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really" * 30)
    rows = rows.assign(
        crop=[[8, 4, 40, 48], None, [2, 2, 50, 40], None, None, [8, 4, 40, 48]],
        path=[str(folder / p) for p in rows.path],
    ).drop(columns="num_frames")
    rows.loc[len(rows)] = {
        "clip_id": "junk",
        "path": str(tmp_path / "junk.mp4"),
        "label": 0,
        "fold": 1,
        "crop": None,
    }
    pyav_video, hybrid_video = both(rows, mode="test", batch_size=5, size=24, workers=1)
    assert hybrid_video.shape[0] == 14  # batches 5, 5, 4 (the junk clip's views replaced)
    assert ((hybrid_video - pyav_video) * STD).abs().max() <= 2.0


@pytest.mark.gpu
def test_hybrid_on_cuda_matches_pyav(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    manifest = folder / "manifest.parquet"
    for mode, extra in (
        ("test", {}),
        ("train", {"rand_augment": False}),
        ("train", {"rand_augment": True}),
    ):
        videos = []
        for backend, device in (("pyav", None), ("hybrid", "cuda")):
            loader = build_loader(
                manifest,
                mode=mode,
                batch_size=3,
                size=32,
                backend=backend,
                workers=1,
                device=device,
                seed=2,
                **extra,
            )
            videos.append(torch.cat([b["video"].cpu() for b in loader]))
        diff = ((videos[1] - videos[0]) * STD).abs()
        if extra.get("rand_augment"):
            mean, share = CLIP_TOLERANCE
            assert diff.mean() <= mean and (diff > 2).float().mean() <= share
        else:
            assert diff.max() <= 2.0
