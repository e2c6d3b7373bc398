"""Manifest reading and fold/split selection for the loaders (docs/design.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maedfer.errors import MaedferError
from maedfer.pipelines.select import load_clip_table


def rows(n: int = 6, **extra) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(n)],
            "path": [f"clips/c{i}.mp4" for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "num_frames": [30 + i for i in range(n)],
        }
    )
    for key, value in extra.items():
        df[key] = value
    return df


def ids(table) -> list[str]:
    return table.clip_id.to_pylist()


def test_fold_selection() -> None:
    df = rows(fold=[1, 2, 3, 1, 2, 3])
    assert ids(load_clip_table(df, mode="test", fold=2)) == ["c1", "c4"]
    assert ids(load_clip_table(df, mode="train", fold=2)) == ["c0", "c2", "c3", "c5"]
    assert ids(load_clip_table(df, mode="pretrain", fold=2)) == ["c0", "c2", "c3", "c5"]
    assert len(load_clip_table(df, mode="train")) == 6
    with pytest.raises(MaedferError, match=r"fold \(4\) must be one of \[1, 2, 3\]"):
        load_clip_table(df, mode="test", fold=4)


def test_split_selection() -> None:
    df = rows(split=["train", "test"] * 3)
    assert ids(load_clip_table(df, mode="test", split="test")) == ["c1", "c3", "c5"]
    with pytest.raises(MaedferError, match="split 'val' not in"):
        load_clip_table(df, mode="test", split="val")
    with pytest.raises(MaedferError, match="no folds"):
        load_clip_table(df, mode="test", fold=1)
    with pytest.raises(MaedferError, match="not both"):
        load_clip_table(rows(fold=[1] * 6, split=["train"] * 6), mode="test", fold=1, split="train")


def test_unlabelled_rows_only_for_pretraining() -> None:
    df = rows(label=[-1] * 6, split=["pretrain"] * 6)
    assert len(load_clip_table(df, mode="pretrain", split="pretrain")) == 6
    with pytest.raises(MaedferError, match="label -1"):
        load_clip_table(df, mode="train")


def test_parquet_with_schema_types_crop_and_roots(tmp_path: Path) -> None:
    crop_type = pa.list_(pa.int16(), 4)
    table = pa.table(
        {
            "clip_id": pa.array(["a", "b", "c"]),
            "path": pa.array(["v/a.mp4", "v/b.mp4", "/abs/c.mp4"]),
            "label": pa.array([-1, -1, -1], pa.int16()),
            "fold": pa.array([None, None, None], pa.int8()),
            "split": pa.array(["pretrain"] * 3),
            "num_frames": pa.array([100, None, 50], pa.int32()),
            "crop": pa.array([[32, 0, 160, 160], None, [1, 2, 3, 4]], crop_type),
        }
    )
    raw = tmp_path / "raw"
    (raw / "v").mkdir(parents=True)
    (raw / "v" / "a.mp4").write_bytes(b"x")
    meta = {b"maedfer.raw_root": str(raw).encode(), b"maedfer.classes": json.dumps([]).encode()}
    path = tmp_path / "m" / "manifest.parquet"
    path.parent.mkdir()
    pq.write_table(table.replace_schema_metadata(meta), path)

    clips = load_clip_table(path, mode="pretrain")
    assert clips.num_frames.tolist() == [100, -1, 50]
    assert clips.crop.tolist() == [[32, 0, 160, 160], [-1] * 4, [1, 2, 3, 4]]
    assert clips.label.dtype == np.int64
    # the first clip is found under raw_root, not beside the manifest: read in place
    assert clips.clip_path(0) == str(raw / "v" / "a.mp4")
    assert clips.clip_path(2) == "/abs/c.mp4"
    assert load_clip_table(path, mode="pretrain", root=tmp_path).clip_path(1) == str(
        tmp_path / "v" / "b.mp4"
    )
    (raw / "v" / "a.mp4").unlink()  # not under raw_root either: the manifest's folder
    assert load_clip_table(path, mode="pretrain").clip_path(0) == str(path.parent / "v/a.mp4")


def test_bad_manifests(tmp_path: Path) -> None:
    with pytest.raises(MaedferError, match="does not exist"):
        load_clip_table(tmp_path / "none.parquet", mode="train")
    path = tmp_path / "m.parquet"
    rows().drop(columns=["label"]).to_parquet(path)
    with pytest.raises(MaedferError, match="lacks column"):
        load_clip_table(path, mode="train")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(MaedferError, match="not a readable Parquet"):
        load_clip_table(tmp_path / "junk.parquet", mode="train")
    with pytest.raises(MaedferError, match="crop"):
        load_clip_table(rows(3, crop=[[1, 2, 3], None, None]), mode="train")
