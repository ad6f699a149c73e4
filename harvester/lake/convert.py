"""Raw gzip NDJSON -> Parquet (zstd), Hive-partitioned; the map step of the convert stage.

``plan_conversion`` lists a run's raw objects and cuts them into groups (the Distributed Map items);
``convert_group`` (one Map worker) reads a group, flattens, types and partitions its records and writes one
staging Parquet file per partition it touches; ``compact.compact_partition`` then commits each partition.
"""

from __future__ import annotations

import io
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from . import layout
from .schema import (
    FETCHED_AT,
    META_STRING_FIELDS,
    BadValues,
    cast_reporting,
    column_name,
    conform,
    flatten_table,
    records_to_table,
    resolve_types,
    unify,
)
from .store import Store, get_many

DEFAULT_GROUP_BYTES = 32 * 1024 * 1024  # compressed raw bytes per conversion group
STAGING_COMPRESSION_LEVEL = 1
JSON_BLOCK_SIZE = 8 * 1024 * 1024
_UNIT_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


# ---------------------------------------------------------------- plan


def plan_conversion(
    store: Store,
    *,
    source: str,
    run_id: str,
    levels: dict[str, dict] | None = None,
    group_bytes: int = DEFAULT_GROUP_BYTES,
    max_group_objects: int = 500,
    run_date: str | None = None,
) -> dict:
    """Cut the run's raw objects into conversion groups; write them as a JSON array (Map ItemReader input).

    ``levels``: ``{level_name: {"time_field": "ts" | None, "types": {field: type}}}``; a level absent from it
    is converted with inferred types and partitioned by run date. Returns a small summary.
    """
    levels = levels or {}
    objects = store.list(layout.raw_prefix(source, run_id))
    by_level: dict[str, list[tuple[str, int]]] = {}
    for key, size in objects:
        parts = key.split("/")
        if len(parts) == 5 and parts[4].endswith(".jsonl.gz"):
            by_level.setdefault(parts[3], []).append((key, size))
    items = []
    for level, objs in by_level.items():
        cfg = levels.get(level, {})
        group: list[str] = []
        size_sum = 0
        for key, size in objs + [(None, 0)]:
            if key is None or (group and (size_sum + size > group_bytes or len(group) >= max_group_objects)):
                if group:
                    items.append({
                        "source": source, "run_id": run_id, "level": level,
                        "group_id": layout.group_id(group), "keys": group, "bytes": size_sum,
                        "time_field": cfg.get("time_field"), "types": cfg.get("types") or {},
                        "run_date": run_date,
                    })
                group, size_sum = [], 0
            if key is not None:
                group.append(key)
                size_sum += size
    plan_key = layout.convert_plan_key(source, run_id)
    store.put(plan_key, json.dumps(items).encode(), "application/json")
    return {
        "plan_key": plan_key,
        "groups": len(items),
        "objects": sum(len(v) for v in by_level.values()),
        "bytes": sum(s for v in by_level.values() for _, s in v),
        "levels": {lv: sum(1 for i in items if i["level"] == lv) for lv in by_level},
    }


def load_plan(store: Store, source: str, run_id: str) -> list[dict]:
    return json.loads(store.get(layout.convert_plan_key(source, run_id)))


# ---------------------------------------------------------------- read


def decompress(data: bytes) -> bytes:
    """gunzip (every member of a multi-member file); bytes without a gzip header pass through."""
    if data[:2] != b"\x1f\x8b":
        return data
    out = []
    while data:
        d = zlib.decompressobj(wbits=31)
        out.append(d.decompress(data))
        out.append(d.flush())
        data = d.unused_data
    return b"".join(out)


def _read_json(data: bytes, explicit: pa.Schema) -> pa.Table:
    return pj.read_json(
        pa.BufferReader(data),
        read_options=pj.ReadOptions(block_size=JSON_BLOCK_SIZE),
        parse_options=pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer"),
    )


def _explicit_schema(types: dict[str, pa.DataType]) -> pa.Schema:
    names = list(META_STRING_FIELDS) + [n for n, t in types.items() if pa.types.is_string(t) and "__" not in n]
    return pa.schema([(n, pa.string()) for n in dict.fromkeys(names)])


def _tolerant_read(data: bytes, name: str, explicit: pa.Schema, bad: BadValues, typed: set[str]) -> pa.Table:
    """One object, row by row: mixed-type fields become text; undecodable lines are reported and skipped."""
    records = []
    for i, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            records.append(rec)
        except ValueError:
            bad.count += 1
            bad.by_field["<line>"] = bad.by_field.get("<line>", 0) + 1
            if len(bad.entries) < bad.limit:
                bad.entries.append({"field": None, "value": line[:200].decode("utf-8", "replace"), "key": name, "line": i})
    table, notes = records_to_table(records, string_columns=set(explicit.names))
    for col, note in notes.items():
        if col not in typed:  # a declared type is applied next: mixed JSON types are expected there
            bad.notes[col] = note
    return table


def read_raw(blobs: list[bytes], names: list[str], types: dict[str, pa.DataType], bad: BadValues):
    """Decompress and parse raw objects into one flat table; returns (table, locate(row) -> (key, line))."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(decompress, blobs))
    texts = [t if t.endswith(b"\n") or not t else t + b"\n" for t in texts]
    explicit = _explicit_schema(types)
    lines = [t.count(b"\n") for t in texts]
    try:
        table = flatten_table(_read_json(b"".join(texts), explicit))
        if table.num_rows != sum(lines):
            lines = None  # blank lines somewhere: row -> line mapping is approximate
    except pa.ArrowInvalid:
        tables = []
        for text, name in zip(texts, names):
            try:
                tables.append(flatten_table(_read_json(text, explicit)))
            except pa.ArrowInvalid:
                tables.append(flatten_table(_tolerant_read(text, name, explicit, bad, set(types))))
        lines = [t.num_rows for t in tables]
        schema = unify([t.schema for t in tables])
        table = pa.concat_tables([conform(t, schema) for t in tables])
    starts = np.cumsum([0] + (lines or []))

    def locate(row: int) -> tuple[str | None, int]:
        if lines is None:
            return None, row + 1
        i = int(np.searchsorted(starts, row, side="right")) - 1
        return names[i], row - int(starts[i]) + 1

    return table, locate


def apply_types(table: pa.Table, types: dict[str, pa.DataType], bad: BadValues, locate) -> pa.Table:
    """Cast declared columns (bad values -> null, reported); naive inferred timestamps are UTC."""
    for i, f in enumerate(table.schema):
        target = types.get(f.name)
        if target is None and pa.types.is_timestamp(f.type) and f.type.tz is None:
            target = pa.timestamp(f.type.unit, tz="UTC")
        if target is None or target == f.type:
            continue
        col = table.column(i)
        out, badmask = cast_reporting(col, target)
        if badmask is not None:
            bad.add(f.name, col.combine_chunks(), badmask, locate)
        table = table.set_column(i, pa.field(f.name, target), out)
    return table


def convert_table(
    blobs: list[bytes],
    names: list[str],
    *,
    time_field: str | None = None,
    types: dict[str, str] | None = None,
) -> tuple[pa.Table, BadValues]:
    """Pure conversion (no storage): raw objects -> flat, typed Arrow table sorted by event time."""
    resolved = resolve_types(types, time_field)
    bad = BadValues()
    table, locate = read_raw(blobs, names, resolved, bad)
    table = apply_types(table, resolved, bad, locate)
    tcol = time_column(time_field)
    if table.schema.get_field_index(tcol) < 0:
        table = table.append_column(pa.field(tcol, resolved.get(tcol, resolved[FETCHED_AT])),
                                    pa.nulls(table.num_rows, resolved.get(tcol, resolved[FETCHED_AT])))
    if table.num_rows > 1:
        table = table.take(pc.sort_indices(table, sort_keys=[(tcol, "ascending")]))
    return table, bad


def time_column(time_field: str | None) -> str:
    """The column a level's files are partitioned, sorted and indexed by: its time field, else _fetched_at."""
    return column_name(time_field) if time_field else FETCHED_AT


def split_partitions(table: pa.Table, *, time_field: str | None, run_date: str | None = None) -> list[tuple[str, pa.Table]]:
    """[(``event_date=YYYY-MM-DD`` | ``run_date=YYYY-MM-DD``, rows)] of a table sorted by its time column."""
    if table.num_rows == 0:
        return []
    if not time_field and run_date:
        return [(f"run_date={run_date}", table)]
    name = "event_date" if time_field else "run_date"
    col = table[time_column(time_field)]
    unit = col.type.unit
    valid = table.num_rows - col.null_count  # nulls sorted to the end
    days = np.floor_divide(col.slice(0, valid).cast(pa.int64()).to_numpy(), _UNIT_PER_DAY[unit]) if valid else np.array([], dtype=np.int64)
    cuts = [0] + (np.flatnonzero(np.diff(days)) + 1).tolist() + [valid]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b > a:
            day = date.fromordinal(date(1970, 1, 1).toordinal() + int(days[a])).isoformat()
            out.append((f"{name}={day}", table.slice(a, b - a)))
    if valid < table.num_rows:
        out.append((f"{name}={layout.HIVE_NULL}", table.slice(valid)))
    return out


def parquet_bytes(table: pa.Table, *, compression_level: int | None = None, row_group_size: int = 512 * 1024) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=compression_level,
                   row_group_size=row_group_size, write_statistics=True)
    return sink.getvalue()


# ---------------------------------------------------------------- one Map worker


def convert_group(
    store: Store,
    *,
    source: str,
    run_id: str,
    level: str,
    keys: list[str],
    time_field: str | None = None,
    types: dict[str, str] | None = None,
    run_date: str | None = None,
    group_id: str | None = None,
    **_ignored,
) -> dict:
    """Convert one group of raw objects into staging Parquet files, one per partition touched.

    Idempotent: the staging keys depend only on the group's raw keys. Returns a small summary with the
    bad-value count and a few samples; every bad value (up to 1000) is in the report object.
    """
    keys = sorted(keys)
    gid = group_id or layout.group_id(keys)
    table, bad = convert_table(get_many(store, keys), keys, time_field=time_field, types=types)
    partitions = {}
    for partition, part in split_partitions(table, time_field=time_field, run_date=run_date):
        key = layout.staging_key(source, run_id, level, partition, gid)
        data = parquet_bytes(part, compression_level=STAGING_COMPRESSION_LEVEL)
        store.put(key, data)
        partitions[partition] = {"key": key, "rows": part.num_rows, "bytes": len(data)}
    report = None
    if bad.count or bad.notes:
        report = layout.report_key(source, run_id, level, gid)
        store.put(report, json.dumps({"level": level, "group_id": gid, "keys": keys, **bad.summary(samples=bad.limit)}).encode(),
                  "application/json")
    return {
        "level": level,
        "group_id": gid,
        "objects": len(keys),
        "rows": table.num_rows,
        "partitions": partitions,
        "bad_values": {"count": bad.count, "by_field": bad.by_field, "samples": bad.entries[:5], "notes": bad.notes},
        "report_key": report,
    }
