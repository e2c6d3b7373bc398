"""``maedfer prepare folder`` for real on face videos made from the committed portraits.

Both labelled layouts (a labels table, folders per class) through detection, alignment and
encoding; an unlabeled corpus prepared and pre-trained on; ``--shard auto`` in a Slurm array.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.manifests import fold_fingerprints, read_manifest, read_rejects, with_extra
from tests.preprocess.media import encode_video, load_rgb, portrait_clip
from tests.recipes.clipdata import TINY_PRETRAIN_KEYS, cli_sets

runner = CliRunner()
CLASSES = ("still", "sway")


def _prepare(*args: str, env: dict | None = None) -> str:
    result = runner.invoke(app, ["prepare", "folder", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _videos(root: Path, portraits: dict, name, frames: int = 8) -> list[tuple[str, str, str]]:
    """One video per portrait and class at ``root / name(subject, class)``: (path, label,
    subject)."""
    rows = []
    for k, (stem, image) in enumerate(sorted(portraits.items())):
        rgb = load_rgb(image)
        for c, label in enumerate(CLASSES):
            path = name(stem, label)
            encode_video(portrait_clip(rgb, stem, frames=frames, seed=10 * k + c), root / path)
            rows.append((path, label, stem))
    return rows


def test_table_and_class_folders_prepare_for_real(tmp_path: Path, portraits) -> None:
    table_raw, folders_raw = tmp_path / "table", tmp_path / "byclass"
    rows = _videos(table_raw, portraits, lambda s, c: f"{s}/{c}.mp4")
    table = tmp_path / "labels.csv"
    listed = [(p, c, s, i) for i, (p, c, s) in enumerate(rows)]
    pd.DataFrame(listed, columns=["path", "label", "subject", "take"]).to_csv(table, index=False)
    out = tmp_path / "out-table"
    text = _prepare(
        "--raw",
        str(table_raw),
        "--out",
        str(out),
        "--labels",
        str(table),
        "--folds",
        "4",
        "--classes",
        "sway,still",
        "--size",
        "64",
    )
    assert "prepare folder: 8 clips ok, 0 rejected" in text and "fold 4 test" in text
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta["dataset"] == "folder" and meta["classes"] == ["sway", "still"]
    assert meta["num_folds"] == 4 and meta["fingerprints"] == fold_fingerprints(df, num_folds=4)
    assert (df.groupby("subject")["fold"].nunique() == 1).all()
    assert df.groupby("fold")["subject"].nunique().tolist() == [1, 1, 1, 1]  # one portrait each
    assert (df["face_ratio"] == 1.0).all() and (df["width"] == 64).all()
    assert (df["label"] == df["label_name"].map({"sway": 0, "still": 1})).all()
    assert sorted(with_extra(df, meta)["take"]) == list(range(8))
    for path in df["path"]:
        assert (out / path).is_file()

    _videos(folders_raw, portraits, lambda s, c: f"{c}/{s}_{c}.mp4")
    out2 = tmp_path / "out-folders"
    text = _prepare(
        "--raw",
        str(folders_raw),
        "--out",
        str(out2),
        "--subject-from",
        r"^([a-z_]+?)_(?:still|sway)",
        "--folds",
        "2",
        "--size",
        "64",
    )
    df2, meta2 = read_manifest(out2 / "manifest.parquet")
    assert len(df2) == 8 and meta2["classes"] == ["still", "sway"]
    assert (
        set(df2["subject"]) == set(portraits)
        and (df2.groupby("subject")["fold"].nunique() == 1).all()
    )
    assert (df2.groupby("fold")["subject"].nunique() == 2).all()  # 4 portraits, 2 folds


def test_unlabeled_corpus_prepares_and_pretrains(tmp_path: Path, portraits) -> None:
    raw = tmp_path / "corpus"
    _videos(raw, portraits, lambda s, c: f"{s}/{c}.mp4", frames=16)
    out = tmp_path / "prepared"
    text = _prepare(
        "--raw", str(raw), "--out", str(out), "--unlabeled", "--size", "32", "--workers", "2"
    )
    assert "prepare folder: 8 clips ok" in text
    df, meta = read_manifest(out / "manifest.parquet")
    assert (df["label"] == -1).all() and (df["split"] == "pretrain").all()
    assert meta["classes"] == [] and meta["num_folds"] == 0 and (df["face_ratio"] == 1.0).all()
    sets = {
        **TINY_PRETRAIN_KEYS,
        "schedule.epochs": 1,
        "data.batch_size": 4,
        "data.workers": 0,
        "schedule.warmup_epochs": 0,
    }
    result = runner.invoke(
        app,
        [
            "pretrain",
            "--data",
            str(out / "manifest.parquet"),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            *cli_sets(sets),
        ],
    )
    assert result.exit_code == 0, result.output[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


SLURM = {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "1"}


def test_shard_auto_in_a_slurm_array_merges_to_the_unsharded_manifest(
    tmp_path: Path, portraits
) -> None:
    raw = tmp_path / "raw"
    rows = _videos(raw, portraits, lambda s, c: f"{c}/{s}.mp4", frames=10)
    rows += _videos(raw, {"obama": portraits["obama"]}, lambda s, c: f"{c}/{s}_long.mp4", frames=40)
    base = ["--raw", str(raw), "--in-place", "--subject-from", r"^([a-z]+)", "--folds", "2"]
    _prepare(*base, "--out", str(tmp_path / "one"))
    sharded = tmp_path / "sharded"
    failed = runner.invoke(
        app,
        ["prepare", "folder", *base, "--out", str(sharded), "--shard", "auto"],
        env={"SLURM_ARRAY_TASK_ID": ""},
    )
    assert failed.exit_code == 1 and "SLURM_ARRAY_TASK_ID" in failed.output
    assert len(failed.output.strip().splitlines()) == 1
    counts = []
    for task in (0, 1, 2):  # --array=0-2
        text = _prepare(
            *base,
            "--out",
            str(sharded),
            "--shard",
            "auto",
            env={**SLURM, "SLURM_ARRAY_TASK_ID": str(task)},
        )
        assert f"shard {task + 1}/3:" in text
        counts.append(int(text.split("clips ok")[0].split()[-1]))
    assert sum(counts) == 10 and min(counts) >= 2  # balanced by work: the long files apart
    _prepare(*base, "--out", str(sharded), "--merge")
    one, meta_one = read_manifest(tmp_path / "one" / "manifest.parquet")
    merged, meta_merged = read_manifest(sharded / "manifest.parquet")
    pd.testing.assert_frame_equal(one, merged)
    assert meta_one["fingerprints"] == meta_merged["fingerprints"]
    assert (one["path"] == one["source"]).all() and one["crop"].notna().all()  # in place
    assert read_rejects(sharded / "rejects.parquet").empty


@pytest.mark.parametrize(
    "task, low, step, want",
    [("1", "1", "1", (1, 3)), ("3", "1", "1", (3, 3)), ("4", "0", "2", (3, 3))],
)
def test_slurm_shard_normalises_the_array_range(task, low, step, want) -> None:
    from maedfer.preprocess.driver import slurm_shard

    env = {
        "SLURM_ARRAY_TASK_ID": task,
        "SLURM_ARRAY_TASK_MIN": low,
        "SLURM_ARRAY_TASK_STEP": step,
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    assert slurm_shard(env) == want


def test_slurm_script_submits_the_array_and_merge_and_its_steps_run(tmp_path: Path) -> None:
    """scripts/slurm/prepare.sbatch with a stand-in ``sbatch``: what it submits, then each
    step as Slurm would run it (index-only, so no pixels)."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "prepare.sbatch"
    raw = tmp_path / "raw"
    for c in ("calm", "tense"):
        for s in range(6):
            (raw / c).mkdir(parents=True, exist_ok=True)
            (raw / c / f"p{s}_{c}.mp4").write_bytes(b"x" * (100 * (s + 1)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\necho 42\n')
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DATASET": "folder",
        "RAW": str(raw),
        "OUT": str(out),
        "SHARDS": "3",
        "SBATCH_LOG": str(tmp_path / "log"),
        "MAEDFER": str(Path(sys.executable).parent / "maedfer"),
        "EXTRA": "--index-only --subject-from ^(p[0-9]+)_ --folds 3",
    }
    env.pop("SLURM_JOB_ID", None)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    submitted = (tmp_path / "log").read_text().splitlines()
    assert "--array=1-3" in submitted[0] and "STEP=shard" in submitted[0]
    assert "--dependency=afterok:42" in submitted[1] and "STEP=merge" in submitted[1]
    for task in ("1", "2", "3"):
        step = {
            **env,
            "SLURM_JOB_ID": "42",
            "STEP": "shard",
            "SLURM_ARRAY_TASK_ID": task,
            "SLURM_ARRAY_TASK_MIN": "1",
            "SLURM_ARRAY_TASK_COUNT": "3",
        }
        done = subprocess.run(["bash", str(script)], env=step, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert (out / f"manifest.shard-{task}-of-3.parquet").is_file()
    merge = {**env, "SLURM_JOB_ID": "43", "STEP": "merge"}
    done = subprocess.run(["bash", str(script)], env=merge, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _prepare(
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "one"),
        "--index-only",
        "--subject-from",
        "^(p[0-9]+)_",
        "--folds",
        "3",
    )
    one, _ = read_manifest(tmp_path / "one" / "manifest.parquet")
    merged, _ = read_manifest(out / "manifest.parquet")
    pd.testing.assert_frame_equal(one, merged)


def test_shards_are_balanced_by_work_longest_first() -> None:
    from maedfer.manifests import ClipEntry
    from maedfer.preprocess.driver import shard_entries

    entries = [ClipEntry(k, f"{k}.mp4", "video", None, 0, "x", None, "pretrain") for k in "abcde"]
    work = [5, 4, 3, 3, 1]  # the docstring's example: shard 1 gets a, d; shard 2 b, c, e
    one, two = (shard_entries(entries, (i, 2), work) for i in (1, 2))
    assert [e.clip_id for e in one] == ["a", "d"] and [e.clip_id for e in two] == ["b", "c", "e"]
    same = [shard_entries(entries, (i, 2)) for i in (1, 2)]  # equal work: round robin
    assert [[e.clip_id for e in s] for s in same] == [["a", "c", "e"], ["b", "d"]]
