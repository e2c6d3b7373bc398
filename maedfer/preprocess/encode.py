"""Encoding prepared clips with PyAV (DESIGN.md §4).

H.264 in MP4 (libx264, yuv420p) by default, VP9 in WebM (libvpx-vp9) as an option -- the codec
DALI decodes on CPU (DESIGN.md §7). Constant frame rate (frame ``i`` has timestamp ``i / fps``)
and a keyframe at least every `KEYFRAME_INTERVAL` frames, so a 16-frame window never decodes
more than 16 frames before its first. Files are written under a temporary name in the same
folder and renamed when complete: a killed run never leaves a half-written clip under the
final name.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from maedfer.errors import MaedferError

Codec = Literal["h264", "vp9"]
KEYFRAME_INTERVAL = 16
PARTIAL_MARK = ".partial-"  # temporary files: "<name>.partial-<pid>"

# codec -> (encoder, container format, file suffix, encoder options). Quality: CRF 18 for x264
# (visually lossless at this size; the clips are small anyway), CRF 30 for VP9 (its scale
# differs); one encoder thread, because the driver parallelises over clips and a 160x160 frame
# is too small to split, and so a clip encodes to the same bytes on every run.
CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "h264": ("libx264", "mp4", ".mp4", {"crf": "18", "preset": "fast", "threads": "1"}),
    "vp9": (
        "libvpx-vp9",
        "webm",
        ".webm",
        {"crf": "30", "b:v": "0", "deadline": "good", "cpu-used": "4", "threads": "1"},
    ),
}


def clip_suffix(codec: str) -> str:
    """File suffix of clips in `codec` (".mp4" or ".webm")."""
    return _codec(codec)[2]


def _codec(codec: str) -> tuple[str, str, str, dict[str, str]]:
    if codec not in CODECS:
        raise MaedferError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    return CODECS[codec]


def as_rate(fps: float | Fraction) -> Fraction:
    """A frame rate as an exact fraction (29.97 -> 30000/1001, 25.0 -> 25)."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise MaedferError(f"fps ({fps}) must be positive")
    return rate


def write_clip(
    frames: np.ndarray, path: str | Path, *, fps: float | Fraction, codec: Codec = "h264"
) -> None:
    """Encode frames to `path`, atomically (temporary name, then rename).

    Args:
        frames: (T, H, W, 3) uint8 RGB, H and W even (4:2:0 chroma needs it), T >= 1.
        path: the final file; its folder is created if needed.
        fps: the constant frame rate to write.
        codec: "h264" (MP4) or "vp9" (WebM).

    Raises:
        MaedferError: bad frames array, odd size or unknown codec.
    """
    encoder, fmt, _, options = _codec(codec)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise MaedferError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise MaedferError(f"clip size {width}x{height} must be even for yuv420p")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}{PARTIAL_MARK}{os.getpid()}")
    rate = as_rate(fps)
    try:
        with av.open(str(partial), "w", format=fmt) as container:
            stream = container.add_stream(encoder, rate=rate, options=dict(options))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = KEYFRAME_INTERVAL
            stream.codec_context.time_base = 1 / rate
            for index, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = index
                frame.time_base = stream.codec_context.time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
