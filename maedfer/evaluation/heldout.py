"""The held-out test phase of fine-tuning (docs/recipe.md; docs/runs.md).

Each test clip is seen in ``test_views`` temporal views; each view's logits go through a
softmax and a clip's probabilities are the mean over its distinct views (the reference's
``merge``, without its view-id ambiguity, docs/reference.md). The manifest's metadata names the
classes and says whether the protocol is k-fold or a fixed split.

:func:`score_views` turns the views into the run's report (UAR, WAR, coverage) and
:func:`write_results` writes ``predictions.parquet`` and ``report.json``: what a fine-tuning
run's final test writes, and what ``maedfer evaluate --checkpoint`` writes for any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maedfer.errors import MaedferError
from maedfer.evaluation import metrics
from maedfer.evaluation.coverage import coverage_keys
from maedfer.manifests.io import read_metadata
from maedfer.training.precision import autocast

PREDICTIONS = "predictions.parquet"
REPORT = "report.json"


def manifest_info(path: Path) -> tuple[str, list[str], int]:
    """``(dataset, classes, num_folds)`` from a manifest's metadata (docs/design.md).

    Raises:
        MaedferError: unreadable file, or no ``maedfer.classes`` key (a fine-tuning manifest
            must name its classes in label order).
    """
    meta = read_metadata(path)
    if meta["num_rows"] == 0:
        raise MaedferError(
            f"manifest {path} holds no clips (0 rows): prepare the dataset again "
            "(its rejects.parquet says why clips were left out)"
        )
    if "classes" not in meta:
        raise MaedferError(f"manifest {path} has no maedfer.classes metadata (class names)")
    classes = meta["classes"]
    num_folds = int(meta.get("num_folds", 0))
    dataset = str(meta.get("dataset", Path(path).parent.name))
    return dataset, list(classes), num_folds


def merge_views(
    rows: list[tuple[list[str], list[int], list[int], np.ndarray]],
) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Average each clip's view probabilities (docs/recipe.md: softmax, then mean over distinct
    views). ``rows`` are batches ``(clip_ids, views, labels, probs (B, C))``; a view seen twice
    counts once. Returns clip ids (sorted), labels, probabilities ``(N, C)``, views per clip."""
    clips: dict[str, tuple[int, dict[int, np.ndarray]]] = {}
    for clip_ids, views, labels, probs in rows:
        for clip_id, view, label, prob in zip(clip_ids, views, labels, probs, strict=True):
            clips.setdefault(clip_id, (int(label), {}))[1].setdefault(int(view), prob)
    ids = sorted(clips)
    label_array = np.array([clips[c][0] for c in ids], dtype=np.int64)
    probs = np.stack([np.mean(list(clips[c][1].values()), axis=0) for c in ids])
    num_views = max(len(clips[c][1]) for c in ids)
    return ids, label_array, probs.astype(np.float32), num_views


@torch.no_grad()
def view_probabilities(
    model: torch.nn.Module,
    loader,  # noqa: ANN001 (a maedfer.pipelines.ClipLoader in test mode)
    *,
    device: torch.device,
    precision: str,
    progress: bool = True,
) -> list[tuple[list[str], list[int], list[int], np.ndarray]]:
    """Softmax probabilities of every view this process holds, as :func:`merge_views` rows."""
    was_training = model.training
    model.eval()
    rows = []
    for batch in tqdm(loader, desc="test", unit="batch", leave=False, disable=not progress):
        video = batch["video"].to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(video)
        probs = logits.float().softmax(-1).cpu().numpy()
        rows.append(
            (list(batch["clip_id"]), batch["view"].tolist(), batch["label"].tolist(), probs)
        )
    model.train(was_training)
    return rows


@dataclass
class TestResult:
    """A scored test set: the ``report.json`` dict and the merged per-clip predictions."""

    report: dict
    clip_ids: list[str]
    labels: np.ndarray  # (N,) true class indices
    probs: np.ndarray  # (N, C) view-averaged probabilities


def score_views(
    rows: list[tuple[list[str], list[int], list[int], np.ndarray]],
    classes: list[str],
    expected: list[str],
) -> TestResult:
    """Merge the views of every clip (:func:`merge_views`) and score them.

    Args:
        rows: :func:`view_probabilities` rows of every process.
        classes: class names in label order.
        expected: the test clip ids the fold or split selects (a clip whose file is missing or
            undecodable was replaced by the loader and is absent from ``rows``).

    Returns:
        A :class:`TestResult` whose report is
        :func:`maedfer.evaluation.metrics.classification_report` plus ``clips_expected``,
        ``clips_scored``, ``missing_clips`` and ``complete``.
    """
    ids, labels, probs, views = merge_views(rows)
    report = metrics.classification_report(labels, probs.argmax(1), classes, views)
    report.update(coverage_keys(expected, ids))
    return TestResult(report=report, clip_ids=ids, labels=labels, probs=probs)


def write_results(out: Path, result: TestResult, classes: list[str]) -> None:
    """Write ``out/predictions.parquet`` and ``out/report.json`` (atomically, in that order,
    after removing the old report: a report beside its predictions means both are whole and of
    one test; a kill in between leaves predictions without a report, never another test's)."""
    (Path(out) / REPORT).unlink(missing_ok=True)
    metrics.write_predictions(
        Path(out) / PREDICTIONS, result.clip_ids, result.labels, result.probs, classes
    )
    metrics.write_report(Path(out) / REPORT, result.report)
