"""Query benchmark: rows/s of one worker for uptime by firmware, beside DuckDB on the same files, same run.

    python bench/bench_query.py [--points 20000000] [--files 8] [--dir /tmp/lake-bench]

Generates the points as Parquet directly (the layout the commit step writes: zstd, sorted by ts, row groups
of 512K rows) plus the warriors table, then runs the engine's worker (``partial_aggregate`` over every file,
reading them from local disk as it would read S3 objects into memory) and ``reduce_partials``; then DuckDB
with the same question in SQL. Prints figures; not a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import pyarrow.parquet as pq

from harvester.lake.compact import ROW_GROUP_ROWS
from harvester.lake.query import format_table, partial_aggregate, reduce_partials, validate_query
from harvester.lake.store import LocalStore
from harvester.lake.synthetic import point_table, warrior_table

QUERY = {
    "source": "demo", "level": "points",
    "start": "2026-11-20T01:00:00Z", "end": "2026-11-20T23:00:00Z",
    "group_by": ["warriors.firmware"],
    "aggregates": [{"op": "count"}, {"op": "share", "column": "status", "equals": "up", "as": "uptime"}],
}
SQL = """
SELECT w.firmware, count(*) AS count,
       avg(CASE WHEN p.status = 'up' THEN 1.0 WHEN p.status IS NULL THEN NULL ELSE 0.0 END) AS uptime
FROM read_parquet({points!r}) p
LEFT JOIN (SELECT _run_id, id, first(firmware) AS firmware FROM read_parquet({warriors!r}) GROUP BY ALL) w
  ON p._lineage__warriors = w.id AND p._run_id = w._run_id
WHERE p.ts >= TIMESTAMPTZ '2026-11-20T01:00:00Z' AND p.ts < TIMESTAMPTZ '2026-11-20T23:00:00Z'
GROUP BY 1 ORDER BY 1
"""


def generate(root: str, points: int, files: int, warriors: int) -> tuple[list[dict], list[str]]:
    store = LocalStore(root)
    per = points // files
    entries = []
    for i in range(files):
        # each file is one slice of the day (as the commit step writes a sorted partition in order)
        t = point_table(per, warriors=warriors, seed=i, start=f"2026-11-20T{i * 24 // files:02d}:00:00Z",
                        seconds=86_400 // files)
        key = f"processed/demo/points/event_date=2026-11-20/r1-{i:04d}.parquet"
        os.makedirs(os.path.dirname(store.path(key)), exist_ok=True)
        pq.write_table(t, store.path(key), compression="zstd", row_group_size=ROW_GROUP_ROWS)
        entries.append({"key": key, "time_column": "ts", "rows": per, "bytes": os.path.getsize(store.path(key))})
    wkey = "processed/demo/warriors/run_date=2026-11-25/r1-0000.parquet"
    os.makedirs(os.path.dirname(store.path(wkey)), exist_ok=True)
    pq.write_table(warrior_table(warriors), store.path(wkey), compression="zstd")
    return entries, [wkey]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--warriors", type=int, default=2000)
    ap.add_argument("--dir", default="/tmp/lake-bench")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    t = time.perf_counter()
    files, wkeys = generate(args.dir, args.points, args.files, args.warriors)
    total_bytes = sum(f["bytes"] for f in files)
    print(f"data: {args.points:,} points in {len(files)} files, {total_bytes / 1e6:.0f} MB parquet zstd, "
          f"{args.warriors} warriors (generated in {time.perf_counter() - t:.1f}s); cpus={os.cpu_count()}")

    store = LocalStore(args.dir)
    q = validate_query(QUERY)
    task = {"task": 0, "files": files, "ancestors": {"warriors": wkeys}}
    best = best_cpu = 0.0
    for r in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        partial = partial_aggregate(store, task, q)
        result = reduce_partials([partial], q)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        rows = partial["stats"]["rows_matched"]
        best, best_cpu = max(best, args.points / wall), max(best_cpu, args.points / cpu)
        print(f"engine run {r + 1}: {wall:.2f}s wall, {cpu:.2f} cpu-s; {rows:,} points in range, "
              f"row groups read {partial['stats']['row_groups_read']}/{partial['stats']['row_groups']} "
              f"-> {args.points / wall / 1e6:.1f}M points/s")
    print(format_table(result))

    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    sql = SQL.format(points=[str(store.path(f["key"])) for f in files], warriors=[str(store.path(k)) for k in wkeys])
    dbest = 0.0
    for r in range(args.repeat):
        t = time.perf_counter()
        got = con.execute(sql).fetchall()
        wall = time.perf_counter() - t
        dbest = max(dbest, args.points / wall)
        print(f"duckdb run {r + 1}: {wall:.2f}s wall -> {args.points / wall / 1e6:.1f}M points/s")
    same = [(r[0], r[1]) for r in result["rows"]] == [(r[0], r[1]) for r in got] and all(
        abs(a[2] - float(b[2])) < 1e-9 for a, b in zip(result["rows"], got))
    print(f"answers equal: {same}")
    load = os.getloadavg()[0]
    print(f"uptime by firmware, one worker: engine best {best / 1e6:.1f}M points/s wall "
          f"({best_cpu / 1e6:.1f}M per cpu-second), duckdb best {dbest / 1e6:.1f}M points/s wall "
          f"(target >= 20M points/s; load average {load:.1f} on {os.cpu_count()} cpus)")


if __name__ == "__main__":
    main()
