"""dlt's rest_api source on the simulated vendor: the peer the benchmarks compare with.

Runs ONLY in the benchmark's own virtualenv (bench/.venv-dlt, dlt==1.31.0; never a product dependency):

    bench/.venv-dlt/bin/python bench/_dlt_harvest.py --base-url http://127.0.0.1:PORT --key KEY --out DIR

The same four levels as the harvester's bench spec, each a dlt resource whose path names its parent
(``{resources.troops.id}``), with dlt's own paginators for the vendor's styles:

| level      | vendor style | dlt paginator                                                                 |
| ---------- | ------------ | ----------------------------------------------------------------------------- |
| troops     | page         | page_number (page, per_page=50); the vendor's ``total`` counts records, dlt's  |
|            |              | ``total_path`` means pages, so it stops on the first empty page (+1 call)      |
| warriors   | offset       | offset (offset/limit=50, total_path=total)                                     |
| datagroups | cursor       | cursor (cursor_path=next_cursor, cursor_param=cursor, limit=50)                |
| points     | link         | header_link (Link rel=next, limit=100)                                         |

dlt's defaults otherwise: sequential extraction, its requests client's retries (5 attempts, 429 and 5xx
and connection errors, exponential back-off with factor 1, Retry-After honoured). No client-side rate
limit exists in dlt. Loads to the ``filesystem`` destination (local folder, jsonl). Prints one JSON line
with the seconds of extract / normalize / load and the records per table (total and unique).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import dlt  # noqa: E402
from dlt.sources.rest_api import rest_api_source  # noqa: E402

LEVELS = ("troops", "warriors", "datagroups", "points")


def source(base_url: str, key: str, parallelized: bool = False):
    return rest_api_source(config(base_url, key, parallelized))


def config(base_url: str, key: str, parallelized: bool = False) -> dict:
    """The rest_api configuration (bench/_dlt_daily.py adds an incremental cursor to the points)."""
    return {
        "client": {
            "base_url": base_url.rstrip("/") + "/v1/",
            "auth": {"type": "api_key", "name": "X-Api-Key", "api_key": key, "location": "header"},
        },
        "resource_defaults": {"write_disposition": "append", **({"parallelized": True} if parallelized else {})},
        "resources": [
            {"name": "troops", "endpoint": {
                "path": "troops", "params": {"per_page": 50}, "data_selector": "data",
                "paginator": {"type": "page_number", "page_param": "page", "base_page": 1, "total_path": None}}},
            {"name": "warriors", "endpoint": {
                "path": "troops/{resources.troops.id}/warriors", "data_selector": "items",
                "paginator": {"type": "offset", "limit": 50, "offset_param": "offset", "limit_param": "limit",
                              "total_path": "total"}}},
            {"name": "datagroups", "endpoint": {
                "path": "warriors/{resources.warriors.id}/datagroups", "params": {"limit": 50},
                "data_selector": "results",
                "paginator": {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"}}},
            {"name": "points", "include_from_parent": ["id"], "endpoint": {
                "path": "datagroups/{resources.datagroups.id}/points", "params": {"limit": 100},
                "data_selector": "$", "paginator": {"type": "header_link"}}},
        ],
    }


def _lines(path: Path):
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    for line in raw.decode().splitlines():
        if line.strip():
            yield json.loads(line)


def count(out: Path, dataset: str) -> dict[str, dict[str, int]]:
    """Records per table from the loaded files: total, unique (by id; points by parent id + ts)."""
    result = {}
    for level in LEVELS:
        keys = []
        for path in sorted((out / dataset / level).glob("*")):
            if path.is_file():
                for rec in _lines(path):
                    keys.append((rec.get("_datagroups_id"), rec.get("ts")) if level == "points" else rec.get("id"))
        result[level] = {"records": len(keys), "unique": len(set(keys)), "duplicates": len(keys) - len(set(keys))}
    return result


def cpu() -> float:
    """CPU seconds of this process so far, every thread (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--parallelized", action="store_true", help="dlt's parallelized resources (threads)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = "bench"
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt", pipelines_dir=str(args.out / "_pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=str(args.out / "lake")), dataset_name=dataset,
    )
    out: dict = {"dlt": dlt.__version__, "parallelized": args.parallelized}
    t0, cpu0 = time.time(), cpu()
    try:
        pipeline.extract(source(args.base_url, args.key, args.parallelized), loader_file_format="jsonl")
        out["extract_seconds"] = round(time.time() - t0, 3)
        out["extract_cpu_seconds"] = round(cpu() - cpu0, 3)  # the calls, parsing, writing extract files
        pipeline.normalize()
        pipeline.load()
        out["seconds"] = round(time.time() - t0, 3)
        out["cpu_seconds"] = round(cpu() - cpu0, 3)  # with normalize and load (jsonl files in a folder)
        out["ok"] = True
        out["records"] = count(args.out / "lake", dataset)
    except Exception as exc:  # noqa: BLE001 - reported, the benchmark goes on
        out["ok"] = False
        out["seconds"] = round(time.time() - t0, 3)
        out["error"] = f"{type(exc).__name__}: {exc}"[:600]
    out["started"] = t0
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
