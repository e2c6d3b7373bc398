"""Whether a run starts, continues, is left alone or is refused: ``--resume`` and ``--overwrite``.

``docs/runs.md`` ("Running into an existing folder"). :func:`decide_resume` looks at a run
folder and the options of the run about to start, and returns a :class:`ResumeDecision`
without changing anything; :func:`prepare_run_dir` then carries out what a fresh start or an
overwrite needs (rank 0 only). The rules, for ``resume`` ``auto`` (the default):

==============================================  ========================================
the folder holds                                decision
==============================================  ========================================
nothing of a run (or does not exist)            ``fresh``
``run_state.json`` saying finished              ``finished``: nothing is touched, exit 0
``checkpoints/last.pt``, same recipe            ``resume`` from it
``checkpoints/last.pt``, another recipe         refused: the keys that differ, old -> new
results but no ``last.pt`` (report.json, ...)   refused: nothing to resume, ``--overwrite``
only the bookkeeping of a start that never      ``fresh`` (those files are replaced)
checkpointed (metrics.jsonl, config.yaml, ...)
==============================================  ========================================

``resume=true`` is the same but refuses a folder without a checkpoint; ``resume=false`` refuses
any folder that holds a run. ``overwrite`` deletes the run's files (:data:`RUN_FILES`, nothing
else in the folder) and starts fresh; it is the only way anything of a finished run is deleted.

A run is *finished* when ``run_state.json`` says so: the recipe writes it (:func:`mark_finished`)
as its very last act, after ``report.json``. A run killed between its last checkpoint and that
moment is resumed: zero epochs remain, so only its final steps (the test) run again. Folders
written before ``run_state.json`` existed count as finished when their checkpoint has all the
epochs of its config and the recipe's final outputs (``final_outputs``, e.g. ``report.json``)
are there.

Two configs are the same recipe when their values agree after flattening nested mappings to
dotted keys (``optim.lr``), except for the keys of :data:`RESUME_IGNORED`: where the run goes,
how fast or how verbosely it runs, not what it computes.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from maedfer.atomic import write_text
from maedfer.errors import MaedferError
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.badclips import BAD_CLIPS

log = logging.getLogger(__name__)

ResumeMode = Literal["auto", "true", "false"]
Action = Literal["fresh", "resume", "finished", "overwrite"]

RUN_STATE = "run_state.json"
# Options that may change between the run that wrote a checkpoint and the run resuming it:
# where the run lives, its devices and workers, how often it logs, saves or shows a mid-run
# test, how many faulty clips it tolerates, and the flags of the command itself. A key is
# ignored when its dotted name or its last part is listed (``device`` and ``run.device`` alike).
RESUME_IGNORED = frozenset(
    {
        "out",
        "device",
        "workers",
        "resume",
        "overwrite",
        "quiet",
        "log_every",
        "eval_every",
        "test_batch_size",
        "save_every",
        "keep_checkpoints",
        "dry_run",
        "json",
        "max_bad_share",
    }
)
# Everything a run writes into its folder: what --overwrite deletes (and nothing else).
RUN_FILES = (
    "checkpoints",
    ckpt_io.FINAL,
    "report.json",
    "predictions.parquet",
    RUN_STATE,
    "metrics.jsonl",
    "config.yaml",
    "env.json",
    "tb",
    BAD_CLIPS,
)
# Of those, the ones a start that never saved a checkpoint leaves: a fresh start replaces them.
BOOKKEEPING = frozenset({"metrics.jsonl", "config.yaml", "env.json", "tb", BAD_CLIPS})


@dataclass(frozen=True)
class ResumeDecision:
    """What to do with a run folder.

    Attributes:
        action: ``fresh`` (start from scratch), ``resume`` (continue from ``checkpoint``),
            ``finished`` (leave it untouched and exit 0) or ``overwrite`` (delete ``remove``,
            then start from scratch).
        run_dir: the run folder.
        message: one line saying what was decided and why, for the log.
        checkpoint: ``resume``: the checkpoint to continue from.
        state: ``resume``: that checkpoint, already loaded (:func:`checkpoint.load_checkpoint`).
        remove: ``fresh`` and ``overwrite``: the old run's files :func:`prepare_run_dir` deletes.
    """

    action: Action
    run_dir: Path
    message: str
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    remove: tuple[Path, ...] = ()


# ---------------------------------------------------------------- comparing recipes


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``.

    Values are made JSON-plain first (tuples as lists, paths as strings), so a config read back
    from a checkpoint compares equal to the one it was made from. An empty mapping stays a value.
    """
    flat: dict[str, Any] = {}
    for key, value in ckpt_io.plain(dict(config)).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_ignored(key: str, ignored: frozenset[str] = RESUME_IGNORED) -> bool:
    """True for a dotted key that may differ on resume (its full name or last part listed)."""
    return key in ignored or key.rsplit(".", 1)[-1] in ignored


_ABSENT = object()  # a key one side lacks (shown as absent)


def config_differences(
    saved: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    ignored: frozenset[str] = RESUME_IGNORED,
    path_keys: tuple[str, ...] = (),
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, new value)`` for every recipe key that differs, sorted.

    A key present on one side only differs too; its missing value is reported as absent.
    """
    old, ours = flatten(saved), flatten(new)
    keys = sorted(k for k in set(old) | set(ours) if not is_ignored(k, ignored))
    return [
        (k, old.get(k, _ABSENT), ours.get(k, _ABSENT))
        for k in keys
        if _comparable(k, old.get(k, _ABSENT), path_keys)
        != _comparable(k, ours.get(k, _ABSENT), path_keys)
    ]


def _comparable(key: str, value: Any, path_keys: tuple[str, ...]) -> Any:
    """A file-naming option by the file it names (``m.parquet``, ``./m.parquet`` and its
    absolute path are one manifest; a relative one is read from the current folder, as the
    run that stored it did); any other value as it is."""
    if key in path_keys and isinstance(value, str) and value:
        return os.path.realpath(os.path.expanduser(value))
    return value


def recipe_differences(
    ckpt: Mapping[str, Any], config: Mapping[str, Any], *, path_keys: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """Where a new run's options differ from the recipe of a checkpoint.

    A checkpoint holds the recipe as it was asked for (``recipe``: ``backend: auto``) and as
    it ran (``config``: ``backend: pyav``); a value equal to either is the same recipe, so both
    the original command and a replay of its ``config.yaml`` resume the run.
    """
    asked, ran = ckpt.get("recipe"), ckpt.get("config") or {}
    if asked is None:
        return config_differences(ran, config, path_keys=path_keys)
    ran_flat, new_flat = flatten(ran), flatten(config)
    return [
        d
        for d in config_differences(asked, config, path_keys=path_keys)
        if ran_flat.get(d[0], _ABSENT) != new_flat.get(d[0], _ABSENT)
    ]


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """``lr 0.001 -> 0.002, model.depth 2 -> 3`` (one line)."""
    return ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in differences)


# ---------------------------------------------------------------- run state


def mark_finished(run_dir: Path, *, epoch: int, step: int, **extra: Any) -> Path:
    """Write ``RUN/run_state.json`` saying the run is finished (its last act; rank 0).

    Returns:
        The path written.
    """
    record = {
        "status": "finished",
        "epoch": int(epoch),
        "step": int(step),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **ckpt_io.plain(extra),
    }
    path = Path(run_dir) / RUN_STATE
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_run_state(run_dir: Path) -> dict[str, Any] | None:
    """``run_state.json``'s content, or ``None`` when there is none.

    Raises:
        MaedferError: a file that is not a JSON object (the decision cannot be made safely).
    """
    path = Path(run_dir) / RUN_STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise MaedferError(
            f"{path} is not a JSON object: fix or delete it, or pass --overwrite to start over"
        )
    return state


def _epochs_of(config: Mapping[str, Any]) -> int | None:
    """The config's epoch count: the one key named ``epochs`` at any depth (else ``None``)."""
    found = [v for k, v in flatten(config).items() if k.rsplit(".", 1)[-1] == "epochs"]
    return found[0] if len(found) == 1 and isinstance(found[0], int) else None


def _finished(
    run_dir: Path,
    run_state: Mapping[str, Any] | None,
    ckpt: Mapping[str, Any] | None,
    final_outputs: tuple[str, ...],
) -> bool:
    if run_state is not None:
        return run_state.get("status") == "finished"
    if ckpt is None:
        return False
    # A folder from before run_state.json: all epochs in the checkpoint, final outputs there.
    epochs = _epochs_of(ckpt.get("config") or {})
    return (
        epochs is not None
        and int(ckpt.get("epoch", 0)) >= epochs
        and not ckpt.get("epoch_step")
        and all((run_dir / f).exists() for f in final_outputs)
    )


# ---------------------------------------------------------------- the decision


def _mode(resume: ResumeMode | bool | str | None) -> str:
    if resume is None:
        return "auto"
    if isinstance(resume, bool):
        return "true" if resume else "false"
    mode = str(resume).lower()
    if mode not in ("auto", "true", "false"):
        raise MaedferError(f"resume ({resume!r}) must be auto, true or false")
    return mode


def _refuse(run_dir: Path, why: str, *, hint: str = "") -> MaedferError:
    hint = hint or "pass --overwrite to delete it and start over, or choose another --out"
    return MaedferError(f"{run_dir} {why}; {hint}")


def decide_resume(
    run_dir: Path,
    config: Mapping[str, Any],
    *,
    resume: ResumeMode | bool | str | None = "auto",
    overwrite: bool = False,
    final_outputs: tuple[str, ...] = (),
    path_keys: tuple[str, ...] = (),
) -> ResumeDecision:
    """Decide what a run about to start in ``run_dir`` does (nothing is changed here).

    Args:
        run_dir: the run folder (``--out``); it need not exist.
        config: the new run's options in the form the recipe stores in its checkpoints under
            ``config`` (nested or flat); compared with the checkpoint's.
        resume: ``auto`` (default), ``true`` (a checkpoint must be there) or ``false`` (the
            folder must hold no run); booleans are accepted.
        overwrite: delete the old run's files and start over.
        final_outputs: files the recipe writes at its end (``("report.json",)`` for
            fine-tuning): used only for folders without ``run_state.json``.
        path_keys: dotted keys of ``config`` that name files, compared by the file they name
            (``m.parquet``, ``./m.parquet`` and its absolute path are one manifest).
    Returns:
        The decision; ``resume`` carries the loaded checkpoint.
    Raises:
        MaedferError: one line, for a checkpoint of another recipe (the keys that differ, old
            -> new), ``resume=true`` without a checkpoint, ``resume=false`` or results without
            a checkpoint in a folder that holds a run, ``resume=true`` with ``overwrite``, a
            checkpoint that is weights only or unreadable, or an unreadable run_state.json.
    """
    run_dir, mode = Path(run_dir), _mode(resume)
    present = tuple(run_dir / name for name in RUN_FILES if (run_dir / name).exists())
    if overwrite:
        if mode == "true":
            raise MaedferError("--resume true and --overwrite contradict each other: choose one")
        if present:
            names = ", ".join(p.name for p in present)
            return ResumeDecision(
                "overwrite",
                run_dir,
                f"--overwrite: deleting {names} in {run_dir} and starting over",
                remove=present,
            )
        return ResumeDecision("fresh", run_dir, f"starting a new run in {run_dir}")

    last = run_dir / "checkpoints" / ckpt_io.LAST
    run_state = read_run_state(run_dir)
    ckpt = ckpt_io.load_checkpoint(last) if last.is_file() else None
    if ckpt is not None and ckpt_io.is_weights_only(ckpt):
        raise _refuse(
            run_dir, f"holds {last} with weights only (no optimiser state): it cannot be resumed"
        )
    finished = _finished(run_dir, run_state, ckpt, final_outputs)
    if mode == "false" and present and (ckpt is not None or finished):
        what = (
            "a finished run"
            if finished
            else f"a run (checkpoint at epoch {(ckpt or {}).get('epoch')})"
        )
        raise _refuse(
            run_dir,
            f"holds {what} and --resume is false",
            hint="pass --resume auto to continue it, --overwrite to delete it and "
            "start over, or choose another --out",
        )
    if ckpt is not None:
        differ = recipe_differences(ckpt, config, path_keys=path_keys)
        if differ:
            raise _refuse(
                run_dir,
                f"holds a checkpoint ({last}) of another recipe: {describe_differences(differ)}",
                hint="run it with its own options, or pass --overwrite to delete "
                "it and start over, or choose another --out",
            )
    if finished:
        epoch = (run_state or ckpt or {}).get("epoch")
        return ResumeDecision(
            "finished",
            run_dir,
            f"{run_dir} holds a finished run ({epoch} "
            "epoch(s)): nothing to do (--overwrite starts it over)",
        )
    if ckpt is not None:
        return ResumeDecision(
            "resume",
            run_dir,
            f"resuming {run_dir} from {last} (epoch {ckpt['epoch']}, step {ckpt['step']})",
            checkpoint=last,
            state=ckpt,
        )
    if mode == "true":
        raise MaedferError(f"--resume: no checkpoint at {last}")
    results = [p.name for p in present if p.name not in BOOKKEEPING]
    if results:
        raise _refuse(
            run_dir, f"holds {', '.join(results)} but no {last.relative_to(run_dir)} to resume from"
        )
    remove = tuple(p for p in present if p.name in BOOKKEEPING)
    return ResumeDecision("fresh", run_dir, f"starting a new run in {run_dir}", remove=remove)


def prepare_run_dir(decision: ResumeDecision) -> None:
    """Delete what a ``fresh`` or ``overwrite`` decision lists (rank 0; others wait after).

    Only the run's own files (:data:`RUN_FILES`) are ever listed: anything else a user keeps in
    the folder stays.
    """
    if decision.action not in ("fresh", "overwrite"):
        return
    for path in decision.remove:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if decision.action == "overwrite":
        log.warning("%s", decision.message)
