"""Time to first batch on a 1,000,000-row manifest, and why DALI's file-list reader is not used.

The manifest has the columns of docs/design.md and 1M rows pointing at a few real clips (160×160,
80 frames, made like prepared clips). Each case runs in a fresh Python process and times
``build_loader(...)`` + ``next(iter(loader))`` — reading the manifest, selecting fold 1, starting
workers or the DALI pipeline, decoding the first batch; the import of ``maedfer.pipelines`` is
timed apart. For contrast, DALI's file-list reader (``fn.experimental.readers.video``, CPU, VP9)
is built over N distinct files for two values of N: its start-up per file, times 1M, is what an
in-place VoxCeleb2 manifest would cost before the first batch (docs/design.md).

    .venv/bin/python bench/first_batch.py [--rows 1000000] [--repeats 3] [--gpu]

Writes bench/out/first_batch-<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import portrait_frames, quartiles, system  # noqa: E402

from maedfer.pipelines.loader import dali_available  # noqa: E402
from maedfer.preprocess.encode import write_clip  # noqa: E402

PORTRAITS = REPO / "maedfer" / "assets" / "portraits"

# one case, in a fresh interpreter: prints {"import_s", "first_batch_s", "max_rss_mib", ...}
CASE = """
import json, resource, sys, time
t0 = time.perf_counter()
from maedfer.pipelines import build_loader
t1 = time.perf_counter()
kw = json.loads(sys.argv[1])
loader = build_loader(**kw)
batch = next(iter(loader))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_batch_s": t2 - t1, "batches": len(loader),
                  "shape": list(batch["video"].shape),
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

READER = """
import json, sys, time
import nvidia.dali.fn as fn
from nvidia.dali import pipeline_def
files = json.loads(sys.argv[1])
@pipeline_def(batch_size=2, num_threads=1, device_id=None)
def reader():
    return fn.experimental.readers.video(device="cpu", filenames=files, sequence_length=16)
start = time.perf_counter()
pipe = reader()
pipe.build()
pipe.run()
print(json.dumps({"files": len(files), "first_batch_s": time.perf_counter() - start}))
"""


def make_manifest(folder: Path, rows: int) -> dict[str, Path]:
    """A ``rows``-row manifest per codec over 4 clips (the rows repeat the files)."""
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    out = {}
    for codec, ext in (("h264", "mp4"), ("vp9", "webm")):
        files = []
        for i, image in enumerate(images):
            rel = f"clips/{codec}-{i}.{ext}"
            if not (folder / rel).exists():
                write_clip(portrait_frames(image, 80), folder / rel, fps=25, codec=codec)
            files.append(rel)
        index = np.arange(rows)
        crop = pa.FixedSizeListArray.from_arrays(
            pa.array(np.tile(np.array([0, 0, 160, 160], np.int16), rows)), 4
        )
        table = pa.table(
            {
                "clip_id": pa.array([f"v{i:07d}" for i in index]),
                "dataset": pa.array(["bench"] * rows),
                "path": pa.array([files[i % len(files)] for i in index]),
                "label": pa.array((index % 7).astype(np.int16)),
                "fold": pa.array((index % 5 + 1).astype(np.int8)),
                "num_frames": pa.array(np.full(rows, 80, np.int32)),
                "crop": crop,
            }
        )
        meta = {
            b"maedfer.dataset": b"bench",
            b"maedfer.num_folds": b"5",
            b"maedfer.classes": json.dumps([f"c{k}" for k in range(7)]).encode(),
        }
        out[codec] = folder / f"manifest-{codec}-{rows}.parquet"
        pq.write_table(table.replace_schema_metadata(meta), out[codec])
    return out


def run_case(kw: dict, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", CASE, json.dumps(kw)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "first_batch_s": quartiles([r["first_batch_s"] for r in runs]),
        "import_s": quartiles([r["import_s"] for r in runs]),
        "max_rss_mib": max(r["max_rss_mib"] for r in runs),
        "batches_per_epoch": runs[0]["batches"],
        "batch_shape": runs[0]["shape"],
    }


def reader_startup(folder: Path, counts: list[int]) -> dict:
    """DALI file-list reader start-up over N distinct copies of a VP9 clip."""
    source = folder / "clips" / "vp9-0.webm"
    copies = folder / "reader-copies"
    copies.mkdir(exist_ok=True)
    points = {}
    for n in counts:
        files = []
        for i in range(n):
            path = copies / f"c{i:06d}.webm"
            if not path.exists():
                shutil.copyfile(source, path)
            files.append(str(path))
        done = subprocess.run(
            [sys.executable, "-c", READER, json.dumps(files)],
            capture_output=True,
            text=True,
            check=True,
        )
        points[n] = json.loads(done.stdout.strip().splitlines()[-1])["first_batch_s"]
    (small, t_small), (large, t_large) = sorted(points.items())
    per_file = (t_large - t_small) / (large - small)
    return {
        "first_batch_s": points,
        "s_per_file": per_file,
        "extrapolated_1m_rows_s": t_small + per_file * (1_000_000 - small),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reader-files", type=int, nargs=2, default=[500, 2000])
    parser.add_argument("--gpu", action="store_true", help="add the DALI GPU case")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "out" / "first-batch")
    args = parser.parse_args()
    manifests = make_manifest(args.cache, args.rows)
    common = {"fold": 1, "batch_size": 8}
    cases = {
        "pyav, train (RandAugment), 1 worker": {
            "manifest": str(manifests["h264"]),
            "mode": "train",
            "backend": "pyav",
            "workers": 1,
            **common,
        },
        "pyav, test, 1 worker": {
            "manifest": str(manifests["h264"]),
            "mode": "test",
            "backend": "pyav",
            "workers": 1,
            **common,
        },
    }
    if dali_available():
        cases["dali CPU, train, VP9"] = {
            "manifest": str(manifests["vp9"]),
            "mode": "train",
            "backend": "dali",
            "device": "cpu",
            "workers": 1,
            **common,
        }
    if args.gpu:
        cases["dali GPU (NVDEC), train, H.264, batch 32"] = {
            "manifest": str(manifests["h264"]),
            "mode": "train",
            "backend": "dali",
            "device": "cuda",
            "workers": 4,
            "fold": 1,
            "batch_size": 32,
        }
    results = {"system": system(), "rows": args.rows, "repeats": args.repeats, "cases": {}}
    for name, kw in cases.items():
        print(f"timing: {name}", file=sys.stderr)
        results["cases"][name] = run_case(kw, args.repeats)
    if dali_available():
        print("timing: DALI file-list reader start-up", file=sys.stderr)
        results["dali_file_list_reader"] = reader_startup(args.cache, args.reader_files)
    device = "cuda" if args.gpu else "cpu"
    out = REPO / "bench" / "out" / f"first_batch-{device}.json"
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten {out}", file=sys.stderr)


def table(results: dict) -> str:
    lines = [
        f"| case ({results['rows']:,} rows) | first batch s | import s | max RSS MiB |",
        "|---|---|---|---|",
    ]
    for name, row in results["cases"].items():
        fb, imp = row["first_batch_s"], row["import_s"]
        lines.append(
            f"| {name} | {fb['median']:.2f} [{fb['p25']:.2f}, {fb['p75']:.2f}] | "
            f"{imp['median']:.2f} | {row['max_rss_mib']:.0f} |"
        )
    reader = results.get("dali_file_list_reader")
    if reader:
        points = ", ".join(f"{n} files {s:.2f} s" for n, s in reader["first_batch_s"].items())
        lines.append(
            f"\nDALI file-list reader start-up: {points}; "
            f"{reader['s_per_file'] * 1000:.2f} ms per file → "
            f"{reader['extrapolated_1m_rows_s'] / 60:.1f} min at 1M files"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
