"""``maedfer protocol CONFIG --data M.parquet --init CKPT --out DIR``: a dataset's whole protocol.

Fine-tunes and tests every fold of the manifest in turn, each in ``DIR/fold_K`` (a fixed-split
dataset: one run in ``DIR/test``), then evaluates across folds
(:func:`maedfer.evaluation.evaluate.run`) and writes ``DIR/summary.json``: per-fold UAR and
WAR, their mean over folds (the figure MAE-DFER publishes), the pooled figures, each labelled,
beside MAE-DFER's published numbers where the dataset protocol has them
(:func:`maedfer.manifests.published_results`).

Resumable: a fold whose ``report.json`` exists is finished (the fine-tuning recipe writes it
only after the final test that ends training) and is kept untouched; a fold killed mid-training
continues from its ``checkpoints/last.pt``. Running the same command again after a kill
therefore continues at the first unfinished fold.

The published figure is the one the fine-tuned model's own paper claims for the dataset
(:func:`published_figure`: MAE-DFER's for ``lgi_former_*``, the registry's for the lineage's
models, docs/models.md), with the difference of the figure in the paper's aggregation.

Several models at once (``models``: ``--model NAME[=INIT]``, repeatable): the same protocol runs
for each in ``DIR/NAME`` (``--set model.name=NAME``, its own init), then one table compares
them (:mod:`maedfer.evaluation.comparison`, ``DIR/comparison.json``).

Instead of running, ``print_commands`` prints the per-fold ``maedfer finetune`` commands and
``sbatch`` writes a SLURM array job (one task per fold; the last task to finish runs
``maedfer evaluate`` on all folds).

Fine-tuning one fold goes through one function, :func:`_finetune_fold`: ``maedfer finetune
--config CONFIG`` (a shipped name such as ``finetune-dfew`` or a YAML file) with the
``--set key=value`` overrides; the printed and SLURM commands are the same commands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from maedfer.atomic import write_text
from maedfer.errors import MaedferError
from maedfer.evaluation.heldout import REPORT, manifest_info
from maedfer.evaluation.protocol_summary import (  # the names protocol users have had
    PUBLISHED_LABEL,
    SUMMARY,
    difference,
    fold_dir,
    format_summary,
    published_figure,
    summarize,
)
from maedfer.lock import hold

log = logging.getLogger(__name__)

# Options the protocol sets per fold; a config may not set them.
# Config keys the protocol sets for each fold (its flags), never taken from --set.
PER_FOLD_KEYS = ("data.manifest", "data.fold", "model.init", "run.out", "run.resume")


# ---------------------------------------------------------------- the one recipe joint
# Everything that knows the fine-tuning recipe's API is in this section: _finetune_fold runs a
# fold, _check_config resolves CONFIG once up front, so a bad config fails before any training.


def _check_config(config: str | Path, overrides: Sequence[str]) -> str:
    """Resolve the fine-tuning config with its overrides (unknown keys: one line); the name of
    the model it fine-tunes."""
    from maedfer.model import canonical_name
    from maedfer.recipes import config as config_io

    fixed = sorted({item.partition("=")[0].strip() for item in overrides} & set(PER_FOLD_KEYS))
    if fixed:
        raise MaedferError(
            f"--set {', '.join(fixed)}: the protocol sets those per fold "
            "(--data, --folds, --init, --out)"
        )
    cfg = config_io.load(str(config), recipe="finetune", overrides=list(overrides))
    return canonical_name(cfg.model.name)


def _finetune_fold(
    config: str | Path,
    data: Path,
    fold: int | None,
    init: Path | None,
    out: Path,
    overrides: Sequence[str],
) -> None:
    """Fine-tune and test one fold into ``out``: ``maedfer finetune --config CONFIG`` with
    ``--resume auto`` (a killed fold continues from its checkpoint, a finished one is kept)."""
    from maedfer.recipes import finetune

    finetune.run(
        str(config),
        overrides=list(overrides),
        data=data,
        fold=fold,
        init=init,
        out=out,
        resume="auto",
    )


# ---------------------------------------------------------------- folds, commands, scripts


def parse_folds(folds: str | Sequence[int] | None, num_folds: int, dataset: str) -> list:
    """The folds to run: ``[1..K]`` by default, or those asked for (``"1,3"``); ``[None]`` for
    a fixed-split dataset (one run).

    Raises:
        MaedferError: a fold outside ``1..K``, a fold given twice, text that is not fold
            numbers, or folds asked of a fixed-split dataset.
    """
    if num_folds == 0:
        if folds:
            raise MaedferError(f"{dataset} has a fixed train/test split: drop --folds ({folds})")
        return [None]
    if folds is None:
        return list(range(1, num_folds + 1))
    if isinstance(folds, str):
        try:
            folds = [int(f) for f in folds.split(",") if f.strip()]
        except ValueError:
            raise MaedferError(f"--folds {folds!r} must be fold numbers, e.g. 1,3") from None
    chosen = list(folds)
    bad = [f for f in chosen if not 1 <= f <= num_folds]
    if not chosen or bad:
        raise MaedferError(
            f"--folds ({', '.join(map(str, bad)) or 'none'}) must be in "
            f"1..{num_folds} for {dataset} ({num_folds}-fold protocol)"
        )
    if len(set(chosen)) != len(chosen):
        raise MaedferError(f"--folds {','.join(map(str, chosen))} names a fold twice")
    return sorted(chosen)


def fold_finished(folder: Path, fold: int | None) -> bool:
    """Whether ``folder`` holds a finished run of ``fold``: its ``report.json`` exists.

    Raises:
        MaedferError: a report that cannot be read, or one of another fold.
    """
    path = Path(folder) / REPORT
    if not path.is_file():
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MaedferError(
            f"{path} is not readable JSON ({exc}); move it away to rerun the fold"
        ) from None
    if not isinstance(report, dict) or report.get("fold") != fold:
        found = report.get("fold") if isinstance(report, dict) else None
        raise MaedferError(
            f"{path} is the report of fold {found}, not fold {fold}; give each fold its own folder"
        )
    return True


def finetune_command(
    config: str | Path,
    data: Path,
    fold: int | str | None,
    init: Path | None,
    out: Path | str,
    overrides: Sequence[str],
) -> str:
    """The ``maedfer finetune --config ...`` command line of one fold (shell-quoted; a word
    starting with ``"$`` is the shell's and left as it is)."""
    words = ["maedfer", "finetune", "--config", str(config), "--data", str(data)]
    if fold is not None:
        words += ["--fold", str(fold)]
    words += [*(["--init", str(init)] if init is not None else []), "--out", str(out)]
    for item in overrides:
        words += ["--set", item]
    return " ".join(w if w.startswith('"$') else shlex.quote(w) for w in words)


def evaluate_command(folders: Sequence[Path], out: Path) -> str:
    return shlex.join(["maedfer", "evaluate", *map(str, folders), "--out", str(out)])


def _array_spec(folds: list[int]) -> str:
    contiguous = folds == list(range(folds[0], folds[-1] + 1))
    return f"{folds[0]}-{folds[-1]}" if contiguous and len(folds) > 1 else ",".join(map(str, folds))


def sbatch_script(
    config: str | Path,
    data: Path,
    folds: list,
    init: Path | None,
    out: Path,
    overrides: Sequence[str],
    dataset: str,
) -> str:
    """A SLURM array job: one task per fold, then ``maedfer evaluate`` by the last to finish.

    Paths are made absolute (tasks may start elsewhere); a config that is a file too.
    """
    config = Path(config).resolve() if Path(config).is_file() else config
    data, out = Path(data).resolve(), Path(out).resolve()
    init = Path(init).resolve() if init is not None else None
    k_fold = folds != [None]
    tasks = [f for f in folds if f is not None] or [1]
    folders = [fold_dir(out, f) for f in folds]
    # $OUT and $FOLD are the shell's: "$OUT/fold_$FOLD" stays one word whatever OUT holds
    fold_arg, fold_out = ('"$FOLD"', '"$OUT/fold_$FOLD"') if k_fold else (None, '"$OUT/test"')
    command = finetune_command(config, data, fold_arg, init, fold_out, overrides)
    checks = " ".join(shlex.quote(str(f / REPORT)) for f in folders)
    return "\n".join(
        [
            "#!/bin/bash",
            f"# maedfer protocol: {dataset}, "
            + (f"folds {','.join(map(str, tasks))}" if k_fold else "the fixed test split")
            + ".",
            "# Written by `maedfer protocol --sbatch`; submit with: sbatch THIS_FILE",
            "# Add what your cluster needs (--partition, --gres=gpu:N, --time, --cpus-per-task).",
            f"#SBATCH --job-name=maedfer-{dataset}",
            f"#SBATCH --array={_array_spec(tasks)}",
            f"#SBATCH --output={out}/slurm-%A_%a.out",
            "set -euo pipefail",
            'FOLD="${SLURM_ARRAY_TASK_ID:?submit this script with sbatch (an array job)}"',
            f"OUT={shlex.quote(str(out))}",
            "",
            command,
            "",
            "# The task that finds every fold's report.json runs the cross-fold evaluation.",
            f"for report in {checks}; do",
            '    [[ -f "$report" ]] || exit 0',
            "done",
            evaluate_command(folders, out),
            "",
        ]
    )


# ---------------------------------------------------------------- run


def parse_models(models: Sequence[str], init: Path | None) -> list[tuple[str, Path | None]]:
    """``NAME`` or ``NAME=INIT`` entries -> ``[(registered name, init)]``; a bare name starts
    from ``init`` (the shared ``--init``), or from random weights when there is none.

    Raises:
        MaedferError: an unknown model, a model given twice, or an init that does not exist.
    """
    from maedfer.model import canonical_name

    chosen: list[tuple[str, Path | None]] = []
    for entry in models:
        name, _, path = (part.strip() for part in str(entry).partition("="))
        name = canonical_name(name)
        model_init = Path(path) if path else init
        if model_init is not None and not Path(model_init).is_file():
            raise MaedferError(f"--model {entry}: init {model_init} does not exist")
        if name in (n for n, _ in chosen):
            raise MaedferError(f"--model {name} is given twice")
        chosen.append((name, model_init))
    return chosen


def run(
    *,
    config: str | Path,
    data: Path,
    init: Path | None = None,
    out: Path,
    folds: str | Sequence[int] | None = None,
    print_commands: bool = False,
    sbatch: Path | None = None,
    overrides: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or write the commands of) every fold of ``data``, then the cross-fold summary.

    Args:
        config: the fine-tuning recipe config (see the module docstring).
        data: the manifest; its metadata gives the dataset and its number of folds.
        init: the pre-trained checkpoint every fold starts from (required without
            ``models``; with them, the start of each model given without its own).
        out: the protocol folder (``fold_K/``, ``summary.json``; with ``models``, one such
            folder per model, ``OUT/NAME``, and ``comparison.json``).
        folds: only these folds (``"1,3"`` or a list); default all.
        print_commands: make the per-fold commands and the final evaluation, run nothing.
        sbatch: write a SLURM array job script there instead of running (one model only).
        overrides: ``key=value`` recipe overrides, passed to every fold.
        models: ``NAME`` or ``NAME=INIT`` (:func:`parse_models`): the protocol of each, then
            one table of all.
        notify: takes each line of progress (which fold runs, which was kept, the script
            written); default: the log at INFO. ``maedfer protocol`` prints them on stderr.

    Returns:
        ``summary.json``'s dict (``comparison.json``'s with ``models``); with
        ``print_commands`` ``{"commands": [...]}``, with ``sbatch`` ``{"sbatch": path}``.

    Raises:
        MaedferError: both ``print_commands`` and ``sbatch``, bad folds (:func:`parse_folds`),
            a bad config, a fold folder holding another fold's report, a fold whose training
            ended without its final test, no init, or bad ``models``.
    """
    overrides = list(overrides or [])
    notify = notify or log.info
    if print_commands and sbatch is not None:
        raise MaedferError("give --print-commands or --sbatch FILE, not both")
    if models:
        return _run_models(
            config=config,
            data=data,
            init=init,
            out=Path(out),
            folds=folds,
            print_commands=print_commands,
            sbatch=sbatch,
            overrides=overrides,
            models=models,
            notify=notify,
        )
    if init is None:
        raise MaedferError(
            "give --init CKPT (every fold starts from it), or --model "
            "NAME=CKPT for each model to compare"
        )
    return _run_one(
        config=config,
        data=data,
        init=Path(init),
        out=Path(out),
        folds=folds,
        print_commands=print_commands,
        sbatch=sbatch,
        overrides=overrides,
        notify=notify,
    )


def _run_one(
    *,
    config: str | Path,
    data: Path,
    init: Path | None,
    out: Path,
    folds: str | Sequence[int] | None,
    print_commands: bool,
    sbatch: Path | None,
    overrides: list[str],
    notify: Callable[[str], None],
) -> dict[str, Any]:
    """One model's protocol (run, or its commands/script); its summary."""
    dataset, _, num_folds = manifest_info(Path(data))
    chosen = parse_folds(folds, num_folds, dataset)
    folders = [fold_dir(out, f) for f in chosen]
    # what every fold's command needs, checked before any command is printed, written or run:
    # a printed command that cannot work is worse than none
    if init is not None and not Path(init).is_file():
        raise MaedferError(
            f"--init {init} does not exist; give the pre-trained checkpoint every fold starts from"
        )
    model = _check_config(config, overrides)  # a bad config fails now, not after training
    if print_commands:
        commands = [
            finetune_command(config, data, f, init, d, overrides)
            for f, d in zip(chosen, folders, strict=True)
        ]
        commands.append(evaluate_command(folders, Path(out)))
        return {"commands": commands}
    if sbatch is not None:
        Path(out).mkdir(parents=True, exist_ok=True)  # SLURM opens its --output files there
        write_text(Path(sbatch), sbatch_script(config, data, chosen, init, out, overrides, dataset))
        notify(f"wrote {sbatch}: {len(chosen)} array task(s); submit with: sbatch {sbatch}")
        return {"sbatch": str(sbatch)}
    if init is None:
        notify(f"protocol: {model} starts from random weights (no init given)")
    with hold(Path(out)):  # one command writes a folder at a time (maedfer.lock)
        return _run_folds(
            config, Path(data), init, Path(out), chosen, folders, overrides, dataset, model, notify
        )


def _run_folds(
    config: str | Path,
    data: Path,
    init: Path | None,
    out: Path,
    chosen: list,
    folders: list[Path],
    overrides: list[str],
    dataset: str,
    model: str,
    notify: Callable[[str], None],
) -> dict[str, Any]:
    """Fine-tune every unfinished fold in turn, then the cross-fold summary."""
    for position, (fold, folder) in enumerate(zip(chosen, folders, strict=True), 1):
        name = f"fold {fold}" if fold is not None else "the test split"
        if fold_finished(folder, fold):
            notify(f"protocol: {name} finished earlier ({folder / REPORT}), kept")
            continue
        notify(f"protocol: {name} ({position} of {len(chosen)}) -> {folder}")
        _finetune_fold(config, data, fold, init, folder, overrides)
        if not fold_finished(folder, fold):
            raise MaedferError(
                f"{name} ended without {folder / REPORT} (training stopped "
                "early?); run the same command again to continue"
            )
    return summarize(out, chosen, dataset, config, model)


def _run_models(
    *,
    config: str | Path,
    data: Path,
    init: Path | None,
    out: Path,
    folds: str | Sequence[int] | None,
    print_commands: bool,
    sbatch: Path | None,
    overrides: list[str],
    models: Sequence[str],
    notify: Callable[[str], None],
) -> dict[str, Any]:
    """Each model's protocol in ``OUT/NAME``, then the comparison table."""
    if sbatch is not None:
        raise MaedferError(
            "--sbatch writes one model's array job: run it once per model, "
            "with --set model.name=NAME"
        )
    if any(item.partition("=")[0].strip() == "model.name" for item in overrides):
        raise MaedferError("--set model.name and --model: give the models with --model only")
    entries = parse_models(models, init)
    for name, _ in entries:  # every model's config fails now, before any training
        _check_config(config, [*overrides, f"model.name={name}"])
    held = contextlib.ExitStack()
    if not print_commands:  # the comparison's folder, for the life of the command
        held.enter_context(hold(out))
    with held:
        return _compare_models(
            config=config,
            data=data,
            out=out,
            folds=folds,
            print_commands=print_commands,
            overrides=overrides,
            entries=entries,
            notify=notify,
        )


def _compare_models(
    *,
    config: str | Path,
    data: Path,
    out: Path,
    folds: str | Sequence[int] | None,
    print_commands: bool,
    overrides: list[str],
    entries: list,
    notify: Callable[[str], None],
) -> dict[str, Any]:
    """Each model's protocol, then the comparison table (:func:`_run_models`, locked)."""
    from maedfer.evaluation import comparison

    summaries, commands = [], []
    for name, model_init in entries:
        result = _run_one(
            config=config,
            data=data,
            init=model_init,
            out=out / name,
            folds=folds,
            print_commands=print_commands,
            sbatch=None,
            overrides=[*overrides, f"model.name={name}"],
            notify=notify,
        )
        if print_commands:
            commands += result["commands"]
            continue
        summaries.append((name, model_init, result))
    if print_commands:
        return {"commands": commands}
    return comparison.compare(out, summaries, config)


__all__ = [
    "PER_FOLD_KEYS",
    "PUBLISHED_LABEL",
    "SUMMARY",
    "difference",
    "evaluate_command",
    "finetune_command",
    "fold_dir",
    "fold_finished",
    "format_summary",
    "parse_folds",
    "parse_models",
    "published_figure",
    "run",
    "sbatch_script",
    "summarize",
]
