"""One table for several models run through the same protocol (``maedfer protocol --model``).

Each model's protocol (:mod:`maedfer.recipes.protocol`) leaves its ``summary.json`` in
``OUT/NAME``; :func:`compare` gathers them into ``OUT/comparison.json`` and
:func:`format_table` prints one row per model: UAR / WAR of every fold, their mean (the
aggregation every paper of the lineage reports), the pooled figures, what the model's own paper
publishes for the dataset, and the difference (mean minus published, in points). Same faces,
same folds, same test views, same metric code: the differences between rows are the models'.

Documented in docs/models.md, "Fine-tune, evaluate, compare".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from maedfer.errors import MaedferError
from maedfer.evaluation import metrics

COMPARISON = "comparison.json"


def compare(
    out: Path, summaries: Sequence[tuple[str, Path | None, Mapping[str, Any]]], config: str | Path
) -> dict[str, Any]:
    """``OUT/comparison.json`` from each model's ``(name, init, summary)``; returned.

    Raises:
        MaedferError: summaries of different datasets or folds (not one protocol).
    """
    if not summaries:
        raise MaedferError("no model to compare")
    first = summaries[0][2]
    folds = [row["fold"] for row in first["folds"]]
    for name, _, summary in summaries:
        if summary["dataset"] != first["dataset"] or [r["fold"] for r in summary["folds"]] != folds:
            raise MaedferError(
                f"{name} ran on {summary['dataset']} folds "
                f"{[r['fold'] for r in summary['folds']]}, not {first['dataset']} "
                f"folds {folds}: not one protocol"
            )
    rows = [
        {
            "model": name,
            "init": None if init is None else str(init),
            "out": str(out / name),
            "folds": [
                {k: row[k] for k in ("fold", "uar", "war", "num_clips", "complete")}
                for row in summary["folds"]
            ],
            "mean_over_folds": {k: summary["mean_over_folds"][k] for k in ("uar", "war")},
            "pooled": {k: summary["pooled"][k] for k in ("uar", "war", "num_clips")},
            "published": summary["published"],
            "difference": summary["difference"],
        }
        for name, init, summary in summaries
    ]
    table = {
        "dataset": first["dataset"],
        "config": str(config),
        "folds": folds,
        "figures": "fractions (UAR, WAR); published as fractions too, with as_published",
        "models": rows,
    }
    metrics.write_report(Path(out) / COMPARISON, table)
    return table


def _pair(uar: float | None, war: float | None, sign: bool = False) -> str:
    def one(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}"

    return f"{one(uar)} / {one(war)}"


def format_table(table: Mapping[str, Any]) -> str:
    """The printed comparison: one row per model, UAR / WAR in percent."""
    folds = table["folds"]
    heads = [("model", "model")]
    heads += [(f"fold {f}" if f is not None else "test split", f"fold:{f}") for f in folds]
    heads += [
        ("mean", "mean"),
        ("pooled", "pooled"),
        ("published", "published"),
        ("difference", "difference"),
    ]
    rows = []
    for entry in table["models"]:
        cells = {"model": entry["model"]}
        for row in entry["folds"]:
            mark = " *" if row["complete"] is False else ""
            cells[f"fold:{row['fold']}"] = _pair(row["uar"], row["war"]) + mark
        cells["mean"] = _pair(entry["mean_over_folds"]["uar"], entry["mean_over_folds"]["war"])
        cells["pooled"] = _pair(entry["pooled"]["uar"], entry["pooled"]["war"])
        published, diff = entry["published"], entry["difference"]
        cells["published"] = _pair(published["uar"], published["war"]) if published else "-"
        cells["difference"] = _pair(diff["uar"], diff["war"], sign=True) if diff else "-"
        rows.append(cells)
    widths = {key: max(len(title), *(len(r[key]) for r in rows)) for title, key in heads}
    lines = [f"{table['dataset']}: UAR / WAR in %, mean over folds as the papers report"]
    lines.append("  ".join(title.ljust(widths[key]) for title, key in heads).rstrip())
    lines += ["  ".join(r[key].ljust(widths[key]) for _, key in heads).rstrip() for r in rows]
    sources = {
        e["published"]["source"]: e["published"]["aggregation"]
        for e in table["models"]
        if e["published"]
    }
    lines += [f"published: {source} ({aggregation})" for source, aggregation in sources.items()]
    if any(r["complete"] is False for e in table["models"] for r in e["folds"]):
        lines.append("* incomplete: some test clips were not scored (report.json lists them)")
    return "\n".join(lines)
