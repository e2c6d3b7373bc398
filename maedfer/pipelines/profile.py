"""``maedfer profile data``: how fast a manifest's clips reach the model (docs/design.md).

Builds the training loader (``train`` mode with its augmentation; ``pretrain`` for an unlabelled
manifest), takes the first batch (time to first batch includes reading the manifest and starting
workers or the DALI pipeline), then times ``batches`` more. Figures: ``clips_per_s``,
``frames_per_s`` (clips × frames per clip), ``time_to_first_batch_s``, and CPU use: cores busy on
average over the whole run (this process and its loader workers) and clips per CPU-second.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines.loader import build_loader, describe


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _mode_for(data: Path) -> str:
    labels = pq.read_table(data, columns=["label"]).column("label").to_numpy()
    return "pretrain" if (labels < 0).any() else "train"


def measure(
    data: Path, *, backend: str, batch: int, batches: int, workers: int | None, device: str | None
) -> dict[str, Any]:
    """Profile the loader on ``data``; returns the figures (see the module docstring)."""
    if data is None:
        raise MaedferError("profile data needs --data manifest.parquet")
    data = Path(data)
    if not data.is_file():
        raise MaedferError(f"manifest {data} does not exist; expected a manifest.parquet file")
    mode = _mode_for(data)
    cpu0, start = _cpu_seconds(), time.perf_counter()
    loader = build_loader(
        data,
        mode=mode,
        batch_size=batch,
        backend=backend,
        workers=workers,
        device=device,
        drop_last=False,
    )
    batches = min(batches, max(1, len(loader) - 1))
    iterator = iter(loader)
    clips = frames = 0
    try:
        first_clips = next(iterator)["video"].shape[0]
        first = time.perf_counter()
        for _ in range(batches):
            video = next(iterator)["video"]
            clips += video.shape[0]
            frames += video.shape[0] * video.shape[2]
        if video.is_cuda:
            torch.cuda.synchronize(video.device)
        end = time.perf_counter()
    except StopIteration:
        raise MaedferError(f"{data} gave fewer batches than asked for ({batches + 1})") from None
    finally:
        iterator.close()  # stops the workers, so their CPU time is counted below
    cpu = _cpu_seconds() - cpu0
    wall = time.perf_counter() - start
    steady = end - first
    return {
        "stage": "data",
        **describe(loader),
        "batches_timed": batches,
        "clips_per_s": clips / steady,
        "frames_per_s": frames / steady,
        "time_to_first_batch_s": first - start,
        "cpu_cores_used": cpu / wall,
        # every clip given (first batch included) per CPU-second of the whole run
        "clips_per_cpu_s": (clips + first_clips) / cpu if cpu > 0 else None,
        "num_bad": loader.num_bad,
        "cpu_count": os.cpu_count(),
    }


def run(
    *,
    data: Path | None = None,
    backend: str = "auto",
    batch: int | None = None,
    batches: int | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """``maedfer profile data``: measure with the defaults of this machine (CUDA or CPU); the
    table is :func:`format_table`'s."""
    on_gpu = torch.cuda.is_available() and device != "cpu"
    result = measure(
        data,
        backend=backend,
        batch=batch or (32 if on_gpu else 8),
        batches=batches or (20 if on_gpu else 5),
        workers=workers,
        device=device,
    )
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"data profile: {result['backend']} on {result['device']}, {result['workers']} "
        f"worker(s), {result['mode']} mode, batch {result['batch_size']}, "
        f"{result['clips']} clips in the manifest",
        f"  clips / s              {result['clips_per_s']:10.1f}",
        f"  frames / s             {result['frames_per_s']:10.1f}",
        f"  time to first batch s  {result['time_to_first_batch_s']:10.2f}",
        f"  CPU cores busy         {result['cpu_cores_used']:10.2f}",
        f"  clips / CPU-second     {result['clips_per_cpu_s'] or float('nan'):10.1f}",
    ]
    if result["num_bad"]:
        lines.append(f"  faulty clips replaced  {result['num_bad']:10d}")
    return "\n".join(lines)
