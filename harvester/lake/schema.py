"""Spec types, casting with a report of bad values, schema unification. Column naming: naming.py (its names are
imported here for the modules that reach them as ``schema.<name>``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .naming import FETCHED_AT, KEY, LINEAGE, META_STRING_FIELDS, SEP, column_name, lineage_column  # noqa: F401

FETCHED_AT_TYPE = pa.timestamp("us", tz="UTC")
DEFAULT_TIME_TYPE = pa.timestamp("ms", tz="UTC")
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S"

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError, ValueError)


_TS = re.compile(r"^timestamp\[(s|ms|us|ns)\]$")
_DEC = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
_SIMPLE = {
    "string": pa.string(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": DEFAULT_TIME_TYPE,
}


def parse_type(text: str) -> pa.DataType:
    """Spec type string -> Arrow type. Timestamps are stored UTC-aware (``timestamp[ms]`` -> ms, tz=UTC)."""
    t = text.strip().lower()
    if t in _SIMPLE:
        return _SIMPLE[t]
    if m := _TS.match(t):
        return pa.timestamp(m.group(1), tz="UTC")
    if m := _DEC.match(t):
        precision, scale = int(m.group(1)), int(m.group(2))
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    raise ValueError(f"unknown type {text!r}: use string, int64, float64, bool, date, timestamp[s|ms|us|ns] or decimal(p,s)")


def resolve_types(types: dict[str, str] | None, time_field: str | None) -> dict[str, pa.DataType]:
    """Column name -> Arrow type for a level: the spec's types, the time field (default timestamp[ms]) and _fetched_at."""
    out = {column_name(k): parse_type(v) for k, v in (types or {}).items()}
    if time_field:
        out.setdefault(column_name(time_field), DEFAULT_TIME_TYPE)
    out.setdefault(FETCHED_AT, FETCHED_AT_TYPE)
    return out


# ---------------------------------------------------------------- flattening


def flatten_table(table: pa.Table) -> pa.Table:
    """Flatten struct columns recursively with ``__`` (parent nulls propagate to the children)."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        names, cols = [], []
        for f, col in zip(table.schema, table.columns):
            if pa.types.is_struct(f.type):
                for child, arr in zip(f.type, col.flatten()):
                    names.append(f"{f.name}{SEP}{child.name}")
                    cols.append(arr)
            else:
                names.append(f.name)
                cols.append(col)
        table = pa.Table.from_arrays(cols, names=names)
    return table


def flatten_record(rec: dict, prefix: str = "", out: dict | None = None) -> dict:
    out = {} if out is None else out
    for k, v in rec.items():
        name = f"{prefix}{SEP}{k}" if prefix else k
        if isinstance(v, dict):
            flatten_record(v, name, out)
        else:
            out[name] = v
    return out


def records_to_table(records: list[dict], string_columns: set[str] = frozenset()) -> tuple[pa.Table, dict[str, str]]:
    """Slow, tolerant path for objects pyarrow's JSON reader rejects (a field with mixed JSON types).

    Returns the table and ``{column: "mixed types, stored as JSON text"}`` notes for the report.
    """
    flat = [flatten_record(r) for r in records]
    names: dict[str, None] = {}
    for f in flat:
        for k in f:
            names.setdefault(k, None)
    cols, notes = [], {}
    for name in names:
        values = [f.get(name) for f in flat]
        arr = None
        if name not in string_columns:
            try:
                arr = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                notes[name] = "mixed JSON types: stored as JSON text"
        if arr is None:
            arr = pa.array([_as_text(v) for v in values], pa.string())
        cols.append(arr)
    return pa.Table.from_arrays(cols, names=list(names)), notes


def _as_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


# ---------------------------------------------------------------- casting


def _cast_whole(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(arr.type) and arr.type.tz is None and target.tz:
        # a naive timestamp (pyarrow's JSON inference drops the "Z") is UTC
        arr = arr.cast(pa.timestamp(arr.type.unit, tz=target.tz))
    if pa.types.is_string(target) and pa.types.is_timestamp(arr.type):
        return timestamps_to_text(arr)
    if pa.types.is_timestamp(target) and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and target.tz:
        try:
            return pc.cast(arr, target)
        except _CAST_ERRORS:
            # strings without a zone offset: read as UTC
            return pc.cast(pc.cast(arr, pa.timestamp(target.unit)), target)
    if pa.types.is_decimal(target) and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        try:
            return pc.cast(arr, target)
        except _CAST_ERRORS:
            # more fractional digits than the scale: round half to even, as the float -> decimal cast does
            wide = pc.cast(arr, pa.decimal128(38, 38 - max(target.precision - target.scale, 1)))
            return pc.cast(pc.round(wide, ndigits=target.scale, round_mode="half_to_even"), target)
    return pc.cast(arr, target)


def _cast_bisect(arr: pa.Array, target: pa.DataType) -> pa.Array:
    try:
        return _cast_whole(arr, target)
    except _CAST_ERRORS:
        if len(arr) <= 1:
            return pa.nulls(len(arr), target)
        mid = len(arr) // 2
        return pa.concat_arrays([_cast_bisect(arr.slice(0, mid), target), _cast_bisect(arr.slice(mid), target)])


def cast_reporting(col: pa.ChunkedArray | pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """Cast ``col`` to ``target``; values that cannot be converted become null.

    Returns (array, bad) where ``bad`` is a boolean mask of the rows that held a value which could not
    be converted (None when every value converted). Unconvertible values are found by bisection over the
    distinct values, so a column with a few bad values costs a few extra casts, not one per row.
    """
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.type == target:
        return arr, None
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), target), None
    try:
        return _cast_whole(arr, target), None
    except _CAST_ERRORS:
        pass
    enc = pc.dictionary_encode(arr)
    values = _cast_bisect(enc.dictionary, target)
    out = pc.take(values, enc.indices)
    bad = pc.and_(pc.is_valid(arr), pc.is_null(out))
    return out, bad


def timestamps_to_text(arr: pa.Array) -> pa.Array:
    """ISO-8601 text of timestamps (``2026-11-20T00:05:00Z``, fractional seconds when present)."""
    unit = arr.type.unit
    aware = arr.type.tz is not None
    if aware:
        arr = arr.cast(pa.timestamp(unit))
    txt = pc.strftime(arr, format=ISO_FORMAT)
    if unit != "s":
        # strftime renders %S with the fraction of the unit; trim trailing zeros and the dot
        txt = pc.replace_substring_regex(txt, pattern=r"\.?0+$", replacement="")
    return pc.binary_join_element_wise(txt, "Z", "") if aware else txt


# ---------------------------------------------------------------- unification


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for all: fields in order of first appearance; int/float, null/x, timestamp units widen;
    incompatible types (e.g. int64 vs string) become string."""
    schemas = [pa.schema([f.with_metadata(None) for f in s]) for s in schemas]
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    by_name: dict[str, list[pa.DataType]] = {}
    for s in schemas:
        for f in s:
            by_name.setdefault(f.name, []).append(f.type)
    fields = []
    for name, ts in by_name.items():
        try:
            t = pa.unify_schemas([pa.schema([(name, t)]) for t in ts], promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            t = pa.string()
        fields.append(pa.field(name, t))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones null, others cast (to text if need be)."""
    cols = []
    for f in schema:
        i = table.schema.get_field_index(f.name)
        if i < 0:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(i)
        if col.type != f.type:
            col = _conform_cast(col.combine_chunks(), f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _conform_cast(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    try:
        return _cast_whole(arr, target)
    except _CAST_ERRORS:
        if pa.types.is_string(target):
            return pa.array([_as_text(v) for v in arr.to_pylist()], pa.string())
        raise


@dataclass
class BadValues:
    """Values that could not be converted to the declared type: kept as null, counted, listed."""

    limit: int = 1000
    count: int = 0
    by_field: dict[str, int] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, column: str, original: pa.Array, bad: pa.Array, locate) -> None:
        idx = pc.indices_nonzero(bad).to_pylist()
        if not idx:
            return
        self.count += len(idx)
        self.by_field[column] = self.by_field.get(column, 0) + len(idx)
        room = self.limit - len(self.entries)
        if room > 0:
            sel = idx[:room]
            vals = pc.take(original, pa.array(sel)).to_pylist()
            for i, v in zip(sel, vals):
                key, line = locate(i)
                self.entries.append({"field": column, "value": _jsonable(v), "key": key, "line": line})

    def merge(self, other: BadValues) -> None:
        """Add another reader's bad values (entries up to this one's limit, notes by column)."""
        self.count += other.count
        for column, n in other.by_field.items():
            self.by_field[column] = self.by_field.get(column, 0) + n
        self.entries.extend(other.entries[: max(0, self.limit - len(self.entries))])
        self.notes.update(other.notes)

    def summary(self, samples: int = 20) -> dict:
        return {"count": self.count, "by_field": dict(self.by_field), "samples": self.entries[:samples],
                "notes": dict(self.notes)}


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)
