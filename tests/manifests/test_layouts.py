"""Every protocol: registry, index-only manifests, refusals of wrong trees, download debris."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from maedfer.errors import MaedferError
from maedfer.manifests import (
    DATASET_NAMES,
    Protocol,
    fold_fingerprints,
    get_dataset,
    get_protocol,
    read_manifest,
    write_manifest,
)
from tests.rawtrees import MAKERS, make_enterface05, make_ravdess

NUM_CLASSES = {
    "voxceleb2": 0,
    "dfew": 7,
    "ferv39k": 7,
    "mafw": 11,
    "crema-d": 6,
    "ravdess": 8,
    "enterface05": 6,
}  # the official nb_classes (docs/datasets.md)
# The published protocols (a fixed raw layout each); ``folder`` has its own tests.
BUILT_IN = [name for name in DATASET_NAMES if get_dataset(name).published]
NUM_FOLDS = {
    "voxceleb2": 0,
    "dfew": 5,
    "ferv39k": 0,
    "mafw": 5,
    "crema-d": 5,
    "ravdess": 6,
    "enterface05": 5,
}


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(MaedferError) as err:
        get_protocol("affectnet")
    assert "affectnet" in str(err.value)
    for name in DATASET_NAMES:
        assert name in str(err.value)
    assert get_protocol("CREMA_D").name == "crema-d"


@pytest.mark.parametrize("name", BUILT_IN)
def test_index_only_manifest(name: str, tmp_path: Path) -> None:
    protocol = get_protocol(name)
    assert isinstance(protocol, Protocol) and protocol.name == name
    assert len(protocol.classes) == NUM_CLASSES[name] and protocol.num_folds == NUM_FOLDS[name]
    MAKERS[name](tmp_path / "raw")
    index = protocol.index(tmp_path / "raw")
    assert index.dataset == name and index.raw_root == (tmp_path / "raw").resolve()
    assert [e.clip_id for e in index.entries] == sorted({e.clip_id for e in index.entries})
    df = index.to_frame(lambda e: f"clips/{e.clip_id}.mp4")
    fps = write_manifest(
        df,
        tmp_path / "out" / "manifest.parquet",
        dataset=name,
        protocol=index.protocol,
        classes=index.classes,
        num_folds=index.num_folds,
        raw_root=index.raw_root,
    )
    back, meta = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert len(back) == len(index.entries) and meta["dataset"] == name
    assert meta["fingerprints"] == fps == fold_fingerprints(back, num_folds=index.num_folds)
    assert meta["classes"] == protocol.classes and meta["raw_root"] == str(index.raw_root)
    assert back["num_frames"].isna().all() and back["crop"].isna().all()
    if index.num_folds:
        assert set(back["fold"]) <= set(range(1, index.num_folds + 1))
    else:
        assert back["fold"].isna().all() and back["split"].notna().all()


@pytest.mark.parametrize("name", BUILT_IN)
def test_wrong_trees_are_refused(name: str, tmp_path: Path) -> None:
    protocol = get_protocol(name)
    with pytest.raises(MaedferError, match="does not exist"):
        protocol.index(tmp_path / "nowhere")
    (tmp_path / "archive.zip").write_bytes(b"PK")
    with pytest.raises(MaedferError, match="is a file"):
        protocol.index(tmp_path / "archive.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaedferError, match=f"{name}: .*empty.* expected .*found an empty folder"):
        protocol.index(tmp_path / "empty")
    other = "enterface05" if name == "ravdess" else "ravdess"
    MAKERS[other](tmp_path / "other")
    with pytest.raises(MaedferError, match=r"expected .*; found .*(Actor_01/|enterface database/)"):
        protocol.index(tmp_path / "other")


def test_macos_debris_only_is_not_a_dataset(tmp_path: Path) -> None:
    debris = tmp_path / "__MACOSX" / "Actor_01"
    debris.mkdir(parents=True)
    (debris / "02-01-01-01-01-01-01.mp4").write_bytes(b"")
    (tmp_path / "._02-01-01-01-01-01-01.mp4").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"")
    with pytest.raises(MaedferError, match="found an empty folder"):
        get_protocol("ravdess").index(tmp_path)


def test_tree_unpacked_twice_keeps_one_copy(tmp_path: Path) -> None:
    make_enterface05(tmp_path / "a", subjects=[1])
    shutil.copytree(tmp_path / "a", tmp_path / "a" / "copy of download")
    index = get_protocol("enterface05").index(tmp_path)
    assert len(index.entries) == 30
    assert all(e.source.startswith("a/enterface database/") for e in index.entries)
    assert len(index.rejects) == 30 and all(r[2].startswith("duplicate") for r in index.rejects)


def test_symlink_loop_and_uppercase_names(tmp_path: Path) -> None:
    make_ravdess(tmp_path / "data", actors=[3], full_av=False, songs=False)
    os.symlink(tmp_path / "data", tmp_path / "data" / "Actor_03" / "loop")
    clip = tmp_path / "data" / "Actor_03" / "02-01-02-02-02-02-03.mp4"
    clip.rename(clip.with_name("02-01-02-02-02-02-03.MP4"))
    (tmp_path / "data" / "ACTOR_03 notes.txt").write_text("x")
    index = get_protocol("ravdess").index(tmp_path / "data")
    assert len(index.entries) == 60 and not index.rejects  # the loop is walked once
    assert [w.split(",")[0] for w in index.warnings] == ["ravdess: partial download"]
