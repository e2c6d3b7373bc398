"""build_loader on the PyAV backend: contract, selection, determinism, sharding, faults."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import build_loader, sampling
from maedfer.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
from tests.pipelines.conftest import COUNTS
from tests.pipelines.media import read_markers

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) normalised → (T, H, W, 3) uint8, undoing the ImageNet normalisation."""
    pixels = (video * STD + MEAN).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).numpy()


def test_test_mode_contract(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    loader = build_loader(
        folder / "manifest.parquet",
        mode="test",
        fold=1,
        batch_size=4,
        size=64,
        backend="pyav",
        workers=0,
    )
    assert loader.backend == "pyav" and loader.dataset_size == 3 and len(loader) == 2
    batches = list(loader)
    batch = batches[0]
    assert set(batch) == {"video", "label", "clip_id", "view"}
    assert batch["video"].shape == (4, 3, 16, 64, 64) and batch["video"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["view"].dtype == torch.long
    clip_ids = [c for b in batches for c in b["clip_id"]]
    views = [v for b in batches for v in b["view"].tolist()]
    assert clip_ids == ["clip0", "clip0", "clip2", "clip2", "clip4", "clip4"]  # fold 1 rows
    assert views == [0, 1] * 3
    assert [b["video"].shape[0] for b in batches] == [4, 2]  # no drop_last in test mode
    video = torch.cat([b["video"] for b in batches])
    for k, (clip, view) in enumerate(zip(clip_ids, views, strict=True)):
        count = COUNTS[int(clip[4:])]
        expected = sampling.test_window(count, view=view, views=2)
        assert read_markers(to_uint8(video[k])).tolist() == expected.tolist()
    # normalisation: the first marker block of frame 0 is grey 20 in the source
    assert torch.allclose(video[0, :, 0, 6, 6], ((20 - MEAN) / STD).flatten(), atol=2 / 58)


def test_resize_and_crop(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, rows = h264_clips
    rows = rows.assign(crop=[[0, 0, 32, 32]] * len(rows))
    loader = build_loader(
        rows, mode="test", fold=2, batch_size=2, size=32, backend="pyav", workers=0, root=folder
    )
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 16, 32, 32)
    # the 32x32 crop keeps both marker blocks at full size: frames can still be read
    expected = sampling.test_window(COUNTS[1], view=0)
    assert read_markers(to_uint8(batch["video"][0])).tolist() == expected.tolist()
    small = build_loader(
        rows.drop(columns="crop"),
        mode="test",
        fold=2,
        batch_size=2,
        size=16,
        backend="pyav",
        workers=0,
        root=folder,
    )
    assert next(iter(small))["video"].shape == (2, 3, 16, 16, 16)


def train_ids(loader) -> list[list[str]]:
    return [b["clip_id"] for b in loader]


def test_determinism_and_reshuffling(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    manifest = folder / "manifest.parquet"
    kw = dict(mode="train", batch_size=2, size=32, backend="pyav")
    a = build_loader(manifest, workers=0, seed=3, **kw)
    b = build_loader(manifest, workers=1, seed=3, **kw)
    first_a, first_b = list(a), list(b)
    assert len(first_a) == 3 and all(x["video"].shape == (2, 3, 16, 32, 32) for x in first_a)
    for x, y in zip(first_a, first_b, strict=True):  # same seed: same clips, same pixels
        assert x["clip_id"] == y["clip_id"] and torch.equal(x["video"], y["video"])
    second = list(a)  # the next epoch reshuffles and redraws
    assert [x["clip_id"] for x in second] != [x["clip_id"] for x in first_a]
    a.set_epoch(0)
    again = list(a)
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(again, first_a, strict=True))
    other = list(build_loader(manifest, workers=0, seed=4, **kw))
    assert not all(torch.equal(x["video"], y["video"]) for x, y in zip(other, first_a, strict=True))


def test_sharding_by_rank(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    manifest = folder / "manifest.parquet"
    for mode, expected_len in (("pretrain", 3), ("test", 6)):
        seen = []
        for rank in range(2):
            loader = build_loader(
                manifest,
                mode=mode,
                batch_size=1,
                size=16,
                backend="pyav",
                workers=0,
                rank=rank,
                world_size=2,
                augment=False,
            )
            assert len(loader) == expected_len
            seen.append({c for b in loader for c in b["clip_id"]})
        assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {f"clip{i}" for i in range(6)}


def test_subtract_mean_and_missing_frame_counts(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, rows = h264_clips
    kw = dict(mode="test", fold=1, batch_size=2, size=32, backend="pyav", workers=0, root=folder)
    plain = next(iter(build_loader(rows, **kw)))["video"]
    centred = next(iter(build_loader(rows, subtract_mean=True, **kw)))["video"]
    assert centred.mean(dim=2).abs().max() < 1e-4
    assert torch.allclose(centred, plain - plain.mean(dim=2, keepdim=True), atol=1e-5)
    probed = next(iter(build_loader(rows.drop(columns="num_frames"), **kw)))["video"]
    assert torch.equal(probed, plain)  # frame counts read from the files give the same windows


def test_faulty_files_are_replaced_and_logged_once(
    h264_clips: tuple[Path, pd.DataFrame], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, rows = h264_clips
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 50)
    bad = pd.DataFrame(
        [
            {
                "clip_id": "junk",
                "path": str(tmp_path / "junk.mp4"),
                "label": 0,
                "fold": 1,
                "num_frames": 30,
            },
            {
                "clip_id": "gone",
                "path": str(tmp_path / "gone.mp4"),
                "label": 1,
                "fold": 1,
                "num_frames": 30,
            },
        ]
    )
    manifest = pd.concat([rows, bad], ignore_index=True)
    loader = build_loader(
        manifest,
        mode="train",
        batch_size=4,
        size=16,
        backend="pyav",
        workers=0,
        root=folder,
        rand_augment=False,
    )
    with caplog.at_level(logging.WARNING, logger="maedfer.pipelines.loader"):
        for _ in range(2):
            ids = [c for b in loader for c in b["clip_id"]]
            assert len(ids) == 8 and "junk" not in ids and "gone" not in ids
            assert loader.num_bad >= 2  # each bad row met once per epoch, maybe more
    per_file = [r for r in caplog.records if "faulty clip replaced" in r.getMessage()]
    assert sorted(r.args[0] for r in per_file) == sorted(bad["path"])  # once each, 2 epochs
    assert sum("faulty sample(s) replaced" in r.getMessage() for r in caplog.records) == 2


def test_auto_backend_and_bad_options(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    manifest = folder / "manifest.parquet"
    if not torch.cuda.is_available():
        assert build_loader(manifest, mode="test", batch_size=2).backend == "pyav"
    with pytest.raises(MaedferError, match="lower the batch size"):
        build_loader(manifest, mode="train", fold=1, batch_size=8, backend="pyav")
    with pytest.raises(MaedferError, match="mode"):
        build_loader(manifest, mode="eval", batch_size=2, backend="pyav")
    with pytest.raises(MaedferError, match="backend"):
        build_loader(manifest, mode="test", batch_size=2, backend="decord")
    with pytest.raises(MaedferError, match="rank"):
        build_loader(manifest, mode="test", batch_size=2, backend="pyav", rank=2, world_size=2)


def test_workers_start_after_parallel_opencv(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    # OpenCV's thread pool does not survive fork: a worker forked while the parent's pool
    # threads are busy (face alignment, or decoding in the main process, just before) hangs
    # at its first OpenCV call. Without the guard this hung within ~13 rounds (measured).
    folder, rows = h264_clips
    code = (
        "import sys, cv2, numpy as np, pandas as pd\n"
        "from maedfer.pipelines import build_loader\n"
        "rows = pd.read_parquet(sys.argv[1]).iloc[:2]\n"
        "loader = build_loader(rows, mode='train', batch_size=2, size=16, backend='pyav',\n"
        "                      workers=1, rand_augment=False, root=sys.argv[2])\n"
        "big = np.zeros((1000, 1000, 3), np.float32)\n"
        "for _ in range(30):\n"
        "    cv2.resize(big, (1500, 1500))  # parallel: the pool's threads are spinning\n"
        "    assert sum(len(b['clip_id']) for b in loader) == 2\n"
        "print('ok')\n"
    )
    args = [sys.executable, "-c", code, str(folder / "manifest.parquet"), str(folder)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=150, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("a loader worker hung after a parallel OpenCV call in the parent")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-500:]


def test_flip_only_and_random_sign(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, rows = h264_clips
    kw = dict(
        mode="train",
        fold=1,
        batch_size=len(rows[rows.fold != 1]),
        size=32,
        backend="pyav",
        workers=0,
        root=folder,
        augment=False,
        subtract_mean=True,
    )
    plain = next(iter(build_loader(rows, **kw)))["video"]
    flipped = next(iter(build_loader(rows, flip_only=True, **kw)))["video"]
    signed = next(iter(build_loader(rows, flip_only=True, random_sign=True, **kw)))["video"]
    same = [torch.allclose(f, p, atol=1e-6) for f, p in zip(flipped, plain, strict=True)]
    mirrored = [
        torch.allclose(f, p.flip(-1), atol=1e-6) for f, p in zip(flipped, plain, strict=True)
    ]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and not all(same)
    negated = [
        torch.allclose(s, -f, atol=1e-6) and f.abs().max() > 0
        for s, f in zip(signed, flipped, strict=True)
    ]
    kept = [torch.equal(s, f) for s, f in zip(signed, flipped, strict=True)]
    assert all(n or k for n, k in zip(negated, kept, strict=True)) and any(negated)
    # test batches are never flipped nor negated
    test_kw = {**kw, "mode": "test", "batch_size": 2}
    assert torch.equal(
        next(iter(build_loader(rows, **test_kw)))["video"],
        next(iter(build_loader(rows, flip_only=True, random_sign=True, **test_kw)))["video"],
    )


@pytest.mark.parametrize("mode", ["pretrain", "train"])
def test_repeated_sampling_shares_one_window_and_one_decode(
    h264_clips: tuple[Path, pd.DataFrame], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """num_sample N: each clip N times per epoch, consecutive, one temporal window with its own
    crops; decoded once; the first of each N is the num_sample=1 sample."""
    from maedfer.pipelines import pyav
    from maedfer.pipelines.plan import EpochPlan

    folder, rows = h264_clips
    once = build_loader(
        rows, mode=mode, batch_size=2, size=32, backend="pyav", workers=0, root=folder
    )
    twice = build_loader(
        rows, mode=mode, batch_size=2, size=32, backend="pyav", workers=0, root=folder, num_sample=2
    )
    assert len(twice) == 2 * len(once) and twice.samples_per_epoch == 2 * len(rows)
    plan1 = EpochPlan(once.table, once.config, epoch=0)
    plan2 = EpochPlan(twice.table, twice.config, epoch=0)
    boxes = set()
    for i in range(len(plan1)):
        first, second = plan2.spec(2 * i), plan2.spec(2 * i + 1)
        alone = plan1.spec(i)
        assert first.row == second.row == alone.row
        assert np.array_equal(first.frame_indices, second.frame_indices)
        assert np.array_equal(first.frame_indices, alone.frame_indices)
        assert first.box == alone.box and first.rand_augment == alone.rand_augment
        boxes.add(first.box != second.box)
    assert True in boxes  # the repeats have their own crops
    decoded = []
    found = pyav.decode_found
    monkeypatch.setattr(
        pyav, "decode_found", lambda path, *a, **k: decoded.append(path) or found(path, *a, **k)
    )
    dataset = pyav.ClipDataset(plan2)
    samples = [dataset[i]["video"] for i in range(len(plan2))]
    assert len(decoded) == len(plan2) // 2
    for i, sample in enumerate(samples):  # each as decoded on its own
        assert torch.equal(sample, pyav.load_sample(plan2.spec(i), twice.config)), i
    with pytest.raises(MaedferError, match="num_sample"):
        build_loader(rows, mode="test", batch_size=2, backend="pyav", root=folder, num_sample=2)
