"""Issue 21, case 1: one path rule for tables and manifests; nothing is written outside --out.

Through the real CLI: a labels table whose rows climb out of ``--raw`` with ``..`` is refused
in one line before anything is written, whatever ``--out`` is (the repro: ``--out`` one level
above ``--raw`` and the row ``../raw/P2/v2.mp4``); ``x/../y.mp4`` is the row ``y.mp4``; a file
symlinked into the root is inside it; a manifest path with ``..`` is refused by the loaders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.manifests import read_manifest
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset

runner = CliRunner()


def _raw(root: Path) -> Path:
    """``root/raw/P1/v1.mp4``, ``P2/v2.mp4``: the index reads names only, so any bytes do."""
    for rel in ("P1/v1.mp4", "P2/v2.mp4"):
        (root / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "raw" / rel).write_bytes(b"original " + rel.encode())
    return root / "raw"


def _table(path: Path, rows: list[str]) -> Path:
    path.write_text("path,label,split\n" + "".join(r + "\n" for r in rows))
    return path


def _one_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: "), lines
    return lines[0]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_row_climbing_out_of_raw_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    out = tmp_path  # one level above --raw: the repro of the issue
    labels = _table(tmp_path / "labels.csv", ["P1/v1.mp4,still,train", "../raw/P2/v2.mp4,nod,test"])
    before = _tree(tmp_path)
    line = _one_line(
        runner.invoke(
            app,
            ["prepare", "folder", "--raw", str(raw), "--out", str(out), "--labels", str(labels)],
        )
    )
    assert "labels.csv line 3: path ../raw/P2/v2.mp4 leads outside" in line
    assert _tree(tmp_path) == before  # the raw videos untouched, no manifest, no clips
    assert not (tmp_path / "clips").exists()

    deep = _table(
        tmp_path / "deep.csv", ["P1/v1.mp4,still,train", "../../../../escape/v.mp4,nod,test"]
    )
    line = _one_line(
        runner.invoke(
            app,
            [
                "prepare",
                "folder",
                "--raw",
                str(raw),
                "--out",
                str(tmp_path / "out"),
                "--labels",
                str(deep),
                "--index-only",
            ],
        )
    )
    assert "leads outside" in line
    assert not list(tmp_path.parent.parent.glob("escape")) and not (tmp_path / "out").exists()


def test_one_file_is_one_row_however_it_is_spelled(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    labels = _table(tmp_path / "labels.csv", ["P2/v2.mp4,nod,test", "P1/../P2/v2.mp4,still,train"])
    line = _one_line(
        runner.invoke(
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
            ],
        )
    )
    assert (
        "line 3: path P1/../P2/v2.mp4 (P2/v2.mp4) is listed twice (also labels.csv line 2)" in line
    )


def test_rows_are_normalised_and_a_file_symlinked_into_raw_is_inside(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "v3.mp4"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"v3")
    (raw / "P3").mkdir()
    os.symlink(elsewhere, raw / "P3" / "link.mp4")
    labels = _table(
        tmp_path / "labels.csv",
        [
            "./P1//v1.mp4,still,train",
            f"{raw / 'P3' / 'link.mp4'},nod,test",
            "P2/x/../v2.mp4,nod,train",
        ],
    )
    (raw / "P2" / "x").mkdir()
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "prepare",
            "folder",
            "--raw",
            str(raw),
            "--out",
            str(out),
            "--labels",
            str(labels),
            "--index-only",
        ],
    )
    assert result.exit_code == 0, result.output
    df, _ = read_manifest(out / "manifest.parquet")
    assert sorted(df["source"]) == ["P1/v1.mp4", "P2/v2.mp4", "P3/link.mp4"]
    assert sorted(df["path"]) == ["clips/P1/v1.mp4", "clips/P2/v2.mp4", "clips/P3/link.mp4"]

    outside = _table(tmp_path / "outside.csv", [f"{elsewhere},nod,test", "P1/v1.mp4,a,train"])
    line = _one_line(
        runner.invoke(
            app,
            [
                "prepare",
                "folder",
                "--raw",
                str(raw),
                "--out",
                str(out),
                "--labels",
                str(outside),
                "--index-only",
            ],
        )
    )
    assert f"path {elsewhere} is not under {raw}" in line


def test_raw_inside_the_clips_folder_of_out_is_refused(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "out" / "clips")
    labels = _table(tmp_path / "labels.csv", ["P1/v1.mp4,still,train", "P2/v2.mp4,nod,test"])
    line = _one_line(
        runner.invoke(
            app,
            [
                "prepare",
                "folder",
                "--raw",
                str(raw),
                "--out",
                str(tmp_path / "out" / "clips" / ".."),
                "--labels",
                str(labels),
            ],
        )
    )
    assert "lies inside" in line and "would replace the raw videos" in line
    assert (raw / "P1" / "v1.mp4").read_bytes() == b"original P1/v1.mp4"


def test_a_manifest_path_climbing_out_is_refused_by_the_loaders(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", clips_per_class=2)
    table = pq.read_table(manifest)
    paths = table.column("path").to_pylist()
    paths[1] = "../data/" + paths[1]
    bad = tmp_path / "data" / "bad.parquet"
    table = table.set_column(table.column_names.index("path"), "path", pa.array(paths))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(manifest).metadata), bad)
    result = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(bad),
            "--fold",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--dry-run",
            *cli_sets({**TINY_FINETUNE_KEYS, "data.workers": 0}),
        ],
    )
    line = _one_line(result)
    assert "climbs out of the manifest's folder" in line and paths[1] in line
