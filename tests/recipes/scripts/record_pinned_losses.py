"""Record the losses tests/recipes/test_pinned_losses.py pins: run once, by hand, when a change
of the recipes' numbers is intended (and say why in the commit).

Usage: python -m tests.recipes.scripts.record_pinned_losses
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.recipes.pinned import FIXTURE, run_demo_recipes

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        found = run_demo_recipes(Path(tmp))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
