"""The DALI pipeline, run on the CPU on VP9 clips through the definition the GPU uses.

DALI 2.4 decodes VP8/VP9/MJPEG on the CPU (docs/design.md), so these tests compare the DALI and
PyAV backends sample by sample there. Tolerance 2/255 without RandAugment: both convert 4:2:0
with bilinear chroma and BT.601 (measured max difference 1/255, from rounding); the GPU test does
the same on H.264. With RandAugment (torch ops on DALI's frames, PIL/OpenCV on PyAV's), the
stated whole-clip tolerance: mean absolute difference <= 0.25/255 and at most 0.5 % of values
beyond 2/255 (rand_augment.CLIP_TOLERANCE; measured mean <= 0.05/255, <= 0.15 % beyond 2/255).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import build_loader
from maedfer.pipelines.augment import IMAGENET_STD
from maedfer.pipelines.loader import dali_available
from maedfer.pipelines.rand_augment import CLIP_TOLERANCE

pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255  # back to 0..255 units


def both(manifest, *, dali_device: str, **kw) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    out = {}
    for backend in ("pyav", "dali"):
        loader = build_loader(
            manifest,
            backend=backend,
            workers=0 if backend == "pyav" else 1,
            device=dali_device if backend == "dali" else None,
            **kw,
        )
        batches = list(loader)
        out[backend] = (
            torch.cat([b["video"].cpu() for b in batches]),
            [c for b in batches for c in b["clip_id"]],
        )
    assert out["pyav"][1] == out["dali"][1]
    return out["pyav"][0], out["dali"][0], out["dali"][1]


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("test", {}),
        ("train", {"rand_augment": False}),
        ("pretrain", {}),
        ("train", {"rand_augment": False, "subtract_mean": True}),
    ],
)
def test_dali_cpu_matches_pyav(
    vp9_clips: tuple[Path, pd.DataFrame], mode: str, extra: dict
) -> None:
    folder, _ = vp9_clips
    pyav_video, dali_video, ids = both(
        folder / "manifest.parquet",
        dali_device="cpu",
        mode=mode,
        fold=1,
        batch_size=2,
        size=32,
        **extra,
    )
    assert dali_video.shape == pyav_video.shape and dali_video.dtype == torch.float32
    assert dali_video.shape[1:] == (3, 16, 32, 32)
    assert ((dali_video - pyav_video) * STD).abs().max() <= 2.0


def within_rand_augment_tolerance(pyav_video: torch.Tensor, dali_video: torch.Tensor) -> None:
    diff = ((dali_video - pyav_video) * STD).abs()  # 0..255 units
    mean, share = CLIP_TOLERANCE
    assert diff.mean() <= mean, diff.mean()
    assert (diff > 2).float().mean() <= share, (diff > 2).float().mean()


@pytest.mark.parametrize(("size", "seed"), [(32, 0), (32, 1), (48, 2)])
def test_dali_cpu_rand_augment_matches_pyav(
    vp9_clips: tuple[Path, pd.DataFrame], size: int, seed: int
) -> None:
    folder, _ = vp9_clips
    pyav_video, dali_video, _ = both(
        folder / "manifest.parquet",
        dali_device="cpu",
        mode="train",
        batch_size=2,
        size=size,
        seed=seed,
        rand_augment=True,
    )
    without, _, _ = both(
        folder / "manifest.parquet",
        dali_device="cpu",
        mode="train",
        batch_size=2,
        size=size,
        seed=seed,
        rand_augment=False,
    )
    assert not torch.allclose(pyav_video, without)  # RandAugment did change the clips
    within_rand_augment_tolerance(pyav_video, dali_video)


def test_dali_crop_and_partial_batches(vp9_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, rows = vp9_clips
    rows = rows.assign(crop=[[8, 4, 40, 48]] * 3 + [None] * 3).drop(columns="num_frames")
    pyav_video, dali_video, ids = both(
        rows, dali_device="cpu", mode="test", batch_size=5, size=24, root=folder
    )
    assert len(ids) == 12 and dali_video.shape == (12, 3, 16, 24, 24)  # batches 5, 5, 2
    assert ((dali_video - pyav_video) * STD).abs().max() <= 2.0


def test_dali_epochs_reshuffle_and_replace_faults(
    vp9_clips: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    folder, rows = vp9_clips
    (tmp_path / "junk.webm").write_bytes(b"\x1aE\xdf\xa3 not really webm" * 40)
    bad = pd.DataFrame(
        [
            {
                "clip_id": "junk",
                "path": str(tmp_path / "junk.webm"),
                "label": 0,
                "fold": 1,
                "num_frames": 30,
            },
            {
                "clip_id": "gone",
                "path": str(tmp_path / "gone.webm"),
                "label": 1,
                "fold": 2,
                "num_frames": 30,
            },
        ]
    )
    loader = build_loader(
        pd.concat([rows, bad], ignore_index=True),
        mode="train",
        batch_size=4,
        size=16,
        backend="dali",
        device="cpu",
        workers=1,
        root=folder,
    )
    epochs = []
    for _ in range(2):
        ids = [c for b in loader for c in b["clip_id"]]
        assert len(ids) == 8 and "junk" not in ids and "gone" not in ids
        assert loader.num_bad >= 2
        epochs.append(ids)
    assert epochs[0] != epochs[1]


def test_dali_cpu_refuses_h264_clearly(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    loader = build_loader(
        folder / "manifest.parquet",
        mode="test",
        batch_size=2,
        size=16,
        backend="dali",
        device="cpu",
    )
    with pytest.raises(MaedferError, match="use backend pyav"):
        next(iter(loader))


def test_import_maedfer_does_not_import_dali() -> None:
    code = (
        "import sys, maedfer, maedfer.pipelines, maedfer.pipelines.loader;"
        "sys.exit('nvidia.dali' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.gpu
def test_dali_gpu_h264_matches_pyav(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    for mode, extra in (("test", {}), ("train", {"rand_augment": False})):
        pyav_video, dali_video, _ = both(
            folder / "manifest.parquet",
            dali_device="cuda",
            mode=mode,
            batch_size=2,
            size=32,
            **extra,
        )
        assert ((dali_video - pyav_video) * STD).abs().max() <= 2.0
    pyav_video, dali_video, _ = both(
        folder / "manifest.parquet",
        dali_device="cuda",
        mode="train",
        batch_size=2,
        size=32,
        rand_augment=True,
    )
    within_rand_augment_tolerance(pyav_video, dali_video)


def test_dali_builds_its_pipeline_once_per_loader(vp9_clips: tuple[Path, pd.DataFrame]) -> None:
    """Epochs reuse the pipeline (DALI reset, the producer refed); each epoch's batches are
    its plan's, the same as a fresh loader's for that epoch."""
    folder, _ = vp9_clips
    kw = {
        "mode": "train",
        "batch_size": 2,
        "size": 24,
        "backend": "dali",
        "device": "cpu",
        "workers": 1,
        "seed": 5,
    }
    loader = build_loader(folder / "manifest.parquet", **kw)
    epochs = [torch.cat([b["video"] for b in loader]) for _ in range(3)]
    assert loader.session["dali"].builds == 1
    fresh = build_loader(folder / "manifest.parquet", **kw)
    fresh.set_epoch(2)
    assert torch.equal(torch.cat([b["video"] for b in fresh]), epochs[2])
    assert not torch.equal(epochs[0], epochs[1])


def test_dali_on_the_gpu_without_nvdec_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from maedfer.pipelines import dali, nvdec

    monkeypatch.setattr(nvdec, "library", lambda: None)
    epoch = dali.BACKEND.epoch(
        None, batch_size=1, drop_last=False, workers=1, device=torch.device("cuda"), faults=None
    )
    with pytest.raises(MaedferError, match="libnvcuvid.*NVIDIA_DRIVER_CAPABILITIES"):
        next(epoch)
