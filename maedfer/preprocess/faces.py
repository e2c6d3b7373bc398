"""Faces in a clip: find, track, align (docs/design.md).

`FaceAligner.align_frames` turns a clip's frames into square, similarity-aligned face crops. The
work per clip, and why it is fast enough for a million clips:

1. **Seed** -- the full MTCNN pyramid on a few keyframes at a reduced resolution (short side
   `detect_side`) finds the face and its size ``S``. Only a clip without a face pays for the full
   pyramid on every keyframe (and is then rejected).
2. **Keyframes** -- every `detect_every`-th frame (and the last) is searched in batches, on a copy
   of the frames resized so the face is about 64 px (O-Net's input is 48 px: more pixels add
   no accuracy), for faces from ``S/2`` to ``2S`` only: a few tiny pyramid levels instead of
   ten. A keyframe where that finds nothing gets the full search (the face may have changed
   size or gone).
3. **Tracking** -- frames between keyframes get O-Net alone, on the box interpolated between the
   neighbouring keyframes' faces, in batches: landmarks for every frame at the cost of a 48x48
   crop each. Frames whose O-Net probability is below the detection threshold have no face.
4. **Alignment** -- landmarks smoothed over time, one similarity transform per frame onto the
   template (`maedfer.preprocess.align`), frames without a face reuse the nearest good
   transform, and each frame is warped from a version reduced just enough that the warp
   shrinks it by less than 2x (no aliasing, no needless blur).

**Streaming**: a clip is located in chunks of frames whose boundaries depend on the clip alone
(a multiple of `detect_every` frames, fewer for large frames: `chunk_frames`), each chunk ending
on a keyframe that the next one starts from, so the keyframes are those of the whole clip and
the result does not depend on how the frames arrive. Only the landmarks of the whole clip are
kept; the frames are then read a second time and warped chunk by chunk
(`FaceAligner.locate_stream`, `FaceAligner.warp_stream`). Memory is bounded by a chunk of
frames, not by the clip's length or resolution.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.preprocess.align import clip_transforms, warp_frames
from maedfer.preprocess.detect import THRESHOLDS, FaceDetector, Faces, best_face, square_boxes

logger = logging.getLogger(__name__)

# Keyframes are searched and frames tracked on a copy resized so the face is about this big:
# O-Net sees a 48x48 crop anyway, so more pixels add no landmark accuracy, only memory traffic.
TRACK_FACE_SIZE = 64.0
# R-Net candidates per keyframe passed to O-Net: the face and its near duplicates rank first.
KEYFRAME_TOP = 3
# Frames located per chunk, and the most bytes of decoded frames a chunk may hold (a 4K chunk
# is then 4 frames, 100 MB; a 720p one 32 frames, 88 MB).
CHUNK_FRAMES = 32
CHUNK_BYTES = 128 << 20
_NOT_CARRIED = object()  # the first frame of a chunk that no earlier chunk located


class NoFaceError(MaedferError):
    """No frame of the clip has a face."""


@dataclass
class FaceTrack:
    """Per-frame faces of a clip in the input frames' continuous pixel coordinates.

    Attributes:
        landmarks: (T, 5, 2) float32, NaN where `valid` is False.
        probs: (T,) float32 O-Net face probability (0 where nothing was looked at).
        valid: (T,) bool, a face was found in the frame.
        face_size: median box side of the face, pixels.
        keyframes: indices of the frames that were detected rather than tracked.
    """

    landmarks: np.ndarray
    probs: np.ndarray
    valid: np.ndarray
    face_size: float
    keyframes: np.ndarray

    @property
    def face_ratio(self) -> float:
        return float(self.valid.mean())


@dataclass
class AlignedClip:
    """Aligned face crops of a clip.

    Attributes:
        frames: (T, size, size, 3) uint8 RGB.
        face_ratio: fraction of frames in which a face was found.
        track: the faces found, `transforms` (T, 2, 3) the warps applied (input -> crop).
    """

    frames: np.ndarray
    face_ratio: float
    track: FaceTrack | None = None
    transforms: np.ndarray | None = None


def keyframe_indices(num_frames: int, every: int) -> np.ndarray:
    """Frames that get a detection: 0, k, 2k, ... and the last (so no frame is extrapolated)."""
    keys = list(range(0, num_frames, every))
    if keys[-1] != num_frames - 1:
        keys.append(num_frames - 1)
    return np.array(keys)


def chunk_frames(frame_shape: tuple[int, ...], detect_every: int) -> int:
    """Frames per streaming chunk for frames of this shape: a multiple of `detect_every`, at
    most `CHUNK_FRAMES`, fewer when the frames are large (`CHUNK_BYTES`). A function of the
    clip alone, so a clip is cut at the same frames on every run."""
    fit = CHUNK_BYTES // max(1, int(np.prod(frame_shape)))
    frames = max(1, min(CHUNK_FRAMES, fit))
    return max(detect_every, frames // detect_every * detect_every)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch and OpenCV CPU threads, restoring the previous counts after.

    The MTCNN nets and per-frame OpenCV calls are small: a second thread gains little, and on a
    shared machine the threads' barriers make them several times slower (measured here: 4-6x
    at 2 threads under load). Parallelism comes from worker processes instead.
    """
    if threads is None:
        yield
        return
    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image without aliasing, fast on CPU.

    OpenCV's INTER_AREA is fast only for exact factors of 2 (0.4 ms for 720p -> 360p here, but
    10 ms for 720p x 0.37), so halve with it while that stays above the target, then finish
    with bilinear, which does not alias below a factor of 2.
    """
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        half = (image.shape[1] // 2, image.shape[0] // 2)
        image = cv2.resize(image, half, interpolation=cv2.INTER_AREA)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


class _Frames:
    """The clip's frames with resizing on the device that runs the networks.

    CPU: numpy + cv2 (INTER_AREA is several times faster than torch's antialiased resize there);
    CUDA: the frames are uploaded once and resized with antialiased bilinear interpolation.
    """

    def __init__(self, frames: np.ndarray, device: torch.device, use_torch: bool) -> None:
        self.frames = frames
        self.device = device
        self.height, self.width = frames.shape[1:3]
        self.gpu = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2) if use_torch else None

    def shape_at(self, scale: float) -> tuple[int, int]:
        return max(1, round(self.height * scale)), max(1, round(self.width * scale))

    def resized(self, index: np.ndarray, scale: float, batch: int = 64):
        """Frames `index` at `scale`: uint8 (n, h, w, 3) on CPU, (n, 3, h, w) tensor on CUDA."""
        h, w = self.shape_at(scale)
        if self.gpu is not None:
            parts = []
            for start in range(0, len(index), batch):
                sel = torch.as_tensor(index[start : start + batch], device=self.device)
                x = self.gpu[sel]
                if (h, w) != (self.height, self.width):
                    x = (
                        F.interpolate(
                            x.float(),
                            size=(h, w),
                            mode="bilinear",
                            antialias=True,
                            align_corners=False,
                        )
                        .round_()
                        .clamp_(0, 255)
                        .to(torch.uint8)
                    )
                parts.append(x)
            return torch.cat(parts)
        if (h, w) == (self.height, self.width):
            return self.frames[index]
        return np.stack([resize_image(self.frames[i], w, h) for i in index])

    def warp(
        self, transforms: np.ndarray, size: int, batch: int = 32, scale: float | None = None
    ) -> np.ndarray:
        """All frames warped by their input-resolution transforms into `size` crops.

        Bilinear warping aliases when it shrinks much, so each frame is first reduced to a level
        where the warp shrinks by less than 2x: on CPU by exact halvings (cv2 INTER_AREA's fast
        path), on CUDA by an antialiased resize to the transforms' own scale. `scale` is the
        clip's (`warp_scale`); None = these transforms'.
        """
        if scale is None:
            scale = warp_scale(transforms)
        out = []
        for start in range(0, len(self.frames), batch):
            index = np.arange(start, min(start + batch, len(self.frames)))
            if self.gpu is not None:
                level = self.resized(index, min(1.0, scale))
                h, w = level.shape[2:]
            else:
                level = self.frames[start : start + len(index)]
                while scale <= 0.5 * level.shape[1] / self.height:
                    half = (level.shape[2] // 2, level.shape[1] // 2)
                    level = np.stack(
                        [cv2.resize(f, half, interpolation=cv2.INTER_AREA) for f in level]
                    )
                h, w = level.shape[1:3]
            level_transforms = transforms[index].copy()
            level_transforms[:, :, 0] *= self.width / w  # level -> input coordinates first
            level_transforms[:, :, 1] *= self.height / h
            out.append(warp_frames(level, level_transforms, size))
        return np.concatenate(out)

    def as_float(self, images) -> torch.Tensor:
        """Resized frames -> (n, 3, h, w) float32 0..255 on the device, NCHW-contiguous.

        Contiguous matters: given a channels-last tensor (what ``.float()`` of the permuted
        array would give), roi_align copies the whole batch on every call -- 40x slower at 720p.
        """
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return images.float().contiguous()


def warp_scale(transforms: np.ndarray) -> float:
    """The clip's typical shrink factor: the median scale of its (T, 2, 3) transforms."""
    return float(np.median(np.sqrt(np.abs(np.linalg.det(transforms[:, :, :2])))))


class _ChunkBuffer:
    """Frames of one chunk in one preallocated array (no list of frames stacked again)."""

    def __init__(self, extra: int = 0) -> None:
        self.array: np.ndarray | None = None
        self.count = 0
        self.extra = extra

    @property
    def first(self) -> np.ndarray | None:
        return self.array[0] if self.array is not None else None

    @property
    def full(self) -> bool:
        return self.array is not None and self.count == len(self.array)

    @property
    def frames(self) -> np.ndarray:
        return self.array[: self.count]

    def add(self, frame: np.ndarray, multiple: int) -> None:
        if self.array is None:
            size = chunk_frames(frame.shape, multiple) + self.extra
            self.array = np.empty((size, *frame.shape), np.uint8)
        self.array[self.count] = frame
        self.count += 1

    def keep_last(self) -> None:
        """Start the next chunk from this one's last frame."""
        self.array[0] = self.array[self.count - 1]
        self.count = 1


@dataclass
class _Chunk:
    """What locating one chunk gives: per-frame results in input coordinates, and the faces
    of its keyframes (the last one starts the next chunk)."""

    probs: np.ndarray
    landmarks: np.ndarray
    key_faces: dict[int, tuple[np.ndarray, float, np.ndarray]]  # input coordinates
    sides: list[float]


class FaceAligner:
    """MTCNN + 5-point similarity alignment of whole clips (docs/design.md).

    Args:
        size: side of the square output crops.
        device: "cpu", "cuda", ... ; None = CUDA when available.
        detect_every: detect on every k-th frame and track with O-Net in between (1 = detect on
            every frame).
        min_face: smallest face searched by the full pyramid, as a fraction of the frame's short
            side (at least 20 px at the detection resolution).
        detect_side: short side the frames are resized to for the full-pyramid search.
        smooth_sigma: temporal smoothing of the landmarks, in frames (0 = none).
        batch_size: frames per network batch.
        threads: CPU threads (torch and OpenCV) while aligning; None = leave as set.
    """

    def __init__(
        self,
        size: int = 160,
        device: str | torch.device | None = None,
        *,
        detect_every: int = 4,
        min_face: float = 0.06,
        detect_side: int = 360,
        smooth_sigma: float = 1.0,
        batch_size: int = 32,
        threads: int | None = 1,
    ) -> None:
        if detect_every < 1:
            raise MaedferError(f"detect_every ({detect_every}) must be >= 1")
        if size < 16:
            raise MaedferError(f"size ({size}) must be >= 16")
        self.size = size
        self.device = resolve_device(device)
        self.detect_every = detect_every
        self.min_face = min_face
        self.detect_side = detect_side
        self.smooth_sigma = smooth_sigma
        self.batch_size = batch_size
        self.threads = threads if self.device.type == "cpu" else None
        # Resize and warp with torch (the CUDA path) or with OpenCV (CPU); the tests switch the
        # torch path on for CPU too, so it runs where no GPU is.
        self._torch_frames = self.device.type == "cuda"
        self.detector = FaceDetector(self.device)
        self.min_prob = THRESHOLDS[2]

    def align_frames(self, frames: np.ndarray) -> AlignedClip:
        """Aligned face crops of a clip held in memory (`locate_stream` + `warp_stream`).

        Args:
            frames: (T, H, W, 3) uint8 RGB.

        Returns:
            `AlignedClip` with frames (T, size, size, 3) uint8 RGB and the face ratio.

        Raises:
            NoFaceError: no frame has a face.
            MaedferError: `frames` is not a (T, H, W, 3) uint8 array with T >= 1.
        """
        self._check_clip(frames)
        track = self.locate_stream(frames)
        transforms = self.transforms(track)
        crops = np.stack(list(self.warp_stream(frames, transforms)))
        return AlignedClip(crops, track.face_ratio, track, transforms)

    def locate(self, frames: np.ndarray) -> FaceTrack:
        """The face of every frame (steps 1-3 of the module docstring), without warping."""
        self._check_clip(frames)
        return self.locate_stream(frames)

    def transforms(self, track: FaceTrack) -> np.ndarray:
        """(T, 2, 3) warps of every frame onto the template (step 4), from a clip's track."""
        return clip_transforms(track.landmarks, track.valid, self.size, sigma=self.smooth_sigma)

    def locate_stream(self, frames: Iterable[np.ndarray]) -> FaceTrack:
        """The face of every frame of a clip whose (H, W, 3) uint8 RGB frames arrive one by one.

        Holds one chunk of frames at a time (module docstring); gives the same track as the
        clip located whole.

        Raises:
            NoFaceError: no frame has a face.
            MaedferError: a frame is not (H, W, 3) uint8, differs in size from the first, or
                there are none.
        """
        with cpu_threads(self.threads):
            return self._locate_stream(iter(frames))

    def warp_stream(
        self, frames: Iterable[np.ndarray], transforms: np.ndarray
    ) -> Iterator[np.ndarray]:
        """The clip's frames (arriving one by one, the same ones `locate_stream` saw) warped by
        `transforms` into (size, size, 3) uint8 crops, yielded as they are made."""
        scale = warp_scale(transforms)
        chunk = _ChunkBuffer()
        done = 0
        for frame in frames:
            chunk.add(self._check_frame(frame, chunk.first), 1)
            if chunk.full:
                yield from self._warp_chunk(
                    chunk.frames, transforms[done : done + chunk.count], scale
                )
                done += chunk.count
                chunk.count = 0
        if chunk.count:
            yield from self._warp_chunk(chunk.frames, transforms[done : done + chunk.count], scale)
            done += chunk.count
        if done != len(transforms):
            raise MaedferError(f"{done} frames to warp, but {len(transforms)} transforms")

    def _warp_chunk(self, chunk, transforms, scale) -> Iterator[np.ndarray]:
        if len(chunk) > len(transforms):
            raise MaedferError(f"more frames to warp than the {len(transforms)} located")
        src = _Frames(chunk, self.device, self._torch_frames)
        with cpu_threads(self.threads):
            crops = src.warp(transforms, self.size, self.batch_size, scale=scale)
        yield from crops

    @staticmethod
    def _check_clip(frames) -> None:
        if not (
            isinstance(frames, np.ndarray)
            and frames.dtype == np.uint8
            and frames.ndim == 4
            and frames.shape[-1] == 3
            and len(frames) >= 1
        ):
            got = getattr(frames, "shape", type(frames).__name__)
            raise MaedferError(f"frames must be a (T, H, W, 3) uint8 RGB array, T >= 1; got {got}")

    @staticmethod
    def _check_frame(frame, first: np.ndarray | None) -> np.ndarray:
        if not (
            isinstance(frame, np.ndarray)
            and frame.dtype == np.uint8
            and frame.ndim == 3
            and frame.shape[-1] == 3
        ):
            got = getattr(frame, "shape", type(frame).__name__)
            raise MaedferError(f"a frame must be an (H, W, 3) uint8 RGB array; got {got}")
        if first is not None and frame.shape != first.shape:
            raise MaedferError(f"frame sizes differ in one clip: {first.shape} then {frame.shape}")
        return frame

    def _locate_stream(self, frames: Iterator[np.ndarray]) -> FaceTrack:
        buffer = _ChunkBuffer(extra=1)  # a chunk and the keyframe that ends it
        carried: object = _NOT_CARRIED  # the face of the chunk's first frame, if located
        face_size: float | None = None
        probs, landmarks, keys, sides = [], [], [], []
        start, exhausted = 0, False
        while True:
            while not exhausted and not buffer.full:
                frame = next(frames, None)
                if frame is None:
                    exhausted = True
                else:
                    buffer.add(self._check_frame(frame, buffer.first), self.detect_every)
            if not buffer.count:
                raise MaedferError("a clip needs at least one frame; got none")
            n = buffer.count
            chunk_keys = keyframe_indices(n, self.detect_every)
            chunk, face_size = self._locate_chunk(buffer.frames, chunk_keys, carried, face_size)
            kept = n if exhausted else n - 1  # the chunk's last keyframe opens the next chunk
            probs.append(chunk.probs[:kept])
            landmarks.append(chunk.landmarks[:kept])
            keys.append(start + chunk_keys[chunk_keys < kept])
            sides += chunk.sides
            if exhausted:
                break
            carried = chunk.key_faces.get(n - 1)
            buffer.keep_last()
            start += n - 1
        if face_size is None:
            raise NoFaceError("no face")
        all_probs = np.concatenate(probs)
        valid = all_probs >= self.min_prob
        all_landmarks = np.concatenate(landmarks)
        all_landmarks[~valid] = np.nan
        side = float(np.median(sides)) if sides else face_size
        return FaceTrack(all_landmarks, all_probs, valid, side, np.concatenate(keys))

    def _locate_chunk(self, frames, keys, carried, face_size) -> tuple[_Chunk, float | None]:
        """Steps 1-3 on one chunk; `carried` is the face of its first frame, if located."""
        src = _Frames(frames, self.device, self._torch_frames)
        n = len(frames)
        search = keys if carried is _NOT_CARRIED else keys[1:]
        empty = _Chunk(np.zeros(n, np.float32), np.full((n, 5, 2), np.nan, np.float32), {}, [])
        if face_size is None:
            if not len(search):
                return empty, None
            try:
                face_size = self._seed(src, search)
            except NoFaceError:
                return empty, None  # no face yet: the next chunk seeds again
        work_scale = min(1.0, TRACK_FACE_SIZE / face_size)
        work = src.resized(np.arange(n), work_scale)
        h, w = src.shape_at(work_scale)
        sx, sy = w / src.width, h / src.height
        to_work = np.array([sx, sy], np.float32)
        found = self._detect_keyframes(src, work, search, face_size * work_scale, (sx, sy))
        sides = [float((b[2] - b[0]) / sx) for b, _, _ in found.values()]
        key_faces = dict(found)
        if carried is not _NOT_CARRIED and carried is not None:
            box, prob, points = carried
            key_faces[0] = (box * np.tile(to_work, 2), prob, points * to_work)
        probs = np.zeros(n, np.float32)
        landmarks = np.full((n, 5, 2), np.nan, np.float32)
        for k, (_, prob, points) in key_faces.items():
            probs[k], landmarks[k] = prob, points
        self._track(src, work, keys, key_faces, probs, landmarks)
        landmarks /= to_work  # work -> input coordinates
        in_input = {
            k: (box / np.tile(to_work, 2), prob, points / to_work)
            for k, (box, prob, points) in key_faces.items()
        }
        return _Chunk(probs, landmarks, in_input, sides), face_size

    def _full_search(self, src: _Frames, index: np.ndarray) -> tuple[list[Faces], float, float]:
        """Full pyramid on frames `index` at the detection resolution; returns faces and scale."""
        scale = min(1.0, self.detect_side / min(src.height, src.width))
        h, w = src.shape_at(scale)
        min_size = max(20.0, self.min_face * min(h, w))
        faces: list[Faces] = []
        for start in range(0, len(index), self.batch_size):
            images = src.as_float(src.resized(index[start : start + self.batch_size], scale))
            faces += self.detector.detect(images, min_size=min_size)
        return faces, w / src.width, h / src.height

    def _seed(self, src: _Frames, keys: np.ndarray) -> float:
        """Face size (box side, input pixels) from the first keyframes that show a face."""
        # The first keyframe alone first (usually enough), then the rest spread over the clip.
        rest = keys[1:]
        order = [keys[:1]] + [
            chunk for chunk in np.array_split(np.concatenate([rest[i::8] for i in range(8)]), 8)
        ]
        sides = []
        for batch in order:
            if not len(batch):
                continue
            faces, sx, _ = self._full_search(src, batch)
            for f in faces:
                i = best_face(f)
                if i is not None:
                    sides.append((f.boxes[i, 2] - f.boxes[i, 0]) / sx)
            if sides:
                return float(np.median(sides))
        raise NoFaceError("no face")

    def _detect_keyframes(self, src, work, keys, work_face, scales):
        """Keyframe faces {frame: (box, prob, landmarks)} in work-copy coordinates."""
        found: dict[int, tuple[np.ndarray, float, np.ndarray]] = {}
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start : start + self.batch_size]
            images = src.as_float(work[batch])
            faces = self.detector.detect(
                images, min_size=work_face / 2, max_size=work_face * 2, top=KEYFRAME_TOP
            )
            for k, f in zip(batch, faces, strict=True):
                i = best_face(f)
                if i is not None:
                    found[int(k)] = (f.boxes[i], float(f.probs[i]), f.landmarks[i])
        missing = np.array([k for k in keys if int(k) not in found])
        if len(missing):
            # The face changed size or left: full search, mapped to work coordinates.
            faces, fx, fy = self._full_search(src, missing)
            to_work = np.array([scales[0] / fx, scales[1] / fy], np.float32)
            for k, f in zip(missing, faces, strict=True):
                i = best_face(f)
                if i is not None:
                    box = f.boxes[i] * np.tile(to_work, 2)
                    found[int(k)] = (box, float(f.probs[i]), f.landmarks[i] * to_work)
        return found

    def _track(self, src, work, keys, key_faces, probs, landmarks) -> None:
        """O-Net on frames between keyframes, on boxes interpolated between neighbours."""
        frames, boxes = [], []
        for a, b in zip(keys[:-1], keys[1:], strict=True):
            fa, fb = key_faces.get(int(a)), key_faces.get(int(b))
            if (fa is None and fb is None) or b - a < 2:
                continue
            box_a = fa[0] if fa is not None else fb[0]
            box_b = fb[0] if fb is not None else fa[0]
            for t in range(a + 1, b):
                u = (t - a) / (b - a)
                frames.append(t)
                boxes.append((1 - u) * box_a + u * box_b)
        if not frames:
            return
        frames_a = np.array(frames)
        boxes_t = square_boxes(torch.as_tensor(np.stack(boxes), dtype=torch.float32))
        for start in range(0, len(frames_a), self.batch_size):
            sel = frames_a[start : start + self.batch_size]
            images = src.as_float(work[sel])
            box = boxes_t[start : start + self.batch_size].to(images.device)
            index = torch.arange(len(sel), device=images.device)
            prob, _, points = self.detector.refine(images, box, index)
            probs[sel] = prob.cpu().numpy()
            landmarks[sel] = points.cpu().numpy()
