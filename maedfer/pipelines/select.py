"""Manifest rows a loader reads: the columns the pipelines need, the fold or split, the root.

Reads only ``clip_id``, ``path``, ``label``, ``fold``, ``split``, ``num_frames`` and ``crop``
(docs/design.md) of a Parquet manifest, or takes a DataFrame with those columns, and keeps them as
compact arrays: a million rows load in about a second and are shared by forked workers without
per-row Python objects. Selection rules (contract of ``build_loader``):

- ``fold=K``: train/pretrain = the rows whose fold is not K, test = the rows whose fold is K;
- ``split=S``: the rows whose split is S;
- neither: every row.

Paths are relative to the manifest's folder (prepared clips) or, when the rows are read in place
(VoxCeleb2), to the ``maedfer.raw_root`` metadata; an explicit ``root`` overrides both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maedfer.errors import MaedferError
from maedfer.manifests.schema import check_column_types, decode_metadata

log = logging.getLogger(__name__)

NEEDED_COLUMNS: tuple[str, ...] = ("clip_id", "path", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("fold", "split", "num_frames", "crop")


@dataclass
class ClipTable:
    """The selected rows as arrays (row ``i`` of each is the same clip).

    ``num_frames`` is -1 where unknown; ``crop`` is ``(N, 4)`` x, y, w, h with -1 where the row has
    no crop. ``clip_id`` and ``path`` stay Arrow string arrays (no per-row Python objects).
    """

    clip_id: pa.Array
    path: pa.Array
    label: np.ndarray
    num_frames: np.ndarray
    crop: np.ndarray
    root: Path
    classes: list[str] | None = None
    source: str = "the manifest"  # what error messages call it (the file, or a DataFrame)

    def __len__(self) -> int:
        return len(self.label)

    def clip_path(self, row: int) -> str:
        """Absolute path of row ``row``'s clip (absolute manifest paths are kept as they are)."""
        path = Path(self.path[row].as_py())
        return str(path if path.is_absolute() else self.root / path)

    def row_clip_id(self, row: int) -> str:
        return str(self.clip_id[row].as_py())

    def clip_ids(self) -> list[str]:
        """Every selected clip id, in manifest order."""
        return [str(c) for c in self.clip_id.to_pylist()]


def check_some_clip_exists(table: ClipTable, *, what: str) -> None:
    """Fail early, in one line, when none of the selected clip files exists.

    A clips folder that was moved or never copied would otherwise surface as a decode failure
    inside a loader worker. The scan stops at the first file found, so a healthy manifest costs
    one ``stat``. Some missing files are left to the loaders, which replace and count them (and
    a test set that shrank is reported as incomplete).

    Raises:
        MaedferError: naming the manifest, the selection ``what``, the first path and the count.
    """
    for row in range(len(table)):
        if os.path.exists(table.clip_path(row)):
            return
    raise MaedferError(
        f"manifest {table.source}: all {len(table)} clip files of {what} are missing, e.g. "
        f"{table.clip_path(0)}; clip paths are read relative to {table.root}"
    )


def _read_parquet(path: Path) -> tuple[pa.Table, dict[str, Any]]:
    if not path.is_file():
        raise MaedferError(f"manifest {path} does not exist; expected a manifest.parquet file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise MaedferError(f"manifest {path} is not a readable Parquet file: {exc}") from None
    names = set(schema.names)
    missing = [c for c in NEEDED_COLUMNS if c not in names]
    if missing:
        raise MaedferError(
            f"manifest {path} lacks column(s) {', '.join(missing)}; "
            f"the pipelines need {', '.join(NEEDED_COLUMNS)}"
        )
    check_column_types(schema, str(path))
    columns = [c for c in (*NEEDED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
    table = pq.read_table(path, columns=columns)
    return table, decode_metadata(schema.metadata, path)


def _from_frame(df: pd.DataFrame) -> pa.Table:
    missing = [c for c in NEEDED_COLUMNS if c not in df.columns]
    if missing:
        raise MaedferError(
            f"manifest DataFrame lacks column(s) {', '.join(missing)}; "
            f"the pipelines need {', '.join(NEEDED_COLUMNS)}"
        )
    arrays, names = [], []
    for name in (*NEEDED_COLUMNS, *OPTIONAL_COLUMNS):
        if name not in df.columns:
            continue
        values = df[name]
        if name == "crop":
            rows = [None if _is_null(v) else [int(x) for x in v] for v in values]
            arrays.append(pa.array(rows, type=pa.list_(pa.int32())))
        elif name in ("clip_id", "path", "split"):
            arrays.append(pa.array(values.astype(object).where(values.notna(), None).tolist()))
        else:
            try:
                arrays.append(pa.array(pd.to_numeric(values), from_pandas=True))
            except (ValueError, TypeError):
                raise MaedferError(
                    f"manifest DataFrame column {name!r} holds non-numeric values "
                    f"(e.g. {values.iloc[0]!r}); expected integers"
                ) from None
        names.append(name)
    return pa.table(arrays, names=names)


def _is_null(value: object) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def _int_column(table: pa.Table, name: str, fill: int) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=np.int64)
    col = table.column(name).combine_chunks()
    return np.asarray(col.fill_null(fill).to_numpy(zero_copy_only=False), dtype=np.int64)


def _crop_column(table: pa.Table) -> np.ndarray:
    """``(N, 4)`` int boxes, -1 where null; accepts fixed-size or variable lists of 4."""
    out = np.full((table.num_rows, 4), -1, dtype=np.int64)
    if "crop" not in table.column_names:
        return out
    col = table.column("crop").combine_chunks()
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if not valid.any():
        return out
    kept = col.filter(pa.array(valid))
    lengths = np.asarray(kept.value_lengths().to_numpy(zero_copy_only=False))
    if (lengths != 4).any():
        raise MaedferError(
            f"manifest column crop holds a list of {lengths[lengths != 4][0]} "
            "values; expected x, y, w, h"
        )
    values = np.asarray(kept.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    out[valid] = values.reshape(-1, 4)
    return out


def _select_mask(
    table: pa.Table, *, mode: str, fold: int | None, split: str | None, source: str
) -> np.ndarray:
    n = table.num_rows
    if n == 0:
        raise MaedferError(
            f"manifest {source} holds no clips (0 rows): prepare the dataset "
            "again (its rejects.parquet says why clips were left out)"
        )
    if fold is not None and split is not None:
        raise MaedferError(f"give a fold or a split, not both (fold={fold}, split={split!r})")
    if fold is not None:
        folds = _int_column(table, "fold", -1)
        present = sorted({int(f) for f in np.unique(folds) if f >= 0})
        if not present:
            raise MaedferError(
                f"fold {fold} asked for, but {source} has no folds "
                "(a fixed-split dataset: select a split instead)"
            )
        if int(fold) not in present:
            raise MaedferError(f"fold ({fold}) must be one of {present} for {source}")
        return folds == int(fold) if mode == "test" else folds != int(fold)
    if split is not None:
        if "split" not in table.column_names:
            raise MaedferError(f"split {split!r} asked for, but {source} has no split column")
        splits = table.column("split").combine_chunks().fill_null("").to_numpy(zero_copy_only=False)
        mask = splits == split
        if not mask.any():
            names = sorted({s for s in np.unique(splits) if s})
            raise MaedferError(f"split {split!r} not in {source}; it has {names}")
        return mask
    return np.ones(n, dtype=bool)


def _resolve_root(table: pa.Table, meta: dict[str, Any], manifest_dir: Path | None) -> Path:
    """Manifest folder, or ``maedfer.raw_root`` when the first clip is found there instead."""
    base = manifest_dir if manifest_dir is not None else Path.cwd()
    raw_root = meta.get("raw_root")
    if raw_root and table.num_rows:
        first = Path(table.column("path")[0].as_py())
        if (
            not first.is_absolute()
            and not (base / first).exists()
            and (Path(raw_root) / first).exists()
        ):
            log.info("clips are read in place under raw_root %s", raw_root)
            return Path(raw_root)
    return base


# a ".." component: a path that may climb out of the folder it is relative to (maedfer.paths)
_CLIMBS = r"(^|[/\\])\.\.([/\\]|$)"


def _check_paths(table: pa.Table, source: str) -> None:
    """The one path rule (:mod:`maedfer.paths`) for a manifest's clip paths, vectorised: none
    climbs with ``..`` (absolute paths, which another tool may write, are taken as they are)."""
    import pyarrow.compute as pc

    paths = table.column("path")
    climbs = pc.fill_null(pc.match_substring_regex(paths, _CLIMBS), False)
    if pc.any(climbs).as_py():
        i = int(np.flatnonzero(climbs.to_numpy(zero_copy_only=False))[0])
        clip = table.column("clip_id")[i].as_py()
        raise MaedferError(
            f"manifest {source}: clip {clip} has path {paths[i].as_py()!r}, which climbs out of "
            "the manifest's folder with '..'; clip paths must stay inside it"
        )


def _check_label_range(table: pa.Table, label: np.ndarray, num_classes: int, source: str) -> None:
    # a label past the class list would fail later as an IndexError inside the loss
    beyond = np.flatnonzero(label >= num_classes)
    if beyond.size:
        clip = table.column("clip_id")[int(beyond[0])].as_py()
        raise MaedferError(
            f"manifest {source}: clip {clip} has label {int(label[beyond[0]])}, but its "
            f"maedfer.classes metadata names {num_classes} classes (labels 0..{num_classes - 1})"
            f"; {beyond.size} clip(s) are out of range"
        )


def load_clip_table(
    manifest: Path | str | pd.DataFrame,
    *,
    mode: str,
    fold: int | None = None,
    split: str | None = None,
    root: Path | None = None,
) -> ClipTable:
    """Read a manifest (file or DataFrame) and keep the rows selected by ``fold`` / ``split``.

    Raises:
        MaedferError: missing file or columns, a column of the wrong type (string labels), a
            fold or split the manifest does not have, both given, an empty selection, unlabelled
            rows (label -1) selected for training or test, or a label past the manifest's
            ``maedfer.classes``.
    """
    if isinstance(manifest, pd.DataFrame):
        table, meta, source, manifest_dir = _from_frame(manifest), {}, "the manifest", None
    else:
        path = Path(manifest)
        table, meta = _read_parquet(path)
        source, manifest_dir = str(path), path.resolve().parent
    _check_paths(table, source)
    mask = _select_mask(table, mode=mode, fold=fold, split=split, source=source)
    if not mask.any():
        raise MaedferError(
            f"no rows of {source} are selected (mode={mode}, fold={fold}, "
            f"split={split!r}); it has {table.num_rows} rows"
        )
    table = table.filter(pa.array(mask))
    label = _int_column(table, "label", -1)
    below = np.flatnonzero(label < -1)
    if below.size:  # -1 means unlabelled; anything lower means nothing
        bad = table.column("clip_id")[int(below[0])].as_py()
        raise MaedferError(
            f"manifest {source}: clip {bad} has label {int(label[below[0]])}; "
            "labels are class indices 0..K-1, or -1 for an unlabelled clip"
        )
    if mode != "pretrain" and (label < 0).any():
        bad = table.column("clip_id")[int(np.flatnonzero(label < 0)[0])].as_py()
        raise MaedferError(
            f"{mode} mode needs labelled clips, but {bad} in {source} has label -1"
            " (unlabelled: use it for pre-training)"
        )
    classes = list(meta["classes"]) if "classes" in meta else None
    if mode != "pretrain" and classes is not None:
        _check_label_range(table, label, len(classes), source)
    return ClipTable(
        clip_id=table.column("clip_id").combine_chunks(),
        path=table.column("path").combine_chunks(),
        label=label,
        num_frames=_int_column(table, "num_frames", -1),
        crop=_crop_column(table),
        root=Path(root) if root is not None else _resolve_root(table, meta, manifest_dir),
        classes=classes,
        source=source,
    )
