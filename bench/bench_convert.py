"""Conversion benchmark: rows/s of one worker from raw gzip NDJSON to partitioned Parquet (zstd).

    python bench/bench_convert.py [--records 1000000] [--per-object 10000]

Measures what a convert Map worker does after the S3 GETs (`convert_group` minus the S3 calls): gunzip, parse,
flatten, type, split into partitions, write staging Parquet, on as many threads as the machine has CPUs. Prints
wall and CPU figures and the peak RSS of the conversion (the input held in memory included); not a timed test.
A Lambda function has the CPU of 1,769 MB per vCPU: the convert function (3,008 MB) about 1.7 vCPUs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

from harvester.lake.convert import convert_partitions, stage_partitions


def raw_objects(records: int, per_object: int, seed: int = 0) -> list[bytes]:
    """Point records exactly as the harvest writes them (formatted directly: json.dumps would take ~20 s)."""
    rnd = random.Random(seed)
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    stamps = [(t0 + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in range(0, 172_800, 7)]
    blobs = []
    for o in range(0, records, per_object):
        lines = []
        for i in range(o, min(o + per_object, records)):
            w = i % 5000
            lines.append(
                f'{{"ts":"{stamps[i % len(stamps)]}","value":{rnd.random() * 100:.2f},'
                f'"status":"{"up" if rnd.random() < 0.8 else "down"}","_source":"demo","_run_id":"r1",'
                f'"_level":"points","_lineage":{{"troops":"t{w // 50:04d}","warriors":"w{w:06d}",'
                f'"datagroups":"g{i % 20000:06d}"}},"_fetched_at":"2026-11-25T20:00:00.123456Z"}}'
            )
        blobs.append(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6))
    return blobs


def reset_peak_rss() -> None:
    """Linux: start the peak-RSS count (VmHWM) afresh, so a run's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--per-object", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t = time.perf_counter()
    blobs = raw_objects(args.records, args.per_object)
    gen = time.perf_counter() - t
    raw_bytes = sum(map(len, blobs))
    names = [f"raw/demo/r1/points/b{i:05d}-000.jsonl.gz" for i in range(len(blobs))]
    print(f"input: {args.records:,} records in {len(blobs)} objects, {raw_bytes / 1e6:.1f} MB gzip "
          f"(generated in {gen:.1f}s); cpus={os.cpu_count()}")
    json.loads(gzip.decompress(blobs[0]).split(b"\n")[0])  # the generator writes valid JSON
    best = cpu_best = None
    for r in range(args.repeat):
        reset_peak_rss()
        t = time.perf_counter()
        c = time.process_time()
        parts, bad = convert_partitions(blobs, names, time_field="ts", types={"value": "float64"})
        t_conv = time.perf_counter() - t
        staged = stage_partitions(parts, lambda partition, data: None)
        total = time.perf_counter() - t
        cpu = time.process_time() - c
        rows = sum(n for _, _, n, _ in staged)
        out_bytes = sum(size for _, _, _, size in staged)
        rate = rows / total
        best = max(best or 0, rate)
        cpu_best = max(cpu_best or 0, rows / cpu)
        print(f"run {r + 1}: {rows:,} rows -> {len(parts)} partitions, {out_bytes / 1e6:.1f} MB parquet; "
              f"read+type+split {t_conv:.2f}s, total {total:.2f}s wall, {cpu:.2f} cpu-s = {rate / 1e6:.2f}M rows/s "
              f"(bad values: {bad.count}); peak RSS {peak_rss_mb():.0f} MB")
        del parts, staged
    load = os.getloadavg()[0]
    print(f"conversion: best {best / 1e6:.2f}M rows/s wall on {os.cpu_count()} cpus, {cpu_best / 1e6:.2f}M rows per "
          f"cpu-second (a 3,008 MB Lambda, 1.7 vCPUs: at most {1.7 * cpu_best / 1e6:.2f}M rows/s); target >= 1M rows/s "
          f"per worker; load average {load:.1f}")


if __name__ == "__main__":
    main()
