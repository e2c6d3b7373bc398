"""Deprecated: ``maedfer.train`` was split into three wings (docs/design.md).

- :mod:`maedfer.recipes`: ``pretrain``, ``finetune``, ``protocol``, ``profile`` and their
  config trees (``maedfer.train.config`` is :mod:`maedfer.recipes.config`);
- :mod:`maedfer.training`: the library the recipes share (loop, checkpoint, resume, records,
  runtime, optim, schedule, precision, distributed, tally, badclips);
- :mod:`maedfer.evaluation`: heldout, metrics, coverage, evaluate, report_html, comparison and
  testing a checkpoint (``maedfer.train.evaluate_checkpoint`` is
  :mod:`maedfer.evaluation.testing`).

Each old module path still imports, for one release, as the very module it moved to (so
``maedfer.train.checkpoint is maedfer.training.checkpoint``), with a ``DeprecationWarning``
naming the new path.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

#: old module name (under maedfer.train) -> the module it is now
MOVED: dict[str, str] = {
    "loop": "maedfer.training.loop",
    "checkpoint": "maedfer.training.checkpoint",
    "resume": "maedfer.training.resume",
    "records": "maedfer.training.records",
    "runtime": "maedfer.training.runtime",
    "optim": "maedfer.training.optim",
    "schedule": "maedfer.training.schedule",
    "precision": "maedfer.training.precision",
    "distributed": "maedfer.training.distributed",
    "tally": "maedfer.training.tally",
    "badclips": "maedfer.training.badclips",
    "pretrain": "maedfer.recipes.pretrain",
    "finetune": "maedfer.recipes.finetune",
    "protocol": "maedfer.recipes.protocol",
    "profile": "maedfer.recipes.profile",
    "config": "maedfer.recipes.config",
    "heldout": "maedfer.evaluation.heldout",
    "metrics": "maedfer.evaluation.metrics",
    "coverage": "maedfer.evaluation.coverage",
    "evaluate": "maedfer.evaluation.evaluate",
    "report_html": "maedfer.evaluation.report_html",
    "comparison": "maedfer.evaluation.comparison",
    "evaluate_checkpoint": "maedfer.evaluation.testing",
}


def alias(name: str) -> ModuleType:
    """Make ``maedfer.train.<name>`` the module it moved to, saying so once per import."""
    short = name.rpartition(".")[2]
    target = MOVED[short]
    warnings.warn(
        f"maedfer.train.{short} moved to {target} (docs/design.md); the old path "
        "goes in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(target)
    sys.modules[name] = module
    return module
