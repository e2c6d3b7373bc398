"""The batched MTCNN cascade against facenet-pytorch's own on the committed portraits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN

from maedfer.preprocess.detect import FaceDetector, Faces, best_face, pyramid_scales


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector("cpu")


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_pyramid_scales_cover_the_requested_face_sizes() -> None:
    scales = pyramid_scales(360, 40, 120)
    assert scales[0] == pytest.approx(12 / 40)
    assert 12 / scales[-1] >= 120 > 12 / scales[-2]  # the last level reaches the largest face
    assert all(b / a == pytest.approx(0.709) for a, b in zip(scales, scales[1:], strict=False))
    assert len(pyramid_scales(360, 20, None)) > len(scales)  # unbounded: down to 12 px images


@pytest.mark.parametrize("stem", ["astronaut", "grace_hopper", "obama"])
def test_landmarks_agree_with_facenet_pytorch(
    stem: str, portraits: dict[str, Path], detector: FaceDetector
) -> None:
    # Downscaled so the face is ~100 px: the size faces are detected at in FaceAligner.
    image = _rgb(portraits[stem])
    image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    ref = MTCNN(keep_all=True, device="cpu")
    boxes, probs, points = ref.detect(image, landmarks=True)
    probs = np.asarray(probs, dtype=np.float32)
    j = int(np.argmax(probs))
    ref_box, ref_points = np.asarray(boxes[j], np.float32), np.asarray(points[j], np.float32)
    faces = detector.detect(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0]
    i = best_face(faces)
    assert i is not None and faces.probs[i] > 0.99
    side = ref_box[2] - ref_box[0]
    # Crops are resampled differently (roi_align vs per-box area resize) and the pixel
    # conventions differ by half a pixel: agreement to 4% of the face size (4 px at 100 px).
    assert np.abs(faces.landmarks[i] - ref_points).max() < 0.04 * side
    assert np.abs(faces.boxes[i] - ref_box).max() < 0.1 * side


def test_batches_give_the_same_faces_as_single_images(
    portraits: dict[str, Path], detector: FaceDetector
) -> None:
    image = cv2.resize(_rgb(portraits["astronaut"]), (256, 256), interpolation=cv2.INTER_AREA)
    blank = np.full_like(image, 127)
    batch = torch.from_numpy(np.stack([image, blank, image[:, ::-1].copy()])).permute(0, 3, 1, 2)
    faces = detector.detect(batch.float(), min_size=30)
    single = detector.detect(batch[:1].float(), min_size=30)[0]
    assert len(faces[1]) == 0  # a flat grey image has no face
    np.testing.assert_allclose(faces[0].landmarks, single.landmarks, atol=1e-3)
    # The mirrored image: its left eye is the original's right eye, mirrored.
    mirrored = faces[2].landmarks[best_face(faces[2])]
    original = single.landmarks[best_face(single)]
    np.testing.assert_allclose(256 - mirrored[0, 0], original[1, 0], atol=3.0)


def test_best_face_prefers_the_largest_confident_face() -> None:
    faces = Faces(
        boxes=np.array([[0, 0, 20, 20], [0, 0, 90, 90], [0, 0, 200, 200]], np.float32),
        probs=np.array([0.999, 0.97, 0.8], np.float32),
        landmarks=np.zeros((3, 5, 2), np.float32),
    )
    assert best_face(faces) == 1  # the 200-px box is not confident, the 20-px one is small
    faces.probs[:] = [0.9, 0.8, 0.7]
    assert best_face(faces) == 0  # none confident: the most probable
    assert best_face(Faces.empty()) is None
