"""The demo recipes' logged losses equal recorded values (torchtune's tests/recipes pattern:
the expected losses are data, compared at rtol 1e-4).

The run is tests/recipes/pinned.py's: the shipped ``demo-pretrain`` and ``demo-finetune``
configs on tiny clips, one loader process and one torch thread, so the numbers repeat exactly on
a CPU; the tolerance leaves room for another CPU's float rounding, not for a change of the
recipe. A deliberate change records them again: ``python -m
tests.recipes.scripts.record_pinned_losses``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.recipes.pinned import FIXTURE, run_demo_recipes


@pytest.mark.skipif(torch.cuda.is_available(), reason="the values are the CPU's")
def test_demo_recipes_log_the_recorded_losses(tmp_path: Path) -> None:
    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))
    found = run_demo_recipes(tmp_path)
    for recipe in ("pretrain", "finetune"):
        for kind in ("train", "epoch"):
            got, want = found[recipe][kind], expected[recipe][kind]
            assert len(got) == len(want) and want, (recipe, kind, got)
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=0,
                                       msg=f"{recipe} {kind} losses {got} != {want}")  # fmt: skip
