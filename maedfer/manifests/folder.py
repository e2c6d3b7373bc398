"""``folder``: any folder of face videos as a dataset, from a labels table or class folders.

Three layouts (README "Bring your own dataset"):

- a labels table (``--labels labels.csv|.tsv|.parquet``): one row per clip with ``path``
  (relative to the raw folder: a video, or a folder of face frames that is resized without
  detection), ``label`` (the class name), optionally ``subject`` and ``split`` or ``fold``;
  any other column is kept as a column of the manifest after its own, named in its
  ``maedfer.extra`` metadata (a labels column named like a manifest column is refused);
- folders per class (``DIR/<label>/.../<video>``), subjects from the file name with
  ``--subject-from REGEX`` (its ``subject`` group, else its first group, else the match);
- ``--unlabeled``: every video under DIR, label -1, split ``pretrain`` (a pre-training
  corpus). Its clips go through the same face pipeline as labelled ones (arbitrary videos are
  not face crops, and pre-training should see what fine-tuning sees); ``--in-place`` instead
  reads videos that are face crops already where they are, with the largest centred square as
  the crop, as VoxCeleb2 is read (``--reencode`` writes those crops as clips).

Key = the path relative to DIR without its extension (``P01/happy_3``). Classes are ordered by
``--classes a,b,...`` or sorted by name; the order is the manifest's ``maedfer.classes``.
Folds: a ``split`` column gives a fixed split, a ``fold`` column the folds as numbered;
otherwise ``--folds K`` (default 5) folds are built by ``folds.subject_folds`` (every subject in
one fold, class proportions as even as the subjects allow, a function of the clips and
``--seed``) or, without subjects, ``folds.stratified_folds`` with a warning that they are not
subject-independent. A table that cannot be right (a missing column, a path that does not
exist, a label outside ``--classes``, a subject in two splits) is refused with one line.

Documented in docs/datasets.md.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from maedfer.config import opt
from maedfer.errors import MaedferError
from maedfer.manifests.base import ClipEntry, Protocol, RawIndex
from maedfer.manifests.folds import stratified_folds, subject_folds
from maedfer.manifests.layout import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    check_root,
    first_file,
    list_dir,
    no_clips_error,
    rel,
    walk_files,
)
from maedfer.manifests.registry import register_dataset
from maedfer.manifests.schema import MANIFEST_COLUMNS
from maedfer.paths import under_root

log = logging.getLogger(__name__)

NAME = "folder"
DEFAULT_FOLDS = 5
#: Columns of a labels table with a meaning; every other column is kept as an extra.
TABLE_COLUMNS = ("path", "label", "subject", "split", "fold")
_EXPECTED = "DIR/<label>/<video> (folders per class), or --labels TABLE, or --unlabeled"


@dataclass(frozen=True)
class FolderOptions:
    """The options of ``maedfer prepare folder`` that decide the index.

    Attributes:
        labels: the labels table (``.csv``, ``.tsv`` or ``.parquet``); None: folders per class.
        subject_from: regex taking the subject from each file name.
        unlabeled: a pre-training corpus (every video, label -1, split ``pretrain``).
        classes: class names in label order; None: the labels found, sorted.
        folds: K of the built folds (default 5); refused with a split or fold column.
        seed: orders subjects of equal size when building folds.
        in_place: read face-crop videos in place with a centred square crop (no alignment).
    """

    labels: Path | None = None
    subject_from: str | None = None
    unlabeled: bool = False
    classes: tuple[str, ...] | None = None
    folds: int | None = None
    seed: int = 0
    in_place: bool = False


@dataclass
class FolderArgs:
    """``prepare folder``'s own options as the command line gives them (its flags: defaults
    and help lines from here); :meth:`Folder.configure` checks them into :class:`FolderOptions`.
    Registered with the dataset (``@register_dataset(..., options=FolderArgs)``)."""

    labels: Path | None = opt(
        None,
        "folder: labels table (.csv/.tsv/.parquet): path (relative to --raw), label, optionally "
        "subject, split or fold; other columns are kept.",
    )
    subject_from: str | None = opt(
        None,
        "folder: regex taking the subject from each file name (its 'subject' group, else group "
        "1, else the match), e.g. '^(P\\d+)_'.",
    )
    unlabeled: bool = opt(
        False, "folder: a pre-training corpus: every video, label -1, split pretrain."
    )
    classes: str | None = opt(
        None,
        "folder: class names in label order, comma-separated (default: the labels found, sorted).",
    )
    folds: int | None = opt(
        None,
        "folder, no split/fold column: build K subject-independent, stratified folds (default 5).",
    )
    seed: int | None = opt(None, "folder: seed of the built folds (default 0).")
    in_place: bool = opt(
        False,
        "folder: the videos are face crops already: read them in place (centred square crop), "
        "no face detection; --reencode writes the crops.",
    )


@dataclass
class _Row:
    source: str
    kind: str
    label_name: str
    subject: str | None = None
    split: str | None = None
    fold: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_classes(classes: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [str(c).strip() for c in names]
    if not names or any(not c for c in names):
        raise MaedferError(f"--classes {classes!r} must be class names separated by commas")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise MaedferError(f"--classes names {', '.join(dup)} more than once")
    return tuple(names)


def _compile(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise MaedferError(
            f"--subject-from {pattern!r} is not a regular expression: {exc}"
        ) from None


def _subject_of(regex: re.Pattern, name: str) -> str | None:
    m = regex.search(name)
    if m is None:
        return None
    if "subject" in regex.groupindex:
        value = m.group("subject")
    else:
        value = m.group(1) if regex.groups else m.group(0)
    return (value or "").strip() or None


def _cell(value: Any) -> str | None:
    """A table cell as a stripped string; empty and missing cells are None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    return text or None


def _json_value(value: Any) -> Any:
    """An extra cell as a JSON value (numbers and strings kept, missing as None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)


def read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """The labels table and how its rows are named in messages (``line`` or ``row``).

    Raises:
        MaedferError: no such file, an unknown suffix, or an unreadable file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MaedferError(f"--labels {path} does not exist; expected a .csv or .parquet table")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            df = pd.read_csv(
                path,
                sep=sep,
                dtype=dict.fromkeys(TABLE_COLUMNS, str),
                keep_default_na=False,
                na_values=[""],
                skipinitialspace=True,
            )
            unit = "line"
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            unit = "row"
        else:
            raise MaedferError(f"--labels {path}: expected a .csv, .tsv or .parquet file")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MaedferError(f"--labels {path} is not a readable table: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df, unit


def _where(table: Path, unit: str, i: int) -> str:
    """``labels.csv line 5`` (the header is line 1) or ``labels.parquet row 4``."""
    return f"{table.name} {unit} {i + 2 if unit == 'line' else i + 1}"


def _kind_of(root: Path, source: str) -> str | None:
    """``video``, ``frames`` (a folder of images) or None (neither)."""
    path = root / source
    if path.is_file() and path.suffix.lower() in VIDEO_EXTS:
        return "video"
    if path.is_dir() and first_file(path, IMAGE_EXTS):
        return "frames"
    return None


def _table_rows(root: Path, o: FolderOptions) -> tuple[list[_Row], bool]:
    """Rows of the labels table, checked; and whether it gives the folds (split/fold column)."""
    df, unit = read_table(o.labels)
    table = Path(o.labels)
    found = ", ".join(df.columns) or "none"
    for need in ("path", "label"):
        if need not in df.columns:
            raise MaedferError(
                f"{table.name}: no {need!r} column (columns: {found}); a labels table needs path "
                "and label, optionally subject and split or fold"
            )
    if "split" in df.columns and "fold" in df.columns:
        raise MaedferError(f"{table.name}: both a 'split' and a 'fold' column; keep one")
    given = "split" if "split" in df.columns else "fold" if "fold" in df.columns else None
    if given and o.folds is not None:
        raise MaedferError(
            f"--folds {o.folds}: {table.name} has a {given!r} column already; drop one of them"
        )
    if "subject" in df.columns and o.subject_from is not None:
        raise MaedferError(
            f"--subject-from and a 'subject' column in {table.name}: give the subject once"
        )
    if df.empty:
        raise MaedferError(f"{table.name}: the table has no rows")
    extras = [c for c in df.columns if c not in TABLE_COLUMNS]
    clash = [c for c in extras if c in MANIFEST_COLUMNS]
    if clash:
        raise MaedferError(
            f"{table.name}: column(s) {', '.join(map(repr, clash))} are named like manifest "
            "columns; rename them (other columns are kept in the manifest as they are)"
        )
    rows, seen, first_split = [], {}, {}
    records = df.to_dict("records")
    for i, rec in enumerate(records):
        where = _where(table, unit, i)
        value = _cell(rec["path"])
        if value is None:
            raise MaedferError(f"{where}: empty path")
        # one path rule (maedfer.paths): normalised, inside --raw; the key and the clip's
        # place under --out are derived from this, never from the text as written
        source = under_root(value, root, what=f"{where}: path")
        if source in seen:
            same = "" if source == value else f" ({source})"
            raise MaedferError(f"{where}: path {value}{same} is listed twice (also {seen[source]})")
        seen[source] = where
        if not (root / source).exists():
            raise MaedferError(f"{where}: path {value} does not exist under {root}")
        kind = _kind_of(root, source)
        if kind is None:
            raise MaedferError(
                f"{where}: {value} is neither a video ({', '.join(sorted(VIDEO_EXTS))}) nor a "
                "folder of face frames"
            )
        label = _cell(rec["label"])
        if label is None:
            raise MaedferError(f"{where}: empty label")
        if o.classes is not None and label not in o.classes:
            raise MaedferError(
                f"{where}: label {label!r} is not in --classes ({', '.join(o.classes)})"
            )
        row = _Row(source, kind, label, extra={c: _json_value(rec[c]) for c in extras})
        if "subject" in df.columns:
            row.subject = _cell(rec["subject"])
            if row.subject is None:
                raise MaedferError(f"{where}: empty subject (fill it, or drop the column)")
        if given == "split":
            row.split = _cell(rec["split"])
            if row.split is None:
                raise MaedferError(f"{where}: empty split")
        elif given == "fold":
            text = _cell(rec["fold"])
            try:
                row.fold = int(float(text)) if text is not None else None
            except ValueError:
                row.fold = None
            if row.fold is None or str(row.fold) != text.split(".")[0] or row.fold < 1:
                raise MaedferError(f"{where}: fold {text!r} must be a whole number >= 1")
        if given and row.subject is not None:
            group = row.split if given == "split" else row.fold
            other = first_split.setdefault(row.subject, (group, where))
            if other[0] != group:
                raise MaedferError(
                    f"{where}: subject {row.subject!r} is in {given} {group} here and in {given} "
                    f"{other[0]} at {other[1]}; a subject must be in one {given}"
                )
        rows.append(row)
    return rows, given is not None


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def _class_folder_rows(
    root: Path, warnings: list[str]
) -> tuple[list[_Row], list[tuple[str, str, str]]]:
    """``DIR/<label>/.../<video>``: rows, and the videos outside any class folder (rejects).

    One file reached twice (a symlink into another class folder, a loop back to the root) is
    one row: see :func:`_one_row_per_file`. A labels table lying at the root unused (a
    forgotten ``--labels``) is said in a warning: the folders are taken as the classes.
    """
    rows, rejects = [], []
    folders, files = list_dir(root)
    for name in files:
        if os.path.splitext(name)[1].lower() in VIDEO_EXTS:
            rejects.append(
                (
                    os.path.splitext(name)[0],
                    name,
                    "protocol: not in a class folder (DIR/<label>/<video>)",
                )
            )
    tables = [name for name in files if name.lower().endswith(TABLE_SUFFIXES)]
    if tables:
        warnings.append(
            f"folder: {root / tables[0]} is not read: without --labels, each video's class is "
            f"its top folder ({', '.join(folders[:4])}{', ...' if len(folders) > 4 else ''}); "
            f"pass --labels {root / tables[0]} to take the labels from the table"
        )
    for label in folders:
        for folder, fname in walk_files(root / label):
            if os.path.splitext(fname)[1].lower() in VIDEO_EXTS:
                rows.append(_Row(rel(folder / fname, root), "video", label))
    return _one_row_per_file(root, rows, rejects), rejects


def _all_videos(root: Path) -> tuple[list[_Row], list[tuple[str, str, str]]]:
    rows = [
        _Row(rel(folder / fname, root), "video", "unlabeled")
        for folder, fname in walk_files(root)
        if os.path.splitext(fname)[1].lower() in VIDEO_EXTS
    ]
    rejects: list[tuple[str, str, str]] = []
    return _one_row_per_file(root, rows, rejects), rejects


def _one_row_per_file(root: Path, rows: list[_Row], rejects: list) -> list[_Row]:
    """Keep one row per file (its device and inode): the path reached without a symlink
    first, else the shortest; the others are rejected as duplicates. A folder symlinked into
    another class (or a loop back to the root) would otherwise index one video under two
    classes."""

    def rank(row: _Row) -> tuple:
        path = root / row.source
        canonical = os.path.realpath(path) == os.path.abspath(path)
        return (not canonical, len(row.source), row.source)

    by_file: dict[tuple[int, int], list[_Row]] = {}
    for row in rows:
        try:
            st = os.stat(root / row.source)
        except OSError:
            by_file[(-1, id(row))] = [row]
            continue
        by_file.setdefault((st.st_dev, st.st_ino), []).append(row)
    kept = []
    for group in by_file.values():
        group.sort(key=rank)
        kept.append(group[0])
        for other in group[1:]:
            rejects.append(
                (_key(other), other.source, f"duplicate: same file as {group[0].source}")
            )
    return sorted(kept, key=lambda r: r.source)


def _key(row: _Row) -> str:
    return os.path.splitext(row.source)[0] if row.kind == "video" else row.source


@register_dataset(
    NAME, in_place=False, crop="centre", media=("videos", "frames"), options=FolderArgs
)
class Folder(Protocol):
    """A user's own dataset; ``configure`` sets its options (``FolderOptions``)."""

    protocol = "maedfer:folder"
    classes: list[str] = []
    num_folds = 0

    def __init__(self, options: FolderOptions | None = None) -> None:
        self.options = options or FolderOptions()
        # Read in place (with the registered crop) rather than prepared: --in-place.
        self.in_place = self.options.in_place

    def configure(
        self,
        *,
        labels: Path | str | None = None,
        subject_from: str | None = None,
        unlabeled: bool = False,
        classes: str | list[str] | tuple[str, ...] | None = None,
        folds: int | None = None,
        seed: int | None = None,
        in_place: bool = False,
    ) -> Folder:
        """A ``Folder`` with these options (see :class:`FolderOptions`).

        Raises:
            MaedferError: options that do not go together (``--unlabeled`` with a table,
                classes or folds; ``--folds`` below 2).
        """
        if unlabeled:
            given = [
                f
                for f, v in (("--labels", labels), ("--classes", classes), ("--folds", folds))
                if v is not None
            ]
            if given:
                raise MaedferError(
                    f"{', '.join(given)}: not with --unlabeled (every video, label -1, split "
                    "pretrain)"
                )
        if folds is not None and folds < 2:
            raise MaedferError(f"--folds {folds} must be at least 2")
        _compile(subject_from)
        return Folder(
            FolderOptions(
                labels=None if labels is None else Path(labels).expanduser(),
                subject_from=subject_from,
                unlabeled=unlabeled,
                classes=_parse_classes(classes),
                folds=folds,
                seed=0 if seed is None else int(seed),
                in_place=in_place,
            )
        )

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index ``raw_root`` by the options (``from_video`` is ignored).

        Raises:
            MaedferError: a missing folder, no videos, or a table that cannot be right.
        """
        o = self.options
        root = check_root(raw_root, NAME)
        rejects: list[tuple[str, str, str]] = []
        warnings: list[str] = []
        if o.unlabeled:
            (rows, rejects), has_folds, layout = _all_videos(root), False, "unlabeled"
        elif o.labels is not None:
            (rows, has_folds), layout = _table_rows(root, o), "table"
        else:
            (rows, rejects), has_folds = _class_folder_rows(root, warnings), False
            layout = "class-folders"
        if not rows:
            raise no_clips_error(NAME, root, _EXPECTED)
        rows, rejects = self._subjects(rows, rejects)
        rows = self._dedupe(rows, rejects)
        classes = self._classes(rows, warnings)
        label_of = {c: i for i, c in enumerate(classes)}
        num_folds, rule = self._folds(rows, label_of, has_folds, warnings)
        entries = [
            ClipEntry(
                clip_id=_key(r),
                source=r.source,
                kind=r.kind,
                subject=r.subject,
                label=label_of.get(r.label_name, -1),
                label_name=r.label_name if not o.unlabeled else "unlabeled",
                fold=r.fold if num_folds else None,
                split="pretrain" if o.unlabeled else r.split,
            )
            for r in rows
        ]
        entries.sort(key=lambda e: e.clip_id)
        extra: dict[str, dict[str, object]] = {}
        for r in rows:
            for col, value in r.extra.items():
                extra.setdefault(col, {})[_key(r)] = value
        index = RawIndex(
            dataset=NAME,
            protocol=f"maedfer:folder:{layout}:{rule}",
            raw_root=root,
            classes=classes,
            num_folds=num_folds,
            entries=entries,
            rejects=rejects,
            warnings=warnings,
            extra=extra,
        )
        log.info("%s", index.summary())
        return index

    def _subjects(self, rows: list[_Row], rejects: list) -> tuple[list[_Row], list]:
        """Subjects from the file names (``--subject-from``); a name without one is a reject."""
        regex = _compile(self.options.subject_from)
        if regex is None:
            return rows, rejects
        kept = []
        for r in rows:
            subject = _subject_of(regex, Path(r.source).name)
            if subject is None:
                rejects.append(
                    (
                        _key(r),
                        r.source,
                        f"no subject: --subject-from "
                        f"{regex.pattern!r} does not match the file name",
                    )
                )
            else:
                kept.append(replace(r, subject=subject))
        if not kept:
            raise MaedferError(
                f"folder: --subject-from {regex.pattern!r} matches none of the {len(rows)} file "
                f"names (e.g. {Path(rows[0].source).name})"
            )
        return kept, rejects

    @staticmethod
    def _dedupe(rows: list[_Row], rejects: list) -> list[_Row]:
        """Two files with one key (``a.mp4`` and ``a.avi``): the first by name is kept."""
        kept: dict[str, _Row] = {}
        for r in sorted(rows, key=lambda r: r.source):
            key = _key(r)
            if key in kept:
                rejects.append((key, r.source, f"duplicate: same key as {kept[key].source}"))
            else:
                kept[key] = r
        return list(kept.values())

    def _classes(self, rows: list[_Row], warnings: list[str]) -> list[str]:
        o = self.options
        if o.unlabeled:
            return []
        found = sorted({r.label_name for r in rows})
        if o.classes is None:
            return found
        outside = [c for c in found if c not in o.classes]
        if outside:  # folders per class: a folder name outside --classes
            raise MaedferError(
                f"folder: class folder(s) {', '.join(outside)} not in --classes "
                f"({', '.join(o.classes)})"
            )
        absent = [c for c in o.classes if c not in found]
        if absent:
            warnings.append(f"folder: no clips of class(es) {', '.join(absent)} of --classes")
        return list(o.classes)

    def _folds(
        self, rows: list[_Row], label_of: dict[str, int], has_folds: bool, warnings: list[str]
    ) -> tuple[int, str]:
        """Set each row's fold (or keep its split); returns (K, rule id)."""
        o = self.options
        if o.unlabeled:
            return 0, "pretrain"
        if has_folds:
            if rows[0].split is not None:
                names = sorted({r.split for r in rows})
                missing = [s for s in ("train", "test") if s not in names]
                if missing:
                    warnings.append(
                        f"folder: no {' or '.join(missing)} split (splits: "
                        f"{', '.join(names)}); finetune trains on train, tests on test"
                    )
                return 0, "split-column"
            k = max(r.fold for r in rows)
            empty = sorted(set(range(1, k + 1)) - {r.fold for r in rows})
            if empty:
                warnings.append(f"folder: fold(s) {', '.join(map(str, empty))} of 1..{k} are empty")
            return k, "fold-column"
        k = o.folds or DEFAULT_FOLDS
        labels = [label_of[r.label_name] for r in rows]
        if all(r.subject is not None for r in rows):
            subjects = [r.subject for r in rows]
            try:
                fold_of = subject_folds(
                    subjects, labels, num_folds=k, num_classes=len(label_of), seed=o.seed
                )
            except ValueError:
                raise MaedferError(
                    f"folder: --folds {k} needs at least {k} subjects; found "
                    f"{len(set(subjects))} ({', '.join(sorted(set(subjects))[:8])})"
                ) from None
            for r in rows:
                r.fold = fold_of[r.subject]
            return k, f"{k}fold-subject-seed{o.seed}"
        keys = [_key(r) for r in rows]
        if len(keys) < k:
            raise MaedferError(f"folder: --folds {k} needs at least {k} clips; found {len(keys)}")
        fold_of = stratified_folds(keys, labels, num_folds=k, seed=o.seed)
        for r in rows:
            r.fold = fold_of[_key(r)]
        warnings.append(
            f"folder: no subjects (no subject column, no --subject-from): the {k} folds are "
            "stratified by class but NOT subject-independent; a subject's clips can be in "
            "training and test"
        )
        return k, f"{k}fold-stratified-seed{o.seed}"
