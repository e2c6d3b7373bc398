"""A protocol's cross-fold summary beside the published figures: ``summary.json``, the printed
table and the protocol's ``report.html`` (:func:`summarize`; ``maedfer protocol`` writes it
after the last fold; docs/models.md, "Fine-tune, evaluate, compare").

The published figure is the one the fine-tuned model's own paper claims for the dataset
(:func:`published_figure`: MAE-DFER's for ``lgi_former_*``, the registry's for the lineage's
models), with the difference of ours (the mean over folds) in the paper's aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maedfer.errors import MaedferError
from maedfer.evaluation import evaluate, metrics
from maedfer.manifests import DATASET_NAMES, published_results

SUMMARY = "summary.json"
PUBLISHED_LABEL = "published MAE-DFER"


def fold_dir(out: Path, fold: int | None) -> Path:
    return Path(out) / (f"fold_{fold}" if fold is not None else "test")


def _figures(report: Mapping[str, Any]) -> dict[str, Any]:
    return {"uar": report["uar"], "war": report["war"], "num_clips": report["num_clips"]}


def published_figure(model: str, dataset: str) -> dict[str, Any] | None:
    """What the paper of ``model`` publishes for ``dataset``: ``uar``/``war`` as fractions
    (``None`` where the source gives none), ``as_published`` (percent), ``aggregation``,
    ``source``, ``note`` and the row's ``label``; ``None`` when it publishes nothing.

    ``lgi_former_*`` (and a name the registry does not know) get MAE-DFER's figures
    (:func:`maedfer.manifests.published_results`); the lineage's models their registry entry's.
    """
    from maedfer.model import model_info

    try:
        own = model_info(model)["published"]
    except MaedferError:  # a name this maedfer does not know
        own = None
    if own is None or model.startswith("lgi_former"):
        found = published_results(dataset) if dataset in DATASET_NAMES else None
        if found is None:
            return None
        return _published_row(found["uar"], found["war"], found["aggregation"], found["source"], "")
    entry = own.get(dataset)
    if entry is None:
        return None
    return _published_row(entry.uar, entry.war, entry.aggregation, entry.source, entry.note)


def _published_row(
    uar: float | None, war: float | None, aggregation: str, source: str, note: str
) -> dict[str, Any]:
    """Percent as published; fractions like every other figure here."""
    shown = ", ".join(f"{k} {v:.2f} %" for k, v in (("UAR", uar), ("WAR", war)) if v is not None)
    return {
        "label": "published " + source.split(" (")[0],
        "uar": None if uar is None else uar / 100,
        "war": None if war is None else war / 100,
        "as_published": shown,
        "aggregation": aggregation,
        "source": source,
        "note": note,
    }


def difference(ours: Mapping[str, Any], published: Mapping[str, Any] | None) -> dict | None:
    """Ours minus the published figure (fractions; ``None`` where nothing was published).
    ``ours`` is the mean over folds: the aggregation every paper here reports (one run for a
    fixed split)."""
    if published is None:
        return None
    return {k: None if published[k] is None else ours[k] - published[k] for k in ("uar", "war")}


def summarize(
    out: Path, folds: list, dataset: str, config: str | Path, model: str = "lgi_former_base"
) -> dict[str, Any]:
    """Cross-fold evaluation of the finished folds; writes and returns ``summary.json``, with
    the figure ``model``'s paper publishes beside them."""
    folders = [fold_dir(out, f) for f in folds]
    payload = evaluate.run(folders, out=Path(out), html=False)
    per_fold = []
    for fold, folder, entry in zip(folds, folders, payload["runs"], strict=True):
        per_fold.append(
            {
                "fold": fold,
                "run": str(folder),
                **_figures(entry["report"]),
                "complete": entry["complete"],
            }
        )
    if "mean_over_folds" in payload:
        mean = dict(payload["mean_over_folds"])
        pooled = {
            "label": payload["pooled"]["label"],
            **_figures(payload["pooled"]),
            "complete": payload["pooled"]["complete"],
        }
    else:  # one run: its own figures are both aggregations
        only = per_fold[0]
        mean = {
            "label": metrics.MEAN_OVER_FOLDS,
            "uar": only["uar"],
            "war": only["war"],
            "uar_std": 0.0,
            "war_std": 0.0,
            "num_folds": 1,
            "complete": only["complete"],
        }
        pooled = {
            "label": f"pooled over {only['num_clips']} clips",
            **_figures(only),
            "complete": only["complete"],
        }
    published = published_figure(model, dataset)
    summary = {
        "dataset": dataset,
        "config": str(config),
        "model": model,
        "folds": per_fold,
        "mean_over_folds": mean,
        "pooled": pooled,
        "published": published,
        "difference": difference(mean, published),
        "evaluation_json": payload.get("summary_json"),
    }
    metrics.write_report(Path(out) / SUMMARY, summary)
    _write_html(Path(out), summary, payload, folders, dataset, config)
    return summary


def _write_html(
    out: Path,
    summary: Mapping[str, Any],
    payload: Mapping[str, Any],
    folders: list[Path],
    dataset: str,
    config: str | Path,
) -> Path:
    """``out/report.html``: the protocol's page (:mod:`maedfer.evaluation.report_html`)."""
    from maedfer.evaluation import report_html as page

    entries = []
    for row, folder, entry in zip(summary["folds"], folders, payload["runs"], strict=True):
        name = f"fold {row['fold']}" if row["fold"] is not None else "test split"
        entries.append(page.RunEntry(name, folder, entry["report"], row["complete"]))
    pooled = payload.get("pooled") or {**entries[0].report, **summary["pooled"]}
    return page.write_report_html(
        out / page.REPORT_HTML,
        title=f"maedfer protocol: {dataset}",
        runs=entries,
        dataset=dataset,
        mean=summary["mean_over_folds"],
        pooled=pooled,
        published=page.as_percent(summary["published"]),
        note=f"{summary.get('model') or 'model'}, fine-tuning config {config}",
    )


def _pct(value: float | None, sign: bool = False) -> str:
    if value is None:
        return f"{'-':>7}"
    return f"{100 * value:+7.2f}" if sign else f"{100 * value:7.2f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed table: per fold, mean over folds, pooled, published."""
    mean, pooled, published = summary["mean_over_folds"], summary["pooled"], summary["published"]
    width = max(
        len(mean["label"]),
        len(pooled["label"]),
        len(PUBLISHED_LABEL) + 30,
        len(published["label"]) + 30 if published else 0,
    )
    lines = [f"{'':<{width}} {'clips':>7} {'UAR %':>7} {'WAR %':>7}"]
    for row in summary["folds"]:
        name = f"fold {row['fold']}" if row["fold"] is not None else "test split"
        mark = "" if row["complete"] is not False else " *"
        lines.append(
            f"{name + mark:<{width}} {row['num_clips']:>7} {_pct(row['uar'])} {_pct(row['war'])}"
        )
    lines.append(f"{mean['label']:<{width}} {'':>7} {_pct(mean['uar'])} {_pct(mean['war'])}")
    lines.append(
        f"{pooled['label']:<{width}} {pooled['num_clips']:>7} {_pct(pooled['uar'])} "
        f"{_pct(pooled['war'])}"
    )
    if published is not None:
        label = f"{published['label']} ({published['aggregation']})"
        lines.append(f"{label:<{width}} {'':>7} {_pct(published['uar'])} {_pct(published['war'])}")
        diff = summary.get("difference") or {}
        lines.append(
            f"{'difference (mean - published)':<{width}} {'':>7} "
            f"{_pct(diff.get('uar'), True)} {_pct(diff.get('war'), True)}"
        )
    else:
        model = summary.get("model", "lgi_former_base")
        whose = "MAE-DFER" if model.startswith("lgi_former") else model
        lines.append(f"published {whose}: none for {summary['dataset']}")
    if any(row["complete"] is False for row in summary["folds"]):
        lines.append("* incomplete: some test clips were not scored (report.json lists them)")
    return "\n".join(lines)
