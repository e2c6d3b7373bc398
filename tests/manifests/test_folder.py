"""The ``folder`` protocol on generated tables: layouts, folds, bad tables (no pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.manifests import get_dataset, get_protocol, list_datasets, read_manifest, with_extra

runner = CliRunner()


def _files(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def _folder(**options):
    return get_protocol("folder").configure(**options)


def test_registry_lists_every_dataset_with_its_attributes() -> None:
    names = list_datasets()
    assert "folder" in names and {"ravdess", "voxceleb2", "dfew"} <= set(names)
    assert get_dataset("voxceleb2").in_place and not get_dataset("ravdess").in_place
    assert get_dataset("dfew").media == ("frames", "videos")
    assert get_dataset("ravdess").published["1"] == "24875c4990b33976"
    assert not get_dataset("folder").published
    with pytest.raises(MaedferError, match="folder"):
        get_dataset("affectnet")
    with pytest.raises(MaedferError, match="--labels: .* not of ravdess"):
        get_protocol("ravdess").configure(labels="x.csv")


def _uneven_table(tmp_path: Path, subjects: int = 40, classes: int = 6) -> Path:
    rng = np.random.default_rng(7)
    rows = []
    for s in range(subjects):
        for c in range(classes):
            for k in range(int(rng.integers(1, 9)) if c else int(rng.integers(4, 16))):
                rows.append((f"S{s:02d}/c{c}_{k}.mp4", f"class{c}", f"S{s:02d}"))
    _files(tmp_path / "raw", [r[0] for r in rows])
    table = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "label", "subject"]).to_csv(table, index=False)
    return table


def test_built_folds_are_subject_independent_stratified_and_seeded(tmp_path: Path) -> None:
    table = _uneven_table(tmp_path)
    index = _folder(labels=table, folds=5, seed=3).index(tmp_path / "raw")
    df = index.to_frame()
    assert index.num_folds == 5 and set(df["fold"]) == {1, 2, 3, 4, 5}
    assert (df.groupby("subject")["fold"].nunique() == 1).all()  # each subject in one fold
    counts = pd.crosstab(df["fold"], df["label"])
    per_subject = df.groupby(["subject", "label"]).size().unstack(fill_value=0)
    target = counts.sum(axis=0) / 5
    # Within one subject's clips of each class of the target (whole subjects move together).
    assert ((counts - target).abs() <= per_subject.max(axis=0)).all().all(), counts
    assert (counts.sum(axis=1) - len(df) / 5).abs().max() <= per_subject.sum(axis=1).max()
    again = _folder(labels=table, folds=5, seed=3).index(tmp_path / "raw").to_frame()
    pd.testing.assert_frame_equal(df, again)
    other = _folder(labels=table, folds=5, seed=4).index(tmp_path / "raw").to_frame()
    assert not other["fold"].equals(df["fold"])
    assert index.protocol == "maedfer:folder:table:5fold-subject-seed3"


def test_class_folders_with_subjects_from_names_and_stratified_fallback(tmp_path: Path) -> None:
    names = [f"{c}/P{s}_{c}_{k}.mp4" for c in ("sad", "happy") for s in (1, 2, 3) for k in (1, 2)]
    _files(tmp_path, names + ["stray.mp4", "happy/notes.txt", "happy/odd.mp4"])
    index = _folder(subject_from=r"^P(?P<subject>\d+)_", folds=3).index(tmp_path)
    assert index.classes == ["happy", "sad"] and len(index.entries) == 12
    df = index.to_frame()
    assert set(df["subject"]) == {"1", "2", "3"}
    assert (df.groupby("subject")["fold"].nunique() == 1).all()
    reasons = {r[1]: r[2] for r in index.rejects}
    assert reasons["stray.mp4"].startswith("protocol: not in a class folder")
    assert reasons["happy/odd.mp4"].startswith("no subject:")
    by_order = _folder(classes="sad,happy", folds=3).index(tmp_path)
    assert by_order.classes == ["sad", "happy"]
    assert any("NOT subject-independent" in w for w in by_order.warnings)
    sizes = by_order.to_frame().groupby(["fold", "label"]).size()
    assert sizes.max() - sizes.min() <= 1


def test_table_split_extra_columns_and_frame_folders(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _files(raw, ["a/x1.mp4", "a/x2.avi", "b/y1.mp4", "faces/z1/000.png"])
    table = tmp_path / "t.parquet"
    pd.DataFrame(
        {
            "path": ["a/x1.mp4", "a/x2.avi", "b/y1.mp4", "faces/z1"],
            "label": ["calm", "tense", "calm", "tense"],
            "subject": ["a", "a", "b", "c"],
            "split": ["train", "train", "test", "test"],
            "valence": [0.5, -1.0, None, 2.0],
            "session": [1, 2, 3, 4],
        }
    ).to_parquet(table)
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
            str(table),
            "--index-only",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "test  " in result.stdout and "train  " in result.stdout  # fingerprints printed
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta["classes"] == ["calm", "tense"] and meta["num_folds"] == 0
    assert df["split"].tolist() == ["train", "train", "test", "test"]
    assert df.set_index("clip_id").loc["faces/z1", "path"] == "clips/faces/z1.mp4"
    full = with_extra(df, meta).set_index("clip_id")
    assert full.loc["a/x2", "valence"] == -1.0 and pd.isna(full.loc["b/y1", "valence"])
    assert full.loc["faces/z1", "session"] == 4
    assert set(meta["fingerprints"]) == {"test", "train"}


BAD_TABLES = {
    "missing column": ("path,emotion\na.mp4,x\n", [], "no 'label' column (columns: path, emotion)"),
    "no such path": (
        "path,label\na.mp4,x\nnope.mp4,y\n",
        [],
        "labels.csv line 3: path nope.mp4 does not exist under",
    ),
    "label outside classes": (
        "path,label\na.mp4,happy\n",
        ["--classes", "sad,calm"],
        "line 2: label 'happy' is not in --classes (sad, calm)",
    ),
    "subject in two splits": (
        "path,label,subject,split\na.mp4,x,P1,train\nb.mp4,y,P1,test\n",
        [],
        "line 3: subject 'P1' is in split test here and in split train",
    ),
    "subject in two folds": (
        "path,label,subject,fold\na.mp4,x,P1,1\nb.mp4,y,P1,2\n",
        [],
        "subject 'P1' is in fold 2 here and in fold 1",
    ),
    "folds and a split": (
        "path,label,split\na.mp4,x,train\n",
        ["--folds", "3"],
        "--folds 3: labels.csv has a 'split' column already",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_are_one_line(case: str, tmp_path: Path) -> None:
    text, flags, message = BAD_TABLES[case]
    _files(tmp_path / "raw", ["a.mp4", "b.mp4"])
    (tmp_path / "labels.csv").write_text(text)
    result = runner.invoke(
        app,
        [
            "prepare",
            "folder",
            "--raw",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "out"),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--index-only",
            *flags,
        ],
    )
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: "), result.output
    assert message in lines[0]
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_unlabeled_corpus_and_refused_combinations(tmp_path: Path) -> None:
    _files(tmp_path, ["spk1/a.mp4", "spk1/deep/b.mkv", "spk2/c.mp4", "readme.txt"])
    index = _folder(unlabeled=True).index(tmp_path)
    assert [e.clip_id for e in index.entries] == ["spk1/a", "spk1/deep/b", "spk2/c"]
    assert {(e.label, e.split, e.fold) for e in index.entries} == {(-1, "pretrain", None)}
    assert index.classes == [] and index.num_folds == 0
    with pytest.raises(MaedferError, match="--folds: not with --unlabeled"):
        _folder(unlabeled=True, folds=3)
    _files(tmp_path / "two", ["sad/P1_a.mp4", "happy/P2_b.mp4"])
    with pytest.raises(MaedferError, match="--folds 5 needs at least 5 subjects; found 2"):
        _folder(subject_from=r"^(P\d)_").index(tmp_path / "two")
