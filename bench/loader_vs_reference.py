"""maedfer's CPU loader beside the official MAE-DFER loaders, on the same content (issue 14).

The reference side is written here after docs/recipe.md (the official pipelines as they run, not
their code): fine-tuning reads folders of JPEG frames with PIL (``VideoClsDatasetFrame``),
pre-training reads the mp4 with decord (``VideoMAE``; PyAV stands in if decord is not
installed, and the report says so). maedfer reads what ``prepare`` would give it: 160×160
H.264 clips (``maedfer.preprocess.encode``: CRF 18, keyframe every 16 frames, a reference
frame every 4th) for fine-tuning; for pre-training the 224×224 mp4 in place with a manifest
crop (encoded with x264's defaults, as VoxCeleb2 is downloaded: one keyframe per 250 frames,
B-pyramid) and, in mode ``pretrain-reencoded``, its crops as ``prepare voxceleb2 --reencode``
writes them (the reference still reads the mp4 in place); mode ``pretrain-num_sample2`` reads in
place with repeated sampling (``data.num_sample 2``, a maedfer option: two samples, each with its
own crop, per decoded window), counting samples.

Reference transforms, in their order:

- train: 16 frames by the reference window (``linspace`` over 64), PIL open + RGB, resize to
  160×160 (bilinear) → timm RandAugment ``rand-m7-n4-mstd0.5-inc1`` on the list of frames (one
  draw, PIL ops on every frame, PIL bicubic affine) → ToTensor + ImageNet normalise →
  random-resized crop (area 0.08–1, aspect 3/4–4/3, torch bilinear) → flip p 0.5 → timm
  RandomErasing (p 0.25, pixel mode, one box) over the (T, C, H, W) stack.
- test: every 4th frame of the whole clip read and resized (per view, as the reference's
  ``__getitem__`` does per view), the view's 16 frames cut, ToTensor + normalise; 2 views.
- pretrain: decord ``get_batch`` of a 16-frame stride-4 window, the fixed VoxCeleb2 crop
  (rows 0–160, cols 32–192), PIL images → TSN multi-scale crop (scales 1, .875, .75, .66,
  13 fixed offsets) resized back to 160 (PIL bilinear) → /255, normalise.

Before timing, each pair is checked to read the same frames: for sampled windows the frame each
side gives is the nearest (mean |Δ|) among its neighbours in the other source, and the mean
difference is printed (the two sides' decoders and resizes differ by design).

Rates are clips (test: views) per CPU-second of this process (``time.process_time``: one
process, one torch/OpenCV/decord thread each side), ``--passes`` passes over the clips per side
and round, in ``--rounds`` interleaved rounds
(maedfer then reference, the order alternating each round); the ratio is the median of the
per-round ratios. The machine's load average is printed with the figures.

    .venv/bin/python bench/loader_vs_reference.py [--clips 40] [--rounds 5] [--passes 3]
        [--modes train,test,pretrain] [--json bench/out/loader_vs_reference.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import PORTRAITS, portrait_frames  # noqa: E402

from maedfer.pipelines import augment, build_loader, sampling  # noqa: E402
from maedfer.pipelines.pyav import decode_frames  # noqa: E402
from maedfer.pipelines.rand_augment import policy_for  # noqa: E402
from maedfer.preprocess.encode import write_clip  # noqa: E402

SIZE = 160
RAW = 224  # DFEW-style frames and VoxCeleb2 videos
VOX_CROP = augment.Box(32, 0, 160, 160)  # cols 32-192, rows 0-160
MEAN = torch.tensor(augment.IMAGENET_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(augment.IMAGENET_STD).view(3, 1, 1, 1)

try:
    import decord

    decord.bridge.set_bridge("native")
    HAVE_DECORD = True
except ImportError:  # the bench extra is not installed: PyAV stands in for decord
    HAVE_DECORD = False


# ----------------------------------------------------------------------------- content
# no fold or split given to build_loader: every clip in every mode


#: bump when the content or maedfer's clip encoding changes: the cache is kept per version
CONTENT_VERSION = "3-cavlc"


def write_like_voxceleb2(frames: np.ndarray, path: Path) -> None:
    """x264's defaults, as the VoxCeleb2 mp4s are downloaded: preset medium, CRF 23, one
    keyframe per 250 frames, adaptive B-frames in a pyramid (half of them referenced)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = 250
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def make_content(folder: Path, clips: int) -> dict:
    """40 clips of 60–120 frames from the portraits: JPEG folders (224², DFEW-style), 224² mp4
    (VoxCeleb2-style, read in place), 160² H.264 clips as ``prepare`` writes them, and the
    VoxCeleb2 crops as ``prepare voxceleb2 --reencode`` writes them."""
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    rows, folder = [], (folder / CONTENT_VERSION).resolve()
    for i in range(clips):
        n = 60 + (i * 37) % 61
        jpg, raw, prep, crop = (
            folder / f"jpg/c{i:03d}",
            folder / f"raw/c{i:03d}.mp4",
            folder / f"prep/c{i:03d}.mp4",
            folder / f"crop/c{i:03d}.mp4",
        )
        if not crop.exists():
            frames = portrait_frames(images[i % len(images)], n, size=RAW)
            jpg.mkdir(parents=True, exist_ok=True)
            for k, frame in enumerate(frames):
                Image.fromarray(frame).save(jpg / f"{k + 1:05d}.jpg", quality=95)
            raw.parent.mkdir(parents=True, exist_ok=True)
            write_like_voxceleb2(frames, raw)
            small = np.stack(
                [
                    np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.BILINEAR))
                    for f in frames
                ]
            )
            write_clip(small, prep, fps=25, codec="h264")
            c = VOX_CROP
            in_place = decode_frames(str(raw), np.arange(n))
            write_clip(in_place[:, c.y : c.y + c.h, c.x : c.x + c.w], crop, fps=25)
        rows.append(
            {
                "clip_id": f"c{i}",
                "n": n,
                "jpg": str(jpg),
                "raw": str(raw),
                "prep": str(prep),
                "crop": str(crop),
            }
        )
    table = pd.DataFrame(rows)
    ft = pd.DataFrame(
        {
            "clip_id": table.clip_id,
            "path": table.prep,
            "label": np.arange(clips) % 7,
            "num_frames": table.n,
            "fold": 1,
        }
    )
    pt = pd.DataFrame(
        {
            "clip_id": table.clip_id,
            "path": table.raw,
            "label": -1,
            "num_frames": table.n,
            "fold": 1,
            "crop": [list(VOX_CROP)] * clips,
        }
    )
    reencoded = pt.drop(columns="crop").assign(path=table.crop)
    ft.to_parquet(folder / "finetune.parquet")
    pt.to_parquet(folder / "pretrain.parquet")
    reencoded.to_parquet(folder / "reencoded.parquet")
    return {
        "table": table,
        "finetune": folder / "finetune.parquet",
        "pretrain": folder / "pretrain.parquet",
        "reencoded": folder / "reencoded.parquet",
    }


# ------------------------------------------------------------------------- reference side


def _read_jpegs(folder: str, indices) -> list[Image.Image]:
    return [
        Image.open(os.path.join(folder, f"{int(k) + 1:05d}.jpg")).convert("RGB") for k in indices
    ]


def _to_tensor_normalised(images: list) -> torch.Tensor:
    """ToTensor per frame, stacked, ImageNet-normalised → (C, T, H, W)."""
    frames = (
        torch.stack(
            [torch.from_numpy(np.asarray(im, dtype=np.uint8)).permute(2, 0, 1) for im in images]
        ).float()
        / 255
    )  # (T, C, H, W)
    return (frames.permute(1, 0, 2, 3) - MEAN) / STD


class Reference:
    def __init__(self) -> None:
        from timm.data.random_erasing import RandomErasing

        self.policy = policy_for(augment.RAND_AUGMENT, SIZE)
        self.erase = RandomErasing(0.25, mode="pixel", max_count=1, num_splits=1, device="cpu")
        self.rng = np.random.default_rng(0)

    def train(self, row) -> torch.Tensor:
        idx = sampling.reference_train_window(row.n, generator=self.rng)
        images = [im.resize((SIZE, SIZE), Image.BILINEAR) for im in _read_jpegs(row.jpg, idx)]
        # timm RandAugment on the list: one draw, the same PIL op on every frame
        for op in self.policy.draw(int(self.rng.integers(2**31))):
            timm_op = self.policy._ops[op.name]
            images = [timm_op.aug_fn(im, *op.args, **dict(timm_op.kwargs)) for im in images]
        clip = _to_tensor_normalised(images)
        box = augment.random_resized_crop_box(SIZE, SIZE, generator=self.rng)
        clip = F.interpolate(
            clip[:, :, box.y : box.y + box.h, box.x : box.x + box.w],
            size=(SIZE, SIZE),
            mode="bilinear",
            align_corners=False,
        )
        if self.rng.random() < 0.5:
            clip = clip.flip(-1)
        return self.erase(clip.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)

    def test_view(self, row, view: int) -> torch.Tensor:
        every = np.arange(0, row.n, 4)
        frames = [
            cv2.resize(np.asarray(im), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
            for im in _read_jpegs(row.jpg, every)
        ]
        if len(frames) < 16:
            frames += [frames[-1]] * (16 - len(frames))
        start = int(view * max(len(frames) - 16, 0))
        return _to_tensor_normalised(frames[start : start + 16])

    def pretrain(self, row) -> torch.Tensor:
        idx = sampling.stride_window(row.n, generator=self.rng)
        video = read_video_reference(row.raw, idx)
        c = VOX_CROP
        images = [
            Image.fromarray(f[c.y : c.y + c.h, c.x : c.x + c.w]).convert("RGB") for f in video
        ]
        box = augment.multi_scale_crop_box(SIZE, SIZE, out_size=SIZE, generator=self.rng)
        images = [
            im.crop((box.x, box.y, box.x + box.w, box.y + box.h)).resize(
                (SIZE, SIZE), Image.BILINEAR
            )
            for im in images
        ]
        return _to_tensor_normalised(images)


def read_video_reference(path: str, indices) -> np.ndarray:
    """(T, H, W, 3) uint8 by decord (one thread), as the VideoMAE loader reads; PyAV if absent."""
    if HAVE_DECORD:
        vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
        vr.seek(0)
        return vr.get_batch(list(map(int, indices))).asnumpy()
    import av

    wanted, out = set(map(int, indices)), {}
    with av.open(path) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                out[k] = frame.to_ndarray(format="rgb24")
            if k >= max(wanted):
                break
    return np.stack([out[int(k)] for k in indices])


# ------------------------------------------------------------------------- same frames


def check_same_frames(content: dict, samples: int = 6) -> dict:
    """Each side's frame k is the nearest of frames k-2..k+2 of the other source."""
    table, rng = content["table"], np.random.default_rng(1)
    report = {}
    for name in ("finetune", "pretrain"):
        diffs, hits = [], 0
        for i in rng.choice(len(table), samples, replace=False):
            row = table.iloc[int(i)]
            k = int(rng.integers(2, row.n - 2))
            near = np.arange(k - 2, k + 3)
            if name == "finetune":
                mine = decode_frames(row.prep, np.array([k]))[0].astype(np.float32)
                theirs = [
                    np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR), np.float32)
                    for im in _read_jpegs(row.jpg, near)
                ]
            else:
                mine = decode_frames(row.raw, np.array([k]))[0].astype(np.float32)
                theirs = list(read_video_reference(row.raw, near).astype(np.float32))
            d = [float(np.abs(mine - t).mean()) for t in theirs]
            hits += int(np.argmin(d) == 2)
            diffs.append(d[2])
        report[name] = {
            "same_frame": f"{hits}/{samples}",
            "mean_abs_255": round(statistics.mean(diffs), 2),
        }
        if hits != samples:
            raise SystemExit(f"{name}: the two sides do not read the same frames: {report}")
    return report


# ---------------------------------------------------------------------------- timing


def cpu_time(fn) -> tuple[float, int]:
    t0 = time.process_time()
    count = fn()
    return time.process_time() - t0, count


def run_maedfer(loader) -> int:
    count = 0
    for batch in loader:
        count += batch["video"].shape[0]
    return count


def run_reference(ref: Reference, table: pd.DataFrame, mode: str) -> int:
    count = 0
    for row in table.itertuples():
        if mode == "train":
            ref.train(row)
            count += 1
        elif mode == "test":
            for view in (0, 1):
                ref.test_view(row, view)
                count += 1
        else:  # both pre-training modes: the reference reads the downloaded mp4 in place
            ref.pretrain(row)
            count += 1
    return count


def system(rounds_load: list[float]) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "commit": commit + ("+dirty" if dirty else ""),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_during": [round(x, 2) for x in rounds_load],
        "reference_pretrain_decoder": "decord " + decord.__version__
        if HAVE_DECORD
        else "PyAV (decord not installed)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="passes over the clips per side and round (longer rounds, less noise)",
    )
    parser.add_argument(
        "--modes", default="train,test,pretrain,pretrain-reencoded,pretrain-num_sample2"
    )
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "out" / "ref-clips")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    random.seed(0)
    torch.manual_seed(0)
    content = make_content(args.cache, args.clips)
    same = check_same_frames(content)
    print(f"same frames: {same}", file=sys.stderr)
    modes = args.modes.split(",")
    loaders = {
        "train": build_loader(
            content["finetune"],
            mode="train",
            batch_size=8,
            backend="pyav",
            workers=0,
            temporal_rule="reference",
        ),
        "test": build_loader(
            content["finetune"], mode="test", batch_size=8, backend="pyav", workers=0
        ),
        "pretrain": build_loader(
            content["pretrain"], mode="pretrain", batch_size=8, backend="pyav", workers=0
        ),
        "pretrain-reencoded": build_loader(
            content["reencoded"], mode="pretrain", batch_size=8, backend="pyav", workers=0
        ),
        # repeated sampling (data.num_sample, off by default): 2 samples per decoded window
        "pretrain-num_sample2": build_loader(
            content["pretrain"],
            mode="pretrain",
            batch_size=8,
            backend="pyav",
            workers=0,
            num_sample=2,
        ),
    }
    ref = Reference()
    table = content["table"]
    for mode in modes:  # warm-up: imports, caches
        run_maedfer(loaders[mode])
        run_reference(ref, table.head(4), mode)
    per = {m: {"maedfer": [], "reference": [], "ratio": []} for m in modes}
    loads = []
    for r in range(args.rounds):
        for mode in modes:
            order = ("maedfer", "reference") if r % 2 == 0 else ("reference", "maedfer")
            rate = {}
            for side in order:
                if side == "maedfer":
                    cpu, n = cpu_time(
                        lambda m=mode: sum(run_maedfer(loaders[m]) for _ in range(args.passes))
                    )
                else:
                    cpu, n = cpu_time(
                        lambda m=mode: sum(run_reference(ref, table, m) for _ in range(args.passes))
                    )
                rate[side] = n / cpu
                per[mode][side].append(rate[side])
            per[mode]["ratio"].append(rate["maedfer"] / rate["reference"])
        loads.append(os.getloadavg()[0])
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{m} {per[m]['ratio'][-1]:.2f}x" for m in modes),
            file=sys.stderr,
        )
    results = {
        "system": system(loads),
        "clips": args.clips,
        "rounds": args.rounds,
        "passes": args.passes,
        "same_frames": same,
        "modes": {},
    }
    unit = {
        "train": "clips",
        "test": "views",
        "pretrain": "clips",
        "pretrain-reencoded": "clips",
        "pretrain-num_sample2": "samples",
    }
    print("| mode | maedfer per CPU-s | reference per CPU-s | ratio (median [min, max]) |")
    print("|---|---|---|---|")
    for mode in modes:
        p = per[mode]
        row = {k: statistics.median(v) for k, v in p.items()}
        row.update(ratio_min=min(p["ratio"]), ratio_max=max(p["ratio"]), unit=unit[mode])
        results["modes"][mode] = row
        print(
            f"| {mode} ({unit[mode]}) | {row['maedfer']:.1f} | {row['reference']:.1f} | "
            f"{row['ratio']:.2f}× [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}] |"
        )
    print(json.dumps(results["system"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
