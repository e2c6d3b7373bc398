"""Classification metrics and result files of a run (docs/runs.md, docs/datasets.md).

UAR (unweighted average recall) is the mean over classes of the per-class recall, read off the
confusion matrix (rows = true class): ``diag / row sum``. WAR (weighted average recall) is the
overall accuracy, ``trace / total``. Both are fractions in ``[0, 1]``.

A class with no test clip has no recall; it is left out of the UAR mean (and its recall is
``null`` in the report), which the report says under ``uar_classes``. The reference code divides
by the row sum unguarded, so on a test set missing a class it would give NaN; every official fold
holds every class, where both definitions agree.

Across the folds of one dataset MAE-DFER publishes the arithmetic mean of the per-fold UAR and WAR,
not the figures of all predictions pooled (docs/reference.md, "Scores across folds"):
:func:`cross_fold_summary` gives both, each labelled as what it is.

Result files: ``predictions.parquet`` (one row per clip after merging the test views:
``clip_id``, ``label``, ``probabilities`` list<float32>, ``prediction``; the class names ride in
the Parquet metadata key ``maedfer.classes``) and ``report.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maedfer.atomic import atomic_path, write_text
from maedfer.errors import MaedferError

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("clip_id", "label", "probabilities", "prediction")
CLASSES_KEY = b"maedfer.classes"
MEAN_OVER_FOLDS = "mean over folds (as MAE-DFER reports)"


def _as_class_indices(values: Any, name: str, num_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise MaedferError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise MaedferError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_classes)]
    if bad.size:
        raise MaedferError(
            f"{name} holds {bad[0]}, outside the class indices 0..{num_classes - 1} "
            f"({num_classes} class names)"
        )
    return array


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts, ``[true, predicted]`` (rows = true class)."""
    labels = _as_class_indices(labels, "labels", num_classes)
    preds = _as_class_indices(preds, "predictions", num_classes)
    if len(labels) != len(preds):
        raise MaedferError(f"{len(labels)} labels but {len(preds)} predictions; they must pair up")
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def scores_from_confusion(matrix: np.ndarray) -> tuple[float, float, list[float | None]]:
    """``(uar, war, per-class recall)`` of a confusion matrix; recall is None for absent classes.

    Example: rows ``[[3, 1], [0, 0], [2, 2]]`` (3 classes, class 1 absent) give recalls
    ``0.75, None, 0.5``, UAR ``0.625`` over the 2 present classes and WAR ``5 / 8``.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    support = matrix.sum(axis=1)
    total = int(support.sum())
    if total == 0:
        raise MaedferError("no predictions to score (an empty prediction table)")
    recall: list[float | None] = [
        float(matrix[c, c] / support[c]) if support[c] else None for c in range(len(matrix))
    ]
    present = [r for r in recall if r is not None]
    return float(np.mean(present)), float(np.trace(matrix) / total), recall


def classification_report(
    labels: np.ndarray, preds: np.ndarray, class_names: list[str], views: int
) -> dict:
    """The ``report.json`` dict of one run (docs/runs.md).

    Args:
        labels: ``(N,)`` true class indices.
        preds: ``(N,)`` predicted class indices (argmax of the view-averaged probabilities).
        class_names: names in label order; ``C = len(class_names)``.
        views: test views averaged per clip.

    Returns:
        ``uar``, ``war`` (fractions), ``per_class_recall`` (name -> recall or None when the class
        has no clip), ``confusion_matrix`` (``C x C`` lists, rows = true class), ``class_names``,
        ``views``, ``num_clips``, ``per_class_support`` and ``uar_classes`` (which classes the UAR
        averages over).

    Raises:
        MaedferError: mismatched lengths, indices outside ``0..C-1``, or no predictions.
    """
    if not class_names:
        raise MaedferError("class_names is empty; a report needs the class names in label order")
    matrix = confusion_matrix(labels, preds, len(class_names))
    uar, war, recall = scores_from_confusion(matrix)
    present = [name for name, r in zip(class_names, recall, strict=True) if r is not None]
    return {
        "uar": uar,
        "war": war,
        "per_class_recall": dict(zip(class_names, recall, strict=True)),
        "per_class_support": dict(zip(class_names, matrix.sum(axis=1).tolist(), strict=True)),
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "views": int(views),
        "num_clips": int(matrix.sum()),
        "uar_classes": (
            f"mean recall over the {len(present)} of {len(class_names)} classes present "
            "in the labels" + ("" if len(present) == len(class_names) else f": {present}")
        ),
    }


def cross_fold_summary(
    folds: Sequence[tuple[np.ndarray, np.ndarray]], class_names: list[str], views: int
) -> dict:
    """Both aggregations over the folds of one dataset (docs/datasets.md).

    Args:
        folds: per fold, ``(labels, preds)`` class index arrays.
        class_names: shared label order.
        views: test views per clip (reported, not used).

    Returns:
        ``folds`` (each fold's report), ``mean_over_folds`` (``uar``, ``war`` = arithmetic mean of
        the per-fold figures, the numbers MAE-DFER publishes, plus their population ``*_std``
        and a ``label``) and ``pooled`` (the report of all predictions together, with a
        ``label``).

    Example: fold A right on 1 of 1 clip of class 0, fold B right on 1 of 3 clips of class 0:
    mean-over-folds WAR = (1 + 1/3) / 2 = 0.667, pooled WAR = 2 / 4 = 0.5.
    """
    if not folds:
        raise MaedferError("no folds to summarise")
    reports = [classification_report(y, p, class_names, views) for y, p in folds]
    labels = np.concatenate([np.asarray(y) for y, _ in folds])
    preds = np.concatenate([np.asarray(p) for _, p in folds])
    pooled = classification_report(labels, preds, class_names, views)
    pooled["label"] = f"pooled over {pooled['num_clips']} clips"
    uars = np.array([r["uar"] for r in reports])
    wars = np.array([r["war"] for r in reports])
    mean = {
        "label": MEAN_OVER_FOLDS,
        "uar": float(uars.mean()),
        "war": float(wars.mean()),
        "uar_std": float(uars.std()),
        "war_std": float(wars.std()),
        "num_folds": len(reports),
    }
    return {"folds": reports, "mean_over_folds": mean, "pooled": pooled}


def write_predictions(
    path: Path,
    clip_ids: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
) -> None:
    """Write ``predictions.parquet`` atomically: one row per clip (docs/runs.md).

    Args:
        path: target file.
        clip_ids: ``N`` clip ids (the manifest's keys).
        labels: ``(N,)`` true class indices.
        probs: ``(N, C)`` view-averaged class probabilities; ``prediction`` is their argmax.
        class_names: ``C`` names in label order, stored as metadata ``maedfer.classes``.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise MaedferError(
            f"probabilities have shape {probs.shape}; expected (N, {len(class_names)}) "
            "for the class names given"
        )
    labels = _as_class_indices(labels, "labels", len(class_names))
    if not len(clip_ids) == len(labels) == len(probs):
        raise MaedferError(
            f"{len(clip_ids)} clip ids, {len(labels)} labels and {len(probs)} probability rows "
            "must have the same length"
        )
    flat = pa.array(probs.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1])
    table = pa.table(
        {
            "clip_id": pa.array([str(c) for c in clip_ids], type=pa.string()),
            "label": pa.array(labels.astype(np.int16)),
            "probabilities": pa.ListArray.from_arrays(offsets, flat),
            "prediction": pa.array(probs.argmax(axis=1).astype(np.int16)),
        }
    ).replace_schema_metadata({CLASSES_KEY: json.dumps(list(class_names)).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_predictions(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Read ``predictions.parquet``: columns as arrays (``probabilities`` ``(N, C)``), classes.

    Raises:
        MaedferError: unreadable file, missing columns or ragged probabilities.
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise MaedferError(f"cannot read predictions {path}: {exc}") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
    if missing:
        raise MaedferError(f"{path} lacks column(s) {missing}; expected {list(PREDICTION_COLUMNS)}")
    rows = table.column("probabilities").to_pylist()
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise MaedferError(f"{path}: probability lists of different lengths {sorted(widths)}")
    probs = np.asarray(rows, dtype=np.float32).reshape(len(rows), widths.pop() if rows else 0)
    meta = table.schema.metadata or {}
    classes = json.loads(meta[CLASSES_KEY]) if CLASSES_KEY in meta else None
    columns = {
        "clip_id": np.asarray(table.column("clip_id").to_pylist(), dtype=object),
        "label": np.asarray(table.column("label").to_numpy(), dtype=np.int64),
        "prediction": np.asarray(table.column("prediction").to_numpy(), dtype=np.int64),
        "probabilities": probs,
    }
    return columns, classes


def write_report(path: Path, report: dict) -> None:
    """Write ``report.json`` atomically (indented, UTF-8)."""
    write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def plot_confusion(report: dict, path: Path, *, title: str | None = None) -> None:
    """Save the confusion matrix of ``report`` as a PNG, atomically.

    Colour is the row-normalised share (each true class sums to 1, so rare classes read as well
    as frequent ones); each cell is annotated with its count.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    matrix = np.asarray(report["confusion_matrix"], dtype=np.int64)
    names = list(report["class_names"])
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = max(4.0, 0.6 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    try:
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
        heading = f"UAR {report['uar']:.2%}  WAR {report['war']:.2%}  ({int(matrix.sum())} clips)"
        ax.set_title(heading if title is None else f"{title}\n{heading}", fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
