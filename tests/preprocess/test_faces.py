"""FaceAligner on real faces: aligned output consistent with the template (docs/design.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from facenet_pytorch import MTCNN

from maedfer.errors import MaedferError
from maedfer.preprocess.align import template_points
from maedfer.preprocess.faces import FaceAligner, NoFaceError, keyframe_indices
from tests.preprocess.media import load_rgb, portrait_clip, video_clip

SIZE = 128


@pytest.fixture(scope="module")
def reference() -> MTCNN:
    """facenet-pytorch's own MTCNN: an independent judge of where the eyes ended up."""
    return MTCNN(keep_all=True, device="cpu", min_face_size=40)


def _eye_errors(frames: np.ndarray, reference: MTCNN) -> np.ndarray:
    """Per frame, the largest distance (px) of the re-detected eyes from the template's."""
    _, probs, points = reference.detect(frames, landmarks=True)
    eyes = template_points(SIZE)[:2]
    errors = []
    for p, pts in zip(probs, points, strict=True):
        assert p is not None and len(p), "no face found again in an aligned frame"
        best = np.asarray(pts[int(np.argmax(np.asarray(p, dtype=float)))], dtype=float)
        # MTCNN's points are pixel-index coordinates; the template is continuous (+0.5).
        errors.append(np.abs(best[:2] + 0.5 - eyes).max())
    return np.array(errors)


def test_keyframes_include_the_last_frame() -> None:
    assert keyframe_indices(10, 4).tolist() == [0, 4, 8, 9]
    assert keyframe_indices(9, 4).tolist() == [0, 4, 8]
    assert keyframe_indices(1, 4).tolist() == [0]


@pytest.mark.parametrize("detect_every", [1, 4])
def test_aligned_eyes_land_on_the_template(
    detect_every: int, media_dir: Path, reference: MTCNN
) -> None:
    frames, _ = video_clip(media_dir / "single_face.mp4", frames=24, width=640)
    clip = FaceAligner(SIZE, "cpu", detect_every=detect_every).align_frames(frames)
    assert clip.frames.shape == (24, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    assert clip.face_ratio == 1.0
    errors = _eye_errors(clip.frames, reference)
    # A few pixels: two detectors' landmark noise (~1 px each at this size) plus smoothing.
    assert np.median(errors) < 2.5 and errors.max() < 4.0, errors.round(1)


def test_rigid_motion_is_removed(portraits: dict[str, Path]) -> None:
    """The portrait turns by 3 sin(2 pi t / T) degrees: the transforms undo exactly that."""
    frames = portrait_clip(load_rgb(portraits["grace_hopper"]), "grace_hopper", frames=16)
    clip = FaceAligner(96, "cpu", detect_every=4).align_frames(frames)
    m = clip.transforms
    # Rotation of each transform; cv2's positive angles turn the image the other way, and the
    # portrait's own head tilt is a constant offset.
    angle = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    turn = 3 * np.sin(2 * np.pi * np.arange(16) / 16)
    # The clip adds N(0, 0.3) degrees of jitter; landmark noise adds a little more.
    assert np.abs((angle - angle.mean()) - turn).max() < 1.5


def test_frames_without_a_face_reuse_the_nearest_transform(portraits: dict[str, Path]) -> None:
    frames = portrait_clip(load_rgb(portraits["obama"]), "obama", frames=12)
    frames[5:8] = 127  # the face is gone for three frames
    clip = FaceAligner(64, "cpu", detect_every=4).align_frames(frames)
    assert clip.face_ratio == pytest.approx(9 / 12)
    assert clip.track.valid.tolist() == [True] * 5 + [False] * 3 + [True] * 4
    np.testing.assert_allclose(clip.transforms[5], clip.transforms[4])  # nearest: 4 (tie: earlier)
    np.testing.assert_allclose(clip.transforms[7], clip.transforms[8])


def test_a_clip_without_a_face_raises() -> None:
    frames = np.random.default_rng(0).integers(100, 140, (6, 90, 120, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        FaceAligner(64, "cpu").align_frames(frames)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((4, 32, 32, 3), np.float32),
        np.zeros((32, 32, 3), np.uint8),
        np.zeros((0, 32, 32, 3), np.uint8),
    ],
)
def test_bad_frames_are_a_clear_error(frames: np.ndarray) -> None:
    with pytest.raises(MaedferError, match=r"\(T, H, W, 3\) uint8"):
        FaceAligner(64, "cpu").align_frames(frames)


def test_options_are_checked() -> None:
    with pytest.raises(MaedferError, match="detect_every"):
        FaceAligner(64, "cpu", detect_every=0)


def test_torch_frame_path_matches_opencv(media_dir: Path) -> None:
    """The resize/warp code CUDA uses, run on CPU: same faces as the OpenCV path."""
    frames, _ = video_clip(media_dir / "single_face.mp4", frames=12, width=640)
    cv = FaceAligner(SIZE, "cpu").align_frames(frames)
    aligner = FaceAligner(SIZE, "cpu")
    aligner._torch_frames = True
    th = aligner.align_frames(frames)
    # Antialiased bilinear vs area resizing: landmarks within a pixel or two of each other.
    assert np.abs(cv.track.landmarks - th.track.landmarks).max() < 2.5
    assert np.abs(cv.frames.astype(int) - th.frames).mean() < 6


@pytest.mark.gpu
def test_cuda_matches_cpu(media_dir: Path) -> None:
    frames, _ = video_clip(media_dir / "single_face.mp4", frames=16, width=640)
    cpu = FaceAligner(SIZE, "cpu").align_frames(frames)
    gpu = FaceAligner(SIZE, "cuda").align_frames(frames)
    # Different resizers and float kernels: landmarks agree to a pixel, pixels on average.
    assert np.nanmax(np.abs(cpu.track.landmarks - gpu.track.landmarks)) < 1.5
    assert np.abs(cpu.frames.astype(int) - gpu.frames).mean() < 4


def test_a_long_clip_streams_in_chunks_with_the_clips_keyframes(portraits) -> None:
    """70 frames (more than two chunks), the face gone for a stretch across a chunk boundary:
    streamed one frame at a time = located whole, keyframes those of the whole clip."""
    frames = portrait_clip(load_rgb(portraits["astronaut"]), "astronaut", frames=70)
    frames[30:41] = 127
    aligner = FaceAligner(64, "cpu", detect_every=4)
    whole = aligner.align_frames(frames)
    track = aligner.locate_stream(f for f in frames)  # a generator: frames arrive one by one
    assert track.keyframes.tolist() == keyframe_indices(70, 4).tolist()
    assert track.valid.tolist() == [True] * 30 + [False] * 11 + [True] * 29
    np.testing.assert_array_equal(track.landmarks, whole.track.landmarks)
    crops = np.stack(list(aligner.warp_stream(iter(frames), aligner.transforms(track))))
    np.testing.assert_array_equal(crops, whole.frames)


def test_a_face_that_appears_late_is_found(portraits) -> None:
    """No face in the whole first chunk: the next chunk seeds the face size."""
    frames = portrait_clip(load_rgb(portraits["obama"]), "obama", frames=48)
    frames[:36] = 127
    track = FaceAligner(64, "cpu", detect_every=4).locate_stream(iter(frames))
    assert track.valid.tolist() == [False] * 36 + [True] * 12


def test_streamed_frames_are_checked() -> None:
    aligner = FaceAligner(64, "cpu")
    with pytest.raises(MaedferError, match="frame sizes differ"):
        aligner.locate_stream([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 30, 3), np.uint8)])
    with pytest.raises(MaedferError, match="at least one frame"):
        aligner.locate_stream([])
