"""torch.distributed set-up for ``torchrun`` launches (DESIGN.md §2; issue 5 §5).

``torchrun --nproc-per-node N -m maedfer.cli finetune ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). Without them the run is one process and every
helper here is a no-op. Gradients are averaged by DDP; loaders shard by ``rank``; metrics are
reduced or gathered here; rank 0 alone writes files and shows progress.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maedfer.errors import MaedferError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``None`` picks CUDA when present; ``cuda`` becomes ``cuda:<local_rank>``.

    Raises:
        MaedferError: CUDA asked for where torch sees none, or an unknown device name.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MaedferError("--device cuda asked for, but torch sees no CUDA device here")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise MaedferError(f"device {device!r} is unknown; use cpu or cuda")
    return torch.device("cpu")


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the torchrun process group when the environment says so; return this process's place.

    Raises:
        MaedferError: a torchrun environment that is incomplete.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(device=resolve_device(device))
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError:
        raise MaedferError("WORLD_SIZE is set but RANK is not: launch with torchrun") from None
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda"
            else None,
        )  # fmt: skip
    log.info("process %d of %d on %s", rank, world_size, dev)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap ``model`` when distributed (gradients averaged over processes), else return it.

    Parameters that never get a gradient must be frozen before (``requires_grad=False``):
    the recipes do so for the classifier's dead last-block cross-attention, which lets DDP run
    without ``find_unused_parameters`` (the reference needed it, MODEL.md §7.13).
    """
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum of each value over processes (float64 on the process group's device)."""
    if not env.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(values: list[float], env: DistEnv) -> list[float]:
    """Maximum of each value over processes (used for stop flags every rank must agree on)."""
    if not env.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(env: DistEnv, *, synchronize: bool = True) -> None:
    """Leave the process group (when this run joined one).

    With ``synchronize`` (a run that ended normally on every rank) a barrier comes first. It
    matters: gloo's worker threads release a finished collective's tensors after the caller has
    moved on, and releasing a tensor made in Python takes the GIL; if the process group is
    destroyed at that moment (its destructor joins those threads while holding the GIL) the
    process hangs for good (measured here with 2 CPU ranks; pytorch/pytorch#56297 describes the
    destructor). The barrier lets those releases finish first. Drop DDP wrappers before calling
    this, so the group is destroyed here rather than whenever the wrapper is collected.
    """
    if env.distributed and dist.is_initialized():
        if synchronize:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
