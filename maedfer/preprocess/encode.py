"""Encoding prepared clips with PyAV (docs/design.md).

H.264 in MP4 (libx264, yuv420p) by default, VP9 in WebM (libvpx-vp9) as an option -- the codec
DALI decodes on CPU (docs/design.md). Constant frame rate (frame ``i`` has timestamp ``i / fps``)
and a keyframe at least every `KEYFRAME_INTERVAL` frames, so a 16-frame window never decodes
more than 16 frames before its first. Files are written under a temporary name in the same
folder and renamed when complete: a killed run never leaves a half-written clip under the
final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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
# differs). One encoder thread, because the driver parallelises over clips and a 160x160 frame
# is too small to split.
# x264's frame structure is fixed for random access: I B B B P B B B P ..., a reference frame
# every 4th frame and non-reference B-frames between (b-pyramid none, b-adapt 0, no scene
# cuts, closed GOPs), B-frames at the P-frames' quality (pbratio 1). A loader skips the
# B-frames a window does not use: the official stride-4 test frames are the P-frames, and a
# 16-frame training window decodes about 30 frames instead of about 64. CAVLC entropy coding
# instead of CABAC: 1.5-1.7x faster to decode on a CPU for 6 % more bytes at the same quality
# (160x160 face clips at CRF 18, PSNR 36.4 dB either way). Both measured in bench/RESULTS.md,
# "CPU loaders vs the reference". No macroblock tree: with it and B-frames, x264 reads memory
# it never wrote, and the same frames encoded twice in one process gave 12 different files in
# 25 tries; without it, one (bench/RESULTS.md, "Byte-identical clips").
_X264_GOP = "b-pyramid=none:b-adapt=0:scenecut=0:pbratio=1:cabac=0:mbtree=0"
CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "h264": (
        "libx264",
        "mp4",
        ".mp4",
        {"crf": "18", "preset": "fast", "threads": "1", "bf": "3", "x264-params": _X264_GOP},
    ),
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


# BT.601 studio-range RGB -> Y'CbCr (ITU-R BT.601, the matrix FFmpeg's decoders assume for an
# untagged stream and the tag written below), as integers scaled by 2**16: integer arithmetic
# gives the same bytes on every CPU, which the encoder's own float/SIMD conversion did not.
_SHIFT = 16
_Y = np.array([0.299, 0.587, 0.114]) * 219 / 255
_CB = np.array([-0.299, -0.587, 0.886]) / 1.772 * 224 / 255
_CR = np.array([0.701, -0.587, -0.114]) / 1.402 * 224 / 255
_AVCOL_SPC_SMPTE170M, _AVCOL_RANGE_MPEG = 6, 1  # FFmpeg's enum values for BT.601, studio range
_COEFFS = np.round(np.stack([_Y, _CB, _CR]) * (1 << _SHIFT)).astype(np.int64)


def rgb_to_yuv420p(image: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 RGB frame (H, W even) as planar 4:2:0 in FFmpeg's ``yuv420p`` layout,
    ``(H * 3 // 2, W)`` uint8: the Y plane, then U and V of (H/2, W/2) each, row after row.

    Chroma is the conversion of the 2x2 block's mean colour (centre-sited box filter). Rounding is
    half up, in integers: the same frame gives the same bytes everywhere.
    """
    height, width = image.shape[:2]
    rgb = image.astype(np.int64)
    half = 1 << (_SHIFT - 1)
    y = ((rgb @ _COEFFS[0] + half) >> _SHIFT) + 16
    block = rgb.reshape(height // 2, 2, width // 2, 2, 3).sum(axis=(1, 3))  # 4x the mean colour
    quarter = 1 << (_SHIFT + 1)
    u = ((block @ _COEFFS[1] + quarter) >> (_SHIFT + 2)) + 128
    v = ((block @ _COEFFS[2] + quarter) >> (_SHIFT + 2)) + 128
    planes = [np.clip(plane, 0, 255).astype(np.uint8) for plane in (y, u, v)]
    return np.concatenate(
        [planes[0].reshape(-1), planes[1].reshape(-1), planes[2].reshape(-1)]
    ).reshape(height * 3 // 2, width)


def write_clip(
    frames: np.ndarray | Iterable[np.ndarray],
    path: str | Path,
    *,
    fps: float | Fraction,
    codec: Codec = "h264",
    quality: dict[str, str] | None = None,
) -> int:
    """Encode frames to `path`, atomically (temporary name, then rename).

    Args:
        frames: (T, H, W, 3) uint8 RGB, or any iterable of (H, W, 3) uint8 RGB frames (they are
            encoded as they come, so a long clip never sits in memory whole); H and W even (4:2:0
            chroma needs it), at least one frame.
        path: the final file; its folder is created if needed.
        fps: the constant frame rate to write.
        codec: "h264" (MP4) or "vp9" (WebM).
        quality: encoder options that replace the codec's defaults (e.g. ``{"crf": "16"}``).

    Returns:
        The number of frames written.

    Raises:
        MaedferError: bad frames, odd size or unknown codec.
    """
    encoder, fmt, _, options = _codec(codec)
    options = {**options, **(quality or {})}
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or not len(frames)):
        raise MaedferError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}{PARTIAL_MARK}{os.getpid()}")
    rate = as_rate(fps)
    count, shape = 0, None
    try:
        # bitexact: no random segment ids or muxer version in the file (WebM wrote new ones
        # on every run), so the same frames give the same file.
        with av.open(str(partial), "w", format=fmt, options={"fflags": "+bitexact"}) as container:
            stream = None
            for image in frames:
                if shape is None:
                    shape = _check_frame(image)
                    stream = _open_stream(container, encoder, rate, options, shape)
                elif image.shape != (*shape, 3) or image.dtype != np.uint8:
                    raise MaedferError(
                        f"frame {count} is {image.shape} {image.dtype}; the clip's first frame "
                        f"was {(*shape, 3)} uint8"
                    )
                frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p")
                frame.pts = count
                frame.time_base = stream.codec_context.time_base
                _tag_bt601(frame)
                container.mux(stream.encode(frame))
                count += 1
            if stream is None:
                raise MaedferError("frames must hold at least one frame")
            container.mux(stream.encode(None))
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return count


def _check_frame(image: np.ndarray) -> tuple[int, int]:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise MaedferError(f"frames must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        raise MaedferError(f"clip size {width}x{height} must be even for yuv420p")
    return height, width


def _open_stream(container, encoder: str, rate: Fraction, options: dict, shape: tuple[int, int]):
    stream = container.add_stream(encoder, rate=rate, options=dict(options))
    stream.height, stream.width = shape
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = KEYFRAME_INTERVAL
    stream.codec_context.time_base = 1 / rate
    _tag_bt601(stream.codec_context)
    return stream


def _tag_bt601(target) -> None:
    """Say in the stream what the pixels are (BT.601, studio range): players and DALI then
    convert back with the matrix `rgb_to_yuv420p` used."""
    target.colorspace = _AVCOL_SPC_SMPTE170M
    target.color_range = _AVCOL_RANGE_MPEG
