"""What every dataset protocol returns: ``ClipEntry``, ``RawIndex``, ``Protocol`` (docs/design.md).

A protocol reads only names and folders of a raw download (never pixels) and says, for each clip,
its key (docs/datasets.md), where it is, its subject, label and fold or split. The preprocess driver
turns a ``RawIndex`` into the manifest; ``RawIndex.to_frame`` gives it the manifest rows with the
pixel fields still null (what ``--index-only`` writes).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from maedfer.errors import MaedferError
from maedfer.manifests.folds import fold_sizes
from maedfer.manifests.schema import MANIFEST_COLUMNS, PIXEL_COLUMNS, PROTOCOL_REASON

ClipKind = Literal["video", "frames"]


@dataclass(slots=True)
class ClipEntry:
    """One clip of a protocol, as found in the raw tree.

    Attributes:
        clip_id: the dataset's key, docs/datasets.md (e.g. RAVDESS ``02-01-06-01-02-01-12``).
        source: the video file or the frame folder, relative to the raw root, ``/``-separated.
        kind: ``"video"`` (a file to decode) or ``"frames"`` (a folder of images).
        subject: the dataset's own subject id as a decimal string (``"17"``), None where none.
        label: class index in the protocol's order, -1 for unlabeled (VoxCeleb2).
        label_name: the class name (``classes[label]``), ``"unlabeled"`` for -1.
        fold: the fold whose test set holds the clip (1..K) for k-fold protocols, else None.
        split: ``"train"``/``"test"`` for fixed splits, ``"pretrain"`` for VoxCeleb2, else None.
    """

    clip_id: str
    source: str
    kind: ClipKind
    subject: str | None
    label: int
    label_name: str
    fold: int | None
    split: str | None


@dataclass
class RawIndex:
    """What a protocol found under a raw root (docs/design.md).

    Attributes:
        dataset: name in ``DATASET_NAMES``.
        protocol: protocol id, stored as ``maedfer.protocol``.
        raw_root: absolute raw root; every ``source`` is relative to it.
        classes: class names in label order.
        num_folds: number of folds, 0 for a fixed split.
        entries: the usable clips of the protocol, sorted by ``clip_id``.
        rejects: ``(clip_id, source, reason)`` of files found but not used; files the protocol
            itself leaves out have a reason starting ``"protocol:"``.
        warnings: one line each, e.g. what a partial download is missing.
        extra: a folder dataset's extra table columns, column -> clip_id -> value (written as
            columns of the manifest after its own); empty for the published datasets.
    """

    dataset: str
    protocol: str
    raw_root: Path
    classes: list[str]
    num_folds: int
    entries: list[ClipEntry] = field(default_factory=list)
    rejects: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def protocol_rejects(self) -> list[tuple[str, str, str]]:
        """The rejects that the protocol leaves out on purpose (reason starts ``protocol:``)."""
        return [r for r in self.rejects if r[2].startswith(PROTOCOL_REASON)]

    def summary(self) -> str:
        """One line for a run's summary: clips per fold or split, rejects, warnings."""
        if self.num_folds:
            sizes = fold_sizes([e.fold for e in self.entries], self.num_folds)
            parts = ", ".join(f"fold {k}: {n}" for k, n in sizes.items())
        else:
            counts: dict[str, int] = {}
            for e in self.entries:
                counts[str(e.split)] = counts.get(str(e.split), 0) + 1
            parts = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
        protocol = len(self.protocol_rejects)
        return (
            f"{self.dataset}: {len(self.entries)} clips ({parts}); {len(self.rejects)} rejects "
            f"({protocol} left out by the protocol); {len(self.warnings)} warning(s)"
        )

    def to_frame(self, path: Callable[[ClipEntry], str] | None = None) -> pd.DataFrame:
        """The manifest rows of the entries, pixel fields null (an ``--index-only`` manifest).

        Args:
            path: the planned ``path`` of each clip (relative to the manifest's folder); default
                the entry's ``source`` (clips read in place from the raw root, like VoxCeleb2).

        Returns:
            A DataFrame with ``MANIFEST_COLUMNS`` in order, one row per entry.
        """
        es = self.entries
        n = len(es)
        rows = {
            "clip_id": [e.clip_id for e in es],
            "dataset": [self.dataset] * n,
            "path": [path(e) for e in es] if path is not None else [e.source for e in es],
            "source": [e.source for e in es],
            "subject": [e.subject for e in es],
            "label": [e.label for e in es],
            "label_name": [e.label_name for e in es],
            "fold": [e.fold for e in es],
            "split": [e.split for e in es],
        }
        for col in PIXEL_COLUMNS:
            rows[col] = [None] * n
        df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        df["label"] = df["label"].astype("int16")
        df["fold"] = df["fold"].astype("Int8")
        return df


class Protocol(abc.ABC):
    """A dataset's protocol: its raw layout, label order and fold rule (one module each).

    Attributes:
        name: dataset name in ``DATASET_NAMES`` (set by ``@register_dataset``).
        protocol: protocol id written to the manifest metadata.
        classes: class names in label order (docs/datasets.md), empty for unlabeled data.
        num_folds: number of folds, 0 for a fixed split.
    """

    name: str
    protocol: str
    classes: list[str]
    num_folds: int
    #: Clips read in place (a crop) rather than prepared; None: as registered.
    in_place: bool | None = None

    def configure(self, **options: object) -> Protocol:
        """This protocol with ``prepare`` options of its own (``folder``: the labels table,
        folds, ...); the published protocols take none.

        Raises:
            MaedferError: an option this dataset does not take, named as the CLI spells it.
        """
        given = sorted(k for k, v in options.items() if v not in (None, False))
        if given:
            from maedfer.manifests.registry import datasets_with_option

            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            owners = sorted({d for k in given for d in datasets_with_option(k)})
            where = " or ".join(f"`prepare {d}`" for d in owners) or "no dataset"
            raise MaedferError(f"{flags}: option(s) of {where}, not of {self.name}")
        return self

    @abc.abstractmethod
    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index the raw tree as downloaded: names and folders only, never pixels.

        Args:
            raw_root: the dataset's folder as the user downloaded and unpacked it.
            from_video: DFEW/FERV39k/MAFW: point at the original clips instead of the official
                face frames; ignored by datasets that have only videos.

        Raises:
            MaedferError: the folder is missing or does not have the dataset's layout at all.
        """

    def __repr__(self) -> str:
        return f"<Protocol {self.name} ({self.protocol}), {len(self.classes)} classes>"
