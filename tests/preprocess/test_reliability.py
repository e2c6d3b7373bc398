"""``prepare`` keeps its promises under faults: same bytes, nothing lost, one line (docs/design.md).

Real media (the committed portraits animated into clips), real MTCNN, real encoding, real
Parquet; faults are real files (empty, renamed JPEGs, rotated and face-leaving videos) or real
OS errors raised where the clip is written.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.manifests import read_manifest, read_rejects
from maedfer.preprocess import clip as clip_module
from maedfer.preprocess.video import probe_video, read_video_frames
from tests.preprocess.media import (
    MediaWriter,
    encode_video,
    load_rgb,
    portrait_clip,
    set_display_rotation,
)
from tests.rawtrees import make_ravdess

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
STEMS = [
    "02-01-01-01-01-01-01",
    "02-01-03-02-01-02-01",
    "02-01-05-01-02-01-01",
    "02-01-08-02-02-02-01",
    "02-01-02-01-01-01-01",
    "02-01-04-01-02-01-01",
]


def _tree(root: Path, portraits, stems=STEMS, frames: int = 12) -> Path:
    keep = set(stems)
    writer = MediaWriter(root / "work", portraits, frames=frames, keep=lambda p: p.stem in keep)
    make_ravdess(root / "RAVDESS", actors=[1], write=writer, full_av=False, songs=False)
    return root / "RAVDESS"


def _prepare(raw: Path, out: Path, *extra: str, code: int = 0):
    result = runner.invoke(
        app, ["prepare", "ravdess", "--raw", str(raw), "--out", str(out), "--size", "64", *extra]
    )
    assert result.exit_code == code, result.output
    return result


def _reasons(out: Path) -> dict[str, str]:
    df = read_rejects(out / "rejects.parquet")
    return dict(zip(df["clip_id"], df["reason"], strict=True))


def _clip_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "clips").glob("*.mp4"))}


def _one_error_line(result) -> str:
    """stderr ends with exactly one error line (the progress bar may stand before it)."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if "maedfer:" in line]
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: "), result.stderr
    return lines[0]


def test_one_and_two_workers_give_identical_bytes(tmp_path: Path, portraits) -> None:
    raw = _tree(tmp_path, portraits)
    _prepare(raw, tmp_path / "one", "--workers", "1")
    _prepare(raw, tmp_path / "two", "--workers", "2")
    _prepare(raw, tmp_path / "again", "--workers", "1")
    one = _clip_bytes(tmp_path / "one")
    assert len(one) == len(STEMS)
    assert one == _clip_bytes(tmp_path / "two") == _clip_bytes(tmp_path / "again")
    a, meta_a = read_manifest(tmp_path / "one" / "manifest.parquet")
    b, meta_b = read_manifest(tmp_path / "two" / "manifest.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert meta_a["fingerprints"] == meta_b["fingerprints"]


def test_a_transient_failure_is_retried_in_the_run(tmp_path: Path, portraits, monkeypatch) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:3])
    real, calls = clip_module.write_clip, []

    def full_once(frames, path, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 2:  # the disk is full for a moment
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(frames, path, **kwargs)

    monkeypatch.setattr(clip_module, "write_clip", full_once)
    result = _prepare(raw, tmp_path / "out")
    assert "3 clips ok, 0 rejected" in result.stdout
    assert len(calls) == 4  # the failed clip was written again at the end of the run
    assert not (tmp_path / "out" / "rejects.parquet").exists() or not _reasons(tmp_path / "out")


def test_a_persistent_failure_ends_non_zero_and_a_rerun_retries_it(
    tmp_path: Path, portraits, monkeypatch
) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:3])
    real = clip_module.write_clip
    victim = f"{STEMS[1]}.mp4"

    def full_for_one(frames, path, **kwargs):
        if Path(path).name == victim:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(frames, path, **kwargs)

    monkeypatch.setattr(clip_module, "write_clip", full_for_one)
    out = tmp_path / "out"
    result = _prepare(raw, out, code=1)
    line = _one_error_line(result)
    assert "1 clip(s) failed for environmental reasons" in line and STEMS[1] in line
    assert "No space left on device" in result.stdout and STEMS[1] in result.stdout
    assert not (out / "manifest.parquet").exists()  # an incomplete run writes no manifest
    monkeypatch.setattr(clip_module, "write_clip", real)  # the disk has room again
    result = _prepare(raw, out)
    assert "3 clips ok, 0 rejected" in result.stdout
    df, _ = read_manifest(out / "manifest.parquet")
    assert STEMS[1] in set(df["clip_id"])


def test_a_repaired_file_is_prepared_and_rejects_can_be_rejudged(tmp_path: Path, portraits) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:3])
    broken = raw / "Actor_01" / f"{STEMS[2]}.mp4"
    good = broken.read_bytes()
    broken.write_bytes(b"")
    out = tmp_path / "out"
    _prepare(raw, out)
    assert _reasons(out) == {STEMS[2]: "empty file"}
    broken.write_bytes(good)  # the user downloads it again
    result = _prepare(raw, out)
    assert "3 clips ok, 0 rejected" in result.stdout
    # A reject whose file did not change is kept, unless asked to judge it again.
    frame = cv2.imencode(".jpg", portrait_clip(load_rgb(portraits["obama"]), "obama", 1)[0])[1]
    broken.write_bytes(frame.tobytes())  # a JPEG renamed .mp4
    _prepare(raw, out)
    assert _reasons(out)[STEMS[2]].startswith("too short: 1 frames")
    journal = out / ".prepare" / "all.jsonl"
    lines = journal.read_text().count("\n")
    _prepare(raw, out)
    assert journal.read_text().count("\n") == lines  # nothing re-judged
    _prepare(raw, out, "--retry-rejects")
    assert journal.read_text().count("\n") == lines + 1  # the one reject, judged again


def test_short_videos_and_faces_that_leave_are_rejected(tmp_path: Path, portraits) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:1])
    folder = raw / "Actor_01"
    face = portrait_clip(load_rgb(portraits["biden"]), "biden", frames=20)
    leaves, stays = face.copy(), face.copy()
    leaves[8:] = 127  # a face in 8 of 20 frames: 40 %
    stays[12:] = 127  # 60 %
    encode_video(leaves, folder / f"{STEMS[1]}.mp4")
    encode_video(stays, folder / f"{STEMS[2]}.mp4")
    encode_video(face[:1], folder / f"{STEMS[3]}.mp4")  # one frame
    encode_video(face[:7], folder / f"{STEMS[4]}.mp4")  # seven
    out = tmp_path / "out"
    _prepare(raw, out)
    reasons = _reasons(out)
    assert reasons[STEMS[1]].startswith("face_ratio: a face in 40% of 20 frames")
    assert reasons[STEMS[3]].startswith("too short: 1 frames")
    assert reasons[STEMS[4]].startswith("too short: 7 frames")
    df, _ = read_manifest(out / "manifest.parquet")
    kept = df.set_index("clip_id")
    assert kept.loc[STEMS[2], "face_ratio"] == pytest.approx(0.6)
    _prepare(raw, tmp_path / "lenient", "--min-face-ratio", "0.3", "--min-frames", "5")
    lenient = _reasons(tmp_path / "lenient")
    assert set(lenient) == {STEMS[3]}


def test_display_rotation_is_honoured(tmp_path: Path, portraits) -> None:
    """A phone video stored sideways with a 90-degree display matrix: faces in every frame."""
    raw = _tree(tmp_path, portraits, STEMS[:1])
    face = portrait_clip(load_rgb(portraits["grace_hopper"]), "grace_hopper", frames=16)
    path = raw / "Actor_01" / f"{STEMS[1]}.mp4"
    encode_video(np.ascontiguousarray(np.rot90(face, 1, axes=(1, 2))), path)  # stored sideways
    set_display_rotation(path, 90)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (160, 128, -90)
    frames, _ = read_video_frames(path)
    assert frames.shape == face.shape and np.abs(frames.astype(int) - face).mean() < 12
    out = tmp_path / "out"
    _prepare(raw, out)
    df, _ = read_manifest(out / "manifest.parquet")
    assert df.set_index("clip_id").loc[STEMS[1], "face_ratio"] == 1.0


def test_bad_output_folders_are_one_line(tmp_path: Path, portraits) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:1])
    (tmp_path / "a_file").write_text("x")
    result = _prepare(raw, tmp_path / "a_file" / "out", code=1)
    line = _one_error_line(result)
    assert str(tmp_path / "a_file") in line


def _journal_count(out: Path) -> int:
    path = out / ".prepare" / "all.jsonl"
    return path.read_text().count('"clip_id"') if path.exists() else 0


def test_ctrl_c_exits_130_in_one_line_and_resumes(tmp_path: Path, portraits) -> None:
    raw = _tree(tmp_path, portraits, STEMS, frames=40)
    out = tmp_path / "out"
    args = ["prepare", "ravdess", "--raw", str(raw), "--out", str(out), "--size", "64"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maedfer.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _journal_count(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "maedfer: interrupted" in err.strip().splitlines()[-1]
    assert 1 <= _journal_count(out) < len(STEMS)
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and f"{len(STEMS)} clips ok" in result.stdout


def test_outputs_honour_the_umask(tmp_path: Path, portraits) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:2])
    old = os.umask(0o027)
    try:
        _prepare(raw, tmp_path / "out")
    finally:
        os.umask(old)
    for path in ("manifest.parquet", "rejects.parquet", f"clips/{STEMS[0]}.mp4"):
        target = tmp_path / "out" / path
        if target.exists():
            assert target.stat().st_mode & 0o777 == 0o640, path


def die_once_on_b(entry):
    """A worker's job that kills its process on clip "b" the first time (a marker file, named
    by the entry's source, says; the workers fork from a server that may predate the test, so
    the test cannot tell them through the environment)."""
    from maedfer.preprocess.clip import ClipResult

    marker = Path(entry.source)
    if entry.clip_id == "b" and not marker.exists():
        marker.write_text("died")
        os._exit(9)  # as the OOM killer does: no exception, no clean-up
    return ClipResult(entry.clip_id, entry.source, path=f"clips/{entry.clip_id}.mp4")


def always_die_on_b(entry):
    from maedfer.preprocess.clip import ClipResult

    if entry.clip_id == "b":
        os._exit(9)
    return ClipResult(entry.clip_id, entry.source, path=f"clips/{entry.clip_id}.mp4")


@pytest.mark.parametrize("work", [die_once_on_b, always_die_on_b])
def test_a_killed_worker_loses_no_clip(work, tmp_path: Path) -> None:
    from maedfer.manifests import ClipEntry
    from maedfer.preprocess.clip import PrepareOptions
    from maedfer.preprocess.driver import _in_pool

    options = PrepareOptions(dataset="ravdess", raw_root=tmp_path, out=tmp_path)
    entries = [
        ClipEntry(k, str(tmp_path / f"{k}.marker"), "video", "1", 0, "neutral", 1, None)
        for k in "abcde"
    ]
    results = []
    _in_pool(entries, options, {}, 2, results.append, work=work)
    by_id = {r.clip_id: r for r in results}
    assert len(results) == 5 and sorted(by_id) == list("abcde")  # each clip once
    if work is die_once_on_b:
        assert all(r.ok for r in results)
    else:  # a failure, never a reject: a re-run tries b again (and any clip that shared its
        # pool both times)
        assert by_id["b"].failed and "worker died" in by_id["b"].failure
        assert all(r.ok or r.failed for r in results) and not any(r.reason for r in results)
