"""Does the same clip encode to the same bytes? x264 settings side by side, in one process.

Usage: .venv/bin/python bench/encode_determinism.py [--tries 25]

Each try first encodes and decodes other frames with x264's defaults (so FFmpeg's heap holds
other data each time, as it does in a long `prepare`), then encodes one fixed clip of random
frames (planar BT.601, `rgb_to_yuv420p`, so no colour conversion is involved) with one x264
setting. It prints how many distinct files each setting gave over the tries: 1 = byte-identical.
maedfer's clips use the last row (`maedfer.preprocess.encode.CODECS`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maedfer.preprocess.encode import CODECS, rgb_to_yuv420p  # noqa: E402

BASE = {"crf": "18", "preset": "fast", "threads": "1"}
SETTINGS = {
    "x264 defaults (B-frames, mb-tree)": {},
    "weightp=0": {"x264-params": "weightp=0"},
    "scenecut=0": {"x264-params": "scenecut=0"},
    "no B-frames": {"bf": "0"},
    "no mb-tree": {"x264-params": "mbtree=0"},
    "layered B-frames, no mb-tree": {
        "bf": "3",
        "x264-params": "b-pyramid=none:b-adapt=0:scenecut=0:mbtree=0",
    },
    "maedfer (CODECS)": CODECS["h264"][3],
}


def _dirty_heap(frames: np.ndarray) -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        c.mux(s.encode(None))
    buffer.seek(0)
    with av.open(buffer) as c:
        for frame in c.decode(video=0):
            frame.to_ndarray(format="rgb24")


def _encode(planes: list[np.ndarray], size: tuple[int, int], options: dict) -> str:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as c:
        s = c.add_stream("libx264", rate=25, options=dict(options))
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = 16
        for i, yuv in enumerate(planes):
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (30, 240, 320, 3), dtype=np.uint8)
    planes = [rgb_to_yuv420p(image) for image in clip]
    print(f"distinct files from one 20-frame 32x32 clip over {args.tries} tries")
    for name, options in SETTINGS.items():
        seen = set()
        for attempt in range(args.tries):
            _dirty_heap(other[attempt % 3 :: 3])
            seen.add(_encode(planes, clip.shape[1:3], {**BASE, **options}))
        print(f"  {name:<36} {len(seen):>3}")


if __name__ == "__main__":
    main()
