"""Clip folders shared by the pipeline tests: encoded once per session, tiny (64×64)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.pipelines.media import make_manifest

# Frame counts: shorter and longer than the 64-frame span of 16 frames at stride 4.
COUNTS = [24, 40, 30, 36, 70, 28]


@pytest.fixture(scope="session")
def h264_clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """(folder, rows) of six H.264/MP4 clips, folds 1-2; ``folder/manifest.parquet`` written."""
    folder = tmp_path_factory.mktemp("h264")
    df = make_manifest(folder, COUNTS, codec="h264")
    df.to_parquet(folder / "manifest.parquet")
    return folder, df


@pytest.fixture(scope="session")
def vp9_clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """(folder, rows) of six VP9/WebM clips, folds 1-2; ``folder/manifest.parquet`` written."""
    folder = tmp_path_factory.mktemp("vp9")
    df = make_manifest(folder, COUNTS, codec="vp9")
    df.to_parquet(folder / "manifest.parquet")
    return folder, df
