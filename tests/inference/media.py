"""Checkpoints and videos for the inference tests, made in the test.

- `save_tiny_checkpoint`: a maedfer run checkpoint of a one-block LGI-Former on 64-pixel faces;
- `save_official_pth`: the same kind of tiny model in the official MAE-DFER fine-tuned layout
  (``{'model': state_dict, 'args': Namespace}``, keys as the released checkpoints);
- `face_video` / `grey_video`: a committed portrait moving a little, or a featureless grey clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from maedfer.model import create_model
from maedfer.model.official import FINETUNE_TO_CLASSIFIER, convert_key
from maedfer.training import checkpoint
from tests.preprocess.media import encode_video, load_rgb, portrait_clip

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["neutral", "smile", "surprise"]
TINY = dict(depth=1, img_size=64, embed_dim=32, num_heads=2, region_size=(2, 2, 2))
# Official keys from ours: the official table read backwards (same {} and prefix patterns).
TO_OFFICIAL = {ours: official for official, ours in FINETUNE_TO_CLASSIFIER.items()}


def save_tiny_checkpoint(path: Path, name: str = "lgi_former_tiny", **options) -> Path:
    """A run checkpoint (docs/runs.md) of a one-block LGI-Former on 64-pixel faces."""
    torch.manual_seed(0)
    overrides = dict(TINY)
    if not name.startswith("mae_"):  # the pre-training model has no head
        overrides["num_classes"] = len(options.get("classes", CLASSES))
    model = create_model(name, **overrides)
    if hasattr(model, "head"):
        with torch.no_grad():  # a head far from uniform, so the softmax is exercised
            model.head.weight.normal_(0, 1.0)
    # As the fine-tuning recipe writes it: options under "config" (None = the model's value).
    config = dict(num_frames=None, size=None, stride=4, subtract_mean=False)
    classes = options.pop("classes", CLASSES)
    config.update(options)
    state = dict(
        format=checkpoint.FORMAT,
        version=checkpoint.VERSION,
        model_name=name,
        model_config=checkpoint.plain(model.config),
        model=model.state_dict(),
        epoch=1,
        step=1,
        config=config,
        classes=classes,
    )
    checkpoint.save_checkpoint(path, state)
    return path


def tiny_official_model(num_classes: int = 7) -> torch.nn.Module:
    torch.manual_seed(3)
    model = create_model("lgi_former_tiny", num_classes=num_classes, **TINY)
    with torch.no_grad():  # a visible head: the released init scales it by 0.001
        model.head.weight.normal_(0, 1)
    return model.eval()


def save_official_pth(path: Path, model: torch.nn.Module, input_size: int = 64) -> Path:
    """``model`` saved as the official fine-tuning script saves: official keys, run args."""
    state = {}
    for key, tensor in model.state_dict().items():
        matched, official = convert_key(key, TO_OFFICIAL)
        assert matched and official, key
        state[official] = tensor.clone()
    region = [2, 2, 2] if input_size == 64 else [2, 5, 10]  # the official base's regions
    args = argparse.Namespace(
        input_size=input_size,
        num_frames=16,
        lg_region_size=region,
        sampling_rate=4,
        model="vit_base_dim512_no_depth_patch16_160",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "args": args, "epoch": 99}, path)
    return path


def portrait_frames(frames: int = 72, stem: str = "obama", seed: int = 0) -> np.ndarray:
    image = load_rgb(next((REPO / "maedfer/assets/portraits").glob(f"{stem}.*")))
    return portrait_clip(image, stem, frames=frames, seed=seed)


def face_video(path: Path, frames: int = 72, stem: str = "obama", seed: int = 0) -> Path:
    encode_video(portrait_frames(frames, stem, seed), path)
    return path


def grey_frames(frames: int = 40, value: int = 128) -> np.ndarray:
    return np.full((frames, 128, 160, 3), value, np.uint8)


def grey_video(path: Path, frames: int = 40) -> Path:
    encode_video(grey_frames(frames), path)
    return path
