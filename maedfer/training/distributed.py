"""torch.distributed set-up for ``torchrun`` and Slurm launches (docs/design.md; docs/cluster.md).

``torchrun --nproc-per-node N -m maedfer.cli finetune ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). Where they are absent, Slurm's are read instead
(``srun`` starting one task per GPU, no torchrun; :func:`slurm_launch`): ``SLURM_PROCID`` is the
rank, ``SLURM_STEP_NUM_TASKS`` the world size, ``SLURM_LOCALID`` the local rank, the first host
of the step's node list the master. Without either the run is one
process and every helper here is a no-op. Gradients are averaged by DDP; loaders shard by
``rank``; metrics are reduced or gathered here; rank 0 alone writes files and shows progress.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maedfer.devices import resolve_device
from maedfer.errors import MaedferError

log = logging.getLogger(__name__)

DEFAULT_PORT = 29500  # torchrun's


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


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list, without ``scontrol``.

    Handles the forms Slurm writes: ``node07``, ``a,b``, ``gpu[01-04,07]`` -> ``gpu01``,
    ``rack[1-2]-n[3,5]`` -> ``rack1-n3`` (the first entry of every bracket; zero padding kept).

    Raises:
        MaedferError: an empty list or unbalanced brackets.
    """
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first comma outside brackets ends the first item
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    item = nodelist[:end].strip()
    if not item or item.count("[") != item.count("]"):
        raise MaedferError(f"cannot read the Slurm node list {nodelist!r}")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], item)


def _master_host(nodelist: str) -> str:
    """The first host of ``nodelist``: ``scontrol show hostnames`` where it exists (any form
    Slurm can write), else :func:`first_host`."""
    if shutil.which("scontrol"):
        try:
            done = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            hosts = done.stdout.split() if done.returncode == 0 else []
            if hosts:
                return hosts[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return first_host(nodelist)


def slurm_launch(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """torchrun's variables from Slurm's, for tasks started by ``srun`` without torchrun.

    Returns ``None`` when torchrun's ``WORLD_SIZE`` is set (torchrun inside an allocation wins)
    or when this process is not a task of an ``srun`` step of several tasks. Otherwise
    ``RANK`` (``SLURM_PROCID``), ``WORLD_SIZE`` (``SLURM_STEP_NUM_TASKS``), ``LOCAL_RANK``
    (``SLURM_LOCALID``), ``MASTER_ADDR`` (given, else the first host of ``SLURM_STEP_NODELIST``,
    ``SLURM_JOB_NODELIST`` or ``SLURM_NODELIST``) and ``MASTER_PORT`` (given, else 29500 plus
    the job id modulo 1000, so that two jobs sharing a node rarely collide).

    Only ``srun`` sets ``SLURM_STEP_NUM_TASKS``. The batch script of ``sbatch --ntasks=4`` (and
    an ``salloc`` shell) has ``SLURM_NTASKS=4`` and ``SLURM_PROCID=0`` too, but no other task
    will ever join it: read as a launch, it would wait for them until the rendezvous times out.
    It runs as one process instead (said in the log).

    Raises:
        MaedferError: an ``srun`` step of several tasks whose variables are unreadable.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env or "SLURM_PROCID" not in env:
        return None
    size = env.get("SLURM_STEP_NUM_TASKS")
    if size is None:
        if env.get("SLURM_NTASKS", "1") not in ("", "0", "1"):
            log.info(
                "SLURM_NTASKS is %s but this process was not started by srun: one "
                "process (start maedfer with srun for one task per GPU)",
                env["SLURM_NTASKS"],
            )
        return None
    try:
        world_size, rank = int(size), int(env["SLURM_PROCID"])
        local_rank = int(env.get("SLURM_LOCALID", "0"))
        job = int(env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or 0)
    except ValueError:
        raise MaedferError(
            f"cannot read Slurm's task numbers (SLURM_PROCID "
            f"{env['SLURM_PROCID']!r}, tasks {size!r})"
        ) from None
    if world_size <= 1:
        return None
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = next(
            (
                env[k]
                for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                if env.get(k)
            ),
            None,
        )
        if nodelist is None:
            raise MaedferError(
                "an srun step of several tasks without SLURM_STEP_NODELIST: set "
                "MASTER_ADDR to the first node's host name"
            )
        addr = _master_host(nodelist)
    port = env.get("MASTER_PORT") or str(DEFAULT_PORT + job % 1000)
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
    }


def is_main_process() -> bool:
    """Whether this process is rank 0 (or alone), by torchrun's variables (or those
    :func:`init_distributed` set under Slurm): the process that prints and writes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group when torchrun's or Slurm's variables say so; return this process's
    place.

    Under Slurm (no torchrun), the variables :func:`slurm_launch` derives are put into
    ``os.environ`` (``setdefault``: what is set stays) before joining, so that everything that
    reads torchrun's variables sees them.

    Raises:
        MaedferError: a torchrun or Slurm environment that is incomplete.
    """
    slurm = slurm_launch()
    if slurm is not None:
        for key, value in slurm.items():
            os.environ.setdefault(key, value)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(device=resolve_device(device, 0))
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError:
        raise MaedferError("WORLD_SIZE is set but RANK is not: launch with torchrun") from None
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            device_id=dev if dev.type == "cuda" else None,
        )
    launcher = "slurm" if slurm is not None else "torchrun"
    log.info("process %d of %d on %s (%s)", rank, world_size, dev, launcher)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap ``model`` when distributed (gradients averaged over processes), else return it.

    Parameters that never get a gradient must be frozen before (``requires_grad=False``):
    the recipes do so for the classifier's dead last-block cross-attention, which lets DDP run
    without ``find_unused_parameters`` (the reference needed it, docs/reference.md).
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


def all_reduce_sum_(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``tensor`` over processes in place, on its device, without waiting (the host does
    not read it); returned for chaining."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
