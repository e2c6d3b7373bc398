"""Reading (every bad file is a reason, never a crash) and encoding (docs/design.md)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from maedfer.errors import MaedferError
from maedfer.preprocess.encode import (
    KEYFRAME_INTERVAL,
    as_rate,
    clip_suffix,
    rgb_to_yuv420p,
    write_clip,
)
from maedfer.preprocess.video import (
    VideoError,
    list_frame_files,
    probe_video,
    read_frame_folder,
    read_video_frames,
)
from tests.preprocess.media import MediaWriter, encode_video, load_rgb, portrait_clip


def _frames(n: int = 40, size: int = 64) -> np.ndarray:
    """Flat frames whose grey level encodes the index (survives lossy coding)."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    for t in range(n):
        frames[t] = 20 + 5 * t
    return frames


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_encode_roundtrip_constant_rate_and_keyframes(codec: str, tmp_path: Path) -> None:
    path = tmp_path / "sub" / f"clip{clip_suffix(codec)}"
    frames = _frames()
    write_clip(frames, path, fps=Fraction(30000, 1001), codec=codec)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    back, fps = read_video_frames(path)
    assert back.shape == frames.shape and fps == pytest.approx(29.97, abs=1e-3)
    # Same frames in the same order: every grey level within a couple of steps of quantisation.
    assert np.abs(back.mean(axis=(1, 2, 3)) - frames.mean(axis=(1, 2, 3))).max() < 2.5
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == codec
        packets = [p for p in c.demux(stream) if p.size]
        keys = [i for i, p in enumerate(packets) if p.is_keyframe]
        times = sorted(float(p.pts * p.time_base) for p in packets)
    assert keys[0] == 0 and max(np.diff(keys + [len(packets)])) <= KEYFRAME_INTERVAL
    np.testing.assert_allclose(np.diff(times), 1001 / 30000, atol=2e-3)  # constant rate
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (40, 64, 64)


def test_h264_clips_reference_every_fourth_frame_only(tmp_path: Path) -> None:
    """The B-frames between the reference frames are referenced by nothing: a decoder told to
    skip non-reference frames still decodes frames 0, 4, 8, … (the official test frames) and
    the frame closing each 16-frame group, and nothing else."""
    path = tmp_path / "clip.mp4"
    n = 40
    write_clip(_frames(n), path, fps=25)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        everything = [f.to_ndarray() for f in c.decode(stream)]
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        refs = {int(round(f.pts * f.time_base * 25)): f.to_ndarray() for f in c.decode(stream)}
    closing = {k for k in range(KEYFRAME_INTERVAL - 1, n, KEYFRAME_INTERVAL)} | {n - 1}
    assert set(refs) == set(range(0, n, 4)) | closing
    for k, frame in refs.items():  # the same pixels as decoding every frame
        assert np.array_equal(frame, everything[k])


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_encoding_is_deterministic(codec: str, tmp_path: Path) -> None:
    """The same frames give the same bytes, whatever FFmpeg did before in this process.

    Other encodes and decodes in between leave the heap in another state each time: an encoder
    that reads memory it never wrote (x264 with B-frames and mb-tree did) gives other bytes.
    """
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (30, 240, 320, 3), dtype=np.uint8)
    suffix = clip_suffix(codec)
    outputs = set()
    for attempt in range(6):  # x264's defaults (B-frames, mb-tree) on other frames in between
        encode_video(other[attempt % 3 :: 3], tmp_path / "other.mp4")
        read_video_frames(tmp_path / "other.mp4")
        write_clip(frames, tmp_path / f"a{suffix}", fps=25, codec=codec)
        outputs.add((tmp_path / f"a{suffix}").read_bytes())
    assert len(outputs) == 1


def test_frames_stream_into_the_encoder(tmp_path: Path) -> None:
    """An iterator of frames encodes to the same bytes as the stacked array."""
    frames = np.random.default_rng(1).integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)
    assert write_clip(iter(frames), tmp_path / "it.mp4", fps=25) == 10
    write_clip(frames, tmp_path / "arr.mp4", fps=25)
    assert (tmp_path / "it.mp4").read_bytes() == (tmp_path / "arr.mp4").read_bytes()
    with pytest.raises(MaedferError, match="frame 1 is"):
        write_clip(iter([frames[0], frames[1][:16]]), tmp_path / "bad.mp4", fps=25)
    with pytest.raises(MaedferError, match="at least one frame"):
        write_clip(iter([]), tmp_path / "none.mp4", fps=25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arr.mp4", "it.mp4"]


def test_colour_conversion_is_bt601_studio_range() -> None:
    """Known colours -> the BT.601 studio-range codes every decoder inverts (black 16, white 235,
    grey chroma 128; pure red Y 81, Cb 90, Cr 240)."""
    image = np.zeros((2, 6, 3), np.uint8)
    image[:, 2:4] = 255
    image[:, 4:6] = (255, 0, 0)
    yuv = rgb_to_yuv420p(image)
    assert yuv.shape == (3, 6)
    assert yuv[:2].tolist() == [[16, 16, 235, 235, 81, 81]] * 2
    u, v = yuv[2, :3], yuv[2, 3:]
    assert u.tolist() == [128, 128, 90] and v.tolist() == [128, 128, 240]


def test_a_failed_encode_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(MaedferError, match="even"):
        write_clip(np.zeros((3, 33, 32, 3), np.uint8), tmp_path / "x.mp4", fps=25)
    with pytest.raises(MaedferError, match="codec"):
        write_clip(np.zeros((3, 32, 32, 3), np.uint8), tmp_path / "x.mp4", fps=25, codec="av1")
    assert list(tmp_path.iterdir()) == []
    assert as_rate(25.0) == 25 and as_rate(29.97) == Fraction(2997, 100)


@pytest.mark.parametrize("suffix", [".mp4", ".flv", ".avi"])
def test_reads_the_datasets_containers(suffix: str, tmp_path: Path, portraits) -> None:
    clip = portrait_clip(load_rgb(portraits["astronaut"]), "astronaut", frames=10)
    encode_video(clip, tmp_path / f"v{suffix}")
    frames, fps = read_video_frames(tmp_path / f"v{suffix}")
    assert frames.shape == clip.shape and fps == 25
    assert np.abs(frames.astype(int) - clip).mean() < 12  # lossy, but the same pictures


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("empty", "empty file"), ("corrupt", "unreadable: "), ("truncated", "truncated: ")],
)
def test_bad_files_become_reasons(kind: str, reason: str, tmp_path: Path, portraits) -> None:
    writer = MediaWriter(tmp_path / "work", portraits, bad={"x": kind})
    writer(tmp_path / "x.mp4", "video")
    with pytest.raises(VideoError) as err:
        read_video_frames(tmp_path / "x.mp4")
    message = str(err.value)
    assert message.startswith(reason) and "\n" not in message and str(tmp_path) not in message


def test_garbage_and_a_missing_stream(tmp_path: Path) -> None:
    (tmp_path / "g.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match="^unreadable: "):
        probe_video(tmp_path / "g.mp4")
    with av.open(str(tmp_path / "a.m4a"), "w") as c:  # audio only
        s = c.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 16000, 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="^no video stream$"):
        read_video_frames(tmp_path / "a.m4a")


def test_large_clips_are_scaled_to_the_memory_budget(tmp_path: Path) -> None:
    encode_video(np.zeros((10, 120, 160, 3), np.uint8), tmp_path / "v.mp4")
    frames, _ = read_video_frames(tmp_path / "v.mp4", max_bytes=10 * 60 * 80 * 3)
    assert frames.shape == (10, 60, 80, 3)


def test_frame_folders_read_in_name_order_and_resized(tmp_path: Path) -> None:
    import cv2

    for i in (3, 1, 2, 10):  # zero-padded names: lexical order is time order
        cv2.imwrite(str(tmp_path / f"00001_{i:05d}.jpg"), np.full((50, 40, 3), 20 * i, np.uint8))
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    names = [p.name for p in list_frame_files(tmp_path)]
    assert names == [f"00001_{i:05d}.jpg" for i in (1, 2, 3, 10)]
    frames = read_frame_folder(tmp_path, size=32)
    assert frames.shape == (4, 32, 32, 3)
    assert np.abs(frames.mean(axis=(1, 2, 3)) - [20, 40, 60, 200]).max() < 3
    (tmp_path / "00001_00004.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoError, match="^unreadable image: 00001_00004.jpg$"):
        read_frame_folder(tmp_path, size=32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="too short: 0 frames"):
        read_frame_folder(empty)
