"""The loader's data section: passed whole (as the recipes do) or as keywords (a thin wrapper
building it), each option declared once with its default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import build_loader
from maedfer.pipelines.options import DataOptions, TrainDataOptions
from maedfer.pipelines.plan import SampleConfig
from maedfer.recipes import config as config_io


def test_the_section_whole_equals_its_keywords(h264_clips: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = h264_clips
    manifest = folder / "manifest.parquet"
    section = TrainDataOptions(
        batch_size=2, backend="pyav", workers=0, random_sign=True, subtract_mean=True
    )
    whole = build_loader(manifest, section, mode="train", size=24, seed=4)
    words = build_loader(
        manifest,
        mode="train",
        size=24,
        seed=4,
        batch_size=2,
        backend="pyav",
        workers=0,
        random_sign=True,
        subtract_mean=True,
    )
    assert whole.config == words.config
    for a, b in zip(whole, words, strict=True):
        assert torch.equal(a["video"], b["video"]) and a["clip_id"] == b["clip_id"]
    # a keyword beside a section overrides that option only
    assert (
        build_loader(manifest, section, mode="train", size=24, random_sign=False).config.random_sign
        is False
    )


def test_a_recipe_section_goes_whole_and_test_mode_takes_what_it_needs(
    h264_clips: tuple[Path, pd.DataFrame],
) -> None:
    folder, _ = h264_clips
    data = config_io.load(
        recipe="finetune",
        overrides={
            "data.backend": "pyav",
            "data.workers": 0,
            "data.num_sample": 2,
            "data.batch_size": 2,
        },
    ).data
    train = build_loader(folder / "manifest.parquet", data, mode="train", size=24, fold=1)
    test = build_loader(folder / "manifest.parquet", data, mode="test", size=24, fold=1)
    assert train.config.rand_augment and train.config.num_sample == 2
    assert train.config.temporal_rule == "reference"  # the recipe's own default
    assert not test.config.augment and not test.config.rand_augment
    assert test.config.num_sample == 1  # a training option: test mode has views
    with pytest.raises(MaedferError, match="num_sample"):  # asked for explicitly: refused
        build_loader(folder / "manifest.parquet", data, mode="test", num_sample=2)


def test_a_section_without_an_option_refuses_it_and_leaves_it_off(
    h264_clips: tuple[Path, pd.DataFrame],
) -> None:
    folder, _ = h264_clips
    pretrain = config_io.load(recipe="pretrain").data
    assert isinstance(pretrain, DataOptions) and not hasattr(pretrain, "random_sign")
    with pytest.raises(MaedferError, match="random_sign is not an option of a DataConfig"):
        build_loader(folder / "manifest.parquet", pretrain, mode="train", random_sign=True)
    config = SampleConfig.from_data(
        pretrain, mode="train", num_frames=4, size=16, seed=0, test_views=2
    )
    assert not (config.rand_augment or config.random_sign or config.flip_only)


def test_every_loader_option_has_one_default() -> None:
    """The recipes' data sections inherit the loader's options: no default is declared twice
    (the fine-tuning recipe's own temporal rule aside)."""
    loader_fields = {f.name for f in dataclasses.fields(TrainDataOptions)}
    for cls in (config_io.DataConfig, config_io.FinetuneDataConfig):
        own = {name for name in vars(cls).get("__annotations__", {})}
        assert own & loader_fields <= {"temporal_rule"}, cls
    assert "random_sign" not in vars(config_io.FinetuneDataConfig).get("__annotations__", {})
