"""``report.html`` of ``maedfer evaluate`` and ``maedfer protocol``, rendered in headless Chromium:
the screenshot is not blank and the tables' text is in the page (maedfer.evaluation.report_html)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.evaluation.report_html import line_chart, read_metrics
from maedfer.recipes import protocol
from tests.evaluation.test_evaluate import make_run
from tests.evaluation.test_metrics import FOLD_A, FOLD_B

runner = CliRunner()
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# What scripts/test.sh passes Chromium on a machine without a display, a GPU or a network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "Chromium is not installed: scripts/test.sh installs the Debian package "
        "'chromium' where apt-get may run (root or passwordless sudo); this machine "
        "has neither the browser nor the rights"
    )


def render(page: Path, tmp: Path) -> tuple[Image.Image, str]:
    """The page's screenshot and its DOM after layout, by headless Chromium."""
    browser = chromium()
    profile = tmp / "profile"
    shot = tmp / "shot.png"
    common = [browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600"]
    subprocess.run(
        [*common, f"--screenshot={shot}", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return Image.open(shot).convert("RGB"), dom


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _assert_not_blank(image: Image.Image) -> None:
    pixels = np.asarray(image, np.float32)
    assert pixels.std() > 10, "the screenshot is a flat colour"
    assert (pixels.min(axis=2) < 200).mean() > 0.01, "almost nothing is drawn"


def _metrics(folder: Path, losses: list[float], uar: float) -> None:
    lines = [
        {"kind": "train", "epoch": 1 + i // 2, "step": 10 * (i + 1), "loss": loss}
        for i, loss in enumerate(losses)
    ]
    lines.append(
        {
            "kind": "test",
            "epoch": len(losses) // 2,
            "step": 10 * len(losses),
            "uar": uar,
            "war": uar,
            "final": True,
        }
    )
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / "metrics.jsonl").write_text(text + '{"kind": "train", "ste')  # a cut last line


def _self_contained(page: str) -> None:
    """Nothing to fetch: no scripts, links, pictures or URLs in styles."""
    for pattern in ("<script", "<link", "<img", "<iframe", "url(", "@import", "src="):
        assert pattern not in page, pattern
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_evaluate_writes_a_page_chromium_renders(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path / "fold1", *FOLD_A, dataset="dfew"),
        make_run(tmp_path / "fold2", *FOLD_B, dataset="dfew"),
    ]
    _metrics(runs[0], [1.6, 1.2, 0.9, 0.7], 0.58)
    _metrics(runs[1], [1.5, 1.3, 1.0, 0.8], 0.55)
    result = runner.invoke(app, ["evaluate", *map(str, runs), "--out", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    page = tmp_path / "all" / "report.html"
    assert "wrote" in result.stdout and str(page) in result.stdout
    source = page.read_text()
    _self_contained(source)
    image, dom = render(page, tmp_path)
    _assert_not_blank(image)
    text = _text(dom)
    for expected in (
        "fold1",
        "fold2",
        "mean over folds (as MAE-DFER reports)",
        "pooled over 14 clips",
        "58.33",
        "62.50",
        "published MAE-DFER",
        "63.41",
        "74.43",
        "Confusion matrix",
        "Per-class recall",
        "training loss",
        "test UAR",
    ):
        assert expected in text, expected
    assert dom.count("<polyline") >= 3  # two loss curves, a UAR series
    # one run: its page goes into the run folder
    single = runner.invoke(app, ["evaluate", str(runs[0])])
    assert single.exit_code == 0 and (runs[0] / "report.html").is_file()


def test_protocol_page_has_the_published_figures(tmp_path: Path) -> None:
    out = tmp_path / "protocol"
    for fold, (labels, preds) in ((1, FOLD_A), (2, FOLD_B)):
        folder = make_run(out / f"fold_{fold}", labels, preds, dataset="dfew")
        _metrics(folder, [1.4, 1.0], 0.6)
    summary = protocol.summarize(out, [1, 2], "dfew", "finetune-dfew")
    page = out / "report.html"
    _self_contained(page.read_text())
    image, dom = render(page, tmp_path)
    _assert_not_blank(image)
    text = _text(dom)
    published = summary["published"]
    assert published is not None
    assert f"{100 * published['uar']:.2f}" in text and f"{100 * published['war']:.2f}" in text
    for expected in (
        "maedfer protocol: dfew",
        "fold 1",
        "fold 2",
        "mean over folds (as MAE-DFER reports)",
        "published MAE-DFER",
        "finetune-dfew",
        "Difference of the mean over folds",
    ):
        assert expected in text, expected


def test_metrics_and_charts_without_a_browser(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) == [] and read_metrics(None) == []
    _metrics(tmp_path, [1.0, 0.5], 0.5)
    records = read_metrics(tmp_path)
    assert [r["kind"] for r in records] == ["train", "train", "test"]  # the cut line skipped
    empty = line_chart([("a", [], "#000")], title="t", x_label="x", y_label="y")
    assert "no records" in empty
    chart = line_chart(
        [("a", [(1, 2.0), (2, float("nan")), (3, 1.0)], "#000")],
        title="t",
        x_label="x",
        y_label="y",
    )
    assert chart.count(",") >= 2 and "nan" not in chart
