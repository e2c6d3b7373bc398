"""Tiny prepared datasets and model sizes for the training-recipe tests (made in the test).

Each class is a colour tint over per-clip noise that drifts in time, so a tiny classifier can
learn it in a few epochs (the "learnable task" of issue 5) and MAE reconstruction has both
appearance and motion to predict. Clips are 32×32, 16 frames, H.264 (``tests.pipelines.media``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maedfer.manifests import write_manifest
from tests.pipelines.media import write_clip

SIZE = 32
FRAMES = 16
TINTS = np.array([[220, 60, 60], [60, 200, 60], [60, 80, 230], [200, 200, 60]], dtype=np.float32)

# Tiny models: 32×32×8 input, 16-px patches, tubelet 2 -> token grid (4, 2, 2), regions (2, 2, 2).
TINY_CLASSIFIER = {
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "img_size": SIZE,
    "num_frames": 8,
    "region_size": (2, 2, 2),
}
TINY_MAE = {
    **TINY_CLASSIFIER,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "mask_ratio": 0.75,
}


_OWN_FIELDS = {
    "num_frames": "model.num_frames",
    "img_size": "model.img_size",
    "mask_ratio": "model.mask_ratio",
    "drop_path_rate": "model.drop_path",
}


def model_keys(name: str, arguments: dict) -> dict:
    """Dotted config keys that build model ``name`` with constructor ``arguments``."""
    keys: dict = {"model.name": name, "model.overrides": {}}
    for key, value in arguments.items():
        value = list(value) if isinstance(value, tuple) else value
        if key in _OWN_FIELDS:
            keys[_OWN_FIELDS[key]] = value
        else:
            keys["model.overrides"][key] = value
    return keys


TINY_FINETUNE_KEYS = model_keys("lgi_former_tiny", TINY_CLASSIFIER)
TINY_PRETRAIN_KEYS = model_keys("mae_lgi_former_tiny", TINY_MAE)


def cli_sets(keys: dict) -> list[str]:
    """``--set key=value`` arguments for dotted ``keys`` (JSON values are YAML)."""
    import json

    return [a for k, v in keys.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def clip_frames(label: int, rng: np.random.Generator) -> np.ndarray:
    """``(FRAMES, SIZE, SIZE, 3)`` uint8: the class tint, noise, and a drifting bright bar."""
    # Smooth (8×8 upsampled) noise: a masked patch is partly predictable from its neighbours.
    coarse = rng.normal(0.0, 30.0, size=(SIZE // 4, SIZE // 4, 3)).astype(np.float32)
    noise = coarse.repeat(4, axis=0).repeat(4, axis=1)
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    start = rng.integers(0, SIZE)
    for t in range(FRAMES):
        frame = TINTS[label] * rng.uniform(0.8, 1.0) + noise
        frame[:, (start + 2 * t) % SIZE] += 60.0
        frames[t] = frame
    return np.clip(frames, 0, 255).astype(np.uint8)


def make_dataset(
    folder: Path,
    *,
    num_classes: int = 3,
    clips_per_class: int = 8,
    folds: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``folder/manifest.parquet`` and its clips; folds cycle over clips of each class.

    Returns the manifest path.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(num_classes):
        for i in range(clips_per_class):
            clip_id = f"c{label}_{i:02d}"
            rel = f"clips/{clip_id}.mp4"
            write_clip(folder / rel, clip_frames(label, rng), fps=25, gop=8)
            rows.append(
                {
                    "clip_id": clip_id,
                    "path": rel,
                    "source": rel,
                    "subject": str(i % folds + 1),
                    "label": label,
                    "label_name": f"class{label}",
                    "fold": i % folds + 1,
                    "num_frames": FRAMES,
                    "fps": 25.0,
                    "width": SIZE,
                    "height": SIZE,
                }
            )
    path = folder / "manifest.parquet"
    write_manifest(
        pd.DataFrame(rows),
        path,
        dataset="ravdess",
        protocol="test-tints",
        classes=[f"class{c}" for c in range(num_classes)],
        num_folds=folds,
        raw_root=folder,
    )
    return path


@pytest.fixture(autouse=False)
def one_thread():
    """Run a test on one intra-op thread: on 2 shared, busy cores two threads made these tiny
    models ~20x slower (measured 0.7 s vs 15 s for the same 2-epoch run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
