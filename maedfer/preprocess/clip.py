"""One clip of a raw dataset -> one manifest row or one reject (DESIGN.md §3, §4).

`process_clip` decides by the entry's kind and the dataset:

- a video (CREMA-D, RAVDESS, eNTERFACE05, and DFEW/FERV39k/MAFW with ``--from-video``): decode,
  find and align the face (`FaceAligner`), encode the crops;
- a frame folder (the official faces of DFEW, FERV39k, MAFW): resize each frame to the square
  size and encode, no detection (self-extracted faces cost MAFW ~25 UAR points, DATASETS.md §10);
- VoxCeleb2: probe the file and record the upper-centre crop, reading it in place; with
  ``--reencode``, decode, crop and encode instead.

Every way a clip can fail becomes a `ClipResult` with a short reason, never an exception.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from maedfer.errors import MaedferError
from maedfer.manifests import ClipEntry
from maedfer.manifests.voxceleb2 import crop_box
from maedfer.preprocess.encode import Codec, clip_suffix, write_clip
from maedfer.preprocess.faces import FaceAligner, NoFaceError
from maedfer.preprocess.video import (
    FRAME_FOLDER_FPS,
    VideoError,
    iter_video_frames,
    probe_video,
    read_frame_folder,
    read_video_frames,
)

logger = logging.getLogger(__name__)

IN_PLACE_DATASETS = ("voxceleb2",)
# Decoded frames of one clip are kept in memory for alignment; past this they are scaled down
# (a 100-s 720x576 eNTERFACE file would take 3 GB). Per worker process.
MAX_CLIP_BYTES = 1 << 30


@dataclass(frozen=True)
class PrepareOptions:
    """What every clip of a run shares (the options of ``maedfer prepare``)."""

    dataset: str
    raw_root: Path
    out: Path
    size: int = 160
    codec: Codec = "h264"
    reencode: bool = False

    @property
    def in_place(self) -> bool:
        """VoxCeleb2 without ``--reencode``: clips are read from the raw tree with a crop."""
        return self.dataset in IN_PLACE_DATASETS and not self.reencode


@dataclass
class ClipResult:
    """The outcome for one clip: the manifest's pixel fields, or a reject reason."""

    clip_id: str
    source: str
    path: str | None = None
    reason: str | None = None
    num_frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    crop: tuple[int, int, int, int] | None = None
    face_ratio: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict:
        out = asdict(self)
        out["crop"] = list(self.crop) if self.crop is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict) -> ClipResult:
        data = dict(data)
        if data.get("crop") is not None:
            data["crop"] = tuple(data["crop"])
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


def planned_path(entry: ClipEntry, options: PrepareOptions) -> str:
    """Where the clip will be: relative to the raw root in place, else ``clips/<key><suffix>``."""
    if options.in_place:
        return entry.source
    return f"clips/{entry.clip_id}{clip_suffix(options.codec)}"


@dataclass
class LoadedClip:
    """A clip after its input stage (decode / read / probe), before alignment and encoding.

    `result` already carries the reject reason if loading failed, or everything if nothing is
    left to do (VoxCeleb2 in place); otherwise `frames` wait for `finish_clip`.
    """

    entry: ClipEntry
    result: ClipResult
    frames: np.ndarray | None = None
    fps: float | Fraction | None = None
    align: bool = False


def _rejected(entry: ClipEntry, exc: Exception) -> ClipResult:
    """The reject row of a failure: known failures by their reason, anything else logged."""
    if isinstance(exc, (VideoError, NoFaceError)):
        reason = str(exc)
    elif isinstance(exc, MaedferError):
        reason = f"error: {exc}"
    else:  # one odd file in a million must not stop the run: log it, reject it
        logger.error("clip %s (%s) failed", entry.clip_id, entry.source, exc_info=exc)
        reason = f"error: {type(exc).__name__}: {exc}"
    return ClipResult(entry.clip_id, entry.source, reason=reason)


def load_clip(entry: ClipEntry, options: PrepareOptions) -> LoadedClip:
    """The input stage: decode the video, read the frame folder, or probe in place.

    Separate from `finish_clip` so the driver can decode the next clip while this one is
    aligned (decoding runs in FFmpeg without the GIL). Never raises.
    """
    result = ClipResult(entry.clip_id, entry.source, path=planned_path(entry, options))
    source = options.raw_root / entry.source
    try:
        if options.in_place:
            _probe_in_place(source, options, result)
            return LoadedClip(entry, result)
        if entry.kind == "frames":
            return LoadedClip(
                entry, result, read_frame_folder(source, options.size), FRAME_FOLDER_FPS
            )
        if options.dataset in IN_PLACE_DATASETS:
            frames, fps = _read_crop(source, options)
            return LoadedClip(entry, result, frames, fps)
        frames, fps = read_video_frames(source, max_bytes=MAX_CLIP_BYTES)
        return LoadedClip(entry, result, frames, fps, align=True)
    except Exception as exc:
        return LoadedClip(entry, _rejected(entry, exc))


def finish_clip(
    loaded: LoadedClip, options: PrepareOptions, aligner: FaceAligner | None
) -> ClipResult:
    """The output stage: align the faces where the clip needs it, encode. Never raises."""
    result = loaded.result
    if not result.ok or loaded.frames is None:
        return result
    try:
        frames = loaded.frames
        if loaded.align:
            if aligner is None:
                raise RuntimeError("a FaceAligner is needed for videos")
            aligned = aligner.align_frames(frames)
            frames, result.face_ratio = aligned.frames, aligned.face_ratio
        _write(frames, loaded.fps, options, result)
    except Exception as exc:
        return _rejected(loaded.entry, exc)
    return result


def process_clip(
    entry: ClipEntry, options: PrepareOptions, aligner: FaceAligner | None
) -> ClipResult:
    """Prepare one clip; every failure comes back as a reject reason.

    Args:
        entry: from the dataset's `RawIndex`.
        options: the run's options.
        aligner: the worker's `FaceAligner` (needed for videos that get face detection).
    """
    return finish_clip(load_clip(entry, options), options, aligner)


def _write(frames: np.ndarray, fps, options: PrepareOptions, result: ClipResult) -> None:
    write_clip(frames, options.out / result.path, fps=fps, codec=options.codec)
    result.num_frames = len(frames)
    result.fps = float(fps)
    result.height, result.width = frames.shape[1:3]


def _vox_crop(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """MAE-DFER's upper-centre box for a frame of this size (224x224 in VoxCeleb2)."""
    return crop_box(min(size, width, height), width)


def _probe_in_place(source: Path, options: PrepareOptions, result: ClipResult) -> None:
    info = probe_video(source)
    result.num_frames, result.fps = info.num_frames, float(info.fps)
    result.width, result.height = info.width, info.height
    result.crop = _vox_crop(info.width, info.height, options.size)


def _read_crop(source: Path, options: PrepareOptions) -> tuple[np.ndarray, Fraction]:
    """VoxCeleb2 ``--reencode``: the frames cut to the upper-centre box, at `size`."""
    info = probe_video(source)
    x, y, w, h = _vox_crop(info.width, info.height, options.size)
    frames = []
    for frame in iter_video_frames(source):
        crop = frame[y : y + h, x : x + w]
        if crop.shape[:2] != (options.size, options.size):
            crop = cv2.resize(crop, (options.size, options.size), interpolation=cv2.INTER_LINEAR)
        frames.append(crop)
    return np.stack(frames), info.fps
