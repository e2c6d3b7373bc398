"""What a run folder records about itself: its config, its environment, TensorBoard events.

``docs/runs.md`` ("What a run folder holds"). Beside ``metrics.jsonl`` and the checkpoints a
run folder holds:

- ``config.yaml``: the fully resolved options (the backend and precision actually used, world
  size, total batch, peak lr), so ``--config RUN/config.yaml`` replays the run
  (:func:`write_config_yaml`; read back by ``maedfer.config.read_yaml``);
- ``env.json``: maedfer's version and git commit, Python, torch, CUDA, DALI, PyAV, timm and
  numpy versions, the devices and the world size (:func:`environment`, :func:`write_env_json`);
  a resumed run writes it again and keeps the earlier starts under ``previous``;
- ``tb/``: TensorBoard event files with the scalars of every metrics record
  (:class:`TensorBoardLog`), when the ``tensorboard`` extra is installed.

Rank 0 alone writes these, like every other file of the run.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

import maedfer
from maedfer.atomic import write_text
from maedfer.config import plain

log = logging.getLogger(__name__)

CONFIG_YAML = "config.yaml"
ENV_JSON = "env.json"
TB_DIR = "tb"
# Distributions whose versions env.json names (key: how env.json calls it). DALI's name carries
# its CUDA major version (nvidia-dali-cuda130, ...): any of them counts.
PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "pyav": "av",
    "dali": "nvidia-dali*",
    "tensorboard": "tensorboard",
    "pyarrow": "pyarrow",
}
# Record fields that are bookkeeping, not scalars to plot.
_NOT_SCALARS = frozenset({"kind", "epoch", "step", "final"})


# ---------------------------------------------------------------- config.yaml


def write_config_yaml(
    run_dir: Path, config: Mapping[str, Any], *, header: str | None = None
) -> Path:
    """Write ``RUN/config.yaml``: ``config`` as YAML, in its own key order, atomically.

    Args:
        run_dir: the run folder (created if needed).
        config: the resolved options; nested mappings stay nested, tuples become lists and
            paths strings.
        header: comment lines put on top (e.g. how to replay the run), without ``#``.
    Returns:
        The path written.
    """
    text = yaml.safe_dump(
        plain(dict(config)), sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    path = Path(run_dir) / CONFIG_YAML
    write_text(path, text)
    return path


# ---------------------------------------------------------------- env.json


def _package_versions() -> dict[str, str | None]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        found.setdefault(name, dist.version)
    versions: dict[str, str | None] = {}
    for key, name in PACKAGES.items():
        if name.endswith("*"):
            matches = sorted(n for n in found if n.startswith(name[:-1]))
            versions[key] = found[matches[0]] if matches else None
        else:
            versions[key] = found.get(name)
    versions["torch"] = torch.__version__  # the running build (e.g. 2.13.0+cu130)
    return versions


def git_state(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout maedfer runs from, or ``None``.

    ``None`` when maedfer is installed from a wheel (no checkout around the package), when git
    is missing or when it fails: never an error. ``dirty`` says tracked files differ from the
    commit (untracked files do not count).
    """
    root = Path(maedfer.__file__).resolve().parents[1] if root is None else Path(root)
    # Both markers: a wheel installed into a venv inside some other repository must not report
    # that repository's commit.
    if not ((root / ".git").exists() and (root / "pyproject.toml").is_file()):
        return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _devices() -> list[str]:
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def environment(*, world_size: int = 1) -> dict[str, Any]:
    """What ran: versions, commit, devices (the content of ``env.json``).

    Keys: ``maedfer`` {``version``, ``git``: :func:`git_state`}, ``python``, ``packages``
    (torch, torchvision, timm, numpy, pyav, dali, tensorboard, pyarrow; ``None`` when not
    installed), ``cuda`` {``version``: the CUDA torch was built with, ``available``,
    ``cudnn``}, ``devices`` (CUDA device names this process sees; empty on CPU), ``cpu``,
    ``hostname``, ``platform``, ``world_size``, ``command`` (``sys.argv``), ``started`` (UTC,
    ISO 8601).
    """
    available = torch.cuda.is_available()
    return {
        "maedfer": {"version": maedfer.__version__, "git": git_state()},
        "python": platform.python_version(),
        "packages": _package_versions(),
        "cuda": {
            "version": torch.version.cuda,
            "available": available,
            "cudnn": torch.backends.cudnn.version() if available else None,
        },
        "devices": _devices(),
        "cpu": platform.processor() or platform.machine(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "world_size": int(world_size),
        "command": list(sys.argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_env_json(
    run_dir: Path, extra: Mapping[str, Any] | None = None, *, world_size: int = 1
) -> Path:
    """Write ``RUN/env.json``: :func:`environment` plus ``extra`` (e.g. the resolved backend).

    A run that resumes writes it again: the earlier content moves into the list ``previous``
    (oldest first), so every start of the run stays on record.

    Returns:
        The path written.
    """
    path = Path(run_dir) / ENV_JSON
    record = {**environment(world_size=world_size), **plain(dict(extra or {}))}
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict):
        previous = earlier.pop("previous", [])
        record["previous"] = [*(previous if isinstance(previous, list) else []), earlier]
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- TensorBoard

_said_missing = False


def _summary_writer_class() -> Any:
    """torch's ``SummaryWriter``, or ``None`` (said once per process) without tensorboard."""
    global _said_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _said_missing:
            log.info(
                "tensorboard is not installed: no TensorBoard events, metrics.jsonl only "
                "(pip install 'maedfer[tensorboard]')"
            )
            _said_missing = True
        return None
    return SummaryWriter


def _after_earlier_files(folder: Path) -> None:
    """Wait, if need be, until this second is later than every event file's in ``folder``.

    TensorBoard reads a folder's event files in name order and applies a resumed writer's purge
    to what it read before. Names start with the writer's creation second, then host, pid and a
    counter compared as text ("10" before "9"): a resume in the same second as the file it
    purges (a run stopped and resumed at once) could sort first and the purge would miss."""
    stamps = [
        int(parts[3])
        for p in folder.glob("events.out.tfevents.*")
        if len(parts := p.name.split(".")) > 3 and parts[3].isdigit()
    ]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(max(stamps) + 1 - time.time())


class TensorBoardLog:
    """The scalars of metrics records as TensorBoard events under ``RUN/tb/``.

    It takes the records :class:`maedfer.training.runtime.MetricsLog` writes: every numeric field
    of a record becomes the scalar ``<kind>/<field>`` at the record's ``step`` (``train/loss``,
    ``train/lr``, ``train/clips_per_s``, ``epoch/loss``, ``test/uar``, ``test/war``, ...);
    ``epoch``, ``step`` and flags are not plotted, ``None`` and non-finite values are skipped.

    Without the ``tensorboard`` package (or with ``enabled=False``, ranks other than 0) every
    method is a no-op. A run that resumes from step ``S`` passes ``purge_step=S + 1``:
    TensorBoard then drops the events the interrupted run wrote after its checkpoint, as
    ``MetricsLog.truncate_after`` does for ``metrics.jsonl``.
    """

    def __init__(
        self, run_dir: Path, *, enabled: bool = True, purge_step: int | None = None
    ) -> None:
        self.path = Path(run_dir) / TB_DIR
        self._writer = None
        writer_class = _summary_writer_class() if enabled else None
        if writer_class is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            if purge_step is not None:
                _after_earlier_files(self.path)
            self._writer = writer_class(log_dir=str(self.path), purge_step=purge_step)

    @property
    def active(self) -> bool:
        """True when events are written."""
        return self._writer is not None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._writer is None or record.get("step") is None:
            return
        kind, step = record.get("kind") or "metrics", int(record["step"])
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"{kind}/{key}", float(value), step)
        if kind != "train":  # epoch ends and tests: on disk now, not in two minutes
            self._writer.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
