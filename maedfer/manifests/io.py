"""Parquet IO of manifests and rejects, with the metadata of docs/design.md.

``write_manifest`` casts to the exact Arrow schema, checks the rows against the protocol (unique
keys, labels in range, folds in 1..K), computes the fold fingerprints (docs/datasets.md) and writes
atomically. ``read_manifest`` accepts any Parquet file with the required columns and metadata keys
(another tool's included) and returns the rows plus the decoded metadata.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maedfer.atomic import atomic_path
from maedfer.errors import MaedferError
from maedfer.manifests.fingerprints import fold_fingerprints
from maedfer.manifests.schema import (
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    META_PREFIX,
    REJECT_COLUMNS,
    REJECTS_SCHEMA,
    REQUIRED_COLUMNS,
    check_column_types,
    decode_metadata,
)

log = logging.getLogger(__name__)


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write to a temp file in the same folder, then ``os.replace`` (no half-written files)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _crop_array(values: pd.Series, ids: pd.Series) -> pa.Array:
    """``crop`` (x, y, w, h or None per row) as a fixed-size list of 4 int16, vectorised."""
    typ = MANIFEST_SCHEMA.field("crop").type
    valid = ~pd.isna(values).to_numpy(dtype=bool)
    if not valid.any():
        return pa.nulls(len(values), type=typ)
    boxes = values[valid].tolist()
    try:
        given = np.asarray(boxes, dtype=np.int64)
    except (ValueError, TypeError):
        given = None
    if given is None or given.ndim != 2 or given.shape[1] != 4:
        i = next((i for i, b in enumerate(boxes) if len(np.atleast_1d(b)) != 4), 0)
        raise MaedferError(
            f"crop of clip {ids[valid].iloc[i]} is {boxes[i]!r}; expected 4 integers x, y, w, h"
        )
    if given.min() < -(2**15) or given.max() >= 2**15:
        raise MaedferError("crop values must fit int16 (pixels); got one out of range")
    flat = np.zeros((len(values), 4), dtype=np.int16)
    flat[valid] = given
    child = pa.array(flat.ravel(), type=pa.int16())
    return pa.FixedSizeListArray.from_arrays(child, 4, mask=pa.array(~valid))


def _crop_tuples(column: pa.ChunkedArray) -> list[tuple[int, ...] | None]:
    """The ``crop`` column back as (x, y, w, h) tuples or None, without a per-value loop."""
    arr = column.combine_chunks()
    if len(arr) == 0 or arr.null_count == len(arr):
        return [None] * len(arr)
    if not pa.types.is_fixed_size_list(arr.type):  # another tool's variable-length list
        return [None if v is None else tuple(int(x) for x in v) for v in arr.to_pylist()]
    child = arr.values.slice(arr.offset * 4, len(arr) * 4).fill_null(0)
    boxes = list(map(tuple, np.asarray(child).reshape(-1, 4).tolist()))
    valid = np.asarray(arr.is_valid())
    return [box if ok else None for box, ok in zip(boxes, valid, strict=True)]


def _column(df: pd.DataFrame, name: str, n: int) -> pa.Array:
    """One column cast to its schema type; absent optional columns become nulls."""
    typ = MANIFEST_SCHEMA.field(name).type
    if name not in df.columns:
        return pa.nulls(n, type=typ)
    values = df[name]
    if name == "crop":
        return _crop_array(values, df["clip_id"].astype(str))
    try:
        return pa.array(values, type=typ, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise MaedferError(f"manifest column {name!r} does not fit {typ}: {exc}") from None


def _check_rows(df: pd.DataFrame, *, classes: Sequence[str], num_folds: int, dataset: str) -> None:
    """Protocol invariants the pipelines rely on; a violation names the first offending clip."""
    ids = df["clip_id"].astype(str)
    climbs = df["path"].astype(str).str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True)
    if climbs.any():  # the one path rule (maedfer.paths): nothing outside the root
        i = int(np.flatnonzero(climbs.to_numpy())[0])
        raise MaedferError(
            f"{dataset}: clip {ids.iloc[i]} has path {df['path'].iloc[i]!r}, "
            "which climbs out of its root with '..'"
        )
    keys = ids.tolist()
    if len(set(keys)) != len(keys):
        dup = ids[ids.duplicated()]
        raise MaedferError(f"{dataset}: clip_id {dup.iloc[0]!r} appears more than once")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = ~labels.between(-1, len(classes) - 1) | labels.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise MaedferError(
            f"{dataset}: clip {ids.iloc[i]} has label {df['label'].iloc[i]}; "
            f"expected -1..{len(classes) - 1} ({len(classes)} classes)"
        )
    if num_folds > 0:
        folds = pd.to_numeric(df["fold"], errors="coerce") if "fold" in df else None
        bad = folds.isna() | ~folds.between(1, num_folds) if folds is not None else None
        if bad is None or bad.any():
            i = 0 if bad is None else int(np.flatnonzero(bad.to_numpy())[0])
            got = "no fold column" if folds is None else f"fold {df['fold'].iloc[i]}"
            raise MaedferError(
                f"{dataset}: clip {ids.iloc[i]} has {got}; expected a fold in 1..{num_folds}"
            )


def _extra_field(name: str) -> str:
    if name in MANIFEST_COLUMNS:
        raise MaedferError(f"extra column {name!r} is named like a manifest column; rename it")
    return name


def _extra_array(values: list[Any]) -> pa.Array:
    """One extra column: Arrow's type for the values (numbers stay numbers), text where they
    mix kinds (1 and "a" in one column)."""
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def write_manifest(
    df: pd.DataFrame,
    path: Path,
    *,
    dataset: str,
    protocol: str,
    classes: Sequence[str],
    num_folds: int,
    raw_root: Path | str,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Write ``manifest.parquet`` with the exact schema and metadata of docs/design.md, atomically.

    Args:
        df: rows with ``MANIFEST_COLUMNS`` (absent optional columns are written as nulls; a null
            ``dataset`` is filled in; its other columns are dropped: extra ones come from
            ``extra``).
        path: the file to write (its folder is created).
        dataset, protocol, classes, num_folds, raw_root: the metadata (``raw_root`` is stored
            absolute).
        extra: a folder dataset's extra table columns, column -> clip_id -> value: written as
            real columns after the manifest's own (pandas, DuckDB and Arrow see them), their
            names listed in ``maedfer.extra`` (a JSON list); the schema check reads the
            manifest's own columns only.

    Returns:
        The fingerprints stored as ``maedfer.fingerprints`` (fold or split -> sha16 of its keys).

    Raises:
        MaedferError: a required column is missing, a clip_id repeats, a label or fold is out of
            range, a value does not fit its column type, or an extra column is named like one
            of the manifest's.
    """
    from maedfer import __version__

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if num_folds > 0 and "fold" not in df.columns:
        missing.append("fold")
    if missing:
        raise MaedferError(
            f"manifest rows lack column(s) {', '.join(missing)}; need them for {path}"
        )
    df = df.reset_index(drop=True)
    _check_rows(df, classes=classes, num_folds=num_folds, dataset=dataset)
    df = df.copy()
    if "dataset" not in df.columns:
        df["dataset"] = dataset
    else:
        df["dataset"] = df["dataset"].where(df["dataset"].notna(), dataset)
    n = len(df)
    table = pa.Table.from_arrays(
        [_column(df, c, n) for c in MANIFEST_COLUMNS], schema=MANIFEST_SCHEMA
    )
    ids = df["clip_id"].astype(str).tolist()
    for name, values in (extra or {}).items():
        table = table.append_column(_extra_field(name), _extra_array([values.get(k) for k in ids]))
    fingerprints = fold_fingerprints(df, num_folds=num_folds)
    meta = {
        "version": __version__,
        "dataset": dataset,
        "protocol": protocol,
        "classes": json.dumps(list(classes)),
        "num_folds": str(int(num_folds)),
        "raw_root": str(Path(raw_root).expanduser().resolve()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprints": json.dumps(fingerprints),
    }
    if extra:
        meta["extra"] = json.dumps(list(extra))
    table = table.replace_schema_metadata({META_PREFIX + k: v for k, v in meta.items()})
    _atomic_write_table(table, Path(path))
    log.info("wrote %s (%d clips)", path, n)
    return fingerprints


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Schema columns to stable pandas types: ints stay numpy ints, ints with nulls become Int*."""
    crop = _crop_tuples(table.column("crop")) if "crop" in table.column_names else None
    if crop is not None:
        table = table.drop_columns(["crop"])
    df = table.to_pandas()
    if crop is not None:
        df.insert(min(MANIFEST_COLUMNS.index("crop"), len(df.columns)), "crop", crop)
    for name in MANIFEST_COLUMNS:
        if name not in df.columns:
            continue
        typ = MANIFEST_SCHEMA.field(name).type
        col = df[name]
        if pa.types.is_integer(typ):
            numeric = pd.to_numeric(col, errors="coerce")
            np_type = typ.to_pandas_dtype()
            df[name] = (
                numeric.astype(np_type)
                if numeric.notna().all()
                else numeric.astype(pd.api.types.pandas_dtype(np.dtype(np_type).name.capitalize()))
            )
        elif pa.types.is_floating(typ):
            df[name] = pd.to_numeric(col, errors="coerce").astype(np.float32)
    return df


def read_manifest(path: Path | str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a manifest (ours or another tool's with the same columns and keys).

    Returns:
        ``(df, meta)``: the rows (integer columns as numpy ints, or pandas nullable ints where
        nulls occur; ``crop`` as tuples or None) and the metadata without the ``maedfer.``
        prefix, decoded: ``classes`` list, ``num_folds`` int, ``fingerprints`` dict, the rest
        strings. Metadata keys the file lacks are absent from ``meta``; ``num_folds`` and
        ``dataset`` are then inferred from the rows where possible.

    Raises:
        MaedferError: not a readable Parquet file, a required column is missing, or a column
            has the wrong kind of type (string labels, say).
    """
    path = Path(path)
    if not path.is_file():
        raise MaedferError(f"manifest {path} does not exist; expected a manifest.parquet file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise MaedferError(f"{path} is not a readable Parquet manifest: {exc}") from None
    names = set(table.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if "fold" not in names and "split" not in names:
        missing.append("fold or split")
    if missing:
        raise MaedferError(
            f"{path} lacks manifest column(s) {', '.join(missing)}; "
            f"expected the manifest columns ({', '.join(MANIFEST_COLUMNS)})"
        )
    # else a string label would be coerced to a null below, silently
    check_column_types(table.schema, str(path))
    meta = decode_metadata(table.schema.metadata, path)
    df = _to_pandas(table)
    if "num_folds" not in meta:
        has_folds = "fold" in df.columns and df["fold"].notna().any()
        meta["num_folds"] = int(df["fold"].max()) if has_folds else 0
    if "dataset" not in meta and "dataset" in df.columns and df["dataset"].notna().any():
        meta["dataset"] = str(df["dataset"].dropna().iloc[0])
    return df, meta


def read_metadata(path: Path | str) -> dict[str, Any]:
    """A manifest's metadata alone (its Parquet footer; no row is read), decoded as
    :func:`read_manifest` decodes it, plus ``num_rows``: the one reader of manifest metadata
    (docs/design.md, "The manifest").

    Raises:
        MaedferError: a missing or unreadable file, or metadata that is not what it says.
    """
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
        raw = parquet.schema_arrow.metadata
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise MaedferError(f"cannot read manifest {path}: {exc}") from None
    return {**decode_metadata(raw, path), "num_rows": parquet.metadata.num_rows}


def with_extra(df: pd.DataFrame, meta: Mapping[str, Any]) -> pd.DataFrame:
    """The manifest rows with a folder dataset's extra labels-table columns.

    Manifests store them as columns after their own (``maedfer.extra`` lists their names), so
    ``read_manifest`` returns them already; a manifest written before that kept them in
    ``maedfer.extra`` as JSON (column -> clip_id -> value), joined back here by clip_id.
    ``df, meta = read_manifest(path); df = with_extra(df, meta)`` reads either.
    """
    out = df.copy()
    extra = meta.get("extra") or {}
    if not isinstance(extra, Mapping):  # the names of columns the rows have already
        return out
    ids = out["clip_id"].astype(str)
    for column, values in extra.items():
        if column in out.columns:
            raise MaedferError(f"extra column {column!r} clashes with a manifest column")
        out[column] = [values.get(k) for k in ids]
    return out


def write_rejects(rows: Sequence[tuple[str, str, str]] | pd.DataFrame, path: Path | str) -> None:
    """Write ``rejects.parquet`` (``clip_id``, ``source``, ``reason``), atomically."""
    if isinstance(rows, pd.DataFrame):
        missing = [c for c in REJECT_COLUMNS if c not in rows.columns]
        if missing:
            raise MaedferError(f"reject rows lack column(s) {', '.join(missing)}")
        rows = list(rows[list(REJECT_COLUMNS)].itertuples(index=False, name=None))
    cols = list(zip(*rows, strict=True)) if rows else [(), (), ()]
    if len(cols) != 3:
        raise MaedferError("reject rows must be (clip_id, source, reason) tuples")
    arrays = [
        pa.array([None if v is None else str(v) for v in col], type=pa.string()) for col in cols
    ]
    _atomic_write_table(pa.Table.from_arrays(arrays, schema=REJECTS_SCHEMA), Path(path))


def read_rejects(path: Path | str) -> pd.DataFrame:
    """Read ``rejects.parquet``; a missing column is a MaedferError naming it."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise MaedferError(f"{path} is not a readable rejects Parquet file: {exc}") from None
    missing = [c for c in REJECT_COLUMNS if c not in table.column_names]
    if missing:
        raise MaedferError(f"{path} lacks rejects column(s) {', '.join(missing)}")
    return table.select(list(REJECT_COLUMNS)).to_pandas()
