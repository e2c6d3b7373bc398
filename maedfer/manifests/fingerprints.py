"""Fold fingerprints (docs/datasets.md): compute them, compare with the published ones, print them.

``sha16(keys) = sha256("\\n".join(sorted(keys)) + "\\n").hexdigest()[:16]``. A manifest
stores, under ``maedfer.fingerprints``, fold -> sha16 of its test keys (``"1"``..``"K"``), or
split -> sha16 of the split's keys for fixed-split datasets (docs/design.md).
``detailed_fingerprints`` adds the train side of each fold (``"train:K"``) and the all-pairs hash
of ``"<key> <label>"`` (``"all"``), which docs/datasets.md also publishes; ``format_fingerprints``
prints them with match/mismatch against those values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import pandas as pd


def sha16(keys: Iterable[str]) -> str:
    """``sha256("\\n".join(sorted(keys)) + "\\n")[:16]``, the hash of docs/datasets.md."""
    if isinstance(keys, pd.Series):
        keys = keys.tolist()  # iterating an Arrow-backed Series element-wise is slow
    text = "\n".join(sorted(keys)) + "\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _has_folds(df: pd.DataFrame, num_folds: int | None) -> bool:
    if num_folds is not None:
        return num_folds > 0
    return "fold" in df.columns and bool(df["fold"].notna().any())


def fold_fingerprints(df: pd.DataFrame, *, num_folds: int | None = None) -> dict[str, str]:
    """Fold -> sha16 of its test keys (``"1"``..``"K"``), or split -> sha16 of its keys.

    Args:
        df: manifest rows with ``clip_id`` and ``fold`` (k-fold) or ``split`` (fixed split).
        num_folds: K, or 0 for a fixed split; None infers it from the ``fold`` column. Every fold
            1..K gets a value, an empty fold the hash of no keys.

    Returns:
        What ``maedfer.fingerprints`` stores (docs/design.md), keys in order.
    """
    ids = df["clip_id"].astype(str)
    if _has_folds(df, num_folds):
        folds = pd.to_numeric(df["fold"], errors="coerce")
        k = num_folds if num_folds else int(folds.max())
        return {str(f): sha16(ids[folds == f]) for f in range(1, k + 1)}
    if "split" not in df.columns:
        return {}
    split = df["split"]
    names = sorted(str(s) for s in split.dropna().unique())
    return {s: sha16(ids[split == s]) for s in names}


def detailed_fingerprints(df: pd.DataFrame, *, num_folds: int | None = None) -> dict[str, str]:
    """``fold_fingerprints`` plus ``"train:K"`` (keys outside fold K) and ``"all"``.

    The all-pairs hash is over ``"<clip_id> <label>"`` of every row, the 0-based label of the
    protocol (docs/datasets.md).
    """
    out = fold_fingerprints(df, num_folds=num_folds)
    ids = df["clip_id"].astype(str)
    if _has_folds(df, num_folds):
        folds = pd.to_numeric(df["fold"], errors="coerce")
        for f in list(out):
            out[f"train:{f}"] = sha16(ids[folds != int(f)])
    labels = df["label"].astype(int).astype(str)
    out["all"] = sha16(ids + " " + labels)
    return out


def compare_fingerprints(
    fingerprints: Mapping[str, str], published: Mapping[str, str]
) -> dict[str, bool | None]:
    """Per key: True (same as published), False (differs), None (nothing published for it)."""
    return {k: (None if k not in published else published[k] == v) for k, v in fingerprints.items()}


def _label(key: str) -> str:
    if key.isdigit():
        return f"fold {key} test"
    if key.startswith("train:"):
        return f"fold {key[6:]} train"
    if key == "all":
        return "all (key label)"
    return key


def format_fingerprints(
    fingerprints: Mapping[str, str], *, published: Mapping[str, str] | str | None = None
) -> str:
    """Lines ``fold 1 test  24875c4990b33976  match`` for a run's summary.

    Args:
        fingerprints: from ``fold_fingerprints`` or ``detailed_fingerprints``.
        published: the published values, or a dataset name to look them up in the registry
            (each dataset module declares its own); None prints the values alone.

    Returns:
        One line per key, then a verdict line when anything was compared (a partial download
        differs by design, docs/design.md).
    """
    if isinstance(published, str):
        from maedfer.manifests.registry import published_fingerprints  # imports the datasets

        published = published_fingerprints(published)
    verdicts = compare_fingerprints(fingerprints, published or {})
    width = max((len(_label(k)) for k in fingerprints), default=0)
    lines = []
    for key, value in fingerprints.items():
        v = verdicts[key]
        tail = "" if v is None else ("  match" if v else f"  MISMATCH (published {published[key]})")
        lines.append(f"{_label(key):<{width}}  {value}{tail}")
    compared = [v for v in verdicts.values() if v is not None]
    if compared:
        good = sum(compared)
        if good == len(compared):
            lines.append(f"fingerprints: {good}/{len(compared)} all match the published protocol")
        else:  # count what the verdict says: the ones that differ
            lines.append(
                f"fingerprints: {len(compared) - good}/{len(compared)} differ from the published "
                "protocol (expected for a partial or modified download)"
            )
    return "\n".join(lines)
