"""The runs whose logged losses are pinned (tests/recipes/test_pinned_losses.py), shared with the
script that records them (tests/recipes/scripts/record_pinned_losses.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maedfer.recipes import finetune, pretrain
from tests.recipes.clipdata import make_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "pinned_losses.json"
# The shipped demo recipes as `maedfer demo` runs them, cut to a few steps on the tiny clips of
# tests/recipes/clipdata.py (one loader process, one torch thread: the same numbers each run).
COMMON = {"data.batch_size": 4, "data.workers": 0, "run.log_every": 1, "run.seed": 0}
PRETRAIN = {**COMMON, "schedule.epochs": 1, "schedule.warmup_epochs": 0.5}
FINETUNE = {**COMMON, "schedule.epochs": 2, "schedule.warmup_epochs": 0.5}


def losses(run: Path) -> dict[str, list[float]]:
    """The train losses (each step) and the epoch losses a run logged."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {kind: [r["loss"] for r in records if r["kind"] == kind] for kind in ("train", "epoch")}


def run_demo_recipes(folder: Path) -> dict[str, dict[str, list[float]]]:
    """Pre-train, then fine-tune fold 1 from it, with the demo configs; their logged losses."""
    torch.set_num_threads(1)
    manifest = make_dataset(folder / "data", num_classes=3, clips_per_class=8, folds=2)
    pre = pretrain.run("demo-pretrain", overrides=PRETRAIN, data=manifest, out=folder / "pt")
    finetune.run("demo-finetune", overrides=FINETUNE, data=manifest, fold=1,
                 init=Path(pre["checkpoint"]), out=folder / "ft")  # fmt: skip
    return {"pretrain": losses(folder / "pt"), "finetune": losses(folder / "ft")}
