"""MTCNN face detection with batched crops (docs/design.md).

The three networks (P-Net, R-Net, O-Net) and their weights are facenet-pytorch's (the weights ship
in the wheel, so detection runs offline). The cascade around them is written here because
facenet-pytorch's `detect_face` crops every candidate box in a Python loop and resizes it with a
separate `interpolate` call, which dominates its run time on CPU; here one
`torchvision.ops.roi_align` call crops all candidates of a stage at once, on any device. It also
lets the caller bound the face sizes searched (`min_size`, `max_size`), which is how a video whose
face scale is already known is searched in a few small pyramid levels instead of the full pyramid.

Coordinates are continuous image coordinates: pixel ``j`` covers ``[j, j + 1)``, so the centre of
pixel ``(0, 0)`` is ``(0.5, 0.5)`` (``roi_align(aligned=True)`` uses the same convention).
Boxes are ``(x1, y1, x2, y2)``; landmarks are ``(5, 2)`` as ``(x, y)`` in the order left eye, right
eye, nose, left mouth corner, right mouth corner (left/right as seen in the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
from torchvision.ops import batched_nms, roi_align

# MTCNN's published defaults (Zhang et al. 2016), also facenet-pytorch's.
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
PNET_WINDOW = 12  # P-Net sees 12x12 windows with a stride of 2 pixels
PNET_STRIDE = 2


@dataclass
class Faces:
    """Faces found in one image (N of them), best first.

    Attributes:
        boxes: (N, 4) float32 ``x1, y1, x2, y2``.
        probs: (N,) float32 O-Net face probability.
        landmarks: (N, 5, 2) float32.
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    @classmethod
    def empty(cls) -> Faces:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        )


def pyramid_scales(
    short_side: float, min_size: float, max_size: float | None, factor: float = PYRAMID_FACTOR
) -> list[float]:
    """Image scales at which P-Net's 12-pixel window matches faces from `min_size` to `max_size`.

    Example: a 360-pixel short side, faces 40..120 px: scales 0.3, 0.213, 0.151, 0.107, 0.076
    (a 12-px window at scale 0.3 is a 40-px face; the last level reaches 158 px >= 120).
    """
    scales: list[float] = []
    scale = PNET_WINDOW / min_size
    while short_side * scale >= PNET_WINDOW:
        scales.append(scale)
        if max_size is not None and PNET_WINDOW / scale >= max_size:
            break
        scale *= factor
    return scales


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - 127.5) * 0.0078125


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre (the crops R-Net and O-Net expect)."""
    centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, :2]).max(dim=1).values[:, None] / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply the networks' box regression: offsets are fractions of the box width/height."""
    size = (boxes[:, 2:4] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


class FaceDetector:
    """MTCNN cascade over a batch of equal-sized images.

    Args:
        device: where the networks run ("cpu", "cuda", ...).
        thresholds: face-probability thresholds of P-, R- and O-Net.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        thresholds: tuple[float, float, float] = THRESHOLDS,
    ) -> None:
        self.device = torch.device(device)
        self.thresholds = thresholds
        # channels_last: max-pooling and convolutions of the small nets run 1.5-3.5x faster on
        # CPU in that layout (measured on R-Net/O-Net batches here).
        fmt = torch.channels_last
        self.pnet = PNet().to(self.device, memory_format=fmt).eval()
        self.rnet = RNet().to(self.device, memory_format=fmt).eval()
        self.onet = ONet().to(self.device, memory_format=fmt).eval()

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        *,
        min_size: float = 20.0,
        max_size: float | None = None,
        top: int | None = None,
    ) -> list[Faces]:
        """All faces of each image, most probable first.

        Args:
            images: (B, 3, H, W) float in 0..255 (RGB), on the detector's device.
            min_size, max_size: face sizes (box side, pixels) to search for; `max_size` None =
                up to the whole image.
            top: pass only the `top` most probable R-Net candidates of each image on to O-Net
                (the slowest stage); None = all. For one known face, a few suffice.

        Returns:
            One `Faces` per image.
        """
        height, width = images.shape[2:]
        scales = pyramid_scales(min(height, width), min_size, max_size)
        boxes, index = self._proposals(images, scales)
        if len(boxes):
            boxes, index = self._rnet(images, boxes, index, top)
        out = [Faces.empty() for _ in range(len(images))]
        if not len(boxes):
            return out
        probs, boxes_out, landmarks = self.refine(images, boxes, index)
        keep = probs > self.thresholds[2]
        boxes_out, probs, landmarks, index = (
            boxes_out[keep],
            probs[keep],
            landmarks[keep],
            index[keep],
        )
        keep = batched_nms(boxes_out, probs, index, 0.7)
        boxes_out, probs, landmarks, index = (
            t[keep].cpu().numpy() for t in (boxes_out, probs, landmarks, index)
        )
        for i in np.unique(index):
            sel = index == i
            out[i] = Faces(boxes_out[sel], probs[sel], landmarks[sel])
        return out

    def _proposals(
        self, images: torch.Tensor, scales: list[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over the pyramid; square, regressed candidate boxes and image index."""
        height, width = images.shape[2:]
        found_boxes, found_scores, found_offsets, found_index = [], [], [], []
        level = images
        for scale in scales:
            h, w = math.ceil(height * scale), math.ceil(width * scale)
            # Each level from the previous one: the full image is read once, not once per level.
            level = torch.nn.functional.interpolate(level, size=(h, w), mode="area")
            offsets, probs = self.pnet(
                _normalise(level).contiguous(memory_format=torch.channels_last)
            )
            face = probs[:, 1]
            b, r, c = torch.nonzero(face >= self.thresholds[0], as_tuple=True)
            if not len(b):
                continue
            # The window's box in the original image, per axis (ceil made the scale inexact).
            sx, sy = w / width, h / height
            x1, y1 = PNET_STRIDE * c / sx, PNET_STRIDE * r / sy
            boxes = torch.stack([x1, y1, x1 + PNET_WINDOW / sx, y1 + PNET_WINDOW / sy], dim=1)
            scores = face[b, r, c]
            keep = batched_nms(boxes, scores, b, 0.5)  # within one level and image
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
            found_offsets.append(offsets[b[keep], :, r[keep], c[keep]])
            found_index.append(b[keep])
        if not found_boxes:
            return torch.zeros(0, 4, device=images.device), torch.zeros(0, dtype=torch.long)
        boxes, scores = torch.cat(found_boxes), torch.cat(found_scores)
        offsets, index = torch.cat(found_offsets), torch.cat(found_index)
        keep = batched_nms(boxes, scores, index, 0.7)  # across levels
        return square_boxes(_regress(boxes[keep], offsets[keep])), index[keep]

    def _crops(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor,
        index: torch.Tensor,
        size: int,
        sampling_ratio: int = -1,
    ) -> torch.Tensor:
        # Outside the image roi_align reads zeros: black padding, as the original MTCNN pads.
        rois = torch.cat([index[:, None].to(boxes), boxes], dim=1)
        crops = roi_align(images, rois, size, sampling_ratio=sampling_ratio, aligned=True)
        return _normalise(crops).contiguous(memory_format=torch.channels_last)

    def _rnet(
        self, images: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, top: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net keeps and regresses the plausible candidates (the `top` per image)."""
        # 2x2 samples per output pixel: R-Net only screens candidates (there can be hundreds),
        # O-Net, which gives the landmarks, samples the box densely.
        offsets, probs = self.rnet(self._crops(images, boxes, index, 24, sampling_ratio=2))
        keep = probs[:, 1] > self.thresholds[1]
        boxes, offsets, scores, index = boxes[keep], offsets[keep], probs[keep, 1], index[keep]
        keep = batched_nms(boxes, scores, index, 0.7)  # sorted by decreasing score
        if top is not None and len(keep):
            # Rank of each box within its image, in score order; O-Net sees the best `top`.
            onehot = torch.nn.functional.one_hot(index[keep], num_classes=len(images))
            rank = (onehot.cumsum(0) * onehot).sum(1)
            keep = keep[rank <= top]
        return square_boxes(_regress(boxes[keep], offsets[keep])), index[keep]

    @torch.no_grad()
    def refine(
        self, images: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3 alone: O-Net on given square boxes (also how a known face is tracked).

        Args:
            images: (B, 3, H, W) float 0..255.
            boxes: (N, 4) square boxes on the images' device; index: (N,) image of each box.

        Returns:
            probs (N,), regressed boxes (N, 4) and landmarks (N, 5, 2), no threshold applied.
        """
        # 2x2 samples per output pixel is an area filter for faces up to ~100 px (FaceAligner
        # tracks at 64 px); denser sampling costs 2-4x the time for no landmark accuracy.
        offsets, points, probs = self.onet(self._crops(images, boxes, index, 48, sampling_ratio=2))
        size = boxes[:, 2:4] - boxes[:, :2]
        landmarks = boxes[:, None, :2] + points.view(-1, 2, 5).transpose(1, 2) * size[:, None, :]
        return probs[:, 1], _regress(boxes, offsets), landmarks


def best_face(faces: Faces, min_prob: float = 0.95) -> int | None:
    """Index of the face to keep: the largest of the confident ones, else the most probable.

    Largest rather than most probable among confident faces, because in a clip about one person
    that person's face is the big one; a small, slightly more probable background face is not.
    """
    if not len(faces):
        return None
    area = np.prod(faces.boxes[:, 2:4] - faces.boxes[:, :2], axis=1)
    confident = faces.probs >= min_prob
    if confident.any():
        return int(np.argmax(np.where(confident, area, -1.0)))
    return int(np.argmax(faces.probs))
