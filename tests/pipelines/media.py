"""Tiny clips with known frames for the pipeline tests (made in the test, never downloaded).

Each frame carries its index in two flat grey blocks in the top-left corner (``20 + 5·(t mod 40)``
and ``20 + 5·(t div 40)``), large and flat enough to survive H.264/VP9 at high quality, so a test
reads back which frame a pipeline returned; the rest of the frame is a portrait (or a gradient)
that moves a little, so frames differ elsewhere too.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

BLOCK = 16  # side of each marker block, in pixels


def marker_frames(count: int, size: int = 64, background: np.ndarray | None = None) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 frames whose marker blocks encode 0..count-1."""
    if background is None:
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        background = np.stack(
            [
                ramp[None, :].repeat(size, 0),
                ramp[:, None].repeat(size, 1),
                np.full((size, size), 128.0),
            ],
            axis=-1,
        )
    background = np.asarray(background, dtype=np.uint8)
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for t in range(count):
        frames[t] = np.roll(background, shift=t % 7, axis=1)
        frames[t, :BLOCK, :BLOCK] = 20 + 5 * (t % 40)
        frames[t, :BLOCK, BLOCK : 2 * BLOCK] = 20 + 5 * (t // 40)
    return frames


def read_markers(frames: np.ndarray) -> np.ndarray:
    """Frame indices encoded in ``(T, H, W, 3)`` uint8 frames (see :func:`marker_frames`)."""
    a = frames[:, 4 : BLOCK - 4, 4 : BLOCK - 4].reshape(len(frames), -1).mean(axis=1)
    b = frames[:, 4 : BLOCK - 4, BLOCK + 4 : 2 * BLOCK - 4].reshape(len(frames), -1).mean(axis=1)
    return (40 * np.round((b - 20) / 5) + np.round((a - 20) / 5)).astype(np.int64)


def write_clip(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "h264",
    fps: int = 25,
    gop: int = 16,
    bframes: int = 2,
) -> Path:
    """Encode RGB frames, constant frame rate: ``codec`` ``h264`` (for .mp4), ``vp9`` (.webm),
    ``mpeg4`` (.avi) or ``flv1`` (.flv, the CREMA-D codec); ``bframes`` for H.264."""
    import av  # here, not at the top: bench/gpu_check.py reads markers where PyAV may be absent

    path.parent.mkdir(parents=True, exist_ok=True)
    name, options = {
        "h264": ("libx264", {"crf": "8", "preset": "ultrafast", "g": str(gop), "bf": str(bframes)}),
        "vp9": (
            "libvpx-vp9",
            {"crf": "8", "b": "0", "g": str(gop), "deadline": "realtime", "cpu-used": "8"},
        ),
        "mpeg4": ("mpeg4", {"g": str(gop)}),
        "flv1": ("flv", {"g": str(gop)}),
    }[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(name, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        if codec in ("mpeg4", "flv1"):
            stream.bit_rate = 8_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_manifest(
    folder: Path,
    counts: list[int],
    *,
    codec: str = "h264",
    size: int = 64,
    folds: int | None = 2,
    num_classes: int = 3,
) -> pd.DataFrame:
    """Clips ``clip{i}`` with ``counts[i]`` frames under ``folder/clips`` and their rows.

    Labels cycle over ``num_classes``; folds cycle over 1..``folds`` (``None``: a ``split``
    column instead, alternating train/test). ``path`` is relative to ``folder``.
    """
    ext = "mp4" if codec == "h264" else "webm"
    rows = []
    for i, count in enumerate(counts):
        rel = f"clips/clip{i}.{ext}"
        write_clip(folder / rel, marker_frames(count, size), codec=codec)
        row = {"clip_id": f"clip{i}", "path": rel, "label": i % num_classes, "num_frames": count}
        if folds is None:
            row["split"] = "train" if i % 2 == 0 else "test"
        else:
            row["fold"] = i % folds + 1
        rows.append(row)
    return pd.DataFrame(rows)
