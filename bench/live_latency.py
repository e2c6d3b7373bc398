"""Live prediction latency: from a window's last frame to its probabilities, at 25 fps.

Usage: .venv/bin/python bench/live_latency.py [--seconds 20] [--models demo,base]
       [--demo-checkpoint runs/demo/finetune/fold_1/checkpoints/last.pt] [--device cpu]

A 640x360 video of a committed portrait (the face a third of the frame's height, drifting and
zooming slowly) is played at 25 fps through ``maedfer.inference.live.run_live`` -- the code
behind ``maedfer predict VIDEO --realtime`` -- as a camera would deliver it: each frame is
handed over at its time, the face is tracked and aligned, each window is scored as soon as its
last frame is aligned, and frames are dropped when the backlog is older than one window hop.
For each model: windows scored, latency p50/p95 (seconds from the arrival of a window's last
frame to its probabilities), frames dropped of frames read, and the CPU-seconds the run used
per second of video (above the core count: it cannot keep up).

Models: ``demo`` (the demo's classifier: ``lgi_former_tiny`` 2 blocks, width 64, 64 px clips,
stride 1, mean-frame subtraction; with ``--demo-checkpoint`` the trained one, else random
weights of that shape -- latency does not depend on the weights) and ``base``
(``lgi_former_base``: 160 px, 16 frames at stride 4, random weights). Both paths are checked
first: the live windows of the first model equal ``Predictor.stream``'s over the same frames.

Writes bench/results/live_latency.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import portraits, system  # noqa: E402

from maedfer.inference import live  # noqa: E402
from maedfer.inference.predictor import Predictor  # noqa: E402
from maedfer.model import create_model  # noqa: E402
from maedfer.preprocess.encode import write_clip  # noqa: E402
from maedfer.training import checkpoint  # noqa: E402

FPS = 25
WIDTH, HEIGHT = 640, 360
DEMO = {
    "num_classes": 5,
    "img_size": 64,
    "depth": 2,
    "embed_dim": 64,
    "num_heads": 2,
    "region_size": (2, 2, 2),
    "skip_unused_tail": True,
}
MODELS = {
    "demo": ("lgi_former_tiny", DEMO, {"stride": 1, "subtract_mean": True, "size": 64}),
    "base": (
        "lgi_former_base",
        {"num_classes": 7, "skip_unused_tail": True},
        {"stride": 4, "subtract_mean": False, "size": 160},
    ),
}


def camera_video(path: Path, seconds: float) -> Path:
    """A 640x360 clip of a portrait drifting and zooming slowly (a person at a webcam)."""
    image = np.asarray(Image.open(portraits()[-1]).convert("RGB"))
    count = int(seconds * FPS)
    scale = HEIGHT / 3 / (0.55 * image.shape[0])  # the face about a third of the height
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(count):
        phase = 2 * np.pi * t / (4 * FPS)
        m = cv2.getRotationMatrix2D(
            (image.shape[1] / 2, image.shape[0] / 2),
            2 * np.sin(phase),
            scale * (1 + 0.04 * np.cos(phase)),
        )
        m[:, 2] += np.array([WIDTH / 2 + 20 * np.sin(phase), HEIGHT / 2]) - np.array(
            [image.shape[1] / 2, image.shape[0] / 2]
        )
        cv2.warpAffine(image, m, (WIDTH, HEIGHT), dst=frames[t], borderMode=cv2.BORDER_REPLICATE)
    write_clip(frames, path, fps=FPS, quality={"crf": "20", "preset": "veryfast"})
    return path


def model_checkpoint(name: str, folder: Path, demo: Path | None) -> Path:
    if name == "demo" and demo is not None:
        return demo
    registry, overrides, options = MODELS[name]
    torch.manual_seed(0)
    model = create_model(registry, **overrides)
    classes = [f"class{i}" for i in range(overrides["num_classes"])]
    state = dict(
        format=checkpoint.FORMAT,
        version=checkpoint.VERSION,
        model_name=registry,
        model_config=checkpoint.plain(model.config),
        model=model.state_dict(),
        epoch=0,
        step=0,
        classes=classes,
        config=dict(num_frames=16, **options),
    )
    path = folder / f"{name}.pt"
    checkpoint.save_checkpoint(path, state)
    return path


def measure(ckpt: Path, video: Path, device: str) -> dict:
    predictor = Predictor(ckpt, device=device)
    out = video.with_suffix(f".{ckpt.stem}.jsonl")
    cpu, wall = time.process_time(), time.perf_counter()
    result = live.run_live(predictor, live.video_source(video), out=out, echo=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "windows": len(result.rows),
        "face_windows": sum(r["face"] for r in result.rows),
        "latency_p50_s": round(result.latency(50), 3),
        "latency_p95_s": round(result.latency(95), 3),
        "frames_read": result.frames_read,
        "frames_dropped": result.dropped,
        "cpu_s_per_video_s": round(cpu / (result.frames_read / FPS), 2),
        "wall_s": round(wall, 1),
        "hop_s": predictor.hop * predictor.settings.stride / FPS,
    }


def check(ckpt: Path, video: Path, device: str) -> None:
    """The live path's windows are Predictor.stream's (low latency) on the same frames."""
    import av

    predictor = Predictor(ckpt, device=device)
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][: 6 * FPS]
    short = video.with_name("check.mp4")
    write_clip(np.stack(frames), short, fps=FPS, quality={"crf": "0", "preset": "veryfast"})
    with av.open(str(short)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    expected = [w.row for w in predictor.stream(iter(frames), FPS, low_latency=True)]
    got = live.run_live(
        predictor,
        live.video_source(short),
        out=short.with_suffix(".jsonl"),
        max_lag=1e9,
        echo=False,
    ).rows
    assert len(got) == len(expected), (len(got), len(expected))
    for a, b in zip(got, expected, strict=True):
        keys = [k for k in b if k.startswith("prob_")]
        assert a["start_frame"] == b["start_frame"]
        assert max(abs(a[k] - b[k]) for k in keys) < 1e-6, (a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--models", default="demo,base")
    parser.add_argument("--demo-checkpoint", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "system": system(),
        "fps": FPS,
        "frame": f"{WIDTH}x{HEIGHT}",
        "seconds": args.seconds,
        "torch_threads": torch.get_num_threads(),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = camera_video(folder / "camera.mp4", args.seconds)
        names = args.models.split(",")
        check(model_checkpoint(names[0], folder, args.demo_checkpoint), video, args.device)
        for name in names:
            ckpt = model_checkpoint(name, folder, args.demo_checkpoint)
            results["models"][name] = measure(ckpt, video, args.device)
            print(name, results["models"][name], flush=True)
    out = REPO / "bench" / "results" / "live_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| model | windows | latency p50 s | p95 s | dropped / read | CPU-s per video-s |")
    print("|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        print(
            f"| {name} | {r['windows']} | {r['latency_p50_s']} | {r['latency_p95_s']} | "
            f"{r['frames_dropped']} / {r['frames_read']} | {r['cpu_s_per_video_s']} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
