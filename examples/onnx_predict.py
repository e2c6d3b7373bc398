"""Run an exported maedfer classifier with onnxruntime and numpy only (PyAV to decode).

    maedfer export final.pt --format onnx --out exported/
    python examples/onnx_predict.py exported/ clip.mp4

``clip.mp4`` is a prepared clip: aligned, square face crops as ``maedfer prepare`` writes them
(``clips/...`` of a prepared dataset), or any video of the face alone at the model's size.
The script reads ``inference.json`` beside ``model.onnx`` (class names, frames, stride, size,
normalisation), takes the clip's two test windows (every ``stride``-th frame, padded with
the last to ``num_frames``; the first and the last window), normalises them as the loaders
do, and prints the class probabilities averaged over the windows.

Needs: ``pip install onnxruntime numpy av`` (no torch, no maedfer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort


def read_frames(path: Path, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8 RGB frames of the clip, resized when they are not square
    ``size`` already (a prepared clip is)."""
    with av.open(str(path)) as container:
        frames = [
            f.to_ndarray(format="rgb24", width=size, height=size) for f in container.decode(video=0)
        ]
    if not frames:
        sys.exit(f"{path}: no frames")
    return np.stack(frames)


def test_windows(count: int, num_frames: int, stride: int, views: int = 2) -> list[np.ndarray]:
    """Frame indices of the test views (the first and the last window)."""
    every = np.arange(0, count, stride)
    if len(every) < num_frames:
        every = np.concatenate([every, np.full(num_frames - len(every), every[-1])])
    room = len(every) - num_frames
    starts = [int(k * room / (views - 1)) for k in range(views)] if views > 1 else [room // 2]
    return [every[s : s + num_frames] for s in starts]


def model_input(frames: np.ndarray, config: dict) -> np.ndarray:
    """(3, T, S, S) float32: ImageNet mean/std on 0..255 values, then the optional removal of
    the clip's mean frame."""
    mean = np.asarray(config["mean"], np.float32).reshape(3, 1, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(3, 1, 1, 1)
    clip = (frames.astype(np.float32).transpose(3, 0, 1, 2) - mean) / std
    if config["subtract_mean"]:
        clip = clip - clip.mean(axis=1, keepdims=True)
    return clip


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", type=Path, help="folder with model.onnx and inference.json")
    parser.add_argument("clip", type=Path, help="a prepared (aligned face) clip")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    config = json.loads((args.exported / "inference.json").read_text())
    session = ort.InferenceSession(
        str(args.exported / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    frames = read_frames(args.clip, config["size"])
    views = test_windows(len(frames), config["num_frames"], config["stride"])
    batch = np.stack([model_input(frames[v], config) for v in views])  # (V, 3, T, S, S)
    logits = session.run(["logits"], {"video": batch})[0]
    probs = softmax(logits).mean(axis=0)
    names = config["class_names"]
    if args.json:
        print(
            json.dumps(
                {
                    "probabilities": dict(zip(names, probs.tolist(), strict=True)),
                    "top_class": names[int(probs.argmax())],
                }
            )
        )
        return
    for name, p in sorted(zip(names, probs, strict=True), key=lambda item: -item[1]):
        print(f"{name:<16} {p:.3f}")


if __name__ == "__main__":
    main()
