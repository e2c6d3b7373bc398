"""Pieces both training recipes share: the metrics log, signal handling, per-step seeds.

- :class:`MetricsLog`: ``<run>/metrics.jsonl``, one JSON object per line (docs/runs.md), written
  by rank 0 only; on resume, lines past the checkpoint's step are dropped so the file reads as
  one uninterrupted run. Each record also goes to its ``mirrors`` (TensorBoard:
  :class:`maedfer.training.records.TensorBoardLog`).
- :class:`StopSignals`: SIGINT, SIGTERM and SIGUSR1 set a flag instead of killing the process;
  the loop checks it after each optimiser step, writes a checkpoint and stops (issue 5 §6).
  SIGUSR1 is what ``sbatch --signal=USR1@120`` sends before a job's time runs out: the run
  stops like on SIGTERM and exits 143 (:func:`stop_exit_code`), and a requeued job resumes it
  (docs/cluster.md). A second signal while stopping restores the default handler, so a third
  one kills at once.
- :func:`nonfinite_stop`: the one-line error of a run whose loss stayed non-finite.
- :func:`step_seed`: the seed of one micro-step's random draws (masks, mixup, drop path) as a
  pure function of (seed, epoch, micro-batch, rank), so a resumed run draws exactly what an
  uninterrupted one would, whatever happened to the global generators in between.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np

from maedfer.config import parse_model_overrides as parse_overrides  # noqa: F401 (old name)
from maedfer.errors import MaedferError

log = logging.getLogger(__name__)


def step_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer ``keys`` (numpy ``SeedSequence`` hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def nonfinite_stop(steps: int, *, epoch: int, step: int, checkpoint: Path | None) -> MaedferError:
    """The error that ends a run whose loss stayed non-finite for ``steps`` steps in a row.

    ``checkpoint`` is the one this run saved (or resumed from), ``None`` before any: it is named
    only while it is on disk, so the message never sends anyone to a file that is not there (a
    stale ``last.pt`` of an earlier run is not this run's last good state either).
    """
    if checkpoint is not None and Path(checkpoint).is_file():
        where = f"the last good checkpoint is {checkpoint}"
    else:
        where = "no checkpoint of this run was saved yet"
    return MaedferError(
        f"the loss was not finite for {steps} optimiser steps in a row (epoch {epoch}, step "
        f"{step}); {where}; try a lower optim.lr, optim.clip_grad or "
        "run.precision=fp32 (--set KEY=VALUE)"
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RecordMirror(Protocol):
    """Something that also takes every metrics record (a TensorBoard writer)."""

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (a no-op on ranks other than 0).

    Every record written is passed on to each of ``mirrors`` (non-finite values as ``None``);
    :meth:`close` closes them.
    """

    def __init__(
        self, path: Path, *, enabled: bool = True, mirrors: Sequence[RecordMirror] = ()
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.mirrors = list(mirrors) if enabled else []

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` greater than ``step`` (written after the checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def reset(self) -> None:
        """Start a fresh log (a new run in a folder that held an old one)."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {k: _finite_or_none(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for mirror in self.mirrors:
            mirror.write(record)

    def close(self) -> None:
        """Close the mirrors (flushes TensorBoard's events)."""
        for mirror in self.mirrors:
            mirror.close()

    def records(self) -> Iterator[dict[str, Any]]:
        """The records written so far (for tests and summaries)."""
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    yield json.loads(line)


def stop_exit_code(signal_name: str) -> int:
    """The exit status of a run stopped by ``signal_name``: 130 for SIGINT, else 143.

    143 (128 + SIGTERM) also for SIGUSR1: a Slurm job stopped before its time limit ends as if
    terminated, and ``--requeue`` starts it again (docs/cluster.md).
    """
    return 130 if signal_name == "SIGINT" else 143


class StopSignals:
    """Context manager: SIGINT, SIGTERM and SIGUSR1 set :attr:`signum` instead of raising.

    Only the main thread can install handlers; elsewhere (a recipe run from a worker thread)
    signals keep their default behaviour.
    """

    SIGNALS = tuple(
        sig
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None))
        if sig is not None  # no SIGUSR1 on Windows
    )

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # a loader worker forked with this handler: Ctrl-C reaches the whole process
            # group, and the run's own process stops it; one notice, from that process
            return
        if self.signum is not None:
            # Already stopping: the next signal acts as usual.
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        self.signum = signum
        log.warning(
            "%s received: finishing this step, writing a checkpoint, then stopping",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
