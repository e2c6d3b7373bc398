"""Reading videos and frame folders with PyAV and OpenCV (docs/design.md).

Every way a file can be unusable -- zero bytes, not a container, no video stream, a decode
error part-way (a truncated or corrupt file), no frames at all -- raises `VideoError`, whose
message is the short, stable reject reason the driver writes to ``rejects.parquet``:
``empty file``, ``unreadable: ...``, ``no video stream``, ``corrupt: ...``,
``truncated: N of M frames``, ``too short: 0 frames``, ``unreadable image: NAME``.
A failure of the machine rather than of the file (no permission, an I/O error, no memory:
`maedfer.errors.is_environmental`) is raised as it is, never turned into a reason: the file
may be fine, and the driver retries it.

Frames come upright: a video's display rotation (the matrix phone videos carry) is applied.
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from maedfer.errors import MaedferError, is_environmental

# Frame-folder datasets (DFEW, FERV39k, MAFW official faces) carry no frame rate; sampling is by
# frame index (16 frames, stride 4), so this only fills the container's rate and the manifest.
FRAME_FOLDER_FPS = Fraction(25)
FALLBACK_FPS = Fraction(25)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# A stream that ends without error this far short of the frame count its index declares lost
# its tail. Declared counts of intact files are off by a few frames (no_face.mp4: 95 of 98).
TRUNCATED_FRACTION = 0.9


class VideoError(MaedferError):
    """A video or frame folder that cannot be used; the message is the reject reason."""


@dataclass
class VideoInfo:
    """What a video's container says about its picture stream (width and height upright, after
    the display rotation `rotation`, in degrees counter-clockwise as FFmpeg reports it)."""

    num_frames: int
    fps: Fraction
    width: int
    height: int
    codec: str
    rotation: int = 0


def _quarter_turns(rotation: float | None) -> int:
    """np.rot90's k that shows a frame upright, from FFmpeg's display rotation in degrees."""
    return int(round((rotation or 0) / 90)) % 4


def upright(image: np.ndarray, rotation: float | None) -> np.ndarray:
    """An (H, W, 3) frame turned by its display rotation (a multiple of 90 degrees)."""
    k = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def _one_line(exc: BaseException, limit: int = 100) -> str:
    """The exception in one short line, without FFmpeg's quoted file path (the reject row has
    the source already, and a reason should read the same for every file)."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    text = re.sub(r":\s*'[^']*'$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _packets_in_file(path: Path) -> int:
    """Picture packets that can be demuxed; fewer than the index declares = the tail is gone."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    except Exception:  # a file that breaks here too is judged by the first error
        return -1


def _decode_failure(path: Path, count: int, declared: int, exc: BaseException) -> Exception:
    """A decode error part-way: "truncated" when packets are missing, else "corrupt"; an
    environmental error comes back as it is."""
    if is_environmental(exc):
        return exc
    present = _packets_in_file(path)
    if declared and 0 <= present < TRUNCATED_FRACTION * declared:
        return VideoError(f"truncated: {present} of {declared} frames in the file")
    return VideoError(f"corrupt: decode error at frame {count}: {_one_line(exc)}")


def _open(path: Path) -> av.container.InputContainer:
    try:
        if os.path.getsize(path) == 0:
            raise VideoError("empty file")
        return av.open(str(path))
    except VideoError:
        raise
    except Exception as exc:  # any failure to open is a reject, never a crash
        if is_environmental(exc):
            raise
        raise VideoError(f"unreadable: {_one_line(exc)}") from exc


def _stream_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        return FALLBACK_FPS
    return Fraction(rate).limit_denominator(100000)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, rate and size from the container, without decoding pictures.

    The count is the container's (MP4 indexes it); where it has none, packets are counted.
    The first frame is decoded, so a file whose stream cannot be decoded at all is caught here.

    Raises:
        VideoError: the file cannot be used (message = reject reason).
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        info = VideoInfo(
            num_frames=int(stream.frames or 0),
            fps=_stream_rate(stream),
            width=int(stream.codec_context.width or 0),
            height=int(stream.codec_context.height or 0),
            codec=stream.codec_context.name,
        )
        try:
            first = next(container.decode(stream), None)
        except Exception as exc:
            raise _decode_failure(path, 0, info.num_frames, exc) from exc
        if first is None:
            raise VideoError("too short: 0 frames")
        info.rotation = int(round(first.rotation or 0))
        info.width, info.height = first.width, first.height
        if _quarter_turns(info.rotation) % 2:
            info.width, info.height = info.height, info.width
        if info.num_frames <= 0:
            container.seek(0)
            info.num_frames = sum(1 for p in container.demux(stream) if p.size)
    return info


def frame_times(path: str | Path, num_frames: int) -> np.ndarray | None:
    """When each of the ``num_frames`` frames of a variable-frame-rate video is shown, in
    seconds from the first (from the packets' timestamps, no decoding); None for a constant
    rate (frame ``i`` at ``i / fps``, within a tenth of a frame) or timestamps that do not
    account for every frame."""
    try:
        with _open(Path(path)) as container:
            stream = container.streams.video[0]
            base = stream.time_base
            pts = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
            rate = float(_stream_rate(stream))
    except (VideoError, av.FFmpegError, OSError, IndexError):
        return None
    if len(pts) != num_frames or num_frames < 2 or not base:
        return None
    times = (np.asarray(pts, np.float64) - pts[0]) * float(base)
    if np.abs(times - np.arange(num_frames) / rate).max() <= 0.1 / rate:
        return None
    return times


def iter_video_frames(
    path: str | Path, *, size: tuple[int, int] | None = None, threads: int = 0
) -> Iterator[np.ndarray]:
    """Decode a video frame by frame as (H, W, 3) uint8 RGB, upright (display rotation applied).

    Args:
        size: (width, height) of the upright frames to scale to while converting (swscale,
            area filter); None = as is.
        threads: decoder threads, 0 = FFmpeg's choice.

    Raises:
        VideoError: unreadable file or a decode error part-way (message = reject reason).
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        declared = int(stream.frames or 0)
        count = 0
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # corrupt data is a reject, not a crash
                raise _decode_failure(path, count, declared, exc) from exc
            rotation = frame.rotation
            if size is None:
                image = frame.to_ndarray(format="rgb24")
            else:
                w, h = size if _quarter_turns(rotation) % 2 == 0 else size[::-1]
                image = frame.reformat(
                    width=w, height=h, format="rgb24", interpolation="AREA"
                ).to_ndarray()
            yield upright(image, rotation)
            count += 1
    if count == 0:
        raise VideoError("too short: 0 frames")
    if declared and count < TRUNCATED_FRACTION * declared:
        raise VideoError(f"truncated: {count} of {declared} frames")


def prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """`items` produced in a background thread, at most `depth` ahead of the consumer.

    Decoding runs in FFmpeg without the GIL, so the next frames decode while the current ones
    are aligned or encoded; memory stays at `depth` items. An exception in the producer is
    raised in the consumer; a consumer that stops early stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = slots.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def read_video_frames(
    path: str | Path, *, max_bytes: int | None = None, threads: int = 0
) -> tuple[np.ndarray, float]:
    """All frames of a video and its frame rate.

    Args:
        path: any file FFmpeg reads.
        max_bytes: if the decoded clip would exceed this, frames are scaled down (aspect kept) so
            it fits -- long high-resolution clips would otherwise take gigabytes.
        threads: decoder threads, 0 = FFmpeg's choice.

    Returns:
        frames (T, H, W, 3) uint8 RGB and frames per second.

    Raises:
        VideoError: the file cannot be used (message = reject reason).
    """
    info = probe_video(path)
    size = None
    estimate = max(info.num_frames, 1) * info.width * info.height * 3
    if max_bytes is not None and estimate > max_bytes:
        factor = math.sqrt(max_bytes / estimate)
        size = (max(2, int(info.width * factor)), max(2, int(info.height * factor)))
    frames = list(iter_video_frames(path, size=size, threads=threads))
    return np.stack(frames), float(info.fps)


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in lexical order (= time order for zero-padded names, as
    MAE-DFER's ``sorted(glob(...))`` reads them, docs/datasets.md)."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.name,
    )


def read_image(path: str | Path) -> np.ndarray:
    """One image as (H, W, 3) uint8 RGB; `VideoError("unreadable image: NAME")` if it fails."""
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"unreadable image: {path.name}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_frame_folder(folder: str | Path, size: int | None = None) -> np.ndarray:
    """A frame folder as (T, H, W, 3) uint8 RGB, each frame resized to `size` x `size` if given
    (aspect not kept, as MAE-DFER resizes the official faces, docs/datasets.md).

    Raises:
        VideoError: no images, or an image that cannot be read.
    """
    files = list_frame_files(folder)
    if not files:
        raise VideoError("too short: 0 frames")
    frames = []
    for file in files:
        image = read_image(file)
        if size is not None and image.shape[:2] != (size, size):
            shrink = image.shape[0] > size and image.shape[1] > size
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            image = cv2.resize(image, (size, size), interpolation=interp)
        elif frames and image.shape != frames[0].shape:
            raise VideoError(f"frame sizes differ: {file.name} {image.shape[1]}x{image.shape[0]}")
        frames.append(image)
    return np.stack(frames)
