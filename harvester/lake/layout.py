"""S3 keys of the lake. Every key is a pure function of its inputs, so a retry overwrites, never duplicates.

| key | what |
| --- | --- |
| `raw/{source}/{run_id}/{level}/{batch_id}-{part:03d}.jsonl.gz` | harvested records (input, written by the harvest) |
| `runs/{source}/{run_id}/convert/plan.json` | conversion plan: groups of raw objects (the Map items) |
| `runs/{source}/{run_id}/convert/compaction.json` | compaction plan: one item per (level, partition) (the Map items) |
| `runs/{source}/{run_id}/staging/{level}/{partition}/{group_id}.parquet` | one converted group's rows of one partition |
| `runs/{source}/{run_id}/convert/reports/{level}/{group_id}.json` | bad values of one group (every one, up to a limit) |
| `processed/{source}/{level}/{partition}/{run_id}-{n:04d}.parquet` | committed files, a few per partition per run |
| `results/{query_id}.json`, `results/{query_id}.csv` | query results |
| `queries/{query_id}/tasks.json` | a query's worker tasks (the Map items of the query workflow) |
| `queries/{query_id}/partials/{task:05d}.json` | a query worker's partial aggregates (when not returned inline) |
"""

from __future__ import annotations

import hashlib

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def raw_prefix(source: str, run_id: str, level: str | None = None) -> str:
    return f"raw/{source}/{run_id}/" + (f"{level}/" if level else "")


def convert_plan_key(source: str, run_id: str) -> str:
    return f"runs/{source}/{run_id}/convert/plan.json"


def compaction_plan_key(source: str, run_id: str) -> str:
    return f"runs/{source}/{run_id}/convert/compaction.json"


def reports_prefix(source: str, run_id: str) -> str:
    return f"runs/{source}/{run_id}/convert/reports/"


def duplicates_key(source: str, run_id: str, level: str, partition: str) -> str:
    """What one partition's commit dropped as duplicates (`harvester/lake/dedup.py`)."""
    return f"runs/{source}/{run_id}/convert/duplicates/{level}/{partition}.json"


def duplicates_prefix(source: str, run_id: str) -> str:
    return f"runs/{source}/{run_id}/convert/duplicates/"


def staging_prefix(source: str, run_id: str, level: str | None = None) -> str:
    return f"runs/{source}/{run_id}/staging/" + (f"{level}/" if level else "")


def staging_key(source: str, run_id: str, level: str, partition: str, group_id: str) -> str:
    return f"{staging_prefix(source, run_id, level)}{partition}/{group_id}.parquet"


def report_key(source: str, run_id: str, level: str, group_id: str) -> str:
    return f"runs/{source}/{run_id}/convert/reports/{level}/{group_id}.json"


def processed_prefix(source: str, level: str, partition: str | None = None) -> str:
    return f"processed/{source}/{level}/" + (f"{partition}/" if partition else "")


def processed_key(source: str, level: str, partition: str, run_id: str, n: int) -> str:
    return f"{processed_prefix(source, level, partition)}{run_id}-{n:04d}.parquet"


def result_keys(query_id: str) -> tuple[str, str]:
    return f"results/{query_id}.json", f"results/{query_id}.csv"


def query_prefix(query_id: str) -> str:
    return f"queries/{query_id}/"


def query_tasks_key(query_id: str) -> str:
    return f"queries/{query_id}/tasks.json"


def partial_key(query_id: str, task: int) -> str:
    return f"queries/{query_id}/partials/{task:05d}.json"


def group_id(keys: list[str]) -> str:
    """Deterministic id of a group of raw objects: the same keys give the same staging files."""
    h = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return h[:16]


def partition_of_key(key: str) -> str:
    """``event_date=2026-11-20`` from a processed or staging key."""
    return key.rsplit("/", 2)[-2]
