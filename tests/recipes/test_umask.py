"""Run outputs and manifests honour the umask (docs/design.md, maedfer.atomic).

``tempfile.mkstemp`` creates files owner-only (0600) whatever the umask; a file renamed into
place from there would stay unreadable to teammates on a shared disk.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from maedfer.recipes import finetune
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture
def umask(request: pytest.FixtureRequest):  # noqa: ANN201 (a generator fixture)
    """Set the process umask for one test and restore the previous one afterwards."""
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("umask", "expected"), [(0o022, 0o644), (0o077, 0o600)], indirect=["umask"]
)
def test_outputs_get_the_umask_mode(umask: int, expected: int, tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", clips_per_class=2)  # write_manifest
    out = tmp_path / "run"
    finetune.run(
        overrides={
            **TINY_FINETUNE_KEYS,
            "schedule.epochs": 1,
            "data.batch_size": 2,
            "data.workers": 0,
            "loss.mixup": 0,
            "loss.cutmix": 0,
        },
        data=manifest,
        fold=1,
        out=out,
    )
    files = [
        manifest,
        out / "report.json",
        out / "predictions.parquet",
        out / "checkpoints" / "last.pt",
    ]
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files} == {
        str(p.relative_to(tmp_path)): oct(expected) for p in files
    }
