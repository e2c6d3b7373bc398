"""``maedfer evaluate RUN...``: metrics of one run, or the cross-fold summary of several.

docs/design.md, docs/datasets.md. Each run folder holds ``predictions.parquet`` (written by
the fine-tuning recipe; one row per clip, test views already merged) and usually ``report.json``.
Everything is recomputed from the predictions, so a report is never trusted blindly.

One run: UAR, WAR, per-class recall and the confusion matrix, printed, plus ``confusion.png`` in
the run folder. Several runs (the folds of one dataset): the same per fold, then two
aggregations, each labelled as what it is:

- *mean over folds (as MAE-DFER reports)*: the arithmetic mean of the per-fold UAR and WAR, the
  figure the MAE-DFER README tables publish (docs/reference.md, "Scores across folds");
- *pooled over N clips*: UAR and WAR of all predictions together.

A run whose ``report.json`` says test clips were not scored (files missing or undecodable) is
flagged: a warning line on stderr, a ``*`` in the table's ``missing`` column with a footnote, and
``complete: false`` in the JSON (per run and on both aggregations).

With several runs ``evaluation.json`` and ``confusion_pooled.png`` are written to ``out``
(default: the deepest folder holding every run, e.g. ``runs/dfew`` for ``runs/dfew/fold1..5``).
``report.html`` (:mod:`maedfer.evaluation.report_html`: the tables beside MAE-DFER's published
figures, the confusion matrix, per-class recall and the training curves, in one self-contained
page) goes there too, or into the run folder for one run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maedfer.errors import MaedferError
from maedfer.evaluation import metrics
from maedfer.evaluation.coverage import describe_missing, run_coverage

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"
REPORT = "report.json"
CONFUSION_PNG = "confusion.png"
SUMMARY_JSON = "evaluation.json"
POOLED_PNG = "confusion_pooled.png"


@dataclass
class RunPredictions:
    """The predictions of one run, as read from its folder."""

    run: Path
    folder: Path
    clip_ids: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    class_names: list[str]
    views: int | None
    dataset: str | None = None
    coverage: dict = field(default_factory=dict)  # coverage.run_coverage: clips expected, ...


def _report_json(folder: Path) -> dict:
    path = folder / REPORT
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MaedferError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(report, dict):
        raise MaedferError(f"{path} must hold a JSON object, found {type(report).__name__}")
    return report


def load_run(run: Path) -> RunPredictions:
    """Read a run folder (or a ``predictions.parquet`` path directly).

    Class names come from the predictions' metadata, else ``report.json``, else ``class0``... .

    Raises:
        MaedferError: no predictions file, unreadable or inconsistent predictions, or class
            names that disagree between the predictions and ``report.json``.
    """
    run = Path(run)
    path = run if run.is_file() else run / PREDICTIONS
    folder = path.parent
    if not path.is_file():
        raise MaedferError(
            f"run {run} has no {PREDICTIONS}; expected a finished fine-tuning run folder "
            f"(it writes {PREDICTIONS} and {REPORT})"
        )
    columns, classes = metrics.read_predictions(path)
    report = _report_json(folder)
    report_classes = report.get("class_names")
    if classes is None:
        classes = report_classes
    elif report_classes is not None and list(report_classes) != list(classes):
        raise MaedferError(
            f"run {run}: class names in {PREDICTIONS} {classes} differ from {REPORT} "
            f"{report_classes}"
        )
    width = columns["probabilities"].shape[1]
    if classes is None:
        logger.warning("run %s names no classes; using class0..class%d", run, width - 1)
        classes = [f"class{c}" for c in range(width)]
    if width != len(classes):
        raise MaedferError(
            f"run {run}: {width} probabilities per clip but {len(classes)} class names {classes}"
        )
    if len(columns["label"]) == 0:
        raise MaedferError(f"run {run}: {PREDICTIONS} has no rows")
    views = report.get("views")
    return RunPredictions(
        run=run,
        folder=folder,
        clip_ids=columns["clip_id"],
        labels=columns["label"],
        preds=columns["prediction"],
        class_names=list(classes),
        views=int(views) if views is not None else None,
        dataset=report.get("dataset"),
        coverage=run_coverage(report, len(columns["clip_id"])),
    )


def _check_runs(results: list[RunPredictions]) -> None:
    seen: dict[Path, Path] = {}
    for result in results:
        key = (result.folder / PREDICTIONS).resolve()
        if key in seen:
            raise MaedferError(f"run {result.run} is the same run as {seen[key]}; give each once")
        seen[key] = result.run
    first = results[0]
    datasets = {r.dataset for r in results if r.dataset is not None}
    if len(datasets) > 1:
        raise MaedferError(
            f"the runs come from different datasets {sorted(datasets)} (report.json); "
            "a cross-fold summary takes the folds of one dataset"
        )
    for result in results[1:]:
        if result.class_names != first.class_names:
            raise MaedferError(
                f"runs {first.run} and {result.run} have different classes "
                f"({first.class_names} vs {result.class_names}); folds of one dataset share them"
            )
    ids = [set(r.clip_ids.tolist()) for r in results]
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            shared = len(ids[i] & ids[j])
            if shared:
                logger.warning(
                    "runs %s and %s share %d clip ids: the pooled figures count them twice "
                    "(folds of one dataset have disjoint test sets)",
                    results[i].run,
                    results[j].run,
                    shared,
                )


def _views(results: list[RunPredictions]) -> int:
    views = {r.views for r in results if r.views is not None}
    if len(views) > 1:
        logger.warning("runs were tested with different numbers of views: %s", sorted(views))
    return views.pop() if len(views) == 1 else 0


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}"


def _recall_table(class_names: list[str], columns: dict[str, dict]) -> list[str]:
    """Per-class recall (%) with one column per entry of ``columns`` (name -> recall dict)."""
    width = max(len(n) for n in class_names)
    heads = [h[:12] for h in columns]
    lines = ["per-class recall (%)", " " * (width + 2) + "".join(f"{h:>13}" for h in heads)]
    for name in class_names:
        cells = "".join(f"{_pct(col[name]):>13}" for col in columns.values())
        lines.append(f"  {name:<{width}}{cells}")
    return lines


def _matrix_lines(report: dict, heading: str) -> list[str]:
    names = report["class_names"]
    width = max(len(n) for n in names)
    longest_count = max(len(str(v)) for row in report["confusion_matrix"] for v in row)
    cell = max(6, min(12, width) + 1, longest_count + 1)  # names past 11 characters are cut
    lines = [heading, " " * (width + 2) + "".join(f"{n[: cell - 1]:>{cell}}" for n in names)]
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return lines


def _missing_cell(coverage: dict) -> str:
    """``40 *`` for an incomplete run, ``0`` for a complete one, ``?`` when unknown."""
    if coverage["complete"] is None:
        return "?  "
    return f"{coverage['num_missing']} *" if not coverage["complete"] else "0  "


def _footnotes(results: list[RunPredictions]) -> list[str]:
    states = {r.coverage["complete"] for r in results}
    lines = []
    if False in states:
        lines.append(
            "* incomplete: test clips whose files were missing or undecodable were not "
            "scored; UAR/WAR (and the summaries below) cover only the clips scored "
            "(report.json lists them under missing_clips)"
        )
    if None in states:
        lines.append("? unknown: report.json does not say how many test clips were expected")
    return lines


def _format(results: list[RunPredictions], reports: list[dict], summary: dict | None) -> str:
    names = [str(r.run) for r in results]
    width = max(30, *(len(n) for n in names))
    lines = [f"{'run':<{width}} {'clips':>7} {'missing':>9} {'UAR %':>7} {'WAR %':>7}"]
    for name, report, result in zip(names, reports, results, strict=True):
        lines.append(
            f"{name:<{width}} {report['num_clips']:>7} {_missing_cell(result.coverage):>9} "
            f"{_pct(report['uar']):>7} {_pct(report['war']):>7}"
        )
    lines += _footnotes(results)
    class_names = reports[0]["class_names"]
    partial = [
        r
        for r in [*reports, *([summary["pooled"]] if summary else [])]
        if None in r["per_class_recall"].values()
    ]
    if partial:
        lines.append(f"note: UAR is the {partial[0]['uar_classes']} where a class has no clip")
    if summary is None:
        lines += ["", *_recall_table(class_names, {"recall": reports[0]["per_class_recall"]})]
        lines += [
            "",
            *_matrix_lines(reports[0], "confusion matrix (rows = true, cols = predicted)"),
        ]
        return "\n".join(lines)
    mean, pooled = summary["mean_over_folds"], summary["pooled"]
    lines += [
        "",
        f"{mean['label']}: UAR {_pct(mean['uar']).strip()} % (std {100 * mean['uar_std']:.2f}), "
        f"WAR {_pct(mean['war']).strip()} % (std {100 * mean['war_std']:.2f}) "
        f"over {mean['num_folds']} runs",
        f"{pooled['label']}: UAR {_pct(pooled['uar']).strip()} %, "
        f"WAR {_pct(pooled['war']).strip()} %",
    ]
    heads = [r.folder.name for r in results]
    if len(set(heads)) < len(heads):  # e.g. runs/a/fold1 and runs/b/fold1
        heads = [f"run {i + 1}" for i in range(len(results))]
    columns = {h: r["per_class_recall"] for h, r in zip(heads, reports, strict=True)}
    columns["pooled"] = pooled["per_class_recall"]
    lines += ["", *_recall_table(class_names, columns)]
    lines += ["", *_matrix_lines(pooled, f"confusion matrix, {pooled['label']} (rows = true)")]
    return "\n".join(lines)


def incomplete_warnings(results: list[RunPredictions]) -> list[str]:
    """One line per incomplete run, for stderr (stdout stays the table or the JSON)."""
    lines = []
    for result in results:
        coverage = result.coverage
        if coverage.get("complete") is False:
            lines.append(
                f"maedfer: warning: run {result.run} is incomplete: "
                f"{describe_missing(coverage['num_missing'], coverage['clips_expected'])}; "
                f"its figures cover only the {coverage['clips_scored']} clips scored"
            )
    return lines


def _all_complete(results: list[RunPredictions]) -> bool | None:
    """False if any run is incomplete, None if any is unknown (and none incomplete), else True."""
    states = [r.coverage["complete"] for r in results]
    return False if False in states else None if None in states else True


def _default_out(results: list[RunPredictions]) -> Path:
    return Path(os.path.commonpath([r.folder.resolve() for r in results]))


def _write_html(
    results: list[RunPredictions], reports: list[dict], payload: dict, target: Path
) -> Path:
    from maedfer.evaluation.report_html import RunEntry, published_percent, write_report_html

    names = [r.folder.name for r in results]
    if len(set(names)) < len(names):
        names = [str(r.run) for r in results]
    entries = [
        RunEntry(n, r.folder, rep, r.coverage["complete"])
        for n, r, rep in zip(names, results, reports, strict=True)
    ]
    dataset = results[0].dataset
    title = f"maedfer evaluate: {dataset or results[0].folder.name}"
    return write_report_html(
        target,
        title=title,
        runs=entries,
        dataset=dataset,
        mean=payload.get("mean_over_folds"),
        pooled=payload.get("pooled"),
        published=published_percent(dataset),
    )


@dataclass
class Evaluation:
    """What :func:`evaluate_runs` found: the runs read, their reports, the cross-fold summary
    (several runs) and the JSON payload :func:`run` returns."""

    results: list[RunPredictions]
    reports: list[dict]
    summary: dict | None
    payload: dict

    def text(self) -> str:
        """The table ``maedfer evaluate`` prints, then the files it wrote."""
        written = [p["confusion_png"] for p in self.payload["runs"]]
        if self.summary is not None:
            written += [self.payload["pooled_confusion_png"], self.payload["summary_json"]]
        if "report_html" in self.payload:
            written.append(self.payload["report_html"])
        return _format(self.results, self.reports, self.summary) + "\n\nwrote " + ", ".join(written)

    def warnings(self) -> list[str]:
        """A line per incomplete run (stderr)."""
        return incomplete_warnings(self.results)


def run(runs: list[Path], out: Path | None = None, *, html: bool = True) -> dict:
    """Evaluate run folders and write the PNG(s), ``evaluation.json`` and ``report.html``; the
    payload (:func:`evaluate_runs`); prints nothing (``maedfer evaluate`` prints
    :meth:`Evaluation.text` or the payload as JSON)."""
    return evaluate_runs(runs, out, html=html).payload


def evaluate_runs(runs: list[Path], out: Path | None = None, *, html: bool = True) -> Evaluation:
    """Evaluate run folders; write the PNG(s) (and, for several, ``evaluation.json``).

    Args:
        runs: run folders (or their ``predictions.parquet`` files); several = folds of one
            dataset.
        out: where the cross-fold ``evaluation.json`` and ``confusion_pooled.png`` go (several
            runs only); default the deepest folder holding every run.
        html: write ``report.html`` (``out`` for several runs, the run folder for one); off for
            a caller that writes its own (``maedfer protocol``).

    Returns:
        The evaluation, whose ``payload`` is ``{"runs": [{"run", "report", "confusion_png",
        "complete", "clips_expected", "clips_scored", "missing_clips"}...]}`` plus, for several
        runs, ``mean_over_folds`` and ``pooled`` (each with ``complete``: False when any run
        missed test clips, None when a run does not say), ``pooled_confusion_png`` and
        ``summary_json``. ``complete`` is None for a run whose report.json lacks
        ``clips_expected``.

    Raises:
        MaedferError: no runs, a run folder without readable predictions, the same run twice,
            or runs whose classes differ.
    """
    if not runs:
        raise MaedferError("no run folders given; pass one run, or the folds of one dataset")
    results = [load_run(Path(r)) for r in runs]
    _check_runs(results)
    class_names, views = results[0].class_names, _views(results)
    summary = None
    if len(results) > 1:
        summary = metrics.cross_fold_summary(
            [(r.labels, r.preds) for r in results], class_names, views
        )
        reports = summary["folds"]
    else:
        reports = [
            metrics.classification_report(results[0].labels, results[0].preds, class_names, views)
        ]
    payload: dict = {"runs": []}
    for result, report in zip(results, reports, strict=True):
        png = result.folder / CONFUSION_PNG
        metrics.plot_confusion(report, png, title=str(result.run))
        coverage = {k: v for k, v in result.coverage.items() if k != "num_missing"}
        payload["runs"].append(
            {"run": str(result.run), "report": report, "confusion_png": str(png), **coverage}
        )
    if summary is not None:
        out = Path(out) if out is not None else _default_out(results)
        png, summary_json = out / POOLED_PNG, out / SUMMARY_JSON
        metrics.plot_confusion(summary["pooled"], png, title=summary["pooled"]["label"])
        complete = _all_complete(results)
        payload.update(
            mean_over_folds={**summary["mean_over_folds"], "complete": complete},
            pooled={**summary["pooled"], "complete": complete},
            pooled_confusion_png=str(png),
            summary_json=str(summary_json),
        )
        metrics.write_report(summary_json, payload)
    if html:
        from maedfer.evaluation.report_html import REPORT_HTML

        folder = Path(out) if summary is not None and out is not None else results[0].folder
        target = folder / REPORT_HTML
        payload["report_html"] = str(_write_html(results, reports, payload, target))
    return Evaluation(results, reports, summary, payload)
