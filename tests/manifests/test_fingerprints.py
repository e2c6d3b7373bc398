"""Fingerprints of docs/datasets.md and their printing."""

from __future__ import annotations

import hashlib

import pandas as pd

from maedfer.manifests import (
    PUBLISHED,
    detailed_fingerprints,
    fold_fingerprints,
    format_fingerprints,
    sha16,
)
from maedfer.manifests.voxceleb2_excluded import EXCLUDED


def test_sha16_definition() -> None:
    # sorted, newline-joined, trailing newline, first 16 hex digits of sha256
    expected = hashlib.sha256(b"a\nb\nc\n").hexdigest()[:16]
    assert sha16(["c", "a", "b"]) == expected


def test_voxceleb2_exclusion_list_is_the_published_one() -> None:
    assert len(EXCLUDED) == 283
    assert sha16(EXCLUDED) == PUBLISHED["voxceleb2"]["excluded"] == "15c5d7fc0b4e1476"
    assert "id08423/oEx3CRfDXMQ/00048" in EXCLUDED and "id06511/vKT3J_zhDj8/00480" in EXCLUDED


def test_detailed_fingerprints_keys() -> None:
    df = pd.DataFrame({"clip_id": ["a", "b", "c"], "label": [0, 1, 0], "fold": [1, 2, 2]})
    fps = detailed_fingerprints(df, num_folds=2)
    assert fps == {
        "1": sha16(["a"]),
        "2": sha16(["b", "c"]),
        "train:1": sha16(["b", "c"]),
        "train:2": sha16(["a"]),
        "all": sha16(["a 0", "b 1", "c 0"]),
    }
    assert fold_fingerprints(df) == {"1": fps["1"], "2": fps["2"]}  # folds inferred


def test_format_reports_match_and_mismatch() -> None:
    published = {"1": "1111", "2": "2222"}
    text = format_fingerprints({"1": "1111", "2": "9999", "all": "abcd"}, published=published)
    lines = text.splitlines()
    assert lines[0].startswith("fold 1 test") and lines[0].endswith("match")
    assert "MISMATCH (published 2222)" in lines[1]
    assert lines[2].startswith("all (key label)") and lines[2].endswith("abcd")
    assert lines[3].startswith("fingerprints: 1/2 differ")
    assert "all match" in format_fingerprints({"1": "1111"}, published=published)
    assert "fingerprints:" not in format_fingerprints({"x": "1"}, published="no-such-dataset")
    ferv = format_fingerprints({"test": PUBLISHED["ferv39k"]["test"]}, published="ferv39k")
    assert ferv.splitlines()[0].endswith("match")
