"""``report.html``: one self-contained page of an evaluation or a protocol (docs/runs.md).

``maedfer evaluate`` and ``maedfer protocol`` write it beside their JSON. Everything is inside
the file (inline CSS and SVG, no script, no font or picture fetched), so it opens the same from
a laptop, a cluster's file browser or an e-mail, with no network:

1. the per-fold (per-run) table, with the mean over folds, the pooled figures and MAE-DFER's
   published figures for the dataset beside them;
2. the pooled confusion matrix (rows = true class; counts, shaded by the share of the row);
3. per-class recall, per run and pooled, as numbers and bars;
4. the training curves of each run read from its ``metrics.jsonl``: the training loss by step
   and the test UAR/WAR by epoch (runs without the file, such as ``evaluate --checkpoint``,
   are said to have none).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maedfer.atomic import write_text

REPORT_HTML = "report.html"
METRICS = "metrics.jsonl"
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; background: #fff; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #555; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d0d0d0; padding: 4px 9px; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
tr.summary td { font-weight: 600; background: #fafafa; }
tr.published td { color: #1a4d8f; background: #eef4fb; }
.cm td { min-width: 46px; } .cm small { color: #444; display: block; font-size: 11px; }
.bar { display: inline-block; height: 10px; background: #4c78a8; vertical-align: middle; }
.note { color: #8a4b00; } svg text { font: 11px system-ui, sans-serif; }
.curves { display: flex; flex-wrap: wrap; gap: 18px; }
"""


@dataclass
class RunEntry:
    """One run of the page: its name, folder (for ``metrics.jsonl``) and report."""

    name: str
    folder: Path | None
    report: Mapping[str, Any]
    complete: bool | None = None


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    return f"{100 * value:.{digits}f}"


def _num(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:.2f}"


def _runs_table(
    runs: Sequence[RunEntry],
    mean: Mapping[str, Any] | None,
    pooled: Mapping[str, Any] | None,
    published: Mapping[str, Any] | None,
) -> str:
    rows = [
        '<table id="folds"><tr><th class="name">run</th><th>clips</th><th>UAR %</th>'
        "<th>WAR %</th><th>complete</th></tr>"
    ]
    for run in runs:
        r = run.report
        complete = {True: "yes", False: "no *", None: "?"}[run.complete]
        rows.append(
            f'<tr><td class="name">{_e(run.name)}</td><td>{r["num_clips"]}</td>'
            f"<td>{_pct(r['uar'])}</td><td>{_pct(r['war'])}</td><td>{complete}</td></tr>"
        )
    if mean is not None:
        spread = f" &plusmn; {_pct(mean.get('uar_std'))}" if mean.get("uar_std") is not None else ""
        rows.append(
            f'<tr class="summary"><td class="name">{_e(mean["label"])}</td><td></td>'
            f"<td>{_pct(mean['uar'])}{spread}</td><td>{_pct(mean['war'])}</td>"
            f"<td></td></tr>"
        )
    if pooled is not None:
        rows.append(
            f'<tr class="summary"><td class="name">{_e(pooled["label"])}</td>'
            f"<td>{pooled['num_clips']}</td><td>{_pct(pooled['uar'])}</td>"
            f"<td>{_pct(pooled['war'])}</td><td></td></tr>"
        )
    if published is not None:
        label = (
            f"{published.get('label') or 'published MAE-DFER'} ({published.get('aggregation', '')})"
        )
        rows.append(
            f'<tr class="published"><td class="name">{_e(label)}</td><td></td>'
            f"<td>{_num(published['uar'])}</td><td>{_num(published['war'])}</td>"
            f"<td></td></tr>"
        )
    rows.append("</table>")
    if published is not None and mean is not None:
        gaps = ", ".join(
            f"{name} {100 * mean[key] - published[key]:+.2f}"
            for name, key in (("UAR", "uar"), ("WAR", "war"))
            if published[key] is not None
        )
        note = f" {_e(published['note'])}" if published.get("note") else ""
        rows.append(
            f'<p class="meta">Published figures: {_e(published.get("source", ""))}.'
            f"{note} Difference of the mean over folds: {gaps or 'none'} "
            "points.</p>"
        )
    elif published is None:
        rows.append('<p class="meta">No published figures for this dataset.</p>')
    if any(run.complete is False for run in runs):
        rows.append(
            '<p class="note">* incomplete: some test clips were not scored (their files '
            "were missing or undecodable); the figures cover the clips scored.</p>"
        )
    return "\n".join(rows)


def _confusion(report: Mapping[str, Any], caption: str) -> str:
    names = list(report["class_names"])
    matrix = report["confusion_matrix"]
    out = [
        f'<table class="cm" id="confusion"><caption class="meta">{_e(caption)}</caption>'
        '<tr><th class="name">true \\ predicted</th>'
        + "".join(f"<th>{_e(n)}</th>" for n in names)
        + "<th>clips</th></tr>"
    ]
    for name, row in zip(names, matrix, strict=True):
        total = sum(row)
        cells = []
        for count in row:
            share = count / total if total else 0.0
            shade = f"rgba(76, 120, 168, {0.08 + 0.85 * share:.3f})" if count else "#fff"
            ink = "#fff" if share > 0.55 else "#1b1b1b"
            cells.append(
                f'<td style="background:{shade};color:{ink}">{count}'
                f'<small style="color:{ink}">{100 * share:.0f}%</small></td>'
            )
        out.append(f'<tr><td class="name">{_e(name)}</td>{"".join(cells)}<td>{total}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _recall(runs: Sequence[RunEntry], pooled: Mapping[str, Any] | None) -> str:
    columns = [(run.name, run.report["per_class_recall"]) for run in runs]
    if pooled is not None:
        columns.append(("pooled", pooled["per_class_recall"]))
    names = list((pooled or runs[0].report)["class_names"])
    out = [
        '<table id="recall"><tr><th class="name">class</th>'
        + "".join(f"<th>{_e(c)}</th>" for c, _ in columns)
        + "<th>bar (last column)</th></tr>"
    ]
    for name in names:
        cells = "".join(f"<td>{_pct(recall.get(name), 1)}</td>" for _, recall in columns)
        last = columns[-1][1].get(name)
        width = 0 if last is None else round(160 * last)
        out.append(
            f'<tr><td class="name">{_e(name)}</td>{cells}<td class="name">'
            f'<span class="bar" style="width:{width}px"></span></td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def read_metrics(folder: Path | None) -> list[dict[str, Any]]:
    """The records of ``folder/metrics.jsonl`` (unreadable lines skipped; none when absent)."""
    if folder is None or not (Path(folder) / METRICS).is_file():
        return []
    records = []
    for line in (Path(folder) / METRICS).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: the rest still draws
        if isinstance(record, dict):
            records.append(record)
    return records


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def line_chart(
    series: Sequence[tuple[str, list[tuple[float, float]], str]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 520,
    height: int = 260,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    markers: bool = False,
    legend_left: bool = False,
) -> str:
    """An inline SVG line chart of ``(name, [(x, y)...], colour)`` series; the names are
    written top right (``legend_left``: top left, where the last points would be hidden)."""
    points = [p for _, pts, _ in series for p in pts if math.isfinite(p[1])]
    left, right, top, bottom = 52, 12, 26, 38
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="16" font-weight="600">{_e(title)}</text>',
    ]
    if not points:
        out.append(f'<text x="{left}" y="{height // 2}">no records</text></svg>')
        return "\n".join(out)
    x0, x1 = x_range or (min(p[0] for p in points), max(p[0] for p in points))
    y0, y1 = y_range or (min(p[1] for p in points), max(p[1] for p in points))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fcfcfc" '
        'stroke="#bbb"/>'
    )
    for y in _ticks(y0, y1):
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="#e5e5e5"/><text x="{left - 4}" y="{sy(y) + 4:.1f}" '
            f'text-anchor="end">{y:g}</text>'
        )
    for x in _ticks(x0, x1):
        out.append(
            f'<text x="{sx(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{x:g}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
    )
    out.append(
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{_e(y_label)}</text>'
    )
    for i, (name, pts, colour) in enumerate(series):
        kept = [(x, y) for x, y in pts if math.isfinite(y)]
        if not kept:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in kept)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{path}"/>')
        if markers or len(kept) == 1:
            out += [
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>'
                for x, y in kept
            ]
        x, anchor = (left + 6, "start") if legend_left else (left + plot_w - 4, "end")
        out.append(
            f'<text x="{x}" y="{top + 14 + 13 * i}" text-anchor="{anchor}" '
            f'fill="{colour}">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _curves(runs: Sequence[RunEntry]) -> str:
    losses, tests, epochs = [], [], [1.0]
    for i, run in enumerate(runs):
        records = read_metrics(run.folder)
        colour = PALETTE[i % len(PALETTE)]
        train = [
            (float(r["step"]), float(r["loss"]))
            for r in records
            if r.get("kind") == "train" and r.get("loss") is not None
        ]
        test = [
            (float(r["epoch"]), float(r["uar"]))
            for r in records
            if r.get("kind") == "test" and r.get("uar") is not None
        ]
        if train:
            losses.append((run.name, train, colour))
        if test:
            tests.append((f"{run.name} UAR", [(x, 100 * y) for x, y in test], colour))
        epochs += [float(r["epoch"]) for r in records if r.get("epoch") is not None]
    missing = [run.name for run in runs if not read_metrics(run.folder)]
    out = ['<div class="curves">']
    if losses:
        out.append(
            line_chart(losses, title="training loss", x_label="optimiser step", y_label="loss")
        )
    if tests:
        out.append(
            line_chart(
                tests,
                title="test UAR (%)",
                x_label="epoch",
                y_label="UAR %",
                x_range=(1.0, max(epochs)),
                y_range=(0, 100),
                markers=True,
                legend_left=True,
            )
        )
    out.append("</div>")
    if missing:
        out.append(
            f'<p class="meta">No {METRICS} (not a training run folder): '
            f"{_e(', '.join(missing))}.</p>"
        )
    return "\n".join(out)


def render(
    *,
    title: str,
    runs: Sequence[RunEntry],
    mean: Mapping[str, Any] | None = None,
    pooled: Mapping[str, Any] | None = None,
    published: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    note: str | None = None,
) -> str:
    """The page as a string (module docstring). ``published`` holds percent figures."""
    matrix_report = pooled if pooled is not None else runs[0].report
    caption = (
        pooled["label"]
        if pooled is not None
        else f"{runs[0].name}, {runs[0].report['num_clips']} clips"
    ) + "; rows = true class"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(dataset or "dataset not recorded")}; {len(runs)} run(s); '
        f"written {when} by maedfer.</p>",
    ]
    if note:
        parts.append(f'<p class="meta">{_e(note)}</p>')
    parts += [
        "<h2>Per fold, beside the published figures</h2>",
        _runs_table(runs, mean, pooled, published),
        "<h2>Confusion matrix</h2>",
        _confusion(matrix_report, caption),
        "<h2>Per-class recall (%)</h2>",
        _recall(runs, pooled),
        "<h2>Training curves</h2>",
        _curves(runs),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def published_percent(dataset: str | None) -> dict[str, Any] | None:
    """MAE-DFER's published figures for ``dataset`` (percent), or None."""
    if not dataset:
        return None
    from maedfer.errors import MaedferError
    from maedfer.manifests import published_results

    try:
        return published_results(dataset)
    except MaedferError:  # a dataset maedfer does not know (a folder dataset's own name)
        return None


def as_percent(published: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A protocol summary's ``published`` entry (fractions) as this page shows it (percent)."""
    if published is None:
        return None
    return {
        **published,
        **{k: None if published.get(k) is None else 100 * published[k] for k in ("uar", "war")},
    }


def write_report_html(path: Path, **page: Any) -> Path:
    """Render the page (arguments of :func:`render`) and write it atomically."""
    write_text(Path(path), render(**page))
    return Path(path)


__all__ = [
    "REPORT_HTML",
    "RunEntry",
    "as_percent",
    "line_chart",
    "published_percent",
    "read_metrics",
    "render",
    "write_report_html",
]
