"""What every training recipe is: the :class:`Recipe` Protocol, and :func:`execute`, the one
way a recipe is run (docs/design.md, "The recipe interface").

As in torchtune's ``recipe_interfaces.py``, a recipe is a class with ``setup()``, ``train()``,
``save_checkpoint()`` and ``cleanup()`` (plus ``describe()`` for ``--dry-run``), joined by
composition: it holds what the training library (:mod:`maedfer.training`) builds and hands it
explicit values; there is no base class to inherit bookkeeping from. Printing, ``--json`` and
exit codes are the command line's (:mod:`maedfer.cli.training`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from maedfer.training.run import RunStart


class Recipe(Protocol):
    """A training recipe (:class:`maedfer.recipes.pretrain.PretrainRecipe`,
    :class:`maedfer.recipes.finetune.FinetuneRecipe`).

    Attributes:
        out: the run folder.
        dry_run: build everything, train and write nothing (set before ``setup()``).
        start: what :func:`maedfer.training.run.open_run` decided in ``setup()`` (None before).
    """

    out: Path
    dry_run: bool
    start: RunStart | None

    def setup(self) -> None:
        """Build everything in order; write nothing. Stops early (``start.finished``) when
        ``out`` holds a finished run and this is no dry run."""

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; the summary (``out``, ``checkpoint``, ``epochs``,
        ``steps``, ``loss``, ``stopped_by``, ``nonfinite_steps``, ``time_s``, ...)."""

    def describe(self) -> dict[str, Any]:
        """What would run (after ``setup()``): the ``--dry-run --json`` object."""

    def save_checkpoint(self) -> None:
        """Write ``checkpoints/last.pt`` now."""

    def cleanup(self, *, completed: bool = True) -> None:
        """Leave the process group, release the run folder (``completed`` False after an
        error)."""


def execute(recipe: Recipe) -> dict[str, Any]:
    """Set up, then describe (a dry run) or train; always clean up.

    Returns:
        ``describe()`` for a dry run; ``{"finished": True, "out", "message"}`` when the folder
        holds a finished run (nothing is touched); else ``train()``'s summary, whose
        ``stopped_by`` names the signal that stopped it (the command line exits 130 or 143).
    """
    completed = False
    try:
        recipe.setup()
        start = recipe.start
        if start is not None and start.finished and not recipe.dry_run:
            completed = True
            return {"finished": True, "out": str(recipe.out), "message": start.decision.message}
        result = recipe.describe() if recipe.dry_run else recipe.train()
        completed = True
    finally:
        recipe.cleanup(completed=completed)
    return result
