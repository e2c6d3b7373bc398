"""``maedfer profile`` with no stage: every stage on this machine in one table (issue 6 §2).

Each stage's own profiler runs with bounded settings; the data stage reads clips it encodes
first from a committed portrait (so it needs no prepared dataset). On CPU the training step is
measured on ``lgi_former_tiny`` cut to 4 blocks at batch 2 (the base model takes minutes per step
there); on CUDA on ``lgi_former_base`` at batch 32. The table names what each row measured.

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from maedfer.devices import resolve_device

SAMPLE_CLIPS, SAMPLE_FRAMES = 8, 48


def versions() -> dict[str, str]:
    found = {}
    for dist in ("torch", "nvidia-dali-cuda130", "av", "facenet-pytorch", "maedfer"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def sample_manifest(folder: Path) -> Path:
    """Encode a few 160x160 H.264 clips of a moving portrait and a manifest naming them."""
    from maedfer.preprocess.encode import write_clip
    from maedfer.preprocess.profile import portrait_video

    frames = portrait_video(160, 160, SAMPLE_FRAMES)
    rows = []
    for i in range(SAMPLE_CLIPS):
        write_clip(frames, folder / f"clip{i}.mp4", fps=25)
        rows.append(
            {
                "clip_id": f"clip{i}",
                "path": f"clip{i}.mp4",
                "label": i % 2,
                "fold": 1 + i % 2,
                "num_frames": SAMPLE_FRAMES,
            }
        )
    path = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def run(*, device: str | None = None) -> dict[str, Any]:
    """Every stage in one call (``maedfer profile``); the table is :func:`format_table`'s."""
    from maedfer.model import profile as model_profile
    from maedfer.pipelines import profile as data_profile
    from maedfer.preprocess import profile as faces_profile
    from maedfer.recipes import profile as train_profile

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    stages: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="maedfer-profile-") as tmp:
        data = sample_manifest(Path(tmp))
        stages["data"] = data_profile.run(
            data=data,
            backend="auto",
            batch=4,
            batches=3,
            workers=None,
            device=str(dev),
        )
    stages["faces"] = faces_profile.run(batch=None, batches=1, device=str(dev))
    stages["model"] = model_profile.run(name=None, batch=None, batches=1, device=str(dev))
    stages["train"] = train_profile.run(
        name="lgi_former_base" if cuda else "lgi_former_tiny",
        batch=32 if cuda else 2,
        batches=2,
        device=str(dev),
        overrides=None if cuda else {"depth": 4},
    )
    return {"stage": "all", "device": str(dev), "versions": versions(), "stages": stages}


def format_table(result: dict[str, Any]) -> str:
    s = result["stages"]
    rows = [
        (
            "decode + augment",
            f"{s['data']['clips_per_s']:.1f} clips/s",
            f"{s['data'].get('backend', '?')}, 160x160 H.264, batch 4",
        ),
        (
            "faces",
            f"{s['faces']['frames_per_s']:.1f} frames/s",
            "detect + align + encode, 720p input",
        ),
        (
            "model forward",
            f"{1 / s['model']['fwd_s_per_clip']:.2f} clips/s",
            f"{s['model']['name']}, {s['model']['gmacs']:.2f} GMACs/clip",
        ),
        (
            "train step",
            f"{s['train']['clips_per_s']:.2f} clips/s",
            f"{s['train'].get('name', '')}{'' if 'cuda' in result['device'] else ' (4 blocks)'}"
            f", fwd+bwd+AdamW",
        ),
    ]
    v = result["versions"]
    lines = [
        f"maedfer profile on {result['device']}: torch {v['torch']}, "
        f"DALI {v['nvidia-dali-cuda130']}, PyAV {v['av']}",
        f"{'stage':18s}{'throughput':>18s}  what",
    ]
    lines += [f"{a:18s}{b:>18s}  {c}" for a, b, c in rows]
    return "\n".join(lines)
