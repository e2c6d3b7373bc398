"""The one device resolver: ``--device`` (``run.device``) to a ``torch.device``.

``None`` picks CUDA when torch sees it, else the CPU; asking for CUDA where there is none is a
user error in one line. Under torchrun or Slurm (``local_rank`` given) a plain ``cuda`` becomes
this process's own GPU, ``cuda:<local_rank>`` (docs/cluster.md).
"""

from __future__ import annotations

import torch

from maedfer.errors import MaedferError


def resolve_device(
    device: str | torch.device | None, local_rank: int | None = None
) -> torch.device:
    """The device to run on.

    Args:
        device: ``None`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (a string or a
            ``torch.device``).
        local_rank: this process's rank on its node when distributed: ``cuda`` becomes
            ``cuda:<local_rank>`` (the one device of a task that sees one GPU).

    Raises:
        MaedferError: CUDA asked for where torch sees none, a local rank without a device of
            its own, or a device name torch does not know.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MaedferError("--device cuda asked for, but torch sees no CUDA device here")
        if text != "cuda" or local_rank is None:
            return torch.device(text)
        count = torch.cuda.device_count()
        if local_rank >= count:
            if count == 1:  # one GPU per task (srun --gpus-per-task=1): it is this task's
                return torch.device("cuda", 0)
            raise MaedferError(
                f"local rank {local_rank} needs a CUDA device of its own, but this process sees "
                f"{count}: start at most {count} processes per node"
            )
        return torch.device("cuda", local_rank)
    try:
        return torch.device(text)  # cpu (or another device type torch knows, such as mps)
    except RuntimeError:
        raise MaedferError(f"device {text!r} is unknown; use cpu or cuda") from None
