"""Manifest schema, Parquet IO and metadata (docs/design.md)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maedfer.errors import MaedferError
from maedfer.manifests import (
    MANIFEST_COLUMNS,
    ClipEntry,
    RawIndex,
    fold_fingerprints,
    read_manifest,
    read_rejects,
    sha16,
    write_manifest,
    write_rejects,
)

CLASSES = ["a", "b", "c"]


def _index(n: int = 6, folds: int = 3) -> RawIndex:
    entries = [
        ClipEntry(
            clip_id=f"clip{i:02d}",
            source=f"raw/clip{i:02d}.mp4",
            kind="video",
            subject=str(i % 2 + 1),
            label=i % 3,
            label_name=CLASSES[i % 3],
            fold=i % folds + 1,
            split=None,
        )
        for i in range(n)
    ]
    return RawIndex("ravdess", "test-protocol", Path("/raw"), CLASSES, folds, entries)


def _write(df: pd.DataFrame, path: Path, **kw) -> dict[str, str]:
    args = dict(
        dataset="ravdess",
        protocol="test-protocol",
        classes=CLASSES,
        num_folds=3,
        raw_root=path.parent / "raw",
    )
    args.update(kw)
    return write_manifest(df, path, **args)


def test_schema_is_exact(tmp_path: Path) -> None:
    df = _index().to_frame(lambda e: f"clips/{e.clip_id}.mp4")
    df["crop"] = [(32, 0, 160, 160)] + [None] * (len(df) - 1)
    df["num_frames"] = 64
    df["fps"] = 25.0
    _write(df, tmp_path / "manifest.parquet")
    schema = pq.read_schema(tmp_path / "manifest.parquet")
    assert schema.names == list(MANIFEST_COLUMNS)
    types = {f.name: f.type for f in schema}
    assert types["label"] == pa.int16() and types["fold"] == pa.int8()
    assert types["num_frames"] == pa.int32() and types["fps"] == pa.float32()
    assert types["width"] == pa.int16() and types["height"] == pa.int16()
    assert types["face_ratio"] == pa.float32() and types["subject"] == pa.string()
    assert types["crop"] == pa.list_(pa.int16(), 4)  # fixed-size list of 4 int16
    assert not schema.field("clip_id").nullable and schema.field("fold").nullable


def test_round_trip_and_metadata(tmp_path: Path) -> None:
    index = _index()
    df = index.to_frame(lambda e: f"clips/{e.clip_id}.mp4")
    df["crop"] = [(32, 0, 160, 160)] * len(df)
    path = tmp_path / "out" / "manifest.parquet"
    fps = _write(df, path)
    back, meta = read_manifest(path)
    assert back["clip_id"].tolist() == df["clip_id"].tolist()
    assert back["path"].iloc[0] == "clips/clip00.mp4" and back["source"].iloc[0] == "raw/clip00.mp4"
    assert back["dataset"].unique().tolist() == ["ravdess"]
    assert back["label"].dtype == "int16" and back["fold"].dtype == "int8"
    assert back["crop"].iloc[0] == (32, 0, 160, 160)
    assert back["num_frames"].isna().all() and back["face_ratio"].isna().all()
    assert meta["classes"] == CLASSES and meta["num_folds"] == 3
    assert meta["protocol"] == "test-protocol" and meta["dataset"] == "ravdess"
    assert Path(meta["raw_root"]).is_absolute()
    created = dt.datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert meta["fingerprints"] == fps == fold_fingerprints(df, num_folds=3)
    assert fps["1"] == sha16(["clip00", "clip03"])
    raw = pq.read_schema(path).metadata
    assert json.loads(raw[b"maedfer.classes"]) == CLASSES
    assert {k.decode() for k in raw} >= {
        f"maedfer.{k}"
        for k in (
            "version",
            "dataset",
            "protocol",
            "classes",
            "num_folds",
            "raw_root",
            "created",
            "fingerprints",
        )
    }


def test_atomic_replace_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "manifest.parquet"
    _write(_index(6).to_frame(), path)
    _write(_index(3).to_frame(), path)
    assert len(read_manifest(path)[0]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.parquet"]


def test_fixed_split_fingerprints_by_split(tmp_path: Path) -> None:
    df = _index(4).to_frame()
    df["fold"] = None
    df["split"] = ["train", "test", "train", "test"]
    fps = _write(df, tmp_path / "m.parquet", num_folds=0)
    assert fps == {"test": sha16(["clip01", "clip03"]), "train": sha16(["clip00", "clip02"])}
    back, meta = read_manifest(tmp_path / "m.parquet")
    assert meta["num_folds"] == 0 and back["fold"].isna().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns=["label"]), "label"),
        (lambda df: df.assign(clip_id=["x"] * len(df)), "more than once"),
        (lambda df: df.assign(label=7), "expected -1..2"),
        (lambda df: df.assign(fold=4), "fold in 1..3"),
        (lambda df: df.assign(fold=None), "fold in 1..3"),
        (lambda df: df.assign(crop=[(1, 2, 3)] * len(df)), "x, y, w, h"),
        (lambda df: df.assign(num_frames="many"), "num_frames"),
    ],
)
def test_write_refuses_bad_rows(tmp_path: Path, change, message: str) -> None:
    with pytest.raises(MaedferError, match=message):
        _write(change(_index().to_frame()), tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_reads_another_tools_manifest(tmp_path: Path) -> None:
    """Other int widths, no optional columns, no metadata: read the same way (DESIGN §3)."""
    table = pa.table(
        {
            "clip_id": ["a", "b"],
            "path": ["a.mp4", "b.mp4"],
            "label": pa.array([0, 1], pa.int64()),
            "fold": pa.array([1, 2], pa.int64()),
            "num_frames": pa.array([10, None], pa.int64()),
            "extra": [1, 2],
        }
    )
    pq.write_table(table, tmp_path / "other.parquet")
    df, meta = read_manifest(tmp_path / "other.parquet")
    assert df["label"].dtype == "int16" and df["fold"].dtype == "int8"
    assert df["num_frames"].iloc[0] == 10 and pd.isna(df["num_frames"].iloc[1])
    assert meta["num_folds"] == 2 and "classes" not in meta
    table = table.replace_schema_metadata(
        {
            "maedfer.classes": '["x", "y"]',
            "maedfer.num_folds": "5",
            "maedfer.fingerprints": '{"1": "abc"}',
            "maedfer.dataset": "dfew",
        }
    )
    pq.write_table(table, tmp_path / "other2.parquet")
    _, meta = read_manifest(tmp_path / "other2.parquet")
    assert meta == {
        "classes": ["x", "y"],
        "num_folds": 5,
        "fingerprints": {"1": "abc"},
        "dataset": "dfew",
    }


def test_read_refuses_non_manifests(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"clip_id": ["a"], "path": ["a"], "label": [0]}), tmp_path / "m.parquet"
    )
    with pytest.raises(MaedferError, match="fold or split"):
        read_manifest(tmp_path / "m.parquet")
    (tmp_path / "t.parquet").write_text("not parquet")
    with pytest.raises(MaedferError, match="not a readable Parquet"):
        read_manifest(tmp_path / "t.parquet")
    with pytest.raises(MaedferError, match="does not exist"):
        read_manifest(tmp_path / "missing.parquet")
    bad = pa.table({"clip_id": ["a"], "path": ["a"], "label": [0], "fold": [1]})
    pq.write_table(
        bad.replace_schema_metadata({"maedfer.classes": "[oops"}), tmp_path / "j.parquet"
    )
    with pytest.raises(MaedferError, match="maedfer.classes is not valid JSON"):
        read_manifest(tmp_path / "j.parquet")


def test_read_refuses_a_column_of_the_wrong_kind(tmp_path: Path) -> None:
    # string labels used to come back as nulls (read_manifest) or a pyarrow type error (loaders)
    table = pa.table({"clip_id": ["a"], "path": ["a"], "label": ["angry"], "fold": [1]})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(
        MaedferError,
        match="column 'label' holds string values; expected "
        r"integers \(int16\)",
    ):
        read_manifest(tmp_path / "m.parquet")


def test_rejects_round_trip(tmp_path: Path) -> None:
    rows = [
        ("s6_an", "subject 6/anger/s6_an.avi", "protocol: subject 6 is excluded"),
        ("x", "x.mp4", "no face"),
    ]
    write_rejects(rows, tmp_path / "rejects.parquet")
    df = read_rejects(tmp_path / "rejects.parquet")
    assert list(df.columns) == ["clip_id", "source", "reason"]
    assert list(df.itertuples(index=False, name=None)) == rows
    write_rejects([], tmp_path / "empty.parquet")
    assert len(read_rejects(tmp_path / "empty.parquet")) == 0
    write_rejects(df, tmp_path / "again.parquet")
    assert len(read_rejects(tmp_path / "again.parquet")) == 2
    pq.write_table(pa.table({"clip_id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(MaedferError, match="source, reason"):
        read_rejects(tmp_path / "bad.parquet")
