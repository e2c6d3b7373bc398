"""PyAV decoding: exact frames by index in every codec, seeking, colour, faulty files."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from maedfer.pipelines import augment, pyav, sampling
from maedfer.pipelines.rand_augment import source_region
from maedfer.preprocess import encode
from tests.pipelines.media import marker_frames, read_markers, write_clip

CODECS = [("h264", "mp4"), ("vp9", "webm"), ("mpeg4", "avi"), ("flv1", "flv")]


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 130-frame clip per codec (long enough to seek into)."""
    folder = tmp_path_factory.mktemp("long")
    frames = marker_frames(130, 48)
    return {codec: write_clip(folder / f"c.{ext}", frames, codec=codec) for codec, ext in CODECS}


@pytest.mark.parametrize("codec", [c for c, _ in CODECS])
def test_decode_gives_the_frames_asked_for(long_clips: dict[str, Path], codec: str) -> None:
    path = str(long_clips[codec])
    assert pyav.probe_num_frames(path) == 130
    for indices in (
        [0, 4, 8, 12],
        [5, 3, 3, 100],
        [60, 64, 68, 72, 120, 129],  # 60+: seeks
        [128, 129, 130, 140],
    ):  # past the end: the last frame, as DALI pads
        got = read_markers(pyav.decode_frames(path, np.array(indices)))
        assert got.tolist() == np.minimum(indices, 129).tolist()


def test_seeking_matches_decoding_from_the_start(
    long_clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    indices = np.arange(70, 130, 4)
    for codec, _ in CODECS:
        path = str(long_clips[codec])
        sought = pyav.decode_frames(path, indices)
        monkeypatch.setattr(pyav, "SEEK_MIN_FRAME", 10**9)
        assert np.array_equal(pyav.decode_frames(path, indices), sought), codec
        monkeypatch.undo()


@pytest.mark.parametrize("start", [16, 17, 31, 32, 47, 63, 64, 100])
def test_seeking_from_any_window_start_is_bit_equal(
    long_clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, start: int
) -> None:
    indices = np.minimum(start + 4 * np.arange(16), 140)  # past the end too
    for codec, _ in CODECS:
        path = str(long_clips[codec])
        sought = pyav.decode_window(path, indices)
        monkeypatch.setattr(pyav, "SEEK_MIN_FRAME", 10**9)
        assert np.array_equal(pyav.decode_window(path, indices), sought), (codec, start)
        monkeypatch.undo()


def _decode_every_frame(path: str, indices: np.ndarray) -> np.ndarray:
    """The plain decode: every packet from the start, frames counted in order."""
    wanted = np.unique(indices)
    found = pyav._decode_file(path, wanted, seek=False, skip=False)
    have = np.array(sorted(found))
    return pyav.pick(have, pyav.frames_to_rgb([found[int(k)] for k in have]), indices)


def _counting_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    decoded = [0]
    frames = pyav._frames

    def counted(*args, **kwargs):
        for frame in frames(*args, **kwargs):
            decoded[0] += 1
            yield frame

    monkeypatch.setattr(pyav, "_frames", counted)
    return decoded


def _windows(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    train = [sampling.reference_train_window(n, generator=rng) for _ in range(6)]
    stride = [sampling.stride_window(n, generator=rng) for _ in range(4)]
    return train + stride + [np.arange(0, n, 4), np.array([n - 3, n + 5]), np.array([0])]


@pytest.mark.parametrize("kind", ["prepared", "x264 defaults", "vp9", "mpeg4"])
def test_skipping_unused_frames_gives_the_same_frames(
    kind: str, tmp_path: Path, long_clips: dict[str, Path]
) -> None:
    """Frames no other frame references and no index wants are not decoded; every window gets
    the values of decoding every frame (B-pyramids, VP9's hidden frames, MPEG-4 B-frames)."""
    if kind == "prepared":
        path = tmp_path / "p.mp4"
        encode.write_clip(marker_frames(130, 48), path, fps=25)
    elif kind == "x264 defaults":  # as VoxCeleb2 is downloaded: B-pyramid, one keyframe
        path = write_clip(tmp_path / "x.mp4", marker_frames(130, 48), gop=250, bframes=3)
    else:
        path = long_clips[kind]
    for indices in _windows(130):
        assert np.array_equal(
            pyav.decode_window(str(path), indices), _decode_every_frame(str(path), indices)
        ), (kind, indices)


def test_prepared_clips_decode_a_third_of_the_frames_for_a_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "p.mp4")
    encode.write_clip(marker_frames(100, 48), path, fps=25)
    decoded = _counting_decoded(monkeypatch)
    pyav.decode_window(path, np.arange(0, 100, 4))  # test mode: the reference frames only
    assert decoded[0] == 25 + 100 // 16
    rng = np.random.default_rng(0)
    for _ in range(20):  # a reference training window spans 64 frames
        decoded[0] = 0
        indices = sampling.reference_train_window(100, generator=rng)
        got = read_markers(pyav.decode_frames(path, indices))
        assert got.tolist() == indices.tolist()
        assert decoded[0] <= 40, indices


@pytest.mark.parametrize(
    "crop",
    [
        (5, 3, 30, 27),
        (0, 0, 48, 48),
        (-4, 10, 60, 20),
        (32, 0, 16, 48),
        (1, 1, 46, 46),
        (47, 46, 1, 2),
    ],
)
def test_crop_before_conversion_equals_converting_then_cropping(
    long_clips: dict[str, Path], crop: tuple[int, int, int, int]
) -> None:
    box = augment.Box(*crop)
    indices = np.array([0, 3, 3, 17, 70, 129])
    y0, x0 = max(0, box.y), max(0, box.x)
    for codec, _ in CODECS:
        path = str(long_clips[codec])
        whole = pyav.decode_window(path, indices)
        expected = whole[y0 : box.y + box.h, x0 : box.x + box.w]
        got = pyav.decode_window(path, indices, box)
        assert got.shape == expected.shape and np.array_equal(got, expected), (codec, crop)


def test_colour_conversion_is_close_to_the_source(long_clips: dict[str, Path]) -> None:
    # BT.601 limited range with bilinear chroma: flat areas within 2/255 of what was encoded,
    # and no farther from the source than swscale's conversion overall
    source = marker_frames(130, 48)[:3]
    path = str(long_clips["vp9"])
    got = pyav.decode_frames(path, np.array([0, 1, 2])).astype(int)
    flat = np.s_[:, 5:11, 5:11]  # the middle of the first marker block
    assert np.abs(got[flat] - source[flat]).max() <= 2
    with av.open(path) as container:
        decoded = container.decode(video=0)
        swscale = np.stack([next(decoded).to_ndarray(format="rgb24") for _ in range(3)])
    swscale = swscale.astype(int)
    assert np.abs(got - source).mean() <= np.abs(swscale - source).mean()


def test_hevc_and_real_videos(media_dir: Path) -> None:
    for name in ("face_noface.mov", "single_face.mp4"):  # HEVC, H.264
        path = str(media_dir / name)
        frames = pyav.decode_frames(path, np.array([0, 1, 10]))
        assert frames.shape[0] == 3 and frames.shape[-1] == 3 and frames.dtype == np.uint8
        with av.open(path) as container:
            stream = container.streams.video[0]
            decoded = container.decode(stream)
            reference = [next(decoded).to_ndarray(format="rgb24") for _ in range(11)]
        # swscale's conversion differs from ours by chroma siting/rounding only
        assert np.abs(frames[2].astype(int) - reference[10]).mean() < 4


def test_bad_files_raise(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 100)
    for path in (junk, tmp_path / "missing.mp4"):
        with pytest.raises(pyav.BadClipError) as info:
            pyav.decode_frames(str(path), np.array([0]))
        assert info.value.path == str(path)
        with pytest.raises(pyav.BadClipError):
            pyav.probe_num_frames(str(path))


@pytest.mark.parametrize(
    ("clips", "subtract_mean"), [("h264_clips", False), ("vp9_clips", False), ("h264_clips", True)]
)
def test_test_views_from_one_decode_equal_each_view_decoded_alone(
    clips: str, subtract_mean: bool, request: pytest.FixtureRequest
) -> None:
    # test mode decodes a clip once for all its views; each view must be bit-equal to the
    # view decoded on its own (the loader's output before that change)
    from maedfer.pipelines import build_loader
    from maedfer.pipelines.plan import EpochPlan

    folder, rows = request.getfixturevalue(clips)
    rows = rows.assign(crop=[[2, 4, 40, 36]] * len(rows))
    loader = build_loader(
        rows,
        mode="test",
        batch_size=3,
        size=32,
        backend="pyav",
        workers=0,
        root=folder,
        subtract_mean=subtract_mean,
    )
    plan = EpochPlan(loader.table, loader.config, epoch=0)
    dataset = pyav.ClipDataset(plan)
    shared = 0
    for i in range(len(plan)):
        spec = plan.spec(i)
        alone = pyav.load_sample(spec, loader.config)
        from_views = dataset[i]["video"]
        shared += dataset._views is not None
        assert torch.equal(from_views, alone), i
    assert shared == len(plan)  # every view came from the shared decode


def _rgb_as_written_first(frames: list) -> np.ndarray:
    """frames_to_rgb as first written (one temporary per product): the values it must keep."""
    count, first = len(frames), frames[0]
    full = first.format.name == "yuvj420p" or int(first.color_range or 0) == 2
    kr, kb = pyav._MATRICES.get(int(first.colorspace or 2), pyav._BT601)
    y = np.stack([pyav._plane(f, 0) for f in frames], axis=-1).astype(np.float32)
    chroma = np.stack([pyav._plane(f, i) for i in (1, 2) for f in frames], axis=-1)
    chroma = pyav.resize_hw(chroma.astype(np.float32), *y.shape[:2])
    cb, cr = chroma[:, :, :count], chroma[:, :, count:]
    cb -= 128
    cr -= 128
    if not full:
        y -= 16
        y *= 255 / 219
        cb *= 255 / 224
        cr *= 255 / 224
    kg = 1 - kr - kb
    rgb = np.empty((*y.shape[:2], 3, count), dtype=np.float32)
    np.add(y, 2 * (1 - kr) * cr, out=rgb[:, :, 0])
    np.subtract(y, (2 * kb * (1 - kb) / kg) * cb + (2 * kr * (1 - kr) / kg) * cr, out=rgb[:, :, 1])
    np.add(y, 2 * (1 - kb) * cb, out=rgb[:, :, 2])
    return np.clip(np.rint(rgb, out=rgb), 0, 255, out=rgb)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_colour_conversion_values_unchanged(long_clips: dict[str, Path], codec: str) -> None:
    with av.open(str(long_clips[codec])) as container:
        frames = list(itertools.islice(container.decode(video=0), 20))
    assert frames[0].format.name in ("yuv420p", "yuvj420p")
    assert np.array_equal(pyav.frames_to_rgb(frames), _rgb_as_written_first(frames))


@pytest.mark.parametrize(
    ("mode", "crop", "size", "rand_augment", "narrowed"),
    [
        ("pretrain", [8, 8, 32, 32], 32, False, True),  # the multi-scale box of the manifest crop
        ("train", None, 64, False, True),  # the random-resized box, no RandAugment
        ("train", None, 64, True, True),  # with RandAugment: the part its ops read
        ("train", [2, 4, 40, 36], 32, False, False),  # frames resized first: converted whole
    ],
)
def test_converting_only_the_box_gives_the_same_samples(
    h264_clips: tuple[Path, object],
    mode: str,
    crop: list | None,
    size: int,
    rand_augment: bool,
    narrowed: bool,
) -> None:
    from maedfer.pipelines import build_loader
    from maedfer.pipelines.plan import EpochPlan

    folder, rows = h264_clips
    if crop is not None:
        rows = rows.assign(crop=[crop] * len(rows))
    loader = build_loader(
        rows,
        mode=mode,
        batch_size=3,
        size=size,
        backend="pyav",
        workers=0,
        root=folder,
        rand_augment=rand_augment,
    )
    for epoch in range(3):
        plan = EpochPlan(loader.table, loader.config, epoch=epoch)
        for i in range(len(plan)):
            spec = plan.spec(i)
            assert spec.box is not None
            whole = pyav.decode_window(spec.path, spec.frame_indices, spec.crop)
            _, source = pyav._decode_needed(spec, loader.config)
            needed = spec.box
            if narrowed and spec.rand_augment:
                needed = source_region(spec.rand_augment, spec.box, size)
                needed = None if needed == augment.Box(0, 0, size, size) else needed
            assert source == (needed if narrowed else None)
            assert torch.equal(
                pyav.load_sample(spec, loader.config), pyav.load_sample(spec, loader.config, whole)
            ), (epoch, i)
