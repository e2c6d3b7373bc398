"""What each GPU-path design costs the host per sample, and how many frames it decodes.

Designs (issue "The GPU path is the fast path", item 3), measured on this machine's CPU:

- ``pyav``: today's PyAV train sample, the reference (decode, colour conversion, RandAugment,
  crop, normalisation, erasing: ``pyav.ClipDataset(plan)[i]``);
- ``hybrid``: the hybrid backend's host work: PyAV decodes only the needed frames and cuts the
  planes (``hybrid.PlaneDataset(plan)[i]``) plus its share of the batch's packing (``Collate``);
- ``dali``: the DALI backend's host work: plan specs, file reads, DALI's input arrays and the
  augmentation's packing (``DaliSession._make``, the producer's job; NVDEC decodes on the GPU);
- decoded frames per window: PyAV/hybrid counted (every packet the decoder decodes: the wanted
  frames' and the reference frames they need; the non-reference B-frames it skips are not);
  DALI's by its seek rule on the clips' real keyframes (DALI 2.4 ``frames_decoder_base.cc``,
  ``SeekFrame``: a fresh decoder per sample, a seek back to the keyframe only for a jump of more
  than 10 frames, every packet decoded from there — checked below by timing DALI's CPU decoder);
- (a) a ``prepare --encoding`` for NVDEC: intra-only clips (every frame a keyframe): bytes per
  clip, and DALI's decodes per window under the same rule;
- (c) DALI decoding a clip once for both test views: decodes per clip, views apart vs together.

CPU time is ``time.process_time`` of this process (one torch/OpenCV thread, workers 0), over a
train epoch (the default fine-tuning recipe) and a test epoch of 16 clips of 80 frames at
160×160 made with maedfer's own encoder (prepare's settings), interleaved over rounds.

    .venv/bin/python bench/gpu_path_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import PORTRAITS, portrait_frames, system  # noqa: E402

from maedfer.pipelines import build_loader, hybrid, pyav  # noqa: E402
from maedfer.pipelines.loader import dali_available  # noqa: E402
from maedfer.pipelines.plan import EpochPlan  # noqa: E402
from maedfer.preprocess.encode import _X264_GOP, write_clip  # noqa: E402

CLIPS, FRAMES, SIZE = 16, 80, 160
MIN_SEEK_LEAP = 10  # DALI 2.4 frames_decoder_base.cc: MINIMUM_SEEK_LEAP


def make_clips(folder: Path) -> dict[str, Path]:
    """Manifests of the same pans encoded three ways: prepare's H.264 (keyframe every 16,
    non-reference B-frames), intra-only H.264, and VP9 (DALI's CPU decoder reads only VP9)."""
    images = sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
    variants = {
        "h264": ("h264", None, "mp4"),
        "intra": ("h264", {"x264-params": _X264_GOP + ":keyint=1:min-keyint=1", "bf": "0"}, "mp4"),
        "vp9": ("vp9", None, "webm"),
    }
    manifests = {}
    for name, (codec, quality, ext) in variants.items():
        rows = []
        for i in range(CLIPS):
            rel = f"{name}/clip{i:02d}.{ext}"
            if not (folder / rel).exists():
                write_clip(
                    portrait_frames(images[i % len(images)], FRAMES, SIZE),
                    folder / rel,
                    fps=25,
                    codec=codec,
                    quality=quality,
                )
            rows.append(
                {
                    "clip_id": f"c{i}",
                    "path": rel,
                    "label": i % 7,
                    "num_frames": FRAMES,
                    "split": "train" if i % 2 else "test",
                }
            )
        manifests[name] = folder / f"manifest-{name}.parquet"
        pd.DataFrame(rows).to_parquet(manifests[name])
    return manifests


# ------------------------------------------------------------------ counting decodes


def _nal_is_reference(packet: av.Packet) -> bool:
    """Whether an H.264 (AVCC) packet holds a reference slice (nal_ref_idc > 0)."""
    data, i = bytes(packet), 0
    while i + 5 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        header = data[i + 4]
        if header & 0x1F in (1, 5):
            return bool(header >> 5 & 3)
        i += 4 + size
    return True


class DecodeCounter:
    """Counts the packets PyAV's decoder decodes, by standing in for ``pyav._frames``."""

    def __init__(self) -> None:
        self.count = 0
        self.original = pyav._frames

    def __enter__(self) -> DecodeCounter:
        def frames(container, stream, wanted, index_of, skip):  # noqa: ANN001, ANN202
            if not skip:
                for frame in container.decode(stream):
                    self.count += 1
                    yield frame
                return
            codec = stream.codec_context
            for packet in container.demux(stream):
                keep = packet.pts is None or index_of(packet.pts) in wanted
                codec.skip_frame = "DEFAULT" if keep else "NONREF"
                if packet.size and (keep or _nal_is_reference(packet)):
                    self.count += 1
                yield from codec.decode(packet)

        pyav._frames = frames
        return self

    def __exit__(self, *exc: object) -> None:
        pyav._frames = self.original


def keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index_of = pyav._pts_indexer(stream)
        return sorted(
            index_of(p.pts) for p in container.demux(stream) if p.is_keyframe and p.pts is not None
        )


def dali_decodes(frames: np.ndarray, keys: list[int]) -> int:
    """Frames DALI decodes for one sample of ``frames`` (its seek rule, a fresh decoder)."""
    wanted = sorted(set(int(f) for f in frames))
    position, decoded = -1, 0  # the last frame decoded
    for target in wanted:
        if target <= position:
            continue
        if target - position > MIN_SEEK_LEAP:  # seek to the keyframe at or before it
            position = max(k for k in keys if k <= target) - 1
        decoded += target - position
        position = target
    return decoded


# ------------------------------------------------------------------ host time per sample


def cpu(run) -> float:  # noqa: ANN001
    start = time.process_time()
    run()
    return time.process_time() - start


def host_seconds(manifest: Path, mode: str, rounds: int) -> dict[str, float]:
    """Median host CPU-seconds per sample of each design over ``rounds`` epochs."""
    loader = build_loader(
        manifest,
        mode=mode,
        batch_size=8,
        backend="pyav",
        workers=0,
        split="train" if mode == "train" else "test",
    )
    plan = EpochPlan(loader.table, loader.config, epoch=0)
    n = len(plan)
    per: dict[str, list[float]] = {"pyav": [], "hybrid": []}
    dali_session = None
    if dali_available():
        from maedfer.pipelines.backend import Faults
        from maedfer.pipelines.dali import DaliSession

        dali_session = DaliSession(
            loader.config, batch_size=8, threads=1, device=torch.device("cpu"), faults=Faults()
        )
        per["dali"] = []
    collate = hybrid.Collate(loader.config)
    for r in range(rounds):
        plan = EpochPlan(loader.table, loader.config, epoch=r)
        order = np.random.default_rng(r).permutation(list(per))
        for name in order:
            if name == "pyav":
                data = pyav.ClipDataset(plan)
                per[name].append(cpu(lambda d=data: [d[i] for i in range(n)]) / n)
            elif name == "hybrid":
                data = hybrid.PlaneDataset(plan)
                per[name].append(
                    cpu(
                        lambda d=data: [
                            collate([d[i] for i in range(k, k + 8)]) for k in range(0, n, 8)
                        ]
                    )
                    / n
                )
            else:
                per[name].append(
                    cpu(lambda p=plan: [dali_session._make(p, k) for k in range(n // 8)])
                    / (n // 8 * 8)
                )
    if dali_session is not None:
        dali_session.close()
    return {name: statistics.median(v) for name, v in per.items()}


def decodes_per_sample(manifests: dict[str, Path], mode: str) -> dict[str, float]:
    """Mean frames decoded per sample (test: per view) for each design."""
    out = {}
    split = "train" if mode == "train" else "test"
    for name in ("h264", "intra"):
        loader = build_loader(
            manifests[name], mode=mode, batch_size=8, backend="pyav", workers=0, split=split
        )
        plan = EpochPlan(loader.table, loader.config, epoch=0)
        root = Path(manifests[name]).parent
        keys = {p: keyframes(root / p) for p in pd.read_parquet(manifests[name]).path}
        specs = [plan.spec(i) for i in range(len(plan))]
        rel = {s.path: str(Path(s.path).relative_to(root)) for s in specs}
        out[f"dali {name}"] = float(
            np.mean([dali_decodes(s.frame_indices, keys[rel[s.path]]) for s in specs])
        )
        if mode == "test":  # (c): both views of a clip in one DALI sample
            views = plan.views
            out[f"dali {name}, one decode per clip"] = float(
                np.mean(
                    [
                        dali_decodes(
                            np.concatenate([s.frame_indices for s in specs[k : k + views]]),
                            keys[rel[specs[k].path]],
                        )
                        / views
                        for k in range(0, len(specs), views)
                    ]
                )
            )
        if name == "h264":
            with DecodeCounter() as counter:
                data = pyav.ClipDataset(plan)
                for i in range(len(plan)):
                    data[i]
            out["pyav/hybrid h264"] = counter.count / len(plan)
    return out


def dali_cpu_decode_times(manifest: Path) -> dict[str, float] | None:
    """DALI's CPU decoder (VP9) on three frame sets of the same span, ms per sample: the stride-4
    window, its 16 frames consecutive, and all 61 frames of its span. If the stride-4 window
    costs what the whole span costs, DALI decodes every frame in between."""
    if not dali_available():
        return None
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    root = manifest.parent
    paths = [root / p for p in pd.read_parquet(manifest).path]
    data = [np.fromfile(p, dtype=np.uint8) for p in paths]
    sets = {
        "16 frames at stride 4": np.arange(8, 8 + 61, 4),
        "16 consecutive frames": np.arange(8, 24),
        "61 consecutive frames": np.arange(8, 69),
    }
    out = {}
    for name, frames in sets.items():

        @pipeline_def(batch_size=len(data), num_threads=1, device_id=None)
        def decode(frames=frames):  # noqa: ANN202
            encoded = fn.external_source(source=lambda: data, dtype=types.UINT8)
            wanted = fn.external_source(source=lambda: [frames.astype(np.int32)] * len(data))
            return fn.decoders.video(encoded, device="cpu", frames=wanted)

        pipe = decode()
        pipe.run()  # warm-up
        seconds = [cpu(pipe.run) for _ in range(3)]
        out[name] = 1000 * statistics.median(seconds) / len(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "out" / "gpu-path-clips")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    manifests = make_clips(args.cache)
    sizes = {
        name: statistics.mean((m.parent / p).stat().st_size for p in pd.read_parquet(m).path)
        for name, m in manifests.items()
    }
    results = {
        "system": system(),
        "clips": CLIPS,
        "frames": FRAMES,
        "size": SIZE,
        "bytes_per_clip": sizes,
        "host_cpu_ms_per_sample": {},
        "decoded_frames_per_sample": {},
    }
    for mode in ("train", "test"):
        seconds = host_seconds(manifests["h264"], mode, args.rounds)
        results["host_cpu_ms_per_sample"][mode] = {k: 1000 * v for k, v in seconds.items()}
        results["decoded_frames_per_sample"][mode] = decodes_per_sample(manifests, mode)
    results["dali_cpu_decode_ms_per_sample_vp9"] = dali_cpu_decode_times(manifests["vp9"])
    print(json.dumps(results, indent=2))
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "gpu_path_cost-cpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
