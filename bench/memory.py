"""Peak memory of `prepare` and `predict`: streamed (ours) against the whole clip in memory.

Usage: .venv/bin/python bench/memory.py [--predict-minutes 2 5] [--predict-model tiny|base]
       [--skip-prepare] [--json OUT]

Measured in one run, on videos made here from a committed portrait (a moving face):
1. ``maedfer prepare`` of one 2-second 3840x2160 clip (RAVDESS layout), ``--workers 1`` and
   ``2``: peak RSS of the whole process tree (sampled every 20 ms: main process, fork server and
   workers together) and of the largest single process; baseline: the same clip decoded whole
   and aligned in memory (`FaceAligner.align_frames` on the decoded array), what ``prepare``
   did before it streamed.
2. ``maedfer predict`` of 640x360 videos of the given lengths (25 fps), with a tiny classifier
   (``--predict-model tiny``: the face pipeline's cost) or the official architecture
   (``base``: ``lgi_former_base`` in the official checkpoint layout, random weights, through
   ``--dataset dfew``): peak RSS, video frames/s (frames of the video over the wall time, both
   decodes, detection, alignment and the model included); the baseline is the decoded video's
   size in memory, which the earlier whole-video reader held before aligning.

Prints a table and the ratios; the figures go to bench/RESULTS.md ("Memory").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.preprocess.media import PORTRAIT_FACES, load_rgb  # noqa: E402

PORTRAIT = "obama"


def _portrait_frames(width: int, height: int, face: int, count: int) -> np.ndarray:
    """`count` frames of the portrait's face (`face` px), drifting and turning a little."""
    image = load_rgb(next((REPO / "maedfer/assets/portraits").glob(f"{PORTRAIT}.*")))
    cx, cy, side = PORTRAIT_FACES[PORTRAIT]
    out = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        phase = 2 * np.pi * t / 50
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), 3 * np.sin(phase), face / side)
        m[:, 2] += np.array([width / 2 + 0.02 * width * np.sin(phase), height / 2]) - (cx, cy)
        cv2.warpAffine(image, m, (width, height), dst=out[t], borderMode=cv2.BORDER_REPLICATE)
    return out


def _encode(frames_of, count: int, path: Path, width: int, height: int, fps: int = 25) -> None:
    """Encode `count` frames, produced by ``frames_of(i)``, as H.264 (fast, any quality)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frames_of(i), format="rgb24")))
        c.mux(s.encode(None))


def _tree_rss(root: int) -> tuple[int, int]:
    """(sum, max) resident bytes of `root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as fh:
                rss[int(entry)] = int(fh.read().split()[1]) * page
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    sizes = [rss.get(p, 0) for p in tree]
    return sum(sizes), max(sizes, default=0)


def _peak(cmd: list[str]) -> dict:
    """Run `cmd`; its wall time and the peak tree / single-process RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak_sum = peak_one = 0
    done = threading.Event()
    output: list[str] = []
    reader = threading.Thread(target=lambda: (output.append(proc.stdout.read()), done.set()))
    reader.start()
    while not done.is_set():
        total, one = _tree_rss(proc.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, one)
        time.sleep(0.02)
    proc.wait()
    reader.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(output)[-2000:]}")
    mib = 1 << 20
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_tree_mib": round(peak_sum / mib),
        "peak_process_mib": round(peak_one / mib),
        "output": "".join(output),
    }


BASELINE = """
import sys, resource
from maedfer.preprocess.faces import FaceAligner
from maedfer.preprocess.video import read_video_frames
frames, fps = read_video_frames(sys.argv[1])
FaceAligner(160, "cpu").align_frames(frames)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


# The floor under every figure: the libraries a prepare worker loads (torch's CUDA build alone
# is ~700 MiB resident, ~400 MiB of it shared library pages).
IMPORTS = """
import maedfer.cli, maedfer.preprocess.driver, maedfer.preprocess.faces
from maedfer.preprocess.faces import FaceAligner
FaceAligner(160, "cpu")
"""


def bench_prepare(work: Path) -> dict:
    raw = work / "RAVDESS" / "Actor_01"
    video = raw / "02-01-01-01-01-01-01.mp4"
    frames = _portrait_frames(3840, 2160, 900, 10)
    _encode(lambda i: frames[i % 10], 50, video, 3840, 2160)  # 2 s at 25 fps
    python = sys.executable
    result = {"video": "3840x2160, 50 frames (2 s), face 900 px"}
    for workers in (1, 2):
        run = _peak(
            [
                python,
                "-m",
                "maedfer.cli",
                "prepare",
                "ravdess",
                "--raw",
                str(work / "RAVDESS"),
                "--out",
                str(work / f"out{workers}"),
                "--workers",
                str(workers),
            ]
        )
        assert "1 clips ok" in run.pop("output")
        result[f"workers_{workers}"] = run
    base = _peak([python, "-c", BASELINE, str(video)])
    base.pop("output")
    result["baseline_whole_clip"] = base
    floor = _peak([python, "-c", IMPORTS])
    floor.pop("output")
    result["imports_only"] = floor
    return result


def _checkpoint(path: Path, model: str) -> tuple[Path, list[str]]:
    """The checkpoint to predict with, and the options it needs."""
    if model == "tiny":
        from tests.inference.media import save_tiny_checkpoint

        return save_tiny_checkpoint(path / "last.pt"), []
    import torch

    from maedfer.model import create_model
    from tests.inference.media import save_official_pth

    torch.manual_seed(0)
    base = create_model("lgi_former_base", num_classes=7)
    return save_official_pth(path / "official.pth", base, input_size=160), ["--dataset", "dfew"]


def bench_predict(work: Path, minutes: list[float], model: str = "tiny") -> dict:
    ckpt, extra = _checkpoint(work, model)
    loop = _portrait_frames(640, 360, 160, 50)
    result = {}
    for length in minutes:
        count = int(length * 60 * 25)
        video = work / f"predict-{length:g}min.mp4"
        _encode(lambda i: loop[i % 50], count, video, 640, 360)
        run = _peak(
            [
                sys.executable,
                "-m",
                "maedfer.cli",
                "predict",
                str(video),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(work / f"p{length:g}.parquet"),
                "--device",
                "cpu",
                *extra,
            ]
        )
        run.pop("output")
        run["model"] = model
        run["frames"] = count
        run["frames_per_s"] = round(count / run["seconds"], 1)  # video frames per wall second
        run["decoded_video_mib"] = round(count * 640 * 360 * 3 / (1 << 20))
        result[f"{length:g}_min"] = run
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict-minutes", type=float, nargs="*", default=[2, 5])
    parser.add_argument("--predict-model", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="maedfer-mem-") as tmp:
        work = Path(tmp)
        result = {
            "predict": bench_predict(work / "predict", args.predict_minutes, args.predict_model)
        }
        if not args.skip_prepare:
            result["prepare"] = bench_prepare(work / "prepare")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"predict ({args.predict_model}), 640x360 at 25 fps    peak tree MiB  frames/s  "
        "decoded video MiB"
    )
    for key, r in result["predict"].items():
        print(
            f"  {key:<38}{r['peak_tree_mib']:>13}{r['frames_per_s']:>10}"
            f"{r['decoded_video_mib']:>19}"
        )
    if "prepare" not in result:
        return
    p = result["prepare"]
    print("prepare, one 2-s 3840x2160 clip         peak tree MiB  peak process MiB  seconds")
    for key in ("workers_1", "workers_2", "baseline_whole_clip", "imports_only"):
        r = p[key]
        print(f"  {key:<38}{r['peak_tree_mib']:>13}{r['peak_process_mib']:>18}{r['seconds']:>9}")
    ratio = p["baseline_whole_clip"]["peak_process_mib"] / p["workers_1"]["peak_process_mib"]
    print(f"  whole clip / streamed (one process): {ratio:.2f}x")


if __name__ == "__main__":
    main()
