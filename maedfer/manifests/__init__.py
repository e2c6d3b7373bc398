"""Dataset protocols and the manifest: raw tree -> clips, key, subject, label, fold (DESIGN §1, §3).

One module per dataset (``voxceleb2``, ``dfew``, ``ferv39k``, ``mafw``, ``crema_d``, ``ravdess``,
``enterface05``) reads the raw tree as downloaded; ``schema``, ``io``, ``folds`` and
``fingerprints`` are shared. Usage::

    protocol = get_protocol("ravdess")
    index = protocol.index(Path("/data/RAVDESS"))          # RawIndex: entries, rejects, warnings
    fps = write_manifest(index.to_frame(), out / "manifest.parquet", dataset=index.dataset,
                         protocol=index.protocol, classes=index.classes,
                         num_folds=index.num_folds, raw_root=index.raw_root)
"""

from __future__ import annotations

import importlib

from maedfer.errors import MaedferError
from maedfer.manifests.base import ClipEntry, ClipKind, Protocol, RawIndex
from maedfer.manifests.fingerprints import (
    PUBLISHED,
    compare_fingerprints,
    detailed_fingerprints,
    fold_fingerprints,
    format_fingerprints,
    sha16,
)
from maedfer.manifests.io import read_manifest, read_rejects, write_manifest, write_rejects
from maedfer.manifests.schema import (
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    PROTOCOL_REASON,
    REJECT_COLUMNS,
    REQUIRED_COLUMNS,
)

DATASET_NAMES: tuple[str, ...] = (
    "voxceleb2",
    "dfew",
    "ferv39k",
    "mafw",
    "crema-d",
    "ravdess",
    "enterface05",
)
# Dataset name -> module under maedfer.manifests (imported on first use).
_MODULES = {name: name.replace("-", "_") for name in DATASET_NAMES}


def get_protocol(name: str) -> Protocol:
    """The protocol of dataset ``name`` (one of ``DATASET_NAMES``; case and ``_``/``-`` ignored).

    Raises:
        MaedferError: unknown name; the message lists the valid ones.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _MODULES:
        raise MaedferError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASET_NAMES)}")
    module = importlib.import_module(f"maedfer.manifests.{_MODULES[key]}")
    return module.PROTOCOL


def published_results(name: str) -> dict | None:
    """MAE-DFER's published test figures for dataset ``name``, or None where it published none.

    Returns:
        ``{"uar", "war"}`` in percent, with ``aggregation`` (e.g. ``mean over 5 folds``) and
        ``source``; each dataset module keeps its own as ``PUBLISHED_RESULTS``.

    Raises:
        MaedferError: unknown name.
    """
    protocol = get_protocol(name)
    module = importlib.import_module(type(protocol).__module__)
    found = getattr(module, "PUBLISHED_RESULTS", None)
    return dict(found) if found is not None else None


__all__ = [
    "DATASET_NAMES",
    "MANIFEST_COLUMNS",
    "MANIFEST_SCHEMA",
    "PROTOCOL_REASON",
    "PUBLISHED",
    "REJECT_COLUMNS",
    "REQUIRED_COLUMNS",
    "ClipEntry",
    "ClipKind",
    "Protocol",
    "RawIndex",
    "compare_fingerprints",
    "detailed_fingerprints",
    "fold_fingerprints",
    "format_fingerprints",
    "get_protocol",
    "published_results",
    "read_manifest",
    "read_rejects",
    "sha16",
    "write_manifest",
    "write_rejects",
]
