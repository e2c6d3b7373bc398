"""``maedfer test CHECKPOINT --data M.parquet``: test any fine-tuned checkpoint.

The reference test protocol (the official fine-tuning test: every clip of the fold or split
in ``test_views`` temporal views, softmax per view, probabilities averaged per clip) on one
fold, without training: the official code's ``--eval``. The same functions as a fine-tuning
run's final test score it (:func:`maedfer.evaluation.heldout.view_probabilities`,
:func:`~maedfer.evaluation.heldout.score_views`,
:func:`~maedfer.evaluation.heldout.write_results`), so
``report.json`` and ``predictions.parquet`` have the same keys and columns, and a run's own
checkpoint gives its own report back.

Two kinds of checkpoint are told apart by their content:

- ours (``checkpoints/last.pt`` of ``maedfer finetune``): it names its model, the model's
  config, the class names and the recipe's options (frame stride, test views, precision);
- a released fine-tuned ``.pth`` of the lineage (``{'model': state_dict, 'args': ...}``:
  MAE-DFER's, VideoMAE's, SVFAP's, S4D's): the model and architecture are read off the tensors
  (:func:`maedfer.model.official.official_classifier`; ``lgi_former_base`` for MAE-DFER's
  released ones), the weights go through :func:`maedfer.model.load_official`, the class names
  come from the manifest, whose class count must equal the head's rows. The saved ``args``
  give the frame stride (``sampling_rate``) where present, else the model's input contract.

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from maedfer.config import parse_model_overrides as parse_overrides
from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.evaluation.coverage import describe_missing
from maedfer.evaluation.heldout import (
    REPORT,
    manifest_info,
    score_views,
    view_probabilities,
    write_results,
)
from maedfer.lock import hold
from maedfer.model import input_contract
from maedfer.model.official import build_official_classifier
from maedfer.training import badclips
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.precision import resolve_precision

log = logging.getLogger(__name__)

DEFAULT_VIEWS = 2  # the official test: 2 temporal views (its 2 "crops" are identical)
DEFAULT_BATCH = 32


def _recipe_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, or ``config[section][key]`` for a recipe config nested by section."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, Mapping) and key in value:
            return value[key]
    return None


def _selection(data: Path, fold: int | None, split: str | None) -> dict[str, Any]:
    """Which rows are tested, checked against the manifest's protocol; plus its facts."""
    dataset, classes, num_folds = manifest_info(Path(data))
    if fold is not None and split is not None:
        raise MaedferError(f"give --fold or --split, not both (--fold {fold}, --split {split})")
    if num_folds > 0:
        if split is not None:
            raise MaedferError(
                f"{data} is a {num_folds}-fold protocol ({dataset}): give --fold K, not --split"
            )
        if fold is None:
            raise MaedferError(
                f"{dataset} is a {num_folds}-fold protocol: give --fold K "
                f"(1..{num_folds}), the fold to test on"
            )
        if not 1 <= fold <= num_folds:
            raise MaedferError(
                f"--fold {fold} must be in 1..{num_folds} for {dataset} ({num_folds}-fold protocol)"
            )
        rows: dict[str, Any] = {"fold": fold}
    else:
        if fold is not None:
            raise MaedferError(
                f"{dataset} has a fixed train/test split: give --split test, not --fold {fold}"
            )
        rows = {"split": split or "test"}
    return {"dataset": dataset, "classes": classes, "rows": rows}


def _own_model(ckpt: Mapping[str, Any], path: Path, classes: list[str]) -> tuple[Any, dict]:
    """Rebuild the classifier of one of our checkpoints; its test settings from its recipe."""
    saved = list(ckpt.get("classes") or [])
    if saved and saved != classes:
        raise MaedferError(
            f"checkpoint {path} was trained on classes {saved} but the manifest names {classes}"
        )
    model = ckpt_io.classifier_from_checkpoint(
        ckpt,
        path,
        purpose="evaluate needs a fine-tuned classifier (a finetune run's checkpoints/last.pt)",
    )
    _check_head(model.config["num_classes"], path, classes)
    config = ckpt.get("config") or {}
    settings = {
        "stride": _recipe_value(config, "stride") or input_contract(model).stride,
        "test_views": _recipe_value(config, "test_views") or DEFAULT_VIEWS,
        "subtract_mean": bool(_recipe_value(config, "subtract_mean")),
        "precision": _recipe_value(config, "precision"),
        "batch_size": _recipe_value(config, "test_batch_size")
        or _recipe_value(config, "batch_size"),
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
        "format": "maedfer",
    }
    return model, settings


def _check_head(num_classes: int, path: Path, classes: list[str]) -> None:
    if num_classes != len(classes):
        raise MaedferError(
            f"checkpoint {path} has a {num_classes}-class head but the manifest names "
            f"{len(classes)} classes {classes}; evaluate it on its own dataset's manifest"
        )


def _official_model(
    obj: Any, path: Path, classes: list[str], overrides: dict[str, Any]
) -> tuple[Any, dict]:
    """Build the classifier an official fine-tuned checkpoint fits and load it (the one
    builder inference uses too), then check its head against the manifest's classes."""
    model, args = build_official_classifier(obj, path, overrides)
    _check_head(int(model.config["num_classes"]), path, classes)
    settings = {
        "stride": int(args.get("sampling_rate") or input_contract(model).stride),
        "test_views": int(args.get("test_num_segment") or DEFAULT_VIEWS),
        "subtract_mean": False,
        "precision": None,
        "batch_size": None,
        "epoch": obj.get("epoch") if isinstance(obj, Mapping) else None,
        "step": None,
        "format": "official",
    }
    return model, settings


def load_for_test(
    checkpoint: Path, classes: list[str], overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The classifier in ``checkpoint`` (ours or official) and its test settings.

    Returns:
        ``(model, settings)``; settings ``stride``, ``test_views``, ``subtract_mean``,
        ``precision`` and ``batch_size`` (None: the default), ``epoch``, ``step`` (None when
        the checkpoint does not say) and ``format`` (``maedfer`` or ``official``).

    Raises:
        MaedferError: unreadable file, a pre-training checkpoint, a head whose size differs
            from the manifest's class count, or weights that do not fit.
    """
    checkpoint = Path(checkpoint)
    obj = ckpt_io.read_any(checkpoint)
    if isinstance(obj, Mapping) and obj.get("format") == ckpt_io.FORMAT:
        if overrides:
            raise MaedferError(
                f"--set {sorted(overrides)}: a maedfer checkpoint names its own model; --set "
                "is for official checkpoints only"
            )
        return _own_model(obj, checkpoint, classes)
    return _official_model(obj, checkpoint, classes, dict(overrides or {}))


def run(
    *,
    checkpoint: Path,
    data: Path,
    out: Path | None,
    fold: int | None = None,
    split: str | None = None,
    dataset: str | None = None,
    device: str | None = None,
    backend: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    model_overrides: Mapping[str, Any] | list[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Test ``checkpoint`` on one fold (or split) of ``data``; write the results into ``out``.

    Args:
        checkpoint: ours (``checkpoints/last.pt``) or an official MAE-DFER fine-tuned ``.pth``.
        data: the manifest; its metadata names the classes and the protocol.
        out: folder for ``report.json`` and ``predictions.parquet`` (required).
        fold: the test fold of a k-fold manifest; split: the split of a fixed-split one
            (default ``test``).
        dataset: a check: refuse a manifest of another dataset.
        device, backend, batch_size, workers: where and how clips are decoded and scored.
        model_overrides: official checkpoints only: model fields the weights do not show
            (``num_heads``, ``img_size``, ``num_frames``, ``region_size``).
        quiet: no progress bar. Nothing is printed (``maedfer test`` prints the summary).

    Returns:
        The ``report.json`` dict.

    Raises:
        MaedferError: no ``out``, a fold or split the manifest does not have, another
            dataset than ``dataset``, or a checkpoint that does not fit (see
            :func:`load_for_test`).
    """
    if out is None:
        raise MaedferError(
            "--checkpoint needs --out DIR (where report.json and predictions.parquet go)"
        )
    with hold(Path(out)):  # one command writes a folder at a time (maedfer.lock)
        return _evaluate(
            checkpoint=checkpoint,
            data=data,
            out=Path(out),
            fold=fold,
            split=split,
            dataset=dataset,
            device=device,
            backend=backend,
            batch_size=batch_size,
            workers=workers,
            model_overrides=model_overrides,
            quiet=quiet,
        )


def _evaluate(
    *,
    checkpoint: Path,
    data: Path,
    out: Path,
    fold: int | None,
    split: str | None,
    dataset: str | None,
    device: str | None,
    backend: str,
    batch_size: int | None,
    workers: int | None,
    model_overrides: Mapping[str, Any] | list[str] | None,
    quiet: bool,
) -> dict[str, Any]:
    """:func:`run` once it holds ``out``'s lock."""
    chosen = _selection(Path(data), fold, split)
    if dataset is not None and dataset.lower() != chosen["dataset"].lower():
        raise MaedferError(f"--dataset {dataset}, but {data} is a {chosen['dataset']} manifest")
    classes = chosen["classes"]
    model, settings = load_for_test(Path(checkpoint), classes, parse_overrides(model_overrides))
    dev = resolve_device(device)
    precision = resolve_precision(settings["precision"], dev)
    model = model.to(dev).eval()
    from maedfer.pipelines import build_loader

    loader_options: dict[str, Any] = {"workers": workers} if workers is not None else {}
    loader = build_loader(
        Path(data),
        mode="test",
        batch_size=batch_size or settings["batch_size"] or DEFAULT_BATCH,
        num_frames=model.config["num_frames"],
        stride=int(settings["stride"]),
        size=model.config["img_size"],
        backend=backend,
        seed=0,
        device=str(dev) if dev.type == "cuda" else None,
        subtract_mean=settings["subtract_mean"],
        test_views=int(settings["test_views"]),
        **chosen["rows"],
        **loader_options,
    )
    # a model that draws random numbers in evaluation (S4D's router noise, its authors' code)
    # gives the same report for the same checkpoint and data
    torch.manual_seed(0)
    rows = view_probabilities(model, loader, device=dev, precision=precision, progress=not quiet)
    result = score_views(rows, classes, loader.table.clip_ids())
    # the keys of a fine-tuning run's report (dataset, fold, epoch, step), then what was tested
    result.report.update(
        {
            "dataset": chosen["dataset"],
            "fold": fold,
            "epoch": settings["epoch"],
            "step": settings["step"],
            "split": chosen["rows"].get("split"),
            "checkpoint": str(checkpoint),
            "checkpoint_format": settings["format"],
            "model": model.model_name,
            "precision": precision,
            "stride": int(settings["stride"]),
            "bad_train_clips": _bad_train_clips(Path(checkpoint), settings["format"]),
        }
    )
    out = Path(out)
    write_results(out, result, classes)
    report = result.report
    _write_html(out, report, checkpoint)
    return report


def _write_html(out: Path, report: dict[str, Any], checkpoint: Path) -> Path:
    """``out/report.html`` (:mod:`maedfer.evaluation.report_html`); a checkpoint has no curves."""
    from maedfer.evaluation import report_html as page

    where = f"fold {report['fold']}" if report["fold"] is not None else f"split {report['split']}"
    entry = page.RunEntry(f"{Path(checkpoint).name}, {where}", None, report, report.get("complete"))
    return page.write_report_html(
        out / page.REPORT_HTML,
        title=f"maedfer evaluate: {report['dataset']}",
        runs=[entry],
        dataset=report["dataset"],
        published=page.published_percent(report["dataset"]),
        note=f"checkpoint {checkpoint} ({report['checkpoint_format']})",
    )


def _bad_train_clips(checkpoint: Path, form: str) -> int | None:
    """The faulty training clips of the run whose ``checkpoints/last.pt`` (or ``final.pt``)
    this is, as its report counts them; None for an official checkpoint or a loose file."""
    if form == "official":
        return None
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return badclips.count(run) if (run / "config.yaml").is_file() else None


def format_summary(report: dict[str, Any], out: Path, seconds: float) -> str:
    """The lines ``maedfer test`` prints for a report written into ``out``."""
    where = f"fold {report['fold']}" if report["fold"] is not None else f"split {report['split']}"
    lines = [
        f"evaluate: {report['checkpoint_format']} checkpoint {report['checkpoint']} "
        f"({report['model']}) on {report['dataset']} {where}, {report['views']} views, "
        f"{seconds:.1f} s",
        f"  test: UAR {report['uar']:.4f}  WAR {report['war']:.4f}  on {report['clips_scored']} "
        f"of {report['clips_expected']} clips",
    ]
    if not report["complete"]:
        missing = report["missing_clips"]
        text = describe_missing(len(missing), report["clips_expected"], missing)
        lines.append(f"  INCOMPLETE: {text} (all listed in report.json under missing_clips)")
    lines.append(f"  report: {out / REPORT}, {out / 'report.html'}")
    return "\n".join(lines)
