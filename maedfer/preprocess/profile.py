"""``maedfer profile faces``: frames/s of the face pipeline on this machine (docs/design.md).

The input is a committed portrait (``assets/portraits/obama.jpg``) animated into a clip at 360p
(640x360) and 720p (1280x720), the face a third of the frame height and moving, encoded to H.264
once, so the figures need no download. Measured per resolution, side by side in one run:

- ``end_to_end``: decode (PyAV) + detection + alignment (`FaceAligner`) + encoding (H.264) of
  the clip, the default settings (``detect_every`` 4, batches of 32) -- the headline
  ``frames_per_s`` is this at 720p;
- ``detect_every``: the aligner alone with detection on every frame (1) and every 4th / 8th;
- ``batching``: the aligner alone, every frame detected, network batches of 1 vs `batch`;
- ``mtcnn_baseline``: facenet-pytorch's own ``MTCNN.detect`` on whole frames, one at a time and
  batched -- what the pipeline would cost without the known face scale and tracking.

Every figure is the median of `batches` timed repeats after one warm-up.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from maedfer.devices import resolve_device
from maedfer.preprocess.encode import write_clip
from maedfer.preprocess.faces import FaceAligner, cpu_threads
from maedfer.preprocess.video import read_video_frames

PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "portraits" / "obama.jpg"
PORTRAIT_FACE = (492, 254, 349)  # face centre x, y and MTCNN box side in obama.jpg, measured
INPUTS = {"360p": (640, 360), "720p": (1280, 720)}
CLIP_FRAMES = 64


def portrait_video(width: int, height: int, frames: int | None = None) -> np.ndarray:
    """(frames, height, width, 3) uint8: the portrait face (height/3 tall), drifting and nodding."""
    frames = frames or CLIP_FRAMES
    image = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    cx, cy, side = PORTRAIT_FACE
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        phase = 2 * np.pi * t / frames
        zoom = height / 3 / side * (1 + 0.05 * np.sin(phase))
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), 4 * np.sin(2 * phase), zoom)
        m[:, 2] += np.array([width / 2 + width / 20 * np.sin(phase), height / 2]) - (cx, cy)
        cv2.warpAffine(image, m, (width, height), dst=out[t], borderMode=cv2.BORDER_REPLICATE)
    return out


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: weights in cache, allocator, CUDA kernels
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _fps(frames: int, times: list[float]) -> dict[str, float]:
    """Median frames/s and the p25/p75 spread (high p75 of time = low fps)."""
    q = np.percentile(times, [25, 50, 75])
    return {
        "fps": frames / statistics.median(times),
        "fps_p25": frames / q[2],
        "fps_p75": frames / q[0],
    }


def measure_input(
    video: Path,
    frames: np.ndarray,
    *,
    device: torch.device,
    batch: int,
    repeats: int,
    workdir: Path,
    size: int = 160,
    baseline_frames: int = 8,
) -> dict[str, Any]:
    """All figures for one input clip (`video` is `frames` encoded)."""
    n = len(frames)
    out_dir = workdir
    default = FaceAligner(size, device, detect_every=4, batch_size=batch)

    def end_to_end() -> None:
        decoded, fps = read_video_frames(video)
        write_clip(default.align_frames(decoded).frames, out_dir / "clip.mp4", fps=fps)

    result: dict[str, Any] = {"frames": n, "end_to_end": _fps(n, _timed(end_to_end, repeats))}
    result["decode"] = _fps(n, _timed(lambda: read_video_frames(video), repeats))
    aligned = default.align_frames(frames).frames
    result["encode"] = _fps(
        n, _timed(lambda: write_clip(aligned, out_dir / "e.mp4", fps=25), repeats)
    )
    result["face_ratio"] = default.align_frames(frames).face_ratio
    result["detect_every"] = {}
    for k in (1, 4, 8):
        aligner = FaceAligner(size, device, detect_every=k, batch_size=batch)
        result["detect_every"][str(k)] = _fps(
            n, _timed(lambda a=aligner: a.align_frames(frames), repeats)
        )
    result["batching"] = {}
    for b in sorted({1, batch}):
        aligner = FaceAligner(size, device, detect_every=1, batch_size=b)
        result["batching"][str(b)] = _fps(
            n, _timed(lambda a=aligner: a.align_frames(frames), repeats)
        )
    result["mtcnn_baseline"] = _mtcnn_baseline(frames[:baseline_frames], device, batch, repeats)
    return result


def _mtcnn_baseline(frames: np.ndarray, device: torch.device, batch: int, repeats: int) -> dict:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(device=device, keep_all=True)
    n = len(frames)

    def one_by_one() -> None:
        for frame in frames:
            mtcnn.detect(frame, landmarks=True)

    def batched() -> None:
        for start in range(0, n, batch):
            mtcnn.detect(frames[start : start + batch], landmarks=True)

    # The same thread count as the aligner's default, so the comparison is like for like.
    with cpu_threads(1 if device.type == "cpu" else None):
        return {
            "batch_1": _fps(n, _timed(one_by_one, repeats)),
            f"batch_{min(batch, n)}": _fps(n, _timed(batched, repeats)),
        }


def measure(
    *,
    device: torch.device,
    batch: int,
    repeats: int,
    inputs: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Figures for every input resolution (the clips are made and encoded here)."""
    by_input = {}
    with tempfile.TemporaryDirectory(prefix="maedfer-profile-") as tmp:
        for name, (w, h) in (inputs or INPUTS).items():
            frames = portrait_video(w, h)
            video = Path(tmp) / f"{name}.mp4"
            write_clip(frames, video, fps=25)
            by_input[name] = measure_input(
                video, frames, device=device, batch=batch, repeats=repeats, workdir=Path(tmp)
            )
    return by_input


def run(
    *,
    batch: int | None = None,
    batches: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Measure the face pipeline at 360p and 720p (the table is :func:`format_table`'s).

    Args:
        batch: network batch (frames); default 32.
        batches: timed repeats per figure (median reported); default 3 on CUDA, 2 on CPU.
        device: None = CUDA when present.
    """
    dev = resolve_device(device)
    batch = batch or 32
    repeats = batches or (3 if dev.type == "cuda" else 2)
    by_input = measure(device=dev, batch=batch, repeats=repeats)
    main = "720p" if "720p" in by_input else next(iter(by_input))
    result = {
        "stage": "faces",
        "device": str(dev),
        "cpu_threads": 1 if dev.type == "cpu" else None,
        "frames_per_s": by_input[main]["end_to_end"]["fps"],
        "input": main,
        "batch": batch,
        "repeats": repeats,
        "by_input": by_input,
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    names = list(result["by_input"])
    lines = [
        f"faces profile on {result['device']} ({result['cpu_threads']} CPU thread(s) per process, "
        f"batch {result['batch']}, median of {result['repeats']}), frames/s",
        "".join([f"{'':34}"] + [f"{n:>10}" for n in names]),
    ]

    def row(label: str, pick) -> None:
        lines.append(
            "".join([f"{label:34}"] + [f"{pick(result['by_input'][n]):10.1f}" for n in names])
        )

    row("end to end (decode+align+encode)", lambda r: r["end_to_end"]["fps"])
    row("  decode only", lambda r: r["decode"]["fps"])
    row("  encode only", lambda r: r["encode"]["fps"])
    for k in result["by_input"][names[0]]["detect_every"]:
        row(f"align, detect every {k}", lambda r, k=k: r["detect_every"][k]["fps"])
    for b in result["by_input"][names[0]]["batching"]:
        row(f"align every frame, batch {b}", lambda r, b=b: r["batching"][b]["fps"])
    for key in result["by_input"][names[0]]["mtcnn_baseline"]:
        row(
            f"facenet MTCNN.detect {key.replace('_', ' ')}",
            lambda r, k=key: r["mtcnn_baseline"][k]["fps"],
        )
    return "\n".join(lines)
