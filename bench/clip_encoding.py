"""How should prepared clips be encoded for random access? Decoding speed, bytes and quality.

Usage: .venv/bin/python bench/clip_encoding.py [--rounds 3] [--clips 6]
    [--json bench/out/clip_encoding.json]

The same 160×160 face clips (the committed portraits, panned and zoomed, 60–160 frames) are
encoded with each x264 setting below at CRF 18 through ``maedfer.preprocess.encode.write_clip``;
for each, in interleaved rounds, windows per CPU-second of PyAV decoding only the frames the
loader needs (``maedfer.pipelines.pyav``: seek to the keyframe before, skip frames nothing
references and nothing wants; no colour conversion):

- train: 16-frame reference training windows (``int(linspace)`` over 64 frames);
- test: every 4th frame of the whole clip (the official test frames, both views).

Also per setting: kB per 100 frames and PSNR against the frames encoded. One process, one
thread (``time.process_time``); ratios against the first row from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import PORTRAITS, portrait_frames  # noqa: E402

from maedfer.pipelines import pyav, sampling  # noqa: E402
from maedfer.preprocess.encode import CODECS, write_clip  # noqa: E402

_LAYERED = "b-pyramid=none:b-adapt=0:scenecut=0:pbratio=1"
#: name -> encoder options over maedfer's (``CODECS["h264"]``)
SETTINGS: dict[str, dict[str, str]] = {
    "no B-frames, CABAC (before issue 14)": {"bf": "0", "x264-params": "mbtree=0"},
    "layered B-frames, CABAC": {"x264-params": _LAYERED + ":mbtree=0"},
    "maedfer: layered B-frames, CAVLC": {},
    "layered B-frames, CAVLC, keyframe every 32": {"g": "32"},
    "intra only, CAVLC": {"g": "1", "bf": "0", "x264-params": "cabac=0:mbtree=0"},
}


def clips_frames(count: int) -> list[np.ndarray]:
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    out = []
    for i in range(count):
        frames = portrait_frames(images[i % len(images)], 60 + (i * 41) % 101, size=224)
        out.append(
            np.stack(
                [np.asarray(Image.fromarray(f).resize((160, 160), Image.BILINEAR)) for f in frames]
            )
        )
    return out


def decode_rate(
    paths: list[tuple[str, int]], mode: str, rng: np.random.Generator, repeats: int
) -> float:
    start, count = time.process_time(), 0
    for _ in range(repeats):
        for path, n in paths:
            if mode == "train":
                indices = sampling.reference_train_window(n, generator=rng)
            else:
                indices = np.arange(0, n, 4)
            wanted = np.unique(indices)
            pyav._decode_file(path, wanted, seek=int(wanted[0]) >= pyav.SEEK_MIN_FRAME)
            count += 1
    return count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    sources = clips_frames(args.clips)
    frames_total = sum(len(c) for c in sources)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clip-encoding-") as tmp:
        paths: dict[str, list[tuple[str, int]]] = {}
        for k, (name, options) in enumerate(SETTINGS.items()):
            paths[name], size, psnr = [], 0, []
            for j, frames in enumerate(sources):
                path = os.path.join(tmp, f"s{k}_c{j}.mp4")
                write_clip(frames, path, fps=25, quality=options)
                back = pyav.decode_frames(path, np.arange(len(frames))).astype(np.float64)
                mse = float(((back - frames) ** 2).mean())
                psnr.append(10 * np.log10(255**2 / mse))
                size += os.path.getsize(path)
                paths[name].append((path, len(frames)))
            rows[name] = {
                "options": {**CODECS["h264"][3], **options},
                "kB_per_100_frames": size / frames_total * 100 / 1000,
                "psnr_db": statistics.mean(psnr),
                "train": [],
                "test": [],
            }
        for r in range(args.rounds):
            names = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in names:
                for mode in ("train", "test"):
                    rng = np.random.default_rng(r)
                    rows[name][mode].append(decode_rate(paths[name], mode, rng, args.repeats))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = next(iter(rows.values()))
    print(
        "| x264 setting | kB / 100 frames | PSNR dB | train windows / CPU-s | test clips / CPU-s |"
    )
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        cells = []
        for mode in ("train", "test"):
            rate, ref = statistics.median(row[mode]), statistics.median(base[mode])
            row[f"{mode}_median"] = rate
            cells.append(f"{rate:.0f} ({rate / ref:.2f}×)")
        print(
            f"| {name} | {row['kB_per_100_frames']:.0f} | {row['psnr_db']:.2f} | "
            f"{cells[0]} | {cells[1]} |"
        )
    print(json.dumps({"load_avg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count()}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
