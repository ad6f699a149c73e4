"""Commit step of the convert stage: per partition per run, a few large Parquet files, then the index.

``plan_compaction`` lists the staging files of a run (only those of groups in the conversion plan, so a
stale file of an older plan never leaks in) and returns one item per (level, partition);
``compact_partition`` (one Map worker per item) merges them into ``processed/.../{run_id}-{n:04d}.parquet``
of about ``target_bytes`` each, registers them in the time index, and removes files and index items a
previous attempt left beyond the new ones. Same staging input -> same output keys and bytes, so a retry
overwrites.
"""

from __future__ import annotations


import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import layout
from .convert import load_plan, time_column
from .index import FileIndex
from .schema import conform, unify
from .store import Store, get_many
from .timeutil import from_units, iso

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
DEFAULT_SORT_BUDGET = 128 * 1024 * 1024  # compressed staging bytes under which a partition is sorted as a whole
ROW_GROUP_ROWS = 512 * 1024


def plan_compaction(store: Store, *, source: str, run_id: str) -> list[dict]:
    """Map items for the commit step: one per (level, partition) of the run's staging files."""
    plan = load_plan(store, source, run_id)
    valid = {(i["level"], i["group_id"]): i for i in plan}
    items: dict[tuple[str, str], dict] = {}
    for key, size in store.list(layout.staging_prefix(source, run_id)):
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


def compact_partition(
    store: Store,
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
        prefix = layout.staging_prefix(source, run_id, level) + partition + "/"
        staging_keys = [k for k, _ in store.list(prefix)]
    staging_keys = sorted(staging_keys)
    tcol = time_column(time_field)
    if not staging_keys:  # nothing staged (already cleaned up after a commit): report what is committed
        done = [f for f in (index.files_for_run(source, level, run_id) if index else []) if f["partition"] == partition]
        return {"level": level, "partition": partition, "files": done, "rows": sum(f["rows"] for f in done),
                "bytes": sum(f["bytes"] for f in done), "removed": []}

    blobs = get_many(store, staging_keys)
    files = [pq.ParquetFile(pa.BufferReader(b)) for b in blobs]
    schema = unify([f.schema_arrow for f in files])
    if sum(len(b) for b in blobs) <= sort_budget_bytes:
        table = pa.concat_tables([conform(f.read(), schema) for f in files])
        del files, blobs
        if table.num_rows > 1 and tcol in table.column_names:
            table = table.take(pc.sort_indices(table, sort_keys=[(tcol, "ascending")]))
        tables = iter([table])
    else:  # too big to sort at once: each staging file sorted, in key order
        def sorted_tables():
            for f in files:
                t = conform(f.read(), schema)
                if t.num_rows > 1 and tcol in t.column_names:
                    t = t.take(pc.sort_indices(t, sort_keys=[(tcol, "ascending")]))
                yield t
        tables = sorted_tables()

    written: list[dict] = []
    state = {"sink": None, "writer": None, "rows": 0, "min": None, "max": None}
    unit = schema.field(tcol).type.unit if tcol in schema.names and pa.types.is_timestamp(schema.field(tcol).type) else None

    def close():
        state["writer"].close()
        data = state["sink"].getvalue().to_pybytes()
        key = layout.processed_key(source, level, partition, run_id, len(written))
        store.put(key, data)
        written.append({
            "key": key, "source": source, "level": level, "partition": partition, "run_id": run_id,
            "time_column": tcol, "rows": state["rows"], "bytes": len(data),
            "min_time": iso(from_units(state["min"], unit)) if state["min"] is not None else None,
            "max_time": iso(from_units(state["max"], unit)) if state["max"] is not None else None,
            "expires_at": expires_at,
        })
        state.update(sink=None, writer=None, rows=0, min=None, max=None)

    for table in tables:
        for off in range(0, table.num_rows, row_group_rows):
            chunk = table.slice(off, row_group_rows)
            if state["writer"] is None:
                state["sink"] = pa.BufferOutputStream()
                state["writer"] = pq.ParquetWriter(state["sink"], schema, compression="zstd", write_statistics=True)
            state["writer"].write_table(chunk, row_group_size=row_group_rows)
            state["rows"] += chunk.num_rows
            if unit:
                lo, hi = _time_range(chunk[tcol])
                if lo is not None:
                    state["min"] = lo if state["min"] is None else min(state["min"], lo)
                    state["max"] = hi if state["max"] is None else max(state["max"], hi)
            if state["sink"].tell() >= target_bytes:
                close()
    if state["writer"] is not None:
        close()

    # a previous attempt may have produced more files: remove the extra ones and their index items
    new_keys = {w["key"] for w in written}
    prefix = layout.processed_prefix(source, level, partition) + f"{run_id}-"
    stale_objects = [k for k, _ in store.list(prefix) if k not in new_keys]
    stale_entries = []
    if index is not None:
        index.put_files(written)
        stale_entries = [f for f in index.files_for_run(source, level, run_id)
                         if f["partition"] == partition and f["key"] not in new_keys]
        index.remove_files(stale_entries)
    store.delete(stale_objects)
    return {
        "level": level, "partition": partition,
        "files": [{k: w[k] for k in ("key", "rows", "bytes", "min_time", "max_time")} for w in written],
        "rows": sum(w["rows"] for w in written), "bytes": sum(w["bytes"] for w in written),
        "removed": sorted(set(stale_objects) | {e["key"] for e in stale_entries}),
    }


def cleanup_staging(store: Store, *, source: str, run_id: str) -> int:
    """Delete a run's staging files once every partition is committed."""
    keys = [k for k, _ in store.list(layout.staging_prefix(source, run_id))]
    store.delete(keys)
    return len(keys)


def convert_run(
    store: Store,
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
