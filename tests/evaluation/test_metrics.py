"""UAR/WAR, cross-fold aggregation and result files (maedfer.evaluation.metrics, docs/design.md)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maedfer.errors import MaedferError
from maedfer.evaluation import metrics

CLASSES = ["anger", "happy", "sad"]

# Fold A: recalls anger 3/4, happy 1/2, sad 1/2 -> UAR 7/12; WAR 5/8.
FOLD_A = (np.array([0, 0, 0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 1, 1, 0, 2, 1]))
# Fold B: recalls anger 0/1, happy 2/3, sad 2/2 -> UAR 5/9; WAR 4/6.
FOLD_B = (np.array([0, 1, 1, 1, 2, 2]), np.array([1, 1, 1, 0, 2, 2]))
# Pooled: anger 3/5, happy 3/5, sad 3/4 -> UAR 0.65; WAR 9/14.


def test_report_matches_hand_computed_values() -> None:
    report = metrics.classification_report(*FOLD_A, CLASSES, views=2)
    assert report["uar"] == pytest.approx(7 / 12)
    assert report["war"] == pytest.approx(5 / 8)
    assert report["per_class_recall"] == pytest.approx({"anger": 0.75, "happy": 0.5, "sad": 0.5})
    assert report["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]  # rows = true class
    assert report["class_names"] == CLASSES
    assert report["views"] == 2
    assert report["num_clips"] == 8
    assert report["per_class_support"] == {"anger": 4, "happy": 2, "sad": 2}
    json.dumps(report)  # plain JSON types only


def test_uar_averages_only_classes_present_in_labels() -> None:
    # "happy" has no clip: its recall is None and UAR = mean(3/4, 1/2) over the 2 present.
    report = metrics.classification_report(
        np.array([0, 0, 0, 0, 2, 2]), np.array([0, 0, 0, 1, 2, 1]), CLASSES, views=1
    )
    assert report["per_class_recall"]["happy"] is None
    assert report["uar"] == pytest.approx(0.625)
    assert report["war"] == pytest.approx(4 / 6)
    assert "2 of 3 classes" in report["uar_classes"]
    assert "'anger', 'sad'" in report["uar_classes"]


def test_cross_fold_summary_gives_both_aggregations() -> None:
    summary = metrics.cross_fold_summary([FOLD_A, FOLD_B], CLASSES, views=2)
    mean, pooled = summary["mean_over_folds"], summary["pooled"]
    assert mean["uar"] == pytest.approx((7 / 12 + 5 / 9) / 2)  # 41/72
    assert mean["war"] == pytest.approx((5 / 8 + 4 / 6) / 2)  # 31/48
    assert mean["uar_std"] == pytest.approx(abs(7 / 12 - 5 / 9) / 2)
    assert mean["num_folds"] == 2
    assert "MAE-DFER" in mean["label"]
    assert pooled["uar"] == pytest.approx(0.65)
    assert pooled["war"] == pytest.approx(9 / 14)
    assert pooled["label"] == "pooled over 14 clips"
    assert [f["uar"] for f in summary["folds"]] == pytest.approx([7 / 12, 5 / 9])


@pytest.mark.parametrize(
    ("labels", "preds", "message"),
    [
        ([0, 3], [0, 1], "labels holds 3"),
        ([0, 1], [0, -1], "predictions holds -1"),
        ([0, 1, 2], [0, 1], "3 labels but 2 predictions"),
        ([], [], "no predictions"),
    ],
)
def test_bad_inputs_raise_one_line(labels: list, preds: list, message: str) -> None:
    with pytest.raises(MaedferError, match=message):
        metrics.classification_report(
            np.array(labels, dtype=np.int64), np.array(preds, dtype=np.int64), CLASSES, views=1
        )


def test_predictions_round_trip(tmp_path) -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float64)
    path = tmp_path / "run" / "predictions.parquet"
    metrics.write_predictions(path, ["c1", "c2"], np.array([0, 1]), probs, CLASSES)
    assert [p.name for p in path.parent.iterdir()] == ["predictions.parquet"]  # no temp left
    schema = pq.read_schema(path)
    assert schema.field("probabilities").type.value_type == pa.float32()
    assert str(schema.field("label").type) == "int16"
    columns, classes = metrics.read_predictions(path)
    assert classes == CLASSES
    assert columns["clip_id"].tolist() == ["c1", "c2"]
    assert columns["label"].tolist() == [0, 1]
    assert columns["prediction"].tolist() == [0, 2]
    np.testing.assert_allclose(columns["probabilities"], probs, rtol=1e-6)


def test_write_predictions_refuses_wrong_width(tmp_path) -> None:
    with pytest.raises(MaedferError, match=r"expected \(N, 3\)"):
        metrics.write_predictions(
            tmp_path / "p.parquet", ["c1"], np.array([0]), np.ones((1, 2)), CLASSES
        )


def test_report_and_confusion_png(tmp_path) -> None:
    report = metrics.classification_report(*FOLD_B, CLASSES, views=2)
    metrics.write_report(tmp_path / "report.json", report)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    metrics.plot_confusion(report, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "report.json"]
