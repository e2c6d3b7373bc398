"""``maedfer predict --camera N | --stream URL | VIDEO --realtime``: live prediction.

A reader thread decodes the source with PyAV as its frames come (a camera or a network stream
at its own pace; a file played at its frame rate with ``--realtime``) into a bounded queue.
The main thread tracks and aligns the face and scores every window the moment its last frame
is aligned (:meth:`Predictor.stream` with ``low_latency``), and writes the window's result at
once as one JSON line (to ``--out results.jsonl`` or stdout), flushed, with two more fields:
``latency_s`` (from the arrival of the window's last frame to its probabilities) and
``dropped_frames`` (so far).

Falling behind: when the next frame waiting is older than ``max_lag`` seconds (default: one
window hop, the time between two windows' last frames, and at least a second, so that a
moment's stall of a shared machine is caught up rather than dropped), the frames waiting are
dropped and
counted, and windows start afresh from the next frame that arrives, so no window spans a gap
and the results stay as fresh as the machine allows. A queue that fills up (a machine far too
slow) drops the newest frames, and the run restarts the same way.

Ctrl-C stops cleanly: the reader is stopped, the results written so far stay, and a summary
(windows, frames read and dropped, latency p50/p95) goes to stderr.

Documented in docs/inference.md.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from maedfer.errors import MaedferError
from maedfer.inference.predictor import Predictor
from maedfer.preprocess.video import FALLBACK_FPS, upright

QUEUE_BYTES = 512 << 20  # decoded frames waiting, at most
QUEUE_SECONDS = 8.0  # ... and at most this much video
MIN_LAG = 1.0  # s: the default lag allowed is a window hop, but never less than this
_END = object()


@dataclass
class Source:
    """Where frames come from: ``url`` and ``format`` for ``av.open``, and whether to pace
    them by their timestamps (a file played as if live)."""

    url: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    pace: bool = False
    name: str = ""


def camera_source(camera: str, platform: str = sys.platform) -> Source:
    """A camera by number (``0``) or device (``/dev/video2``; on Windows its DirectShow name).

    Raises:
        MaedferError: a number on a platform whose cameras have no numbers here.
    """
    if not str(camera).isdigit():
        if platform.startswith("win"):
            return Source(f"video={camera}", "dshow", name=f"camera {camera}")
        return Source(
            str(camera), "v4l2" if platform.startswith("linux") else None, name=f"camera {camera}"
        )
    if platform.startswith("linux"):
        return Source(f"/dev/video{camera}", "v4l2", name=f"camera {camera}")
    if platform == "darwin":
        return Source(str(camera), "avfoundation", {"framerate": "30"}, name=f"camera {camera}")
    raise MaedferError(
        f"--camera {camera}: give the camera's DirectShow name on this platform "
        "(e.g. --camera 'Integrated Camera'), or --stream URL"
    )


def stream_source(url: str, realtime: bool) -> Source:
    options = {"rtsp_transport": "tcp"} if url.startswith("rtsp") else {}
    return Source(url, None, options, pace=realtime, name=url)


def video_source(path: str | Path) -> Source:
    path = Path(path)
    if not path.is_file():
        raise MaedferError(f"--realtime {path}: no such video file")
    return Source(str(path), None, pace=True, name=str(path))


@dataclass
class Item:
    index: int  # the source's frame number
    arrival: float  # time.monotonic() when it was decoded (and paced)
    image: np.ndarray


class Reader(threading.Thread):
    """Decodes ``source`` into :attr:`frames` as the frames come; never blocks on the queue
    (a full queue drops the frame and counts it in :attr:`dropped`)."""

    def __init__(self, source: Source) -> None:
        super().__init__(name="live-reader", daemon=True)
        self.source = source
        self.frames: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.opened = threading.Event()
        self.fps: float = float(FALLBACK_FPS)
        self.dropped = 0
        self.read = 0
        self.error: BaseException | None = None
        self._limit = 0

    def open_and_start(self, timeout: float = 30.0) -> None:
        """Start, wait until the source is open (its frame rate known).

        Raises:
            MaedferError: the source cannot be opened (naming it).
        """
        self.start()
        if not self.opened.wait(timeout):
            self.stop()
            raise MaedferError(f"{self.source.name}: no picture within {timeout:.0f} s")
        if self.error is not None:
            raise MaedferError(f"cannot open {self.source.name}: {self.error}") from None

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            container = av.open(
                self.source.url, format=self.source.format, options=self.source.options or None
            )
        except Exception as exc:  # noqa: BLE001 (FFmpeg raises many kinds; all mean "cannot open")
            self.error = exc
            self.opened.set()
            return
        try:
            self._decode(container)
        except Exception as exc:  # noqa: BLE001 (a decode error ends the source, said once)
            self.error = exc
        finally:
            container.close()
            self.opened.set()
            self.frames.put(_END)

    def _decode(self, container) -> None:
        if not container.streams.video:
            raise MaedferError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate and rate > 0 else float(FALLBACK_FPS)
        start = None
        for index, frame in enumerate(container.decode(stream)):
            if self.stop_event.is_set():
                return
            if self.source.pace:  # a file played live: each frame at its time
                at = frame.time if frame.time is not None else index / self.fps
                start = time.monotonic() - at if start is None else start
                delay = start + at - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    return
            image = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
            if not self._limit:
                by_bytes = QUEUE_BYTES // max(1, image.nbytes)
                self._limit = max(2, min(by_bytes, int(QUEUE_SECONDS * self.fps)))
                self.opened.set()
            self.read += 1
            if self.frames.qsize() >= self._limit:
                self.dropped += 1
                continue
            self.frames.put(Item(index, time.monotonic(), image))

    def drain(self) -> tuple[int, bool]:
        """Drop what waits; ``(how many, whether the source ended)``."""
        count = 0
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                return count, False
            if item is _END:
                self.frames.put(_END)
                return count, True
            count += 1


class Feed:
    """The frames of one run of contiguous frames, for :meth:`Predictor.stream`; it ends when
    the source ends, when the next frame is more than ``max_lag`` seconds old, or when the
    reader had to drop a frame (a gap)."""

    def __init__(self, reader: Reader, max_lag: float, keep: int) -> None:
        self.reader = reader
        self.max_lag = max_lag
        self.keep = keep
        self.first_index: int | None = None
        self.arrivals: dict[int, float] = {}  # source frame -> arrival, the last `keep`
        self.source_ended = False
        self.behind = 0  # frames dropped for lag at this run's end
        self._reader_drops = reader.dropped

    def _next(self) -> Any:
        while True:
            try:
                return self.reader.frames.get(timeout=0.1)
            except queue.Empty:
                if self.reader.stop_event.is_set() and not self.reader.is_alive():
                    return _END

    def __iter__(self) -> Iterator[np.ndarray]:
        last = None
        while True:
            item = self._next()
            if item is _END:
                self.reader.frames.put(_END)
                self.source_ended = True
                return
            gap = last is not None and (
                item.index != last + 1 or self.reader.dropped != self._reader_drops
            )
            late = last is not None and time.monotonic() - item.arrival > self.max_lag
            if gap or late:
                drained, ended = self.reader.drain()
                self.behind = 1 + drained
                self.source_ended = ended
                return
            if self.first_index is None:
                self.first_index = item.index
            self.arrivals[item.index] = item.arrival
            self.arrivals.pop(item.index - self.keep, None)
            last = item.index
            yield item.image


@dataclass
class LiveResult:
    """What a live run did: the rows written, frames read and dropped, latencies."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    frames_read: int = 0
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)
    stopped: bool = False  # by Ctrl-C

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else math.nan

    def summary(self) -> str:
        faced = sum(1 for r in self.rows if r["face"])
        how = "stopped by Ctrl-C" if self.stopped else "the source ended"
        return (
            f"live: {how}: {len(self.rows)} windows ({faced} with a face), "
            f"{self.frames_read} frames read, {self.dropped} dropped; latency from a "
            f"window's last frame to its probabilities p50 {self.latency(50):.3f} s, "
            f"p95 {self.latency(95):.3f} s"
        )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_live(
    predictor: Predictor,
    source: Source,
    *,
    out: Path | None = None,
    max_lag: float | None = None,
    explain: bool = False,
    echo: bool = True,
    show: Callable[[str], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> LiveResult:
    """Score ``source`` live with ``predictor`` (module docstring); returns what was done.

    Each window's JSON line goes to ``out`` (``.jsonl``), else to ``show`` (the command line
    prints it on stdout as it comes); the opening line, a source's error and the summary go to
    ``notify`` (stderr) when ``echo``. Nothing is printed here.

    Raises:
        MaedferError: the source cannot be opened, or ``out`` is not ``.jsonl``.
    """
    emit = show or (lambda _line: None)
    say = notify or (lambda _line: None)
    if out is not None and Path(out).suffix.lower() != ".jsonl":
        raise MaedferError(
            f"--out {out}: live results are written as they come, one JSON line "
            "per window: give a .jsonl file"
        )
    s = predictor.settings
    reader = Reader(source)
    result = LiveResult()
    sink = None
    try:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            sink = open(out, "w", encoding="utf-8")  # noqa: SIM115 (kept open while the run lasts)
        reader.open_and_start()
        fps = reader.fps
        hop_seconds = predictor.hop * s.stride / fps
        lag = max(hop_seconds, MIN_LAG) if max_lag is None else max_lag
        if echo:
            say(
                f"live: {source.name} at {fps:.2f} fps; a window every {hop_seconds:.2f} s; "
                f"frames waiting over {lag:.2f} s are dropped"
            )
        number = 0
        while True:
            feed = Feed(reader, lag, keep=2 * s.num_frames * s.stride)
            windows = predictor.stream(feed, fps, low_latency=True, explain=explain, start_frame=0)
            try:
                for window in _offset(windows, feed, fps):
                    row = {k: _clean(v) for k, v in window.row.items()}
                    latency = time.monotonic() - feed.arrivals.get(row["end_frame"], math.nan)
                    row["window"] = number
                    row["latency_s"] = round(latency, 4) if math.isfinite(latency) else None
                    row["dropped_frames"] = result.dropped + reader.dropped
                    number += 1
                    result.rows.append(row)
                    if row["latency_s"] is not None and row["face"]:
                        result.latencies.append(row["latency_s"])
                    line = json.dumps(row)
                    if sink is not None:
                        sink.write(line + "\n")
                        sink.flush()
                    else:
                        emit(line)
            except MaedferError as exc:
                if "no frames given" not in str(exc):  # a run that ended before its first frame
                    raise
            result.dropped += feed.behind
            if feed.source_ended:
                break
        if reader.error is not None and not reader.stop_event.is_set():
            say(f"maedfer: warning: {source.name} ended with an error: {reader.error}")
    except KeyboardInterrupt:
        result.stopped = True
    finally:
        reader.stop()
        reader.join(timeout=5)
        result.frames_read = reader.read
        result.dropped += reader.dropped
        if sink is not None:
            sink.close()
    if echo:
        say(result.summary())
        if out is not None:
            say(f"wrote {out}")
    return result


def _offset(windows, feed: Feed, fps: float):
    """The windows of one run with frames and times counted from the source's start."""
    for window in windows:
        offset = feed.first_index or 0
        if offset:
            row = window.row
            row["start_frame"] += offset
            row["end_frame"] += offset
            row["start_s"] = round(row["start_frame"] / fps, 3)
            row["end_s"] = round((row["end_frame"] + 1) / fps, 3)
            if row.get("peak_frame") is not None:
                row["peak_frame"] += offset
            window.frame_indices = window.frame_indices + offset
        yield window


def run(
    *,
    checkpoint: str | Path,
    camera: str | None = None,
    stream: str | None = None,
    video: str | Path | None = None,
    realtime: bool = False,
    out: str | Path | None = None,
    max_lag: float | None = None,
    explain: bool = False,
    device: str | None = None,
    dataset: str | None = None,
    classes: Sequence[str] | str | None = None,
    hop: int | None = None,
    model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    show: Callable[[str], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> LiveResult:
    """``maedfer predict`` on a live source: exactly one of ``camera``, ``stream`` or ``video``
    (with ``realtime``); other arguments as :func:`maedfer.inference.predict.run`.

    Raises:
        MaedferError: no source or several, a source that cannot be opened, a bad ``out``.
    """
    given = [
        name
        for name, value in (("--camera", camera), ("--stream", stream), ("a video", video))
        if value is not None
    ]
    if len(given) != 1:
        raise MaedferError(
            f"live prediction reads one source: --camera N, --stream URL or one "
            f"VIDEO with --realtime; got {', '.join(given) or 'none'}"
        )
    if video is not None and not realtime:
        raise MaedferError("a video is played live with --realtime")
    if max_lag is not None and max_lag <= 0:
        raise MaedferError(f"--max-lag ({max_lag}) must be > 0 seconds")
    source = (
        camera_source(camera)
        if camera is not None
        else stream_source(stream, realtime)
        if stream is not None
        else video_source(video)
    )
    predictor = Predictor(
        checkpoint,
        device=device,
        dataset=dataset,
        classes=classes,
        hop=hop,
        model_overrides=model_overrides,
    )
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    return run_live(
        predictor,
        source,
        out=Path(out) if out is not None else None,
        max_lag=max_lag,
        explain=explain,
        show=show,
        notify=notify,
    )


__all__ = [
    "Feed",
    "LiveResult",
    "Reader",
    "Source",
    "camera_source",
    "run",
    "run_live",
    "stream_source",
    "video_source",
]
