"""Issue 21, case 10: a labels table's extra columns are real Parquet columns of the manifest.

After the manifest's own columns, in the table's order, named by ``maedfer.extra``: a user
reading the manifest with pandas or pyarrow sees ``session``; shards merge with them; a column
named like a manifest column is refused; a manifest written before (the values in a JSON blob
under ``maedfer.extra``) is still read, and joined back by ``with_extra``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.manifests import MANIFEST_COLUMNS, read_manifest, with_extra
from maedfer.pipelines.select import load_clip_table

runner = CliRunner()


def _raw(root: Path) -> Path:
    for rel in ("P1/a.mp4", "P1/b.mp4", "P2/c.mp4", "P2/d.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def _labels(path: Path, **extra) -> Path:
    table = pd.DataFrame(
        {
            "path": ["P1/a.mp4", "P1/b.mp4", "P2/c.mp4", "P2/d.mp4"],
            "label": ["calm", "tense", "calm", "tense"],
            "subject": ["P1", "P1", "P2", "P2"],
            "session": ["morning", "evening", "morning", None],
            "take": [1, 2, 3, 4],
            **extra,
        }
    )
    table.to_csv(path, index=False)
    return path


def _prepare(*args: str) -> None:
    result = runner.invoke(app, ["prepare", "folder", *args, "--index-only", "--folds", "2"])
    assert result.exit_code == 0, result.output


def test_extra_columns_are_columns_after_the_manifests_own(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    out = tmp_path / "out"
    _prepare("--raw", str(raw), "--out", str(out), "--labels", str(_labels(tmp_path / "l.csv")))
    schema = pq.read_schema(out / "manifest.parquet")
    assert schema.names == [*MANIFEST_COLUMNS, "session", "take"]
    assert json.loads(schema.metadata[b"maedfer.extra"]) == ["session", "take"]
    assert schema.field("take").type == pa.int64()
    plain = pd.read_parquet(out / "manifest.parquet").set_index("clip_id")  # any reader
    assert plain.loc["P1/b", "session"] == "evening" and plain.loc["P2/c", "take"] == 3
    assert pd.isna(plain.loc["P2/d", "session"])
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta["extra"] == ["session", "take"] and list(df.columns[-2:]) == ["session", "take"]
    assert with_extra(df, meta).equals(df)  # nothing to join: the columns are there
    table = load_clip_table(out / "manifest.parquet", mode="test", fold=1)  # loaders ignore them
    assert len(table) == 2


def test_shards_merge_with_their_extra_columns(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    labels = _labels(tmp_path / "l.csv")
    out = tmp_path / "out"
    base = ["--raw", str(raw), "--out", str(out), "--labels", str(labels)]
    for shard in ("1/2", "2/2"):
        _prepare(*base, "--shard", shard)
    _prepare(*base, "--merge")
    merged = pd.read_parquet(out / "manifest.parquet").set_index("clip_id")
    assert merged["take"].to_dict() == {"P1/a": 1, "P1/b": 2, "P2/c": 3, "P2/d": 4}


def test_a_column_named_like_a_manifest_column_is_refused(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    labels = _labels(tmp_path / "l.csv", source=["x", "y", "z", "w"])
    result = runner.invoke(
        app,
        [
            "prepare",
            "folder",
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--labels",
            str(labels),
            "--index-only",
            "--folds",
            "2",
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "maedfer: error: l.csv: column(s) 'source' are named like "
        "manifest columns; rename them (other columns are kept in "
        "the manifest as they are)"
    )


def test_a_manifest_with_the_former_json_blob_is_still_read(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    out = tmp_path / "out"
    _prepare("--raw", str(raw), "--out", str(out), "--labels", str(_labels(tmp_path / "l.csv")))
    table = pq.read_table(out / "manifest.parquet")
    old = table.select(list(MANIFEST_COLUMNS))  # as maedfer wrote it before: values in a blob
    blob = {
        "session": {"P1/a": "morning", "P1/b": "evening", "P2/c": "morning", "P2/d": None},
        "take": {"P1/a": 1, "P1/b": 2, "P2/c": 3, "P2/d": 4},
    }
    metadata = {**table.schema.metadata, b"maedfer.extra": json.dumps(blob).encode()}
    pq.write_table(old.replace_schema_metadata(metadata), tmp_path / "old.parquet")
    df, meta = read_manifest(tmp_path / "old.parquet")
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    full = with_extra(df, meta).set_index("clip_id")
    assert full.loc["P1/b", "session"] == "evening" and full.loc["P2/c", "take"] == 3
