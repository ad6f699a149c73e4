"""Fan-out query engine over the lake: plan (index look-up) -> partial aggregates per worker -> reduce -> result.

Query (a plain dict, JSON in the state machine):

```json
{"source": "demo", "level": "points",
 "start": "2026-11-20T00:00:00Z", "end": "2026-11-21T00:00:00Z",          # [start, end) on the time column
 "filters": [{"column": "status", "op": "!=", "value": "degraded"},
             {"column": "warriors.firmware", "op": "in", "value": ["1.3.1", "2.0.0"]}],
 "group_by": ["warriors.firmware"],                                        # "col" or "<ancestor level>.col"
 "aggregates": [{"op": "count"},
                {"op": "share", "column": "status", "equals": "up", "as": "uptime"},
                {"op": "mean", "column": "value"}],
 "ancestor_keys": {"warriors": "id"}}              # key column of an ancestor (default "_key": its primary key)
```

* A column ``warriors.firmware`` comes from the ancestor level ``warriors``: a point joins the most recently fetched
  copy of the warrior whose ``_key`` (its primary key as text, written by the convert stage; files without it:
  ``id``) equals the point's ``_lineage__warriors`` (the lake keeps each record once, so an older run's copy may be
  gone). The worker first aggregates by
  lineage key, then joins the small ancestor table and re-aggregates: the join costs per group, not per row.
* Filters: ``= != < <= > >= in not_in is_null not_null``; SQL semantics (a null never matches a comparison).
* Aggregates: ``count`` (rows, or non-null values of ``column``), ``sum``, ``min``, ``max``, ``mean``,
  ``share`` = (rows where column == equals) / (rows where column is not null), like
  ``avg((column = equals)::int)`` in SQL. Partials carry numerators and denominators so they merge exactly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvester import s3keys

from .index import FileIndex
from .querymodel import QueryError, validate_query
from .schema import KEY, conform, lineage_column, unify
from .store import ObjectStore
from .timeutil import iso, parse_instant, to_units

RUN = "_run_id"
FETCHED = "_fetched_at"
_MERGE = {"count_all": "sum", "count": "sum", "sum": "sum", "eqsum": "sum", "min": "min", "max": "max"}


def _ancestor_levels(q: dict) -> dict[str, str]:
    out = {}
    for ref in q["group_by"] + q["filters"]:
        if ref["level"]:
            out[ref["level"]] = ref["key"]
    return out


# ---------------------------------------------------------------- plan


def plan_query(
    index: FileIndex,
    query: dict,
    *,
    max_task_bytes: int = 512 * 1024 * 1024,
    max_task_files: int = 32,
    store: ObjectStore | None = None,
) -> dict:
    """Files overlapping the range (from the index, no S3 listing) cut into worker tasks; every file of each ancestor
    level. With `store`, the filters' and aggregates' columns are checked against the newest file's schema of their
    level first (`check_types`): a mismatch is a QueryError here, not a failure of every worker."""
    q = validate_query(query)
    if q["start"] is None and q["end"] is None:
        files = index.files_for_run(q["source"], q["level"])  # every file, rows without a time included
    else:
        files = index.lookup(q["source"], q["level"], q["start"], q["end"])
    keep = ("key", "rows", "bytes", "min_time", "max_time", "time_column", "run_id", "partition")
    files = [{k: f.get(k) for k in keep} for f in sorted(files, key=lambda f: f["key"])]
    ancestors = {}
    for level in _ancestor_levels(q):
        # a record's ancestor is the latest copy of its key, whichever run fetched it (the lake keeps each
        # record once: an older run's copy may be gone)
        ancestors[level] = sorted(f["key"] for f in index.files_for_run(q["source"], level))
    tasks, cur, cur_bytes = [], [], 0
    for f in files:
        if cur and (cur_bytes + f["bytes"] > max_task_bytes or len(cur) >= max_task_files):
            tasks.append(cur)
            cur, cur_bytes = [], 0
        cur.append(f)
        cur_bytes += f["bytes"]
    if cur:
        tasks.append(cur)
    if store is not None and files:
        wanted = {q["level"]: files[-1]["key"], **{lv: keys[-1] for lv, keys in ancestors.items() if keys}}
        check_types(q, {lv: schema for lv, key in wanted.items() if (schema := _schema(store, key)) is not None})
    return {
        "query_id": q["query_id"], "query": q,
        "tasks": [{"task": i, "files": t, "ancestors": ancestors} for i, t in enumerate(tasks)],
        "files": len(files), "bytes": sum(f["bytes"] for f in files), "rows": sum(f["rows"] for f in files),
    }


def _schema(store: ObjectStore, key: str) -> pa.Schema | None:
    """A file's schema, or None when it cannot be read (gone, damaged): the workers then report that file."""
    try:
        return pq.read_schema(pa.BufferReader(store.get(key)))
    except Exception:  # noqa: BLE001 - the type check is a courtesy; reading the files is the workers' job
        return None


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    return "other"


def _fits(kind: str, value) -> bool:
    if value is None or kind == "other":
        return True
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "time":
        try:
            return isinstance(value, str) and parse_instant(value) is not None
        except ValueError:
            return False
    return isinstance(value, str)  # text: a number compared with text is a mismatch (quote it to mean text)


def check_types(q: dict, schemas: dict[str, pa.Schema]) -> None:
    """Every filter value and aggregate against its column's type in `schemas` (level -> schema): a QueryError
    naming the column, its type and the value, before any worker runs."""
    problems = []
    for f in q["filters"]:
        schema = schemas.get(f["level"] or q["level"])
        if schema is None or f["column"] not in schema.names or f["op"] in ("is_null", "not_null"):
            continue
        typ = schema.field(f["column"]).type
        values = f["value"] if isinstance(f.get("value"), list) else [f.get("value")]
        for v in values:
            if not _fits(_kind(typ), v):
                problems.append(f"filter {f['name']} {f['op']} {v!r}: column {f['name']} is {typ}, "
                                f"{v!r} is {type(v).__name__}")
    for p in q["parts"]:
        column = p.get("column")
        schema = schemas.get(q["level"])
        if not column or schema is None or column not in schema.names:
            continue
        typ = schema.field(column).type
        if p["kind"] in ("sum",) and _kind(typ) != "number":
            problems.append(f"aggregate sum/mean of {column}: column {column} is {typ}, not a number")
        if p["kind"] == "eqsum" and p.get("equals") is not None and not _fits(_kind(typ), p["equals"]):
            problems.append(f"aggregate share of {column}={p['equals']!r}: column {column} is {typ}")
    if problems:
        raise QueryError("; ".join(problems[:5]))


# ---------------------------------------------------------------- worker


def _scalar(value, typ: pa.DataType):
    t = typ.value_type if pa.types.is_dictionary(typ) else typ
    if pa.types.is_timestamp(t):
        return pa.scalar(to_units(parse_instant(value), t.unit), pa.int64()).cast(t)
    if pa.types.is_date(t) and isinstance(value, str):
        return pa.scalar(date.fromisoformat(value), t)
    if pa.types.is_decimal(t):
        return pa.scalar(Decimal(str(value)))
    try:
        return pa.scalar(value).cast(t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.scalar(value)


def _dict_apply(col: pa.ChunkedArray, fn) -> pa.ChunkedArray:
    """Evaluate ``fn`` on each chunk's dictionary and spread it by the indices (no string decoding)."""
    return pa.chunked_array([pc.take(fn(c.dictionary), c.indices) for c in col.chunks], type=pa.bool_())


def _compare(col: pa.ChunkedArray, op: str, value) -> pa.ChunkedArray:
    if op == "is_null":
        return pc.is_null(col)
    if op == "not_null":
        return pc.is_valid(col)
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), pa.bool_())])
    if pa.types.is_dictionary(col.type):
        if col.num_chunks == 0:
            return pa.chunked_array([], pa.bool_())
        return _dict_apply(col, lambda d: _compare_plain(d, op, value))
    return _compare_plain(col, op, value)


def _compare_plain(col, op: str, value):
    if op in ("in", "not_in"):
        vs = [_scalar(v, col.type) for v in value]
        try:
            vset = pa.array([v.as_py() for v in vs], col.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            vset = pa.array([v.as_py() for v in vs])
        m = pc.is_in(col, value_set=vset, skip_nulls=True)
        m = pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()), m)
        return pc.invert(m) if op == "not_in" else m
    s = _scalar(value, col.type)
    fn = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}[op]
    return fn(col, s)


def _mask(table: pa.Table, filters: list[dict]):
    mask = None
    for f in filters:
        name = f["name"] if f["level"] else f["column"]
        if name not in table.column_names:
            m = pa.chunked_array([pa.array([f["op"] == "is_null"] * table.num_rows, pa.bool_())])
        else:
            m = _compare(table[name], f["op"], f["value"])
        mask = m if mask is None else pc.and_kleene(mask, m)
    return mask


def _eq(col: pa.ChunkedArray, value) -> pa.ChunkedArray:
    """column == value as a boolean (null where the column is null), dictionary-aware."""
    return _compare(col, "=", value)


def _time_plan(pf: pq.ParquetFile, tcol: str | None, start, end) -> tuple[list[int], list[int], str | None]:
    """Row groups (all in range, straddling the range edge); row groups outside the range are skipped."""
    n = pf.metadata.num_row_groups
    if tcol is None or (start is None and end is None):
        return list(range(n)), [], None
    schema = pf.schema_arrow
    if tcol not in schema.names or not pa.types.is_timestamp(schema.field(tcol).type):
        return [], [], None  # no time in this file: nothing is in a bounded range
    unit = schema.field(tcol).type.unit
    s = to_units(start, unit) if start else None
    e = to_units(end, unit) if end else None
    ci = pf.schema.names.index(tcol) if tcol in pf.schema.names else None
    full, partial = [], []
    for i in range(n):
        rg = pf.metadata.row_group(i)
        if rg.num_rows == 0:
            continue
        st = rg.column(ci).statistics if ci is not None else None
        if st is None or not st.has_min_max:
            if st is not None and st.null_count == rg.num_rows:
                continue  # only null times
            partial.append(i)
            continue
        lo, hi = st.min_raw, st.max_raw
        if (s is not None and hi < s) or (e is not None and lo >= e):
            continue
        if (s is None or lo >= s) and (e is None or hi < e) and st.null_count == 0:
            full.append(i)
        else:
            partial.append(i)
    return full, partial, unit


def _read_file(data: bytes, columns: list[str], tcol: str | None, start, end, stats: dict) -> pa.Table | None:
    pf0 = pq.ParquetFile(pa.BufferReader(data))
    schema = pf0.schema_arrow
    present = [c for c in dict.fromkeys(columns) if c in schema.names]
    dict_cols = [c for c in present if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)]
    pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=dict_cols) if dict_cols else pf0
    full, partial, unit = _time_plan(pf, tcol, start, end)
    stats["row_groups"] += pf.metadata.num_row_groups
    stats["row_groups_read"] += len(full) + len(partial)
    pieces = []
    if full:
        pieces.append(pf.read_row_groups(full, columns=present, use_threads=True))
    if partial:
        t = pf.read_row_groups(partial, columns=list(dict.fromkeys(present + [tcol])), use_threads=True)
        tt = t[tcol]
        m = None
        if start is not None:
            m = pc.greater_equal(tt, _scalar(iso(start), tt.type))
        if end is not None:
            m2 = pc.less(tt, _scalar(iso(end), tt.type))
            m = m2 if m is None else pc.and_(m, m2)
        stats["rows_scanned"] += t.num_rows
        t = t.filter(m).select(present)
        pieces.append(t)
    if full:
        stats["rows_scanned"] += pieces[0].num_rows
    if not pieces:
        return None
    table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces, promote_options="permissive")
    for c in columns:  # a column this file lacks (written before the schema widened): null
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(table.num_rows))
    return table


def _decode_keys(table: pa.Table) -> pa.Table:
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.Table.from_arrays(cols, names=table.column_names)


def _aggregate(table: pa.Table, keys: list[str], parts: list[dict], merge: bool) -> pa.Table:
    """Group ``table`` by ``keys`` into part columns; ``merge`` re-aggregates part columns already computed."""
    aggs = []
    for p in parts:
        if merge:
            aggs.append((p["name"], _MERGE[p["kind"]]))
        elif p["kind"] == "count_all":
            aggs.append(([], "count_all"))
        else:
            src = p["name"] + "_in"
            aggs.append((src, {"eqsum": "sum", "count": "sum"}.get(p["kind"], p["kind"])))
    out = table.group_by(keys, use_threads=True).aggregate(aggs)
    agg_names = [p["name"] for p in parts]
    # pyarrow >= 15 puts the keys first (older versions put them last)
    keys_first = out.column_names[: len(keys)] == keys
    out = out.rename_columns(keys + agg_names if keys_first else agg_names + keys)
    return out.select(keys + [p["name"] for p in parts])


def _part_inputs(table: pa.Table, parts: list[dict]) -> pa.Table:
    cols, names = [], []
    for p in parts:
        if p["kind"] == "count_all":
            continue
        col = table[p["column"]]
        if p["kind"] == "eqsum":
            col = _eq(col, p["equals"])
            col = col.cast(pa.int64())
        elif p["kind"] == "count":
            col = pc.is_valid(col).cast(pa.int64())
        elif pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_null(col.type) and p["kind"] in ("sum", "min", "max"):
            col = col.cast(pa.float64())
        cols.append(col)
        names.append(p["name"] + "_in")
    return pa.Table.from_arrays(cols, names=names) if cols else pa.table({})


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [_decode_keys(t) for t in tables]
    schema = unify([t.schema for t in tables])
    return pa.concat_tables([conform(t, schema) for t in tables])


def _load_ancestor(store: ObjectStore, level: str, keys: list[str], key_field: str, columns: list[str]) -> pa.Table:
    tables = []
    for k in keys:
        pf = pq.ParquetFile(pa.BufferReader(store.get(k)))
        names = pf.schema_arrow.names
        source_key = key_field
        if key_field == KEY and KEY not in names:
            # files converted before `_key` existed: their level's key was assumed to be `id`
            if "id" not in names:
                raise QueryError(f"level {level}: file {k} has no {KEY} column (convert it again) and no id column; "
                                 f"name the key with ancestor_keys: {{{level!r}: FIELD}}")
            source_key = "id"
        elif key_field not in names:
            raise QueryError(f"level {level}: file {k} has no key column {key_field!r} (ancestor_keys)")
        want = [c for c in dict.fromkeys([FETCHED, source_key] + columns) if c in names]
        t = pf.read(columns=want)
        if source_key != key_field:
            t = t.rename_columns([key_field if c == source_key else c for c in t.column_names])
        for c in [key_field] + columns:
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
        if FETCHED not in t.column_names:
            t = t.append_column(FETCHED, pa.nulls(t.num_rows, pa.timestamp("us", tz="UTC")))
        tables.append(t)
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in dict.fromkeys([key_field] + columns)})
    t = _concat(tables)
    # one row per key, the most recently fetched copy: a key in several runs' files must not double-count
    t = t.take(pc.sort_indices(t, sort_keys=[(FETCHED, "descending")]))
    rest = [c for c in columns if c != key_field]
    if rest:
        t = t.group_by([key_field], use_threads=False).aggregate([(c, "first") for c in rest])
        t = t.rename_columns([c.removesuffix("_first") for c in t.column_names])
        t = t.select([key_field] + rest)
    else:
        t = t.group_by([key_field]).aggregate([]).select([key_field])
    return t


@dataclass
class _Reading:
    """What a worker reads of the queried level's files and how it aggregates them before any join."""

    start: datetime | None
    end: datetime | None
    first_keys: list[str]  # own group-by columns, then the lineage columns of the ancestors joined
    columns: list[str]  # every column read
    own_filters: list[dict]
    ancestors: dict[str, str]  # level -> key field

    @classmethod
    def of(cls, q: dict) -> _Reading:
        anc = _ancestor_levels(q)
        own_keys = [g["column"] for g in q["group_by"] if not g["level"]]
        own_filters = [f for f in q["filters"] if not f["level"]]
        first_keys = list(dict.fromkeys(own_keys + [lineage_column(lv) for lv in anc]))
        columns = list(dict.fromkeys(first_keys + [f["column"] for f in own_filters] +
                                     [p["column"] for p in q["parts"] if p["column"]]))
        return cls(parse_instant(q["start"]), parse_instant(q["end"]), first_keys, columns, own_filters, anc)


def _aggregate_file(store: ObjectStore, f: dict, q: dict, rd: _Reading, stat_names) -> tuple[pa.Table | None, dict]:
    """One file: its needed columns and row groups, filtered, aggregated by the first keys (None: no row)."""
    st = dict.fromkeys(stat_names, 0)
    data = store.get(f["key"])
    st["files"], st["bytes"] = 1, len(data)
    table = _read_file(data, rd.columns, q.get("time_column") or f.get("time_column"), rd.start, rd.end, st)
    if table is None or not table.num_rows:
        return None, st
    mask = _mask(table, rd.own_filters)
    if mask is not None:
        table = table.filter(mask)
    st["rows_matched"] = table.num_rows
    if not table.num_rows:
        return None, st
    inputs = _part_inputs(table, q["parts"])
    keyed = table.select(rd.first_keys)
    for name, col in zip(inputs.column_names, inputs.columns):
        keyed = keyed.append_column(name, col)
    if any(pa.types.is_dictionary(keyed.schema.field(k).type) and keyed[k].num_chunks > 1 for k in rd.first_keys):
        keyed = keyed.unify_dictionaries()
    return _decode_keys(_aggregate(keyed, rd.first_keys, q["parts"], merge=False)), st


def _join_ancestors(store: ObjectStore, agg: pa.Table, q: dict, task: dict, ancestors: dict[str, str]) -> pa.Table:
    """Each ancestor level's columns joined on the lineage key (the latest copy of each ancestor), then its filters."""
    anc_filters = [f for f in q["filters"] if f["level"]]
    for level, key_field in ancestors.items():
        cols = list(dict.fromkeys([g["column"] for g in q["group_by"] if g["level"] == level] +
                                  [f["column"] for f in anc_filters if f["level"] == level]))
        at = _load_ancestor(store, level, task.get("ancestors", {}).get(level, []), key_field, cols)
        lk = lineage_column(level)
        akey = f"__key_{level}"
        at = at.rename_columns([akey if c == key_field else f"{level}.{c}" for c in at.column_names])
        # join on text keys: the lineage holds the key as the vendor wrote it, the ancestor column may be typed
        at = at.set_column(at.schema.get_field_index(akey), akey, _as_text(at[akey]))
        agg = agg.set_column(agg.schema.get_field_index(lk), lk, _as_text(agg[lk]))
        agg = agg.join(at, keys=[lk], right_keys=[akey], join_type="left outer", use_threads=True)
    return agg.filter(_mask(agg, anc_filters)) if anc_filters else agg


def partial_aggregate(store: ObjectStore, task: dict, query: dict, *, threads: int | None = None) -> dict:
    """One worker: read the task's files (only the needed columns and row groups), aggregate, join ancestors.

    Returns mergeable partials: group keys, counts, sums, mins, maxs and share numerators/denominators.
    """
    t0 = time.perf_counter()
    q = validate_query(query)
    parts, rd = q["parts"], _Reading.of(q)
    stats = {"files": 0, "bytes": 0, "row_groups": 0, "row_groups_read": 0, "rows_scanned": 0, "rows_matched": 0}
    # files in parallel (Arrow releases the GIL): a worker with 2 vCPUs reads 2 files at once
    with ThreadPoolExecutor(max_workers=max(1, min(threads or os.cpu_count() or 1, len(task["files"])))) as pool:
        done = list(pool.map(lambda f: _aggregate_file(store, f, q, rd, stats), task["files"]))
    per_file = [t for t, _ in done if t is not None]
    for _, st in done:
        for k, v in st.items():
            stats[k] += v
    agg = None
    if per_file:
        agg = _aggregate(_concat(per_file), rd.first_keys, parts, merge=True) if len(per_file) > 1 else per_file[0]
    out_names = [g["name"] for g in q["group_by"]]
    if agg is not None and rd.ancestors:
        agg = _aggregate(_join_ancestors(store, agg, q, task, rd.ancestors), out_names, parts, merge=True)
    elif agg is not None and rd.first_keys != out_names:
        agg = _aggregate(agg, out_names, parts, merge=True)
    rows = []
    if agg is not None:
        cols = [agg[n].to_pylist() for n in out_names + [p["name"] for p in parts]]
        rows = [[_json_value(v) for v in r] for r in zip(*cols)]
    stats["seconds"] = round(time.perf_counter() - t0, 4)
    return {
        "query_id": q["query_id"], "task": task.get("task", 0),
        "group_by": out_names,
        "parts": [{k: p[k] for k in ("name", "kind", "column")} for p in parts],
        "rows": rows, "stats": stats,
    }


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_null(col.type):
        return col.cast(pa.string())
    return pc.cast(col, pa.string())


def _json_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return {"decimal": str(v)}
    if isinstance(v, float) and v != v:
        return None
    return v


def _py_value(v: Any) -> Any:
    if isinstance(v, dict) and "decimal" in v:
        return Decimal(v["decimal"])
    return v


# ---------------------------------------------------------------- reduce


def reduce_partials(partials: list[dict], query: dict) -> dict:
    """Merge the workers' partials into the final table (rows sorted by group key, nulls last)."""
    q = validate_query(query)
    parts = q["parts"]
    names = [p["name"] for p in parts]
    kinds = [p["kind"] for p in parts]
    groups: dict[tuple, list] = {}
    stats: dict[str, float] = {}
    nk = len(q["group_by"])
    for pr in partials:
        for k, v in pr.get("stats", {}).items():
            stats[k] = stats.get(k, 0) + v
        idx = [pr["parts"].index(next(x for x in pr["parts"] if x["name"] == n)) for n in names]
        for row in pr["rows"]:
            key = tuple(json.dumps(x, sort_keys=True) for x in row[:nk])
            vals = [_py_value(row[nk + i]) for i in idx]
            cur = groups.get(key)
            if cur is None:
                groups[key] = [row[:nk], vals]
                continue
            acc = cur[1]
            for i, (kind, v) in enumerate(zip(kinds, vals)):
                if v is None:
                    continue
                if acc[i] is None:
                    acc[i] = v
                elif _MERGE[kind] == "sum":
                    acc[i] = acc[i] + v
                elif kind == "min":
                    acc[i] = min(acc[i], v)
                else:
                    acc[i] = max(acc[i], v)
    columns = [g["name"] for g in q["group_by"]] + [a["as"] for a in q["aggregates"]]
    pos = {n: i for i, n in enumerate(names)}
    rows = []
    for keyvals, acc in groups.values():
        out = list(keyvals)
        for a in q["aggregates"]:
            vals = [acc[pos[n]] for n in a["_parts"]]
            if a["op"] in ("count",):
                out.append(vals[0] or 0)
            elif a["op"] in ("sum", "min", "max"):
                out.append(_out_value(vals[0]))
            else:  # mean, share: numerator / denominator
                num, den = vals
                out.append(None if not den else float(num or 0) / den)
        rows.append(out)
    if not q["group_by"] and not rows:  # an aggregate over no rows still has one row, like SQL
        rows.append([0 if a["op"] == "count" else None for a in q["aggregates"]])
    rows.sort(key=lambda r: tuple((x is None, _sort_key(x)) for x in r[:nk]))
    return {"query_id": q["query_id"], "columns": columns, "rows": rows, "stats": stats}


def _sort_key(x):
    if x is None:
        return (0, "")
    if isinstance(x, bool):
        return (1, int(x))
    if isinstance(x, (int, float)):
        return (1, x)
    return (2, json.dumps(x, sort_keys=True) if not isinstance(x, str) else x)


def _out_value(v):
    return str(v) if isinstance(v, Decimal) else v


# ---------------------------------------------------------------- results


def write_result(store: ObjectStore, result: dict) -> dict:
    """``results/{query_id}.json`` and ``.csv``; returns a small summary for the state machine."""
    jkey, ckey = s3keys.result_keys(result["query_id"])
    store.put(jkey, json.dumps(result, default=str).encode(), "application/json")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(result["columns"])
    for r in result["rows"]:
        w.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v) for v in r])
    store.put(ckey, buf.getvalue().encode(), "text/csv")
    return {"query_id": result["query_id"], "rows": len(result["rows"]), "json_key": jkey, "csv_key": ckey,
            "stats": result.get("stats", {})}


def format_table(result: dict, max_rows: int = 50) -> str:
    """A plain-text table (``harvest query --local`` prints it)."""
    cols = result["columns"]
    body = [["" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r] for r in result["rows"][:max_rows]]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    if len(result["rows"]) > max_rows:
        lines.append(f"... {len(result['rows']) - max_rows} more rows")
    return "\n".join(lines)


def query_in_process(store: ObjectStore, index: FileIndex, query: dict, *, write: bool = True, **plan_kw) -> dict:
    """The whole query in one process (tests, benchmarks): plan, every task, reduce, write. The query workflow runs
    the same steps as Lambda tasks (lambdas/query.py); `harvest query` starts that workflow."""
    plan = plan_query(index, query, store=store, **plan_kw)
    partials = [partial_aggregate(store, t, plan["query"]) for t in plan["tasks"]]
    result = reduce_partials(partials, plan["query"])
    result["stats"]["tasks"] = len(plan["tasks"])
    if write:
        result["summary"] = write_result(store, result)
    return result
