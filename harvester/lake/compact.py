"""Commit step of the convert stage: per partition per run, a few large Parquet files, then the index.

``plan_compaction`` lists the staging files of a run (only those of groups in the conversion plan, so a
stale file of an older plan never leaks in) and returns one item per (level, partition);
``compact_partition`` (one Map worker per item) merges them into ``processed/.../{run_id}-{n:04d}.parquet``
of about ``target_bytes`` each, registers them in the time index, and removes files and index items a
previous attempt left beyond the new ones. Same staging input -> same output keys and bytes, so a retry
overwrites.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvester import s3keys

from . import dedup
from .convert import load_plan, time_column
from .index import FileIndex
from .schema import conform, unify
from .store import ObjectStore, get_many
from .timeutil import from_units, iso

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
DEFAULT_SORT_BUDGET = 128 * 1024 * 1024  # compressed staging bytes under which a partition is sorted as a whole
ROW_GROUP_ROWS = 512 * 1024


def plan_compaction(store: ObjectStore, *, source: str, run_id: str) -> list[dict]:
    """Map items for the commit step: one per (level, partition) of the run's staging files."""
    plan = load_plan(store, source, run_id)
    valid = {(i["level"], i["group_id"]): i for i in plan}
    items: dict[tuple[str, str], dict] = {}
    for key, size in store.list(s3keys.staging_prefix(source, run_id)):
        parts = key.split("/")  # runs/{source}/{run_id}/staging/{level}/{partition}/{gid}.parquet
        if len(parts) != 7:
            continue
        level, partition, gid = parts[4], parts[5], parts[6].removesuffix(".parquet")
        group = valid.get((level, gid))
        if group is None:
            continue
        it = items.setdefault((level, partition), {
            "source": source, "run_id": run_id, "level": level, "partition": partition,
            "time_field": group.get("time_field"), "staging_keys": [], "bytes": 0,
        })
        it["staging_keys"].append(key)
        it["bytes"] += size
    return [items[k] for k in sorted(items)]


def _time_range(col: pa.ChunkedArray) -> tuple[int | None, int | None]:
    if col.null_count == len(col):
        return None, None
    mm = pc.min_max(col.cast(pa.int64()))
    return mm["min"].as_py(), mm["max"].as_py()


class _PartitionFiles:
    """The committed files of one partition and run, written row group by row group: a new file once the current
    one reaches ``target_bytes``; each file's rows and time range for the index."""

    def __init__(self, store: ObjectStore, schema: pa.Schema, *, source: str, level: str, partition: str, run_id: str,
                 tcol: str, target_bytes: int, row_group_rows: int, expires_at: int | None):
        self.store, self.schema, self.tcol = store, schema, tcol
        self.where = {"source": source, "level": level, "partition": partition, "run_id": run_id}
        self.target_bytes, self.row_group_rows, self.expires_at = target_bytes, row_group_rows, expires_at
        field = schema.field(tcol) if tcol in schema.names else None
        self.unit = field.type.unit if field is not None and pa.types.is_timestamp(field.type) else None
        self.written: list[dict] = []
        self.sink = self.writer = None
        self.rows, self.lo, self.hi = 0, None, None

    def write(self, table: pa.Table) -> None:
        for off in range(0, table.num_rows, self.row_group_rows):
            chunk = table.slice(off, self.row_group_rows)
            if self.writer is None:
                self.sink = pa.BufferOutputStream()
                self.writer = pq.ParquetWriter(self.sink, self.schema, compression="zstd", write_statistics=True)
            self.writer.write_table(chunk, row_group_size=self.row_group_rows)
            self.rows += chunk.num_rows
            if self.unit:
                lo, hi = _time_range(chunk[self.tcol])
                if lo is not None:
                    self.lo = lo if self.lo is None else min(self.lo, lo)
                    self.hi = hi if self.hi is None else max(self.hi, hi)
            if self.sink.tell() >= self.target_bytes:
                self.close()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        data = self.sink.getvalue().to_pybytes()
        w = self.where
        key = s3keys.processed_key(w["source"], w["level"], w["partition"], w["run_id"], len(self.written))
        self.store.put(key, data)
        when = [iso(from_units(v, self.unit)) if v is not None else None for v in (self.lo, self.hi)]
        self.written.append({"key": key, **w, "time_column": self.tcol, "rows": self.rows, "bytes": len(data),
                             "min_time": when[0], "max_time": when[1], "expires_at": self.expires_at})
        self.sink = self.writer = None
        self.rows, self.lo, self.hi = 0, None, None


def _sorted(table: pa.Table, tcol: str) -> pa.Table:
    if table.num_rows > 1 and tcol in table.column_names:
        return table.take(pc.sort_indices(table, sort_keys=[(tcol, "ascending")]))
    return table


def _staged_tables(files: list[pq.ParquetFile], read, tcol: str, sort_whole: bool):
    """The staged rows to commit: the whole partition sorted by time, or (too big to sort at once) each staging file
    sorted, in key order."""
    if sort_whole:
        table = pa.concat_tables([read(i, f) for i, f in enumerate(files)])
        files.clear()  # the staging bytes are no longer needed while the files are written
        yield _sorted(table, tcol)
        return
    for i, f in enumerate(files):
        yield _sorted(read(i, f), tcol)


def _committed(index: FileIndex | None, source: str, level: str, partition: str, run_id: str) -> dict:
    """Nothing staged (already cleaned up after a commit): what is committed."""
    done = [f for f in (index.files_for_run(source, level, run_id) if index else []) if f["partition"] == partition]
    return {"level": level, "partition": partition, "files": done, "rows": sum(f["rows"] for f in done),
            "bytes": sum(f["bytes"] for f in done), "removed": []}


def _remove_stale(store: ObjectStore, index: FileIndex | None, written: list[dict], *, source: str, level: str,
                  partition: str, run_id: str) -> list[str]:
    """Index the new files; remove the files (and index items) a previous attempt left beyond them."""
    new_keys = {w["key"] for w in written}
    prefix = s3keys.processed_prefix(source, level, partition) + f"{run_id}-"
    stale_objects = [k for k, _ in store.list(prefix) if k not in new_keys and dedup.own_file(k, run_id)]
    stale_entries = []
    if index is not None:
        index.put_files(written)
        stale_entries = [f for f in index.files_for_run(source, level, run_id)
                         if f["partition"] == partition and f["key"] not in new_keys]
        index.remove_files(stale_entries)
    store.delete(stale_objects)
    return sorted(set(stale_objects) | {e["key"] for e in stale_entries})


def compact_partition(
    store: ObjectStore,
    index: FileIndex | None,
    *,
    source: str,
    run_id: str,
    level: str,
    partition: str,
    staging_keys: list[str] | None = None,
    time_field: str | None = None,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    sort_budget_bytes: int = DEFAULT_SORT_BUDGET,
    row_group_rows: int = ROW_GROUP_ROWS,
    expires_at: int | None = None,
    **_ignored,
) -> dict:
    """Merge a partition's staging files into a few files of about ``target_bytes``; index them."""
    if staging_keys is None:
        staging_keys = [k for k, _ in store.list(s3keys.staging_prefix(source, run_id, level) + partition + "/")]
    if not staging_keys:
        return _committed(index, source, level, partition, run_id)
    staging_keys = sorted(staging_keys)
    tcol = time_column(time_field)
    blobs = get_many(store, staging_keys)
    files = [pq.ParquetFile(pa.BufferReader(b)) for b in blobs]
    schema = unify([f.schema_arrow for f in files])
    # each record once: the run's own copies (the latest fetched), then against the partition's other runs
    id_time = tcol if time_field else None  # a record's identity uses its time field, never _fetched_at
    masks, own = _own_latest(files, schema, id_time)
    overlap = dedup.plan(store, source=source, level=level, partition=partition, run_id=run_id, own=own,
                         time_col=id_time)

    def read(i: int, f: pq.ParquetFile) -> pa.Table:
        return dedup.drop_own(conform(f.read(), schema).filter(masks[i]), id_time, overlap.own_dropped)

    staged_rows = sum(f.metadata.num_rows for f in files)
    sort_whole = sum(len(b) for b in blobs) <= sort_budget_bytes
    del blobs
    out = _PartitionFiles(store, schema, source=source, level=level, partition=partition, run_id=run_id, tcol=tcol,
                          target_bytes=target_bytes, row_group_rows=row_group_rows, expires_at=expires_at)
    for table in _staged_tables(files, read, tcol, sort_whole):
        out.write(table)
    out.close()
    written = out.written
    removed = _remove_stale(store, index, written, source=source, level=level, partition=partition, run_id=run_id)
    # then the other runs' files lose the records this run has (after its own files are written: never lost)
    for key, (kept, _n) in overlap.others.items():
        _rewrite(store, index, key, kept, tcol, row_group_rows)
    duplicates = {"own": staged_rows - sum(w["rows"] for w in written), "others": overlap.dropped_from_others}
    duplicates = _record_duplicates(store, source, run_id, level, partition, duplicates)
    return {
        "level": level, "partition": partition, "duplicates": duplicates,
        "files": [{k: w[k] for k in ("key", "rows", "bytes", "min_time", "max_time")} for w in written],
        "rows": sum(w["rows"] for w in written), "bytes": sum(w["bytes"] for w in written), "removed": removed,
    }


def _own_latest(files: list[pq.ParquetFile], schema: pa.Schema, tcol: str | None):
    """Per staging file, the mask of the rows that are the latest copy of their record within the run, and
    {identity: fetched} of the run's records. Reads only the identity columns (the content when there are none)."""
    id_cols = [c for c in schema.names if c.startswith("_lineage__") or c in (dedup.KEY, dedup.FETCHED, tcol)]
    by_content = dedup.KEY not in schema.names and (tcol is None or tcol not in schema.names)
    winners: dict[str, tuple[int, int, int]] = {}
    for n, f in enumerate(files):
        cols = None if by_content else [c for c in id_cols if c in f.schema_arrow.names]
        t = conform(f.read(columns=cols), schema) if by_content else f.read(columns=cols)
        for i, (rid, when) in enumerate(zip(dedup.record_ids(t, tcol), dedup.fetched(t))):
            best = winners.get(rid)
            if best is None or when >= best[2]:
                winners[rid] = (n, i, when)
    keep = [[False] * f.metadata.num_rows for f in files]
    for n, i, _ in winners.values():
        keep[n][i] = True
    return [pa.array(k, pa.bool_()) for k in keep], {rid: w for rid, (_, _, w) in winners.items()}


def _rewrite(store: ObjectStore, index: FileIndex | None, key: str, table: pa.Table, tcol: str | None,
             row_group_rows: int) -> None:
    """Another run's file without the records a newer run has: the same key, its index items replaced."""
    old = []
    if index is not None:
        parts = key.split("/")  # processed/{source}/{level}/{partition}/{run_id}-{n}.parquet
        run_id = parts[-1].rsplit("-", 1)[0]
        old = [f for f in index.files_for_run(parts[1], parts[2], run_id) if f["key"] == key]
    if table.num_rows == 0:
        store.delete([key])
        if index is not None:
            index.replace_file(old, None)
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True, row_group_size=row_group_rows)
    data = sink.getvalue().to_pybytes()
    store.put(key, data)
    if index is not None and old:
        entry = {**old[0], "rows": table.num_rows, "bytes": len(data)}
        if tcol in table.column_names and pa.types.is_timestamp(table.schema.field(tcol).type):
            lo, hi = _time_range(table[tcol])
            unit = table.schema.field(tcol).type.unit
            entry["min_time"] = iso(from_units(lo, unit)) if lo is not None else None
            entry["max_time"] = iso(from_units(hi, unit)) if hi is not None else None
        index.replace_file(old, entry)


def _record_duplicates(store: ObjectStore, source: str, run_id: str, level: str, partition: str, found: dict) -> dict:
    """The duplicates a commit dropped, kept beside the run's convert plan. A retry finds the other runs' copies
    already gone, so what an earlier attempt dropped from them is kept (merged by file)."""
    key = s3keys.duplicates_key(source, run_id, level, partition)
    try:
        before = json.loads(store.get(key))
    except Exception:  # noqa: BLE001 - no earlier attempt
        before = {"others": {}}
    others = {**before.get("others", {}), **{k: n for k, n in found["others"].items() if n}}
    report = {"level": level, "partition": partition, "own": found["own"], "others": others,
              "total": found["own"] + sum(others.values())}
    store.put(key, json.dumps(report).encode())
    return report


def cleanup_staging(store: ObjectStore, *, source: str, run_id: str) -> int:
    """Delete a run's staging files once every partition is committed."""
    keys = [k for k, _ in store.list(s3keys.staging_prefix(source, run_id))]
    store.delete(keys)
    return len(keys)


def convert_run(
    store: ObjectStore,
    index: FileIndex | None,
    *,
    source: str,
    run_id: str,
    levels: dict[str, dict] | None = None,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    group_bytes: int | None = None,
    run_date: str | None = None,
    expires_at: int | None = None,
    cleanup: bool = True,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> dict:
    """The whole convert stage in one process (local engine, tests): plan, convert groups, commit partitions."""
    from .convert import DEFAULT_GROUP_BYTES, convert_group, plan_conversion

    summary = plan_conversion(store, source=source, run_id=run_id, levels=levels,
                              group_bytes=group_bytes or DEFAULT_GROUP_BYTES, run_date=run_date)
    bad = {"count": 0, "by_field": {}, "report_keys": []}
    rows: dict[str, int] = {}
    for item in load_plan(store, source, run_id):
        res = convert_group(store, **item)
        rows[item["level"]] = rows.get(item["level"], 0) + res["rows"]
        bad["count"] += res["bad_values"]["count"]
        for f, n in res["bad_values"]["by_field"].items():
            bad["by_field"][f] = bad["by_field"].get(f, 0) + n
        if res["report_key"]:
            bad["report_keys"].append(res["report_key"])
    committed = [compact_partition(store, index, target_bytes=target_bytes, expires_at=expires_at,
                                   row_group_rows=row_group_rows, **item)
                 for item in plan_compaction(store, source=source, run_id=run_id)]
    if cleanup:
        cleanup_staging(store, source=source, run_id=run_id)
    files = [f for c in committed for f in c["files"]]
    return {
        "groups": summary["groups"], "rows": rows, "bad_values": bad,
        "partitions": len(committed), "files": len(files), "bytes": sum(f["bytes"] for f in files),
        "per_partition": {f"{c['level']}/{c['partition']}": {"files": len(c["files"]), "rows": c["rows"], "bytes": c["bytes"]}
                          for c in committed},
    }
