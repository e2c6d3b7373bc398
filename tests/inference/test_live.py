"""Live prediction: ``Predictor.stream`` (the same values as ``predict``), ``maedfer predict
--realtime / --stream / --camera``: a JSON line per window as it is scored, dropped frames when
too slow, a clean stop on Ctrl-C."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import maedfer
from maedfer.cli import app
from maedfer.inference import live
from maedfer.inference.stream import window_ends
from tests.inference.media import (
    CLASSES,
    face_video,
    grey_frames,
    portrait_frames,
    save_tiny_checkpoint,
)

runner = CliRunner()
PROBS = [f"prob_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("live")
    face_video(root / "a.mp4", frames=100)
    save_tiny_checkpoint(root / "last.pt")
    return root


def _decoded(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_stream_gives_predicts_values_window_by_window(work: Path) -> None:
    predictor = maedfer.Predictor(work / "last.pt", device="cpu")
    frames = _decoded(work / "a.mp4")
    streamed = predictor.stream(iter(frames), 25.0)
    first = next(streamed)  # an iterator: the first window comes before the rest are read
    rows = pd.DataFrame([first.row] + [w.row for w in streamed])
    whole = predictor.predict(work / "a.mp4")  # 100 frames: one alignment segment, as stream
    columns = [
        "window",
        "start_frame",
        "end_frame",
        "start_s",
        "end_s",
        "face",
        "face_share",
        "top_class",
    ]
    assert rows[columns].astype(str).equals(whole.windows[columns].astype(str))
    np.testing.assert_allclose(rows[PROBS].to_numpy(), whole.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rows["top_p"], whole.windows["top_p"], rtol=0, atol=1e-6)
    # and predict_frames on longer frames (several segments, faceless windows)
    longer = [*portrait_frames(300), *grey_frames(80)]
    rows = pd.DataFrame([w.row for w in predictor.stream(iter(longer), 30.0)])
    batch = predictor.predict_frames(iter(longer), 30.0)
    assert rows["face"].tolist() == batch.windows["face"].tolist()
    assert rows["face"].any() and not rows["face"].all()
    np.testing.assert_allclose(
        rows[PROBS].to_numpy(dtype=float), batch.probabilities, rtol=0, atol=1e-6
    )


def test_low_latency_windows_end_alignment_at_their_last_frame(work: Path) -> None:
    ends = window_ends(16, 4, 8)
    assert [t for t in range(200) if ends(t)] == [60, 92, 124, 156, 188]
    predictor = maedfer.Predictor(work / "last.pt", device="cpu")
    frames = _decoded(work / "a.mp4")
    fast = pd.DataFrame([w.row for w in predictor.stream(iter(frames), 25.0, low_latency=True)])
    slow = predictor.predict_frames(iter(frames), 25.0)
    assert fast["start_frame"].tolist() == slow.windows["start_frame"].tolist()
    # the crops differ a little (smoothing restarts every hop): the probabilities barely
    np.testing.assert_allclose(fast[PROBS].to_numpy(), slow.probabilities, atol=0.05)


def test_realtime_writes_a_json_line_per_window(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "live.jsonl"
    result = runner.invoke(
        app,
        [
            "predict",
            str(work / "a.mp4"),
            "--checkpoint",
            str(work / "last.pt"),
            "--realtime",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--max-lag",
            "30",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["window"] for w in lines] == [0, 1, 2]
    assert [w["start_frame"] for w in lines] == [0, 32, 36]
    assert all(w["face"] and w["dropped_frames"] == 0 for w in lines)
    assert all(0 < w["latency_s"] < 30 for w in lines)
    assert sum(w[p] for p in PROBS for w in lines[:1]) == pytest.approx(1, abs=1e-5)
    assert "the source ended: 3 windows" in result.stderr and "0 dropped" in result.stderr


def test_too_slow_drops_frames_and_restarts_windows(work: Path, tmp_path: Path) -> None:
    """Scoring that takes longer than the lag allowed: the waiting frames are dropped and
    counted, windows restart after the gap and never span one."""
    video = face_video(tmp_path / "long.mp4", frames=250)
    predictor = maedfer.Predictor(work / "last.pt", device="cpu")
    forward = predictor.model.forward

    def slow(video):  # noqa: ANN001, ANN202
        time.sleep(1.0)
        return forward(video)

    predictor.model.forward = slow
    result = live.run_live(
        predictor, live.video_source(video), out=tmp_path / "r.jsonl", max_lag=0.3, echo=False
    )
    assert result.dropped > 0 and result.frames_read == 250
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.rows) >= 2
    assert [r["window"] for r in rows] == list(range(len(rows)))
    spans = [(r["start_frame"], r["end_frame"]) for r in rows]
    assert all(end - start == 60 for start, end in spans[:-1]), spans
    # the last window is whole, or it restarted too near the end for a whole one (fewer than 61
    # frames left): then those frames are scored as predict scores a short video (padded)
    start, end = spans[-1]
    assert end - start == 60 or (start + 60 > 249 and start <= end <= 249), spans
    assert rows[-1]["dropped_frames"] > 0
    starts = [r["start_frame"] for r in rows]
    assert starts == sorted(starts) and any(s % 32 != 0 for s in starts[1:])  # restarted


def test_a_stream_url_is_read_as_it_comes(work: Path, tmp_path: Path) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(work))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.mp4"
        out = tmp_path / "s.jsonl"
        result = runner.invoke(
            app,
            [
                "predict",
                "--stream",
                url,
                "--realtime",
                "--checkpoint",
                str(work / "last.pt"),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--max-lag",
                "30",
            ],
        )
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3


def test_ctrl_c_stops_cleanly_with_the_results_so_far(work: Path, tmp_path: Path) -> None:
    video = face_video(tmp_path / "long.mp4", frames=400)  # 16 s played live
    out = tmp_path / "live.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maedfer.cli",
            "predict",
            str(video),
            "--checkpoint",
            str(work / "last.pt"),
            "--realtime",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_file() and out.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "stopped by Ctrl-C" in stderr
    lines = out.read_text().splitlines()
    assert 1 <= len(lines) < 12 and all(json.loads(line)["face"] for line in lines)


def test_sources_and_their_errors(work: Path) -> None:
    assert live.camera_source("0", "linux").url == "/dev/video0"
    assert live.camera_source("0", "linux").format == "v4l2"
    assert live.camera_source("1", "darwin").format == "avfoundation"
    assert live.camera_source("Integrated Camera", "win32").url == "video=Integrated Camera"
    with pytest.raises(maedfer.MaedferError, match="DirectShow name"):
        live.camera_source("0", "win32")
    missing = runner.invoke(
        app,
        [
            "predict",
            "--camera",
            "/dev/video97",
            "--checkpoint",
            str(work / "last.pt"),
            "--device",
            "cpu",
        ],
    )
    assert missing.exit_code == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open camera /dev/video97" in lines[0], missing.stderr
    cases = [
        (["--camera", "0", str(work / "a.mp4")], "one source"),
        ([str(work / "a.mp4"), "--realtime", "--out", "x.csv"], "give a .jsonl file"),
        ([str(work / "a.mp4"), "--realtime", "--plot", "p.png"], "need a whole video"),
        ([], "give video files"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["predict", "--checkpoint", str(work / "last.pt"), *extra])
        assert result.exit_code == 1 and message in result.stderr, result.stderr
