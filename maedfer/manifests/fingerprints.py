"""Fold fingerprints (DATASETS.md §9): compute them, compare with the published ones, print them.

``sha16(keys) = sha256("\\n".join(sorted(keys)) + "\\n").hexdigest()[:16]``. A manifest
stores, under ``maedfer.fingerprints``, fold -> sha16 of its test keys (``"1"``..``"K"``), or
split -> sha16 of the split's keys for fixed-split datasets (DESIGN.md §3).
``detailed_fingerprints`` adds the train side of each fold (``"train:K"``) and the all-pairs hash
of ``"<key> <label>"`` (``"all"``), which DATASETS.md also publishes; ``format_fingerprints``
prints them with match/mismatch against those values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import pandas as pd

#: The values published in DATASETS.md §3-§9 for the full protocol (keys as in
#: ``detailed_fingerprints``). VoxCeleb2's is the hash of its 283-key exclusion list (Appendix A).
PUBLISHED: dict[str, dict[str, str]] = {
    "dfew": {
        "1": "b0000e8bfb9f5f70", "2": "7ccc76996c59a474", "3": "2cee5da42a3efdc2",
        "4": "4d18c81ebe482962", "5": "659a48d729044683",
        "train:1": "0b395009e597406f", "train:2": "93a2261d4f05f816", "train:3": "320211e4189eed15",
        "train:4": "e1a7463ae5f11b37", "train:5": "710baa790821275f",
        "all": "1e1f2b2f3314a8e2",
    },
    "ferv39k": {"train": "a4446aefa2b01136", "test": "08c4ca3da2efa547", "all": "05084336445ce5e3"},
    "mafw": {
        "1": "5edadc076562197a", "2": "574239e566dce339", "3": "5214c4725add5431",
        "4": "9ed4303c5fb1f110", "5": "637ddf90a1ac49b8",
        "train:1": "2ba3abee90d82a3d", "train:2": "dbc9094d5ce9b5a5", "train:3": "7be8739eaf326e0e",
        "train:4": "707ea3981d4f530c", "train:5": "fd5219e5eadab966",
        "all": "9196c04c9103d536",
    },
    "crema-d": {
        "1": "dd05b4c670f64d58", "2": "a6f37e8a3b596892", "3": "2ba6e0e138c6ec7a",
        "4": "27e4466a608b5edf", "5": "19e855057c9c3c9d",
        "train:1": "385ef99265645f53", "train:2": "3761cd172da0fdd9", "train:3": "57ba6212c4b0666e",
        "train:4": "d302bff8b40161df", "train:5": "ab2798407c3f0100",
        "all": "de84a07ac09a3147",
    },
    "ravdess": {
        "1": "24875c4990b33976", "2": "f40c3dc14da79292", "3": "ccc6f928d1d8975f",
        "4": "7f7e72df6d2bde7e", "5": "4270dcff118d8655", "6": "286e545df89ee4ee",
        "train:1": "ea26fa74a4e7550f", "train:2": "42d263a73211334d", "train:3": "49942dd667a915c7",
        "train:4": "f51ab4fb7a6f156c", "train:5": "cf3daeb612504536", "train:6": "fe64f20f7c23e4f3",
        "all": "4cb0c18f72154b16",
    },
    "enterface05": {
        "1": "a15c96a5586b8c47", "2": "2469459eacac4654", "3": "b341b642539294c9",
        "4": "19442f23dfaa4858", "5": "60e3c89b1b2a0309",
        "train:1": "e2b74c26b8075179", "train:2": "7c88d9b3b5434e7a", "train:3": "ccd9d795a55b6838",
        "train:4": "da313540360b42bb", "train:5": "4522499d11c6bbeb",
        "all": "1a6a51dbd82ea031",
    },
    "voxceleb2": {"excluded": "15c5d7fc0b4e1476"},
}  # fmt: skip


def sha16(keys: Iterable[str]) -> str:
    """``sha256("\\n".join(sorted(keys)) + "\\n")[:16]``, the hash of DATASETS.md §9."""
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
        What ``maedfer.fingerprints`` stores (DESIGN.md §3), keys in order.
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
    protocol (DATASETS.md §9).
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
        published: the published values, or a dataset name to look them up in ``PUBLISHED``;
            None prints the values alone.

    Returns:
        One line per key, then a verdict line when anything was compared (a partial download
        differs by design, DESIGN.md §3).
    """
    if isinstance(published, str):
        published = PUBLISHED.get(published, {})
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
