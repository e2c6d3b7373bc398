"""Similarity fit, temporal smoothing, gap filling and warping (maedfer.preprocess.align)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maedfer.preprocess.align import (
    FACE_SCALE,
    TEMPLATE,
    clip_transforms,
    nearest_valid,
    similarity_transform,
    smooth_landmarks,
    template_points,
    warp_frames,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([r, [[tx], [ty]]])


def test_similarity_transform_recovers_a_known_one() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    m = _similarity(0.37, 12.0, 15.0, -4.0)
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    src = np.random.default_rng(2).uniform(0, 100, (5, 2))
    mirrored = src * [-1, 1]  # the best fit would be a reflection; a similarity cannot be one
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    assert np.allclose(m[0, 0], m[1, 1]) and np.allclose(m[0, 1], -m[1, 0])


def test_template_is_symmetric_with_the_face_at_the_chosen_scale() -> None:
    np.testing.assert_allclose(TEMPLATE[0, 0] + TEMPLATE[1, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(TEMPLATE[3, 0] + TEMPLATE[4, 0], 1.0, atol=1e-6)
    assert TEMPLATE[0, 1] == TEMPLATE[1, 1] < TEMPLATE[2, 1] < TEMPLATE[3, 1]
    eye_gap = TEMPLATE[1, 0] - TEMPLATE[0, 0]
    # Measured from MTCNN boxes: the eyes are 0.347 box sides apart; the box is 0.7 of the crop.
    assert eye_gap == pytest.approx(0.347 * FACE_SCALE, abs=1e-3)
    np.testing.assert_allclose(template_points(160), TEMPLATE * 160, rtol=1e-6)


def test_smoothing_ignores_frames_without_a_face_and_keeps_constants() -> None:
    t = 9
    landmarks = np.tile(TEMPLATE * 100, (t, 1, 1)).astype(np.float32)
    valid = np.ones(t, bool)
    valid[4] = False
    landmarks[4] = np.nan  # must not leak into its neighbours
    out = smooth_landmarks(landmarks, valid, sigma=1.0)
    np.testing.assert_allclose(out[valid], landmarks[valid], atol=1e-4)
    noisy = landmarks.copy()
    noisy[valid] += np.random.default_rng(1).normal(0, 2, noisy[valid].shape)
    smoothed = smooth_landmarks(noisy, valid, sigma=1.0)
    err = lambda x: np.abs(x[valid] - landmarks[valid]).mean()  # noqa: E731
    assert err(smoothed) < 0.7 * err(noisy)


def test_nearest_valid_prefers_the_earlier_frame_on_a_tie() -> None:
    valid = np.array([False, True, False, False, True, False])
    assert nearest_valid(valid).tolist() == [1, 1, 1, 4, 4, 4]
    assert nearest_valid(np.array([False, False, True])).tolist() == [2, 2, 2]


def test_frames_without_a_face_reuse_the_nearest_transform() -> None:
    landmarks = np.stack([TEMPLATE * 100 + [dx, 0] for dx in range(6)]).astype(np.float32)
    valid = np.array([True, False, False, True, True, False])
    m = clip_transforms(landmarks, valid, 64, sigma=0)
    np.testing.assert_allclose(m[1], m[0])
    np.testing.assert_allclose(m[2], m[3])
    np.testing.assert_allclose(m[5], m[4])
    assert not np.allclose(m[0], m[3])


def test_warp_maps_the_landmarks_onto_the_template() -> None:
    """A frame with bright dots at its landmarks: after warping, the dots sit on the template."""
    size = 96
    m_true = _similarity(1 / 0.8, 8.0, 30.0, 20.0)  # template -> frame
    points = template_points(size) @ m_true[:, :2].T + m_true[:, 2]
    frame = np.zeros((240, 260, 3), np.uint8)
    for x, y in points:  # 3x3 dots centred on the continuous coordinate
        frame[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    m = similarity_transform(points, template_points(size))
    for frames in (frame[None], torch.from_numpy(frame[None]).permute(0, 3, 1, 2)):
        out = warp_frames(frames, m[None], size)[0, :, :, 0].astype(float)
        for tx, ty in template_points(size):
            y0, x0 = int(ty) - 4, int(tx) - 4
            patch = out[y0 : y0 + 9, x0 : x0 + 9]
            ys, xs = np.mgrid[0:9, 0:9] + 0.5  # continuous centres of the patch pixels
            cy, cx = (patch * ys).sum() / patch.sum(), (patch * xs).sum() / patch.sum()
            # Within 1 px: each dot was drawn on the integer grid, up to 0.5 source px (0.63
            # crop px) from its continuous landmark.
            assert abs(y0 + cy - ty) <= 1.0 and abs(x0 + cx - tx) <= 1.0


def test_cpu_and_torch_warps_agree() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    frames = np.ascontiguousarray(np.repeat(np.repeat(frames, 2, 1), 2, 2))  # smooth-ish
    m = np.stack([_similarity(0.6, 5.0, -3.0, 2.0), _similarity(0.5, -10.0, 4.0, 6.0)])
    a = warp_frames(frames, m, 48).astype(int)
    b = warp_frames(torch.from_numpy(frames).permute(0, 3, 1, 2), m, 48).astype(int)
    inner = (slice(None), slice(4, -4), slice(4, -4))  # borders differ in how black is blended
    assert np.abs(a - b)[inner].mean() < 1.0
