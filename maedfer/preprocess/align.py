"""Five-point similarity alignment to one fixed template (docs/design.md).

Pure functions on arrays: the template, the least-squares similarity transform (Umeyama 1991),
temporal smoothing of landmarks, filling frames without a face from the nearest good one, and
warping frames (cv2 on CPU, `grid_sample` on a GPU).

Coordinates are continuous (pixel ``j`` covers ``[j, j + 1)``), as in `maedfer.preprocess.detect`;
the conversion to OpenCV's pixel-centre convention happens inside `warp_frames` only.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# The canonical 5 landmarks in a unit square (x, y): left eye, right eye, nose, left and right
# mouth corner. Measured, not copied: facenet-pytorch MTCNN on the four committed portraits,
# each face's landmarks expressed relative to its detection box (centre, side), averaged,
# made left-right symmetric, then placed so the box side is FACE_SCALE of the crop around the
# crop centre -- the role OpenFace's `-simscale 0.7` plays for the MAE-DFER family
# (docs/datasets.md). Eyes land at 38%/62% across and 41% down, the mouth at 66% down.
FACE_SCALE = 0.7
_TEMPLATE_IN_BOX = np.array(
    [[-0.1736, -0.1271], [0.1736, -0.1271], [0.0, 0.0821], [-0.1686, 0.2251], [0.1686, 0.2251]]
)
TEMPLATE = (0.5 + FACE_SCALE * _TEMPLATE_IN_BOX).astype(np.float32)


def template_points(size: int, face_scale: float = FACE_SCALE) -> np.ndarray:
    """The template for a `size` x `size` crop, (5, 2) float32 continuous coordinates."""
    return ((0.5 + face_scale * _TEMPLATE_IN_BOX) * size).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking `src` onto `dst`.

    Umeyama's closed form. Args: src, dst (N, 2). Returns the (2, 3) matrix ``M`` with
    ``dst ~ M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a similarity
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / src_c.var(0).sum()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def smooth_landmarks(landmarks: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over time that only averages frames with a face.

    Detector jitter of a pixel or two becomes visible shaking of the aligned face; a Gaussian of
    `sigma` frames (1 frame at 25-30 fps) removes it without lagging behind real head motion.

    Args:
        landmarks: (T, 5, 2); rows where `valid` is False are ignored (may be NaN).
        valid: (T,) bool.
        sigma: in frames; 0 returns the input unchanged.

    Returns:
        (T, 5, 2) smoothed landmarks; invalid frames keep their input value.
    """
    if sigma <= 0 or valid.sum() < 2:
        return landmarks.copy()
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    t = len(landmarks)
    values = np.where(valid[:, None, None], landmarks, 0.0)
    weight = valid.astype(np.float64)
    num = np.zeros_like(values, dtype=np.float64)
    den = np.zeros(t)
    for offset, k in zip(offsets, kernel, strict=True):
        lo, hi = max(0, -offset), min(t, t - offset)  # frames whose neighbour t+offset exists
        num[lo:hi] += k * values[lo + offset : hi + offset]
        den[lo:hi] += k * weight[lo + offset : hi + offset]
    out = landmarks.astype(np.float64).copy()
    out[valid] = num[valid] / den[valid, None, None]
    return out.astype(landmarks.dtype)


def nearest_valid(valid: np.ndarray) -> np.ndarray:
    """For each frame, the index of the nearest frame with a face (the earlier one on a tie).

    Example: valid = [F, T, F, F, T, F] -> [1, 1, 1, 4, 4, 4].
    """
    idx = np.flatnonzero(valid)
    if not len(idx):
        raise ValueError("no valid frame")
    t = np.arange(len(valid))
    right = np.clip(np.searchsorted(idx, t), 0, len(idx) - 1)
    left = np.clip(right - 1, 0, len(idx) - 1)
    take_left = np.abs(t - idx[left]) <= np.abs(idx[right] - t)
    return np.where(take_left, idx[left], idx[right])


def clip_transforms(
    landmarks: np.ndarray, valid: np.ndarray, size: int, *, sigma: float = 1.0
) -> np.ndarray:
    """Per-frame similarity transforms onto the template of a `size` crop.

    Landmarks are smoothed over time first; frames without a face reuse the transform of the
    nearest frame with one. Args: landmarks (T, 5, 2) continuous coords, valid (T,) bool.
    Returns (T, 2, 3) float64.
    """
    smoothed = smooth_landmarks(landmarks, valid, sigma)
    dst = template_points(size)
    transforms = np.zeros((len(landmarks), 2, 3))
    for t in np.flatnonzero(valid):
        transforms[t] = similarity_transform(smoothed[t], dst)
    return transforms[nearest_valid(valid)]


def rescale_source(transforms: np.ndarray, scale: float) -> np.ndarray:
    """Transforms of full-resolution frames rewritten for frames resized by `scale`."""
    out = transforms.copy()
    out[..., :2] /= scale
    return out


def warp_frames(frames: np.ndarray | torch.Tensor, transforms: np.ndarray, size: int):
    """Warp each frame by its transform into a `size` x `size` crop (bilinear, black outside).

    Args:
        frames: (T, H, W, 3) uint8 numpy (CPU, cv2) or (T, 3, H, W) uint8 tensor (any device,
            `grid_sample`).
        transforms: (T, 2, 3) continuous-coordinate transforms source -> crop.

    Returns:
        (T, size, size, 3) uint8 numpy.
    """
    if isinstance(frames, torch.Tensor):
        return _warp_torch(frames, transforms, size)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for t, (frame, matrix) in enumerate(zip(frames, transforms, strict=True)):
        # Continuous -> pixel-centre coordinates: x_pix = x - 0.5 on both sides.
        m = matrix.copy()
        m[:, 2] += 0.5 * m[:, :2].sum(1) - 0.5
        cv2.warpAffine(
            frame,
            m,
            (size, size),
            dst=out[t],
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return out


def _warp_torch(frames: torch.Tensor, transforms: np.ndarray, size: int) -> np.ndarray:
    t, _, h, w = frames.shape
    full = np.zeros((t, 3, 3))
    full[:, :2] = transforms
    full[:, 2, 2] = 1
    inverse = np.linalg.inv(full)  # crop -> source, continuous coordinates
    # grid_sample(align_corners=False) works in [-1, 1]: x_norm = 2 x / W - 1.
    to_norm_src = np.array([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
    from_norm_dst = np.array([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]])
    theta = (to_norm_src @ inverse @ from_norm_dst)[:, :2]
    theta_t = torch.as_tensor(theta, dtype=torch.float32, device=frames.device)
    grid = F.affine_grid(theta_t, [t, 3, size, size], align_corners=False)
    out = F.grid_sample(frames.float(), grid, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
