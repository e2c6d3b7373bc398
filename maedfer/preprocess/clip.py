"""One clip of a raw dataset -> one manifest row or one reject (docs/design.md).

`process_clip` decides by the entry's kind and the dataset:

- a video (CREMA-D, RAVDESS, eNTERFACE05, and DFEW/FERV39k/MAFW with ``--from-video``): decode,
  find and align the face (`FaceAligner`), encode the crops;
- a frame folder (the official faces of DFEW, FERV39k, MAFW): resize each frame to the square
  size and encode, no detection (self-extracted faces cost MAFW ~25 UAR points, docs/datasets.md);
- an in-place dataset (VoxCeleb2, ``folder --in-place``; the registry's ``in_place``): probe
  the file and record its crop (VoxCeleb2's upper-centre box, a folder's centred square),
  reading it in place; with ``--reencode``, decode, crop and encode instead.

Every way a clip can fail becomes a `ClipResult` with a short reason, never an exception: a
verdict on the file (``reason``: corrupt, no face, too short, ...), or a failure of the machine
(``failure``: no space left, permission denied, I/O error), which is no verdict: the driver
retries it and never records it as done. Each result carries the ``stamp`` of the source it
judged (size and modification time), so a file replaced after a run is prepared again.

Videos stream (`FaceAligner.locate_stream`, then a second decode into `warp_stream` and the
encoder): memory is bounded by a chunk of frames whatever the clip's length and resolution.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from maedfer.errors import MaedferError, is_environmental, os_error_line
from maedfer.manifests import ClipEntry
from maedfer.manifests.registry import CropRule
from maedfer.manifests.voxceleb2 import crop_box
from maedfer.paths import output_path
from maedfer.preprocess import MIN_FACE_RATIO, MIN_FRAMES
from maedfer.preprocess.encode import Codec, clip_suffix, write_clip
from maedfer.preprocess.faces import FaceAligner, NoFaceError
from maedfer.preprocess.video import (
    FRAME_FOLDER_FPS,
    VideoError,
    iter_video_frames,
    list_frame_files,
    prefetched,
    probe_video,
    read_frame_folder,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    """What every clip of a run shares (the options of ``maedfer prepare``).

    ``crop_rule`` is set for the datasets whose clips are face crops already (the registry's
    ``in_place``: VoxCeleb2, ``folder --in-place``): they are read in place with that crop,
    or with ``reencode`` cropped and written, never face-detected. None: the face pipeline.
    """

    dataset: str
    raw_root: Path
    out: Path
    size: int = 160
    codec: Codec = "h264"
    reencode: bool = False
    min_frames: int = MIN_FRAMES
    min_face_ratio: float = MIN_FACE_RATIO
    crop_rule: CropRule | None = None

    @property
    def in_place(self) -> bool:
        """An in-place dataset without ``--reencode``: clips are read from the raw tree."""
        return self.crop_rule is not None and not self.reencode


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
    stamp: str | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None and self.failure is None

    @property
    def failed(self) -> bool:
        """An environmental failure: no verdict on the clip, to be retried."""
        return self.failure is not None

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
    """Where the clip will be: relative to the raw root in place, else ``clips/<key><suffix>``
    (checked to stay under ``--out``: :func:`maedfer.paths.output_path`).

    Raises:
        OutsideRoot: a key that would place the clip outside ``--out``.
    """
    if options.in_place:
        return entry.source
    planned = f"clips/{entry.clip_id}{clip_suffix(options.codec)}"
    output_path(options.out, planned, what=f"the clip of {entry.clip_id}")
    return planned


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


def source_stamp(path: Path) -> str:
    """What a source looked like when judged: ``size:mtime_ns`` of a file; for a frame folder
    the count, total size and newest mtime of its images; ``missing`` if absent."""
    try:
        if path.is_dir():
            stats = [f.stat() for f in list_frame_files(path)]
            newest = max((st.st_mtime_ns for st in stats), default=0)
            return f"dir:{len(stats)}:{sum(st.st_size for st in stats)}:{newest}"
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _rejected(entry: ClipEntry, exc: BaseException, stamp: str | None = None) -> ClipResult:
    """The result of a failure: a reason for the file, or an environmental failure."""
    if is_environmental(exc):
        failure = os_error_line(exc) if isinstance(exc, OSError) else type(exc).__name__
        return ClipResult(entry.clip_id, entry.source, stamp=stamp, failure=failure)
    return dataclasses.replace(_verdict(entry, exc), stamp=stamp)


def _verdict(entry: ClipEntry, exc: BaseException) -> ClipResult:
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
    """The input stage: read the frame folder, or probe the video (in place: all there is).

    Separate from `finish_clip` so the driver can read the next clip while this one is
    aligned (decoding runs in FFmpeg without the GIL). Never raises.
    """
    source = options.raw_root / entry.source
    stamp = source_stamp(source)
    result = ClipResult(entry.clip_id, entry.source, path=planned_path(entry, options), stamp=stamp)
    try:
        if entry.kind == "frames" and not options.in_place:
            return LoadedClip(
                entry, result, read_frame_folder(source, options.size), FRAME_FOLDER_FPS
            )
        info = probe_video(source)
        _check_length(info.num_frames, options)
        if options.in_place:
            _record_in_place(info, options, result)
            return LoadedClip(entry, result)
        align = options.crop_rule is None  # an in-place dataset --reencode: crop only
        return LoadedClip(entry, result, None, info.fps, align=align)
    except Exception as exc:
        return LoadedClip(entry, _rejected(entry, exc, stamp))


def finish_clip(
    loaded: LoadedClip, options: PrepareOptions, aligner: FaceAligner | None
) -> ClipResult:
    """The output stage: align the faces where the clip needs it, encode. Never raises."""
    result = loaded.result
    if not result.ok or (loaded.frames is None and options.in_place):
        return result
    source = options.raw_root / loaded.entry.source
    try:
        if loaded.frames is not None:
            _write(loaded.frames, loaded.fps, options, result)
        elif loaded.align:
            if aligner is None:
                raise RuntimeError("a FaceAligner is needed for videos")
            _align_and_write(source, loaded.fps, options, aligner, result)
        else:
            _write(_crops(source, options), loaded.fps, options, result)
    except Exception as exc:
        return _rejected(loaded.entry, exc, result.stamp)
    return result


def _check_length(num_frames: int, options: PrepareOptions) -> None:
    if num_frames < options.min_frames:
        raise VideoError(f"too short: {num_frames} frames (--min-frames {options.min_frames})")


def _align_and_write(
    source: Path, fps, options: PrepareOptions, aligner: FaceAligner, result: ClipResult
) -> None:
    """Two decodes: locate the face in every frame, then warp and encode frame by frame."""
    track = aligner.locate_stream(prefetched(iter_video_frames(source)))
    _check_length(len(track.valid), options)
    if track.face_ratio < options.min_face_ratio:
        raise VideoError(
            f"face_ratio: a face in {track.face_ratio:.0%} of {len(track.valid)} frames "
            f"(--min-face-ratio {options.min_face_ratio:g})"
        )
    crops = aligner.warp_stream(prefetched(iter_video_frames(source)), aligner.transforms(track))
    _write(crops, fps, options, result)
    if result.num_frames != len(track.valid):
        raise VideoError(f"changed while read: {len(track.valid)} then {result.num_frames} frames")
    result.face_ratio = track.face_ratio


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


def _write(frames, fps, options: PrepareOptions, result: ClipResult) -> None:
    """Encode (an array or a stream of frames) and record the pixel fields; the target is
    checked first: under ``--out``, and never the source itself."""
    target = output_path(options.out, result.path, what=f"the clip of {result.clip_id}")
    source = options.raw_root / result.source
    if target.exists() and source.exists() and os.path.samefile(target, source):
        raise MaedferError(
            f"{target} is the raw file {result.source} itself: --out must not "
            "hold the raw videos under its clips/ folder"
        )
    result.num_frames = write_clip(frames, target, fps=fps, codec=options.codec)
    result.fps = float(fps)
    result.height = result.width = options.size


def _crop(width: int, height: int, options: PrepareOptions) -> tuple[int, int, int, int]:
    """The crop of an in-place clip: MAE-DFER's upper-centre box of side ``size`` (224x224
    frames in VoxCeleb2), or the largest centred square (``centre``)."""
    if options.crop_rule == "centre":
        side = min(width, height)
        return ((width - side) // 2, (height - side) // 2, side, side)
    return crop_box(min(options.size, width, height), width)


def _record_in_place(info, options: PrepareOptions, result: ClipResult) -> None:
    result.num_frames, result.fps = info.num_frames, float(info.fps)
    result.width, result.height = info.width, info.height
    result.crop = _crop(info.width, info.height, options)


def _crops(source: Path, options: PrepareOptions) -> Iterator[np.ndarray]:
    """An in-place dataset ``--reencode``: the frames cut to the crop, at `size`, streamed."""
    box = None
    for frame in prefetched(iter_video_frames(source)):
        if box is None:
            box = _crop(frame.shape[1], frame.shape[0], options)
        x, y, w, h = box
        crop = frame[y : y + h, x : x + w]
        if crop.shape[:2] != (options.size, options.size):
            crop = cv2.resize(crop, (options.size, options.size), interpolation=cv2.INTER_LINEAR)
        yield crop
