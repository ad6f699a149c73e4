"""Raw gzip NDJSON -> Parquet (zstd), Hive-partitioned; the map step of the convert stage.

``plan_conversion`` lists a run's raw objects and cuts them into groups (the Distributed Map items);
``convert_group`` (one Map worker) reads a group, flattens, types and partitions its records and writes one
staging Parquet file per partition it touches; ``compact.compact_partition`` then commits each partition.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
from isal import igzip

from harvester import s3keys

from .schema import (
    FETCHED_AT,
    KEY,
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
from .store import ObjectStore, get_many

DEFAULT_GROUP_BYTES = 32 * 1024 * 1024  # compressed raw bytes per conversion group
STAGING_COMPRESSION_LEVEL = 1
#: bytes Arrow's JSON reader parses at once (a record longer than this is read again with a block that holds it)
JSON_BLOCK_SIZE = 16 * 1024 * 1024
_UNIT_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


# ---------------------------------------------------------------- plan


def plan_conversion(
    store: ObjectStore,
    *,
    source: str,
    run_id: str,
    levels: dict[str, dict] | None = None,
    group_bytes: int = DEFAULT_GROUP_BYTES,
    max_group_objects: int = 500,
    run_date: str | None = None,
) -> dict:
    """Cut the run's raw objects into conversion groups; write them as a JSON array (Map ItemReader input).

    ``levels``: ``{level_name: {"time_field": "ts" | None, "types": {field: type}, "primary_key": [field, ...]}}``;
    a level absent from it is converted with inferred types and partitioned by run date. Returns a small summary.
    """
    levels = levels or {}
    objects = store.list(s3keys.raw_prefix(source, run_id))
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
                        "group_id": s3keys.group_id(group), "keys": group, "bytes": size_sum,
                        "time_field": cfg.get("time_field"), "types": cfg.get("types") or {},
                        "primary_key": cfg.get("primary_key"), "run_date": run_date,
                    })
                group, size_sum = [], 0
            if key is not None:
                group.append(key)
                size_sum += size
    plan_key = s3keys.convert_plan_key(source, run_id)
    store.put(plan_key, json.dumps(items).encode(), "application/json")
    return {
        "plan_key": plan_key,
        "groups": len(items),
        "objects": sum(len(v) for v in by_level.values()),
        "bytes": sum(s for v in by_level.values() for _, s in v),
        "levels": {lv: sum(1 for i in items if i["level"] == lv) for lv in by_level},
    }


def load_plan(store: ObjectStore, source: str, run_id: str) -> list[dict]:
    return json.loads(store.get(s3keys.convert_plan_key(source, run_id)))


# ---------------------------------------------------------------- read


def decompress(data: bytes) -> bytes:
    """gunzip (every member of a multi-member file) with ISA-L's igzip (the same bytes as zlib, 2-3x faster, the GIL
    released); bytes without a gzip header pass through."""
    return igzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


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
            records.append(_encodable(rec, bad, name, i))
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


def _encodable(rec: dict, bad: BadValues, name: str, line: int) -> dict:
    """The record with every field that UTF-8 cannot hold (a lone surrogate such as the vendor's `"\\ud83d"`,
    valid JSON text) set to null and counted as a bad value; Arrow refuses the whole object otherwise."""
    for field, value in rec.items():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            rec[field] = None
            bad.count += 1
            bad.by_field[field] = bad.by_field.get(field, 0) + 1
            if len(bad.entries) < bad.limit:
                bad.entries.append({"field": field, "value": json.dumps(value)[:200], "key": name, "line": line})
    return rec


def _parse(data: bytes, schema: pa.Schema, block_size: int = JSON_BLOCK_SIZE) -> pa.Table:
    return pj.read_json(
        pa.BufferReader(data),
        read_options=pj.ReadOptions(block_size=block_size, use_threads=False),
        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer"),
    )


def _longest_line(data: bytes) -> int:
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    return int(np.diff(np.concatenate(([-1], ends, [len(data)]))).max())


def _arrow_read(data: bytes, schemas: tuple[pa.Schema, ...]) -> pa.Table | None:
    """Arrow's reader with each schema in turn (None: every one rejected). A record longer than a block (Arrow:
    "straddling object") is read again with a block twice the object's longest line."""
    for schema in schemas:
        try:
            return _parse(data, schema)
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e):
                continue
        try:
            return _parse(data, schema, 2 * _longest_line(data) + 1)
        except pa.ArrowInvalid:
            continue
    return None


def _hint(schema: pa.Schema, explicit: pa.Schema) -> pa.Schema:
    """The first object's inferred schema, given to the others as explicit (no inference pass over the block);
    fields of null type are left to inference, unknown fields are still inferred."""
    fields = {f.name: f for f in explicit}
    for f in schema:
        if f.name not in fields and not _has_null(f.type):
            fields[f.name] = f
    return pa.schema(list(fields.values()))


def _has_null(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_null(c.type) for c in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_null(t.value_type)
    return False


def read_objects(blobs: list[bytes], names: list[str], types: dict[str, pa.DataType],
                 pool: ThreadPoolExecutor) -> list[tuple[pa.Table, BadValues]]:
    """Each raw object parsed on its own (concurrently: igzip and Arrow release the GIL) into a flat table, with
    its own bad values. An object the reader rejects with the schema hint is parsed again with inference; one it
    rejects even so (a field with mixed JSON types, a broken line) is read row by row, so one odd object never
    fails the group."""
    explicit = _explicit_schema(types)

    def one(blob: bytes, name: str, schemas: tuple[pa.Schema, ...]) -> tuple[pa.Table, BadValues]:
        bad = BadValues()
        data = decompress(blob)
        table = _arrow_read(data, schemas)
        if table is None:
            table = _tolerant_read(data, name, explicit, bad, set(types))
        return table, bad

    if not blobs:
        return []
    first = one(blobs[0], names[0], (explicit,))
    hint = _hint(first[0].schema, explicit)
    rest = pool.map(one, blobs[1:], names[1:], [(hint, explicit)] * (len(blobs) - 1))
    return [(flatten_table(t), bad) for t, bad in [first, *rest]]


# ---------------------------------------------------------------- type


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


@dataclass
class TypePlan:
    """What every object of a group is given: one schema (the objects' unified), the column types, the epoch unit
    of a numeric time field (decided by the largest value of the group), the primary key."""

    schema: pa.Schema
    types: dict[str, pa.DataType]
    time_column: str
    epoch_unit: str | None = None
    primary_key: list[str] | None = None


def plan_types(tables: list[pa.Table], *, time_field: str | None, types: dict[str, str] | None,
               primary_key: list[str] | None, bad: BadValues) -> TypePlan:
    resolved = resolve_types(types, time_field)
    tcol = time_column(time_field)
    plan = TypePlan(unify([t.schema for t in tables]) if tables else pa.schema([]), resolved, tcol,
                    primary_key=primary_key)
    if time_field and not any(column_name(k) == tcol for k in types or {}):
        found = epoch_unit(tables, plan.schema, tcol)
        if found is not None:
            plan.epoch_unit, largest = found
            resolved[tcol] = _epoch_type(plan.epoch_unit, pa.types.is_floating(plan.schema.field(tcol).type))
            bad.notes[tcol] = (f"numeric epoch times read as {plan.epoch_unit} since 1970 from their magnitude "
                               f"(largest {largest:.4g}); declare types: {{{tcol}: timestamp[s|ms|us|ns]}} to say otherwise")
    return plan


def type_object(table: pa.Table, name: str | None, plan: TypePlan) -> tuple[pa.Table, BadValues]:
    """One object's flat table with the group's schema and types: bad values null and reported by key and line."""
    bad = BadValues()
    if table.schema != plan.schema:
        table = conform(table, plan.schema)
    if plan.epoch_unit:
        table = epoch_to_timestamps(table, plan.time_column, plan.epoch_unit)
    table = apply_types(table, plan.types, bad, lambda row: (name, row + 1))  # line number, assuming no blank lines
    tcol = plan.time_column
    if table.schema.get_field_index(tcol) < 0:
        t = plan.types.get(tcol, plan.types[FETCHED_AT])
        table = table.append_column(pa.field(tcol, t), pa.nulls(table.num_rows, t))
    if plan.primary_key:
        table = with_record_key(table, plan.primary_key, bad)
    return table, bad


def _typed_objects(blobs, names, pool, *, time_field, types, primary_key) -> tuple[list[pa.Table], BadValues]:
    read = read_objects(blobs, names, resolve_types(types, time_field), pool)
    bad = BadValues()
    for _, b in read:
        bad.merge(b)
    tables = [t for t, _ in read] or [pa.table({})]
    plan = plan_types(tables, time_field=time_field, types=types, primary_key=primary_key, bad=bad)
    typed = list(pool.map(type_object, tables, names or [None], [plan] * len(tables)))
    for _, b in typed:
        bad.merge(b)
    return [t for t, _ in typed], bad


def convert_table(
    blobs: list[bytes],
    names: list[str],
    *,
    time_field: str | None = None,
    types: dict[str, str] | None = None,
    sort: bool = False,
    primary_key: list[str] | None = None,
    threads: int | None = None,
) -> tuple[pa.Table, BadValues]:
    """Pure conversion (no storage): raw objects -> flat, typed Arrow table (sorted by event time if ``sort``;
    the commit step sorts each partition anyway)."""
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2) as pool:
        tables, bad = _typed_objects(blobs, names, pool, time_field=time_field, types=types, primary_key=primary_key)
    table = pa.concat_tables(tables)
    if sort and table.num_rows > 1:
        table = table.take(pc.sort_indices(table, sort_keys=[(time_column(time_field), "ascending")]))
    return table, bad


def convert_partitions(
    blobs: list[bytes],
    names: list[str],
    *,
    time_field: str | None = None,
    types: dict[str, str] | None = None,
    primary_key: list[str] | None = None,
    run_date: str | None = None,
    threads: int | None = None,
) -> tuple[list[tuple[str, pa.Table]], BadValues]:
    """What one Map worker converts: raw objects -> [(partition, typed rows)] in partition order, each object
    read, typed and split on a thread of its own (rows keep their order: object by object, line by line)."""
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2) as pool:
        tables, bad = _typed_objects(blobs, names, pool, time_field=time_field, types=types, primary_key=primary_key)
        split = pool.map(lambda t: split_partitions(t, time_field=time_field, run_date=run_date), tables)
        by_partition: dict[str, list[pa.Table]] = {}
        for parts in split:
            for partition, part in parts:
                by_partition.setdefault(partition, []).append(part)
    return [(p, pa.concat_tables(by_partition[p])) for p in sorted(by_partition)], bad


def with_record_key(table: pa.Table, primary_key: list[str], bad: BadValues) -> pa.Table:
    """Add `_key`: the record's primary key as text, written as its children's `_lineage` holds it (one field: its
    value; several: the values joined with ","), so a query joins an ancestor level on its own key whatever the
    key's name. A key field missing from the files gives a null `_key` and a note."""
    parts = []
    for name in primary_key:
        col_name = column_name(name)
        if table.schema.get_field_index(col_name) < 0:
            bad.notes[KEY] = f"primary key field {name!r} is not in the records: {KEY} is null"
            return table.append_column(pa.field(KEY, pa.string()), pa.nulls(table.num_rows, pa.string()))
        col = table[col_name]
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        parts.append(col if pa.types.is_string(col.type) else pc.cast(col, pa.string()))
    key = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, ",")
    return table.append_column(pa.field(KEY, pa.string()), key)


#: epoch numbers below each bound are read in its unit (1e11 s is the year 5138, 1e11 ms is 1973): a numeric time
#: field without a declared type is interpreted by magnitude, never silently as milliseconds
EPOCH_BOUNDS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def epoch_unit(tables: list[pa.Table], schema: pa.Schema, column: str) -> tuple[str, float] | None:
    """The unit of a numeric time column from the magnitude of its largest value over the tables, and that value;
    None when the column is not numeric or holds no value."""
    if column not in schema.names:
        return None
    t = schema.field(column).type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return None
    peaks = [pc.max(pc.abs(tb[column].cast(t))).as_py() for tb in tables if column in tb.column_names]
    peaks = [p for p in peaks if p is not None]
    if not peaks:
        return None
    largest = max(peaks)
    return next((u for bound, u in EPOCH_BOUNDS if largest < bound), "ns"), largest


def _epoch_type(unit: str, floating: bool) -> pa.DataType:
    return pa.timestamp("ns" if unit == "ns" else "us" if floating else unit, tz="UTC")


def epoch_to_timestamps(table: pa.Table, column: str, unit: str) -> pa.Table:
    """A numeric time column (epoch ``unit``s) as UTC timestamps; fractions are kept to the microsecond."""
    i = table.schema.get_field_index(column)
    col = table.column(i).combine_chunks()
    floating = pa.types.is_floating(col.type)
    target = _epoch_type(unit, floating)
    if floating:  # 1767225600.25 s -> microseconds, as integers
        col = pc.round(pc.multiply(col, _PER_SECOND[target.unit] / _PER_SECOND[unit]))
    out = col.cast(pa.int64()).cast(target)
    return table.set_column(i, pa.field(column, out.type), out)


def time_column(time_field: str | None) -> str:
    """The column a level's files are partitioned, sorted and indexed by: its time field, else _fetched_at."""
    return column_name(time_field) if time_field else FETCHED_AT


def split_partitions(table: pa.Table, *, time_field: str | None, run_date: str | None = None) -> list[tuple[str, pa.Table]]:
    """[(``event_date=YYYY-MM-DD`` | ``run_date=YYYY-MM-DD``, rows)] by the UTC day of the time column
    (``run_date`` given: one partition for a level without a time field). Rows without a time go to
    ``...=__HIVE_DEFAULT_PARTITION__``."""
    if table.num_rows == 0:
        return []
    if not time_field and run_date:
        return [(f"run_date={run_date}", table)]
    name = "event_date" if time_field else "run_date"
    col = table[time_column(time_field)]
    per_day = _UNIT_PER_DAY[col.type.unit]
    ints = col.cast(pa.int64())
    mm = pc.min_max(ints).as_py() if col.null_count < len(col) else {"min": None, "max": None}
    out = []

    def day(n: int) -> str:
        return date.fromordinal(date(1970, 1, 1).toordinal() + n).isoformat()

    if mm["min"] is not None:
        lo, hi = mm["min"] // per_day, mm["max"] // per_day
        if lo == hi:
            out.append((f"{name}={day(lo)}", table.filter(pc.is_valid(col)) if col.null_count else table))
        else:
            filled = ints.fill_null(0) if col.null_count else ints
            days = pa.array(np.floor_divide(filled.to_numpy(), per_day), mask=pc.is_null(ints).to_numpy(zero_copy_only=False))
            for d in pc.unique(days).drop_null().to_pylist():
                out.append((f"{name}={day(d)}", table.filter(pc.equal(days, d))))
            out.sort()
    if col.null_count:
        out.append((f"{name}={s3keys.HIVE_NULL}", table.filter(pc.is_null(col))))
    return out


def parquet_bytes(table: pa.Table, *, compression_level: int | None = None, row_group_size: int = 512 * 1024) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=compression_level,
                   row_group_size=row_group_size, write_statistics=True)
    return sink.getvalue()


def stage_partitions(parts: list[tuple[str, pa.Table]], put, threads: int | None = None) -> list[tuple[str, object, int, int]]:
    """Each partition as staging Parquet, encoded and handed to ``put(partition, data)`` on threads of its own
    (Parquet encodes a file on one thread). Returns [(partition, what put returned, rows, bytes)] in order."""
    def one(item: tuple[str, pa.Table]):
        partition, table = item
        data = parquet_bytes(table, compression_level=STAGING_COMPRESSION_LEVEL)
        return partition, put(partition, data), table.num_rows, len(data)

    if len(parts) <= 1:
        return [one(p) for p in parts]
    with ThreadPoolExecutor(max_workers=min(len(parts), threads or os.cpu_count() or 2)) as pool:
        return list(pool.map(one, parts))


# ---------------------------------------------------------------- one Map worker


def convert_group(
    store: ObjectStore,
    *,
    source: str,
    run_id: str,
    level: str,
    keys: list[str],
    time_field: str | None = None,
    types: dict[str, str] | None = None,
    run_date: str | None = None,
    group_id: str | None = None,
    primary_key: list[str] | None = None,
    **_ignored,
) -> dict:
    """Convert one group of raw objects into staging Parquet files, one per partition touched.

    Idempotent: the staging keys depend only on the group's raw keys. Returns a small summary with the
    bad-value count and a few samples; every bad value (up to 1000) is in the report object.
    """
    keys = sorted(keys)
    gid = group_id or s3keys.group_id(keys)
    parts, bad = convert_partitions(get_many(store, keys), keys, time_field=time_field, types=types,
                                    primary_key=primary_key, run_date=run_date)

    def put(partition: str, data: bytes) -> str:
        key = s3keys.staging_key(source, run_id, level, partition, gid)
        store.put(key, data)
        return key

    partitions = {p: {"key": key, "rows": rows, "bytes": size} for p, key, rows, size in stage_partitions(parts, put)}
    report = None
    if bad.count or bad.notes:
        report = s3keys.report_key(source, run_id, level, gid)
        store.put(report, json.dumps({"level": level, "group_id": gid, "keys": keys, **bad.summary(samples=bad.limit)}).encode(),
                  "application/json")
    return {
        "level": level,
        "group_id": gid,
        "objects": len(keys),
        "rows": sum(p["rows"] for p in partitions.values()),
        "partitions": partitions,
        "bad_values": {"count": bad.count, "by_field": bad.by_field, "samples": bad.entries[:5], "notes": bad.notes},
        "report_key": report,
    }
