"""Issue 21, case 9: the smaller items, each with its repro through the CLI.

predict refuses what prepare refuses (under 8 frames, a still image); a variable-frame-rate
overlay keeps each frame's time (and the windows' times follow them); a labels table left at
the raw root without ``--labels`` is said; a symlink loop in a class folder does not index one
video under two classes; a run's ``config.yaml`` holds absolute paths and resume compares the
files, not their spelling; predict finds an unwritable ``--out`` before its work;
``protocol --print-commands`` prints only commands that can work; README does not call the
manifest byte-identical; library warnings stay off the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.manifests import read_manifest, read_rejects
from tests.inference.media import portrait_frames, save_tiny_checkpoint
from tests.preprocess.media import encode_video
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset, one_thread

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
# frame times of a variable-rate video: bursts at 25 fps with pauses (a phone's screen capture)
VFR_TIMES = [0.04 * i + (0.3 if i >= 8 else 0.0) + (0.5 if i >= 16 else 0.0) for i in range(24)]


def _one_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line.split("\r")[-1] for line in result.output.splitlines()]
    lines = [line for line in lines if line.startswith("maedfer:")]
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt")


def test_predict_refuses_what_prepare_refuses(checkpoint: Path, tmp_path: Path) -> None:
    short = tmp_path / "three.mp4"
    encode_video(portrait_frames(3), short)
    line = _one_line(runner.invoke(app, ["predict", str(short), "--checkpoint", str(checkpoint)]))
    assert f"cannot read video {short}: too short: 3 frame(s); predict needs at least 8" in line
    still = REPO / "maedfer" / "assets" / "portraits" / "astronaut.png"
    result = runner.invoke(
        app,
        [
            "predict",
            str(short),
            str(still),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())["videos"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["reason"].startswith("too short: ") for r in rows), rows


def _vfr_video(path: Path) -> Path:
    frames = portrait_frames(len(VFR_TIMES))
    base = Fraction(1, 1000)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = stream.time_base = base
        for t, image in zip(VFR_TIMES, frames, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(t / base), base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    return [round(t - times[0], 3) for t in times]


def test_a_variable_rate_overlay_keeps_every_frames_time(checkpoint: Path, tmp_path: Path) -> None:
    video = _vfr_video(tmp_path / "vfr.mp4")
    assert _times(video) == [round(t, 3) for t in VFR_TIMES]
    overlay, table = tmp_path / "overlay.mp4", tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "predict",
            str(video),
            "--checkpoint",
            str(checkpoint),
            "--overlay",
            str(overlay),
            "--out",
            str(table),
            "--hop",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _times(overlay) == _times(video)  # not re-timed at the average rate
    windows = json.loads(table.read_text())["windows"]
    for row in windows:  # each window spans the times its frames are shown
        assert row["start_s"] == round(VFR_TIMES[row["start_frame"]], 3)
        end = row["end_frame"]
        shown_until = VFR_TIMES[end + 1] if end + 1 < len(VFR_TIMES) else VFR_TIMES[-1] + 0.04
        assert row["end_s"] == round(shown_until, 3)


def test_a_forgotten_labels_table_is_said(tmp_path: Path, caplog) -> None:
    raw = tmp_path / "mylab"
    for rel in ("P01/happy_1.mp4", "P01/sad_1.mp4", "P02/happy_1.mp4", "P02/sad_1.mp4"):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(b"")
    (raw / "labels.csv").write_text("path,label\nP01/happy_1.mp4,happy\n")
    with caplog.at_level(logging.WARNING, logger="maedfer"):
        result = runner.invoke(
            app,
            [
                "prepare",
                "folder",
                "--raw",
                str(raw),
                "--out",
                str(tmp_path / "out"),
                "--index-only",
                "--folds",
                "2",
            ],
        )
    assert result.exit_code == 0, result.output
    said = " ".join(r.getMessage() for r in caplog.records)
    assert (
        f"{raw / 'labels.csv'} is not read: without --labels, each video's class is its top "
        "folder (P01, P02)"
        in said
        and f"pass --labels {raw / 'labels.csv'}" in said
    )


def test_a_symlink_loop_does_not_index_a_video_under_two_classes(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for rel in ("happy/a.mp4", "happy/b.mp4", "sad/c.mp4", "sad/d.mp4"):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(rel.encode())
    os.symlink("..", raw / "happy" / "loop")  # happy/loop/sad/c.mp4 is sad/c.mp4
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["prepare", "folder", "--raw", str(raw), "--out", str(out), "--index-only", "--folds", "2"],
    )
    assert result.exit_code == 0, result.output
    df, _ = read_manifest(out / "manifest.parquet")
    assert sorted(df["source"]) == ["happy/a.mp4", "happy/b.mp4", "sad/c.mp4", "sad/d.mp4"]
    assert df.set_index("source").loc["sad/c.mp4", "label_name"] == "sad"
    rejects = read_rejects(out / "rejects.parquet")
    dup = rejects[rejects["source"] == "happy/loop/sad/c.mp4"]
    assert dup["reason"].tolist() == ["duplicate: same file as sad/c.mp4"]


@pytest.mark.usefixtures(one_thread.__name__)
def test_config_yaml_holds_absolute_paths_and_resume_compares_files(
    tmp_path: Path, monkeypatch
) -> None:
    make_dataset(tmp_path / "data", clips_per_class=2)
    monkeypatch.chdir(tmp_path / "data")
    keys = {
        **TINY_FINETUNE_KEYS,
        "schedule.epochs": 1,
        "data.batch_size": 2,
        "data.workers": 0,
        "loss.mixup": 0,
        "loss.cutmix": 0,
    }
    first = runner.invoke(
        app,
        ["finetune", "--data", "manifest.parquet", "--fold", "1", "--out", "run", *cli_sets(keys)],
    )
    assert first.exit_code == 0, first.output
    saved = yaml.safe_load((tmp_path / "data" / "run" / "config.yaml").read_text())
    assert saved["data"]["manifest"] == str(tmp_path / "data" / "manifest.parquet")
    assert saved["run"]["out"] == str(tmp_path / "data" / "run")
    again = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            "./manifest.parquet",
            "--fold",
            "1",
            "--out",
            str(tmp_path / "data" / "run"),
            *cli_sets(keys),
        ],
    )
    assert again.exit_code == 0, again.output  # the same file spelled otherwise: same run
    assert "holds a finished run" in again.output
    monkeypatch.chdir(tmp_path)  # a replay from another folder
    replay = runner.invoke(
        app, ["finetune", "--config", "data/run/config.yaml", "--out", "replay", "--dry-run"]
    )
    assert replay.exit_code == 0, replay.output


def test_predict_finds_an_unwritable_out_before_its_work(
    checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    from maedfer.inference import predict

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(predict, "Predictor", no_work)
    (tmp_path / "a_file").write_text("x")
    video = tmp_path / "v.mp4"
    encode_video(portrait_frames(8), video)
    out = tmp_path / "a_file" / "results.json"
    line = _one_line(
        runner.invoke(
            app, ["predict", str(video), "--checkpoint", str(checkpoint), "--out", str(out)]
        )
    )
    assert line.startswith(
        f"maedfer: error: cannot write {out}: {tmp_path / 'a_file'} is a file, not a folder"
    )


def test_print_commands_prints_only_commands_that_can_work(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", clips_per_class=2)
    init = save_tiny_checkpoint(tmp_path / "init.pt")
    base = [
        "protocol",
        "finetune-ravdess",
        "--data",
        str(manifest),
        "--out",
        str(tmp_path / "p"),
        "--print-commands",
    ]
    line = _one_line(runner.invoke(app, [*base, "--init", str(init), "--set", "epochs=3"]))
    assert "unknown config key 'epochs'" in line and "schedule.epochs" in line
    line = _one_line(runner.invoke(app, [*base, "--init", str(tmp_path / "nope.pt")]))
    assert f"--init {tmp_path / 'nope.pt'} does not exist" in line
    result = runner.invoke(app, [*base, "--init", str(init), "--set", "schedule.epochs=3"])
    assert result.exit_code == 0 and "--set schedule.epochs=3" in result.stdout


def test_readme_does_not_call_the_manifest_byte_identical() -> None:
    text = " ".join((REPO / "README.md").read_text().split())
    assert "byte-identical clips and manifest" not in text
    assert "all but `maedfer.created`, the time it was written" in text


def test_library_warnings_stay_off_the_terminal(checkpoint: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maedfer.cli",
            "export",
            str(checkpoint),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "onnx"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "warnings.warn" not in done.stderr, done.stderr
    assert np.isfinite(
        json.loads((tmp_path / "onnx" / "inference.json").read_text())["onnx_max_abs_diff"]
    )
