"""The manifest's columns, its exact Arrow schema and its metadata keys (docs/design.md).

One table per prepared dataset. The schema is the contract between ``manifests/`` (which writes
it), ``preprocess/`` (which fills the pixel fields) and ``pipelines/`` (which reads it); a manifest
written by another tool with these columns and metadata keys is read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from maedfer.errors import MaedferError

#: Column order of a manifest, as in the table of docs/design.md.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "clip_id",
    "dataset",
    "path",
    "source",
    "subject",
    "label",
    "label_name",
    "fold",
    "split",
    "num_frames",
    "fps",
    "width",
    "height",
    "crop",
    "face_ratio",
)

#: The exact Arrow schema; ``crop`` is x, y, w, h applied when decoding (VoxCeleb2's box).
MANIFEST_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("subject", pa.string()),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("label_name", pa.string()),
        pa.field("fold", pa.int8()),
        pa.field("split", pa.string()),
        pa.field("num_frames", pa.int32()),
        pa.field("fps", pa.float32()),
        pa.field("width", pa.int16()),
        pa.field("height", pa.int16()),
        pa.field("crop", pa.list_(pa.int16(), 4)),
        pa.field("face_ratio", pa.float32()),
    ]
)

#: What the pipelines need; ``fold`` or ``split`` is required as well (one of the two).
REQUIRED_COLUMNS: tuple[str, ...] = ("clip_id", "path", "label")
#: Filled by the preprocess driver; null in an ``--index-only`` manifest.
PIXEL_COLUMNS: tuple[str, ...] = ("num_frames", "fps", "width", "height", "crop", "face_ratio")

#: Rejected clips (docs/design.md): files that cannot be used, and those the protocol leaves out.
REJECT_COLUMNS: tuple[str, ...] = ("clip_id", "source", "reason")
REJECTS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("clip_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
    ]
)
#: Reason prefix of files the protocol itself leaves out (e.g. eNTERFACE05 subject 6).
PROTOCOL_REASON = "protocol:"

#: Parquet key-value metadata keys (values are UTF-8 strings, JSON where structured).
META_PREFIX = "maedfer."
META_KEYS: tuple[str, ...] = (
    "version",
    "dataset",
    "protocol",
    "classes",
    "num_folds",
    "raw_root",
    "created",
    "fingerprints",
)
#: Optional metadata: the names of a folder dataset's extra labels-table columns (a JSON list),
#: stored as columns after the schema's own (readers of the schema ignore them). Manifests
#: written before held the values themselves here (JSON: column -> clip_id -> value).
META_OPTIONAL_KEYS: tuple[str, ...] = ("extra",)
#: Metadata values stored as JSON.
META_JSON_KEYS: frozenset[str] = frozenset({"classes", "fingerprints", "extra"})


def _kind(typ: pa.DataType) -> str:
    """The broad kind of an Arrow type: what a reader of the column can rely on."""
    if pa.types.is_integer(typ):
        return "integer"
    if pa.types.is_floating(typ):
        return "floating"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "string"
    if pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ):
        return "list"
    return str(typ)


#: Kinds accepted per expected kind: another tool may store numbers in any numeric type (pandas
#: turns an int column with gaps into floats). String columns are not checked: their values are
#: read with ``str()``, so an integer ``subject`` is fine.
_NUMERIC = {"integer", "floating"}
_ACCEPTED = {"integer": _NUMERIC, "floating": _NUMERIC, "list": {"list"}}
_PLURAL = {"integer": "integers", "floating": "numbers", "list": "lists"}


def check_column_types(schema: pa.Schema, source: str) -> None:
    """Refuse a numeric or list manifest column whose type cannot hold what the contract puts in it.

    Another tool's manifest may use wider types (int64 labels) and an all-null column may have
    Arrow's null type; a different kind (string labels, say) would otherwise surface as a
    pyarrow type error deep in a loader, or as labels silently read as nulls.

    Raises:
        MaedferError: e.g. ``manifest m.parquet: column 'label' holds string values; expected
            integers (int16)``.
    """
    for field in MANIFEST_SCHEMA:
        want = _kind(field.type)
        if field.name not in schema.names or want not in _ACCEPTED:
            continue
        got = schema.field(field.name).type
        if pa.types.is_null(got) or _kind(got) in _ACCEPTED[want]:
            continue
        raise MaedferError(
            f"manifest {source}: column {field.name!r} holds {got} values; expected "
            f"{_PLURAL[want]} ({field.type})"
        )


def decode_metadata(raw: Mapping[bytes, bytes] | None, path: Path | str) -> dict[str, Any]:
    """Parquet key-value metadata -> the ``maedfer.`` keys without their prefix, decoded:
    JSON where :data:`META_JSON_KEYS` says so, ``num_folds`` an int, the rest strings; other
    keys are left out.

    Raises:
        MaedferError: a JSON key that is not valid JSON, a ``num_folds`` that is no integer.
    """
    meta: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        key = k.decode("utf-8", "replace")
        if not key.startswith(META_PREFIX):
            continue
        name, text = key[len(META_PREFIX) :], v.decode("utf-8", "replace")
        if name in META_JSON_KEYS:
            try:
                meta[name] = json.loads(text)
            except json.JSONDecodeError:
                raise MaedferError(
                    f"{path}: metadata {key} is not valid JSON: {text[:60]!r}"
                ) from None
        elif name == "num_folds":
            try:
                meta[name] = int(text)
            except ValueError:
                raise MaedferError(f"{path}: metadata {key}={text!r} is not an integer") from None
        else:
            meta[name] = text
    return meta
