"""Dataset protocols and the manifest: raw tree -> clips, key, subject, label, fold
(docs/design.md).

One module per dataset (``voxceleb2``, ``dfew``, ``ferv39k``, ``mafw``, ``crema_d``, ``ravdess``,
``enterface05``, and ``folder`` for a user's own data) reads the raw tree as downloaded and
declares itself with ``@register_dataset`` (:mod:`maedfer.manifests.registry`); ``schema``,
``io``, ``folds`` and ``fingerprints`` are shared. Adding a dataset is one module (plus its
tests): the CLI, the preprocess driver and the fingerprint check read the registry. Usage::

    protocol = get_protocol("ravdess")
    index = protocol.index(Path("/data/RAVDESS"))          # RawIndex: entries, rejects, warnings
    fps = write_manifest(index.to_frame(), out / "manifest.parquet", dataset=index.dataset,
                         protocol=index.protocol, classes=index.classes,
                         num_folds=index.num_folds, raw_root=index.raw_root)

Documented in docs/datasets.md.
"""

from __future__ import annotations

from maedfer.manifests.base import ClipEntry, ClipKind, Protocol, RawIndex
from maedfer.manifests.fingerprints import (
    compare_fingerprints,
    detailed_fingerprints,
    fold_fingerprints,
    format_fingerprints,
    sha16,
)
from maedfer.manifests.io import (
    read_manifest,
    read_rejects,
    with_extra,
    write_manifest,
    write_rejects,
)
from maedfer.manifests.registry import (
    DatasetInfo,
    get_dataset,
    list_datasets,
    published_fingerprints,
    register_dataset,
)
from maedfer.manifests.schema import (
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    PROTOCOL_REASON,
    REJECT_COLUMNS,
    REQUIRED_COLUMNS,
)


def get_protocol(name: str) -> Protocol:
    """The protocol of dataset ``name`` (one of ``list_datasets()``; case and ``_``/``-`` ignored).

    Raises:
        MaedferError: unknown name; the message lists the valid ones.
    """
    return get_dataset(name).protocol


def published_results(name: str) -> dict | None:
    """MAE-DFER's published test figures for dataset ``name``, or None where it published none.

    Returns:
        ``{"uar", "war"}`` in percent, with ``aggregation`` (e.g. ``mean over 5 folds``) and
        ``source``; each dataset module registers its own (``results=``).

    Raises:
        MaedferError: unknown name.
    """
    found = get_dataset(name).results
    return dict(found) if found is not None else None


def __getattr__(name: str):
    # Computed from the registry on first use: importing the package stays cheap and the
    # dataset modules (which import from it) see it fully initialised.
    if name == "DATASET_NAMES":
        return tuple(list_datasets())
    if name == "PUBLISHED":
        return {
            n: dict(get_dataset(n).published) for n in list_datasets() if get_dataset(n).published
        }
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASET_NAMES",
    "MANIFEST_COLUMNS",
    "MANIFEST_SCHEMA",
    "PROTOCOL_REASON",
    "PUBLISHED",
    "REJECT_COLUMNS",
    "REQUIRED_COLUMNS",
    "ClipEntry",
    "DatasetInfo",
    "ClipKind",
    "Protocol",
    "RawIndex",
    "compare_fingerprints",
    "detailed_fingerprints",
    "fold_fingerprints",
    "format_fingerprints",
    "get_dataset",
    "get_protocol",
    "list_datasets",
    "published_fingerprints",
    "published_results",
    "read_manifest",
    "read_rejects",
    "register_dataset",
    "sha16",
    "with_extra",
    "write_manifest",
    "write_rejects",
]
