"""A run's life outside the epochs: deciding it, recording it, finishing and closing it
(docs/runs.md).

- :func:`open_run` — **the one place that decides whether a run starts, resumes, is already
  finished or is refused** (``run.resume`` auto/true/false, ``run.overwrite``), after taking
  the run folder's lock; it returns a :class:`RunStart` the recipe keeps;
- :func:`start_records` — **the one place where a run writes its records at start**
  (``config.yaml``, ``env.json``, ``metrics.jsonl``, TensorBoard events);
- :func:`finish_run` — the mark of a finished run (``final.pt``, ``run_state.json``);
- :func:`close` — the process group left and the lock released.

Every value comes in as an argument: the library reads no recipe config (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maedfer.atomic import remove_stale
from maedfer.config import RESOLVED
from maedfer.lock import RunLock
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.distributed import DistEnv, cleanup
from maedfer.training.loop import TrainLoop
from maedfer.training.records import (
    CONFIG_YAML,
    TensorBoardLog,
    write_config_yaml,
    write_env_json,
)
from maedfer.training.resume import ResumeDecision, decide_resume, mark_finished, prepare_run_dir


@dataclass
class RunStart:
    """What :func:`open_run` decided, handed back to the recipe.

    Attributes:
        decision: start, resume, overwrite or finished (:class:`ResumeDecision`).
        lock: the run folder's lock, held until :func:`close` (taken by rank 0, not for a
            dry run).
    """

    decision: ResumeDecision
    lock: RunLock = field(default_factory=RunLock)

    @property
    def state(self) -> dict[str, Any] | None:
        """The checkpoint a resume continues from (None for a fresh start)."""
        return self.decision.state

    @property
    def finished(self) -> bool:
        """Whether ``--out`` holds a finished run (nothing is to be trained)."""
        return self.decision.action == "finished"


def resume_value(resume: str | bool | None) -> str | None:
    """``run.resume`` from a flag: ``True``/``False`` (the Python API) as ``true``/``false``."""
    if isinstance(resume, bool):
        return "true" if resume else "false"
    return resume


def open_run(
    out: Path,
    *,
    recipe: Mapping[str, Any],
    resume: str,
    overwrite: bool,
    is_main: bool,
    dry_run: bool = False,
    final_outputs: tuple[str, ...] = (),
    path_keys: tuple[str, ...] = (),
) -> RunStart:
    """Take the run folder's lock (rank 0; not for a dry run, which writes nothing), remove a
    killed save's temporary, and decide the run (:func:`maedfer.training.resume.decide_resume`;
    nothing else on disk changes here).

    Args:
        out: the run folder; recipe: the run's options as plain types (compared with a
            checkpoint's); resume, overwrite: ``run.resume`` and ``run.overwrite``.
        final_outputs: files the recipe writes at its end; path_keys: the option keys that
            name files.

    Raises:
        MaedferError: another command holds ``out``, a checkpoint of another recipe (the keys
            that differ), ``resume`` true without a checkpoint, false with a run in ``out``, an
            unreadable checkpoint.
    """
    lock = RunLock()
    if is_main and not dry_run:
        lock.take(out, what="choose another --out (run.out)")
        for folder in (out, out / "checkpoints"):  # a killed save's temporary
            remove_stale(folder)
    try:
        decision = decide_resume(
            out,
            recipe,
            resume=resume,
            overwrite=overwrite,
            final_outputs=final_outputs,
            path_keys=path_keys,
        )
    except BaseException:
        lock.release()
        raise
    return RunStart(decision, lock)


def start_records(
    lp: TrainLoop, decision: ResumeDecision, resolved: dict[str, Any], recipe: str
) -> None:
    """Write the run's records at its start: the one place for it (rank 0 writes).

    A fresh start first removes what an earlier start left (``--overwrite``: the whole run);
    ``metrics.jsonl`` starts afresh, or on resume loses the lines written after the
    checkpoint; ``config.yaml`` (the resolved recipe, plus a ``resolved`` section of facts:
    replay it with ``--config``), ``env.json`` (versions, commit, devices) and TensorBoard
    events under ``tb/`` follow.
    """
    env, state, out = lp.env, decision.state, decision.run_dir
    if env.is_main:
        prepare_run_dir(decision)
    if state is None:
        lp.metrics.reset()
    else:
        lp.metrics.truncate_after(int(state["step"]))
    if env.is_main:
        facts = {
            "world_size": env.world_size,
            "total_batch": lp.total_batch,
            "peak_lr": lp.scheduler.params["lr"],
            "min_lr": lp.scheduler.params["min_lr"],
            "steps_per_epoch": lp.steps_per_epoch,
        }
        resolved = {**resolved, RESOLVED: facts}
        write_config_yaml(
            out,
            resolved,
            header=f"resolved {recipe} recipe; replay it with: "
            f"maedfer {recipe} --config {out / CONFIG_YAML} --out NEW_FOLDER",
        )
        write_env_json(out, {"recipe": recipe}, world_size=env.world_size)
    purge = int(state["step"]) + 1 if state is not None else None
    lp.metrics.mirrors.append(TensorBoardLog(out, enabled=env.is_main, purge_step=purge))


def finish_run(lp: TrainLoop, out: Path) -> None:
    """A run that did all its epochs: the weights-only export, then ``run_state.json`` (the
    mark a re-run reads to leave the run alone), rank 0."""
    if lp.env.is_main:
        ckpt_io.export_weights(lp.checkpoint_path)
        mark_finished(out, epoch=lp.progress.epochs_run, step=lp.progress.global_step)


def close(
    *, env: DistEnv | None, loop: TrainLoop | None, start: RunStart | None, completed: bool
) -> None:
    """Leave the process group and release the lock; ``completed`` is False after an error (no
    barrier then: another rank may never reach it). The recipe drops its own reference to the
    DDP-wrapped model first: the wrapper holds the process group (see
    :func:`maedfer.training.distributed.cleanup`)."""
    if loop is not None:
        loop.model = None
        loop.metrics.close()  # flushes TensorBoard's events
    if env is not None:
        cleanup(env, synchronize=completed)
    if start is not None:
        start.lock.release()
