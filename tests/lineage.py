"""Tiny sizes of every classifier of the lineage, and their checkpoints, for the tests.

Every model at 8 frames of 32 px (the tests' clips), width 32, one or two blocks: fast on CPU,
and each still runs its own architecture (S4D's mixture from block 1, SVFAP's three stages).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from maedfer.model import create_model, list_models, model_info
from maedfer.model.layout import convert_key
from maedfer.model.official import identify
from maedfer.training import checkpoint as ckpt_io

FRAMES, SIZE = 8, 32
_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}
#: model.overrides of each family's tiny classifier
TINY = {
    "lgi_former": {"embed_dim": 32, "depth": 1, "num_heads": 2, "region_size": [2, 2, 2]},
    "videomae": _VIT,
    "vit_base": _VIT,
    "marlin": _VIT,
    "svfap": {
        "embed_dim": 32,
        "num_heads": 2,
        "stage_depths": [1, 1, 1],
        "num_bottleneck_tokens": [2],
    },
    "s4d": {"embed_dim": 32, "depth": 2, "num_heads": 2, "moe_start": 1, "num_experts": 2},
    "hicmae": {"embed_dim": 32, "depth": 2, "num_heads": 2},
}
CLASSIFIERS = [n for n in list_models() if model_info(n)["kind"] == "classifier"]
#: one registered model per family (the lineage's besides LGI-Former)
FAMILIES = ["videomae_base", "marlin_base", "svfap_base", "s4d_base", "hicmae_base"]


def tiny_overrides(name: str) -> dict:
    return dict(next(v for k, v in TINY.items() if name.startswith(k)))


def tiny_model(name: str, num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """The tiny classifier, with a head far from uniform (the softmax is exercised)."""
    torch.manual_seed(seed)
    model = create_model(
        name, num_classes=num_classes, num_frames=FRAMES, img_size=SIZE, **tiny_overrides(name)
    )
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    return model.eval()


def save_run_checkpoint(path: Path, model: torch.nn.Module, classes: list[str]) -> Path:
    """As the fine-tuning recipe writes it (docs/runs.md): the frames, side and stride null,
    i.e. the model's own."""
    config = {
        "data": {"stride": None, "subtract_mean": False},
        "model": {"num_frames": None, "img_size": None},
    }
    state = dict(
        format=ckpt_io.FORMAT,
        version=ckpt_io.VERSION,
        model_name=model.model_name,
        model_config=ckpt_io.plain(model.config),
        model=model.state_dict(),
        epoch=1,
        step=1,
        config=config,
        classes=classes,
    )
    ckpt_io.save_checkpoint(path, state)
    return path


def save_released(path: Path, model: torch.nn.Module, **args) -> Path:
    """``model`` saved as its authors' fine-tuning script saves it: their keys (the model's
    fine-tuned layout read backwards), ``{'model': ..., 'args': Namespace}``."""
    layout = model.official_layouts[0]
    backwards = {ours: theirs for theirs, ours in layout.table.items() if ours is not None}
    state = {}
    for key, tensor in model.state_dict().items():
        matched, theirs = convert_key(key, backwards)
        assert matched and theirs, key
        state[theirs] = tensor.clone()
    assert identify(state) is layout
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "args": argparse.Namespace(**args)}, path)
    return path
