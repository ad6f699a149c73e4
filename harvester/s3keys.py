"""Every S3 key the harvester writes or reads: the harvest's and the lake's, pure functions of their inputs (a retried
step overwrites its own output, never adds a duplicate). What each key holds: docs/architecture.md, "S3 layout".
"""

from __future__ import annotations

import hashlib

#: the partition of rows without a time (Hive's name for a null partition value)
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

# ---------------------------------------------------------------- a run's own state: runs/{source}/{run_id}/


def run_prefix(source: str, run_id: str) -> str:
    return f"runs/{source}/{run_id}"


def spec_key(source: str, run_id: str) -> str:
    return f"{run_prefix(source, run_id)}/spec.json"


def manifest_key(source: str, run_id: str, level: int) -> str:
    return f"{run_prefix(source, run_id)}/manifests/{level}.json"


def children_prefix(source: str, run_id: str, level: int) -> str:
    """Where the batches of level `level - 1` put the Map items of level `level`."""
    return f"{run_prefix(source, run_id)}/children/{level}/"


def children_key(source: str, run_id: str, level: int, batch_id: str, part: int) -> str:
    return f"{children_prefix(source, run_id, level)}{batch_id}-{part:03d}.json"


def cursors_key(source: str, run_id: str) -> str:
    """The cursor variant's per-parent cursors a run starts from (harvester/run.py cursor_state)."""
    return f"{run_prefix(source, run_id)}/cursors.json"


def checkpoint_key(source: str, run_id: str, level: int, batch_id: str) -> str:
    return f"{run_prefix(source, run_id)}/checkpoints/{level}/{batch_id}.json"


# ---------------------------------------------------------------- harvested records: raw/


def raw_prefix(source: str, run_id: str, level: str | None = None) -> str:
    base = f"raw/{source}/{run_id}/"
    return f"{base}{level}/" if level else base


def raw_key(source: str, run_id: str, level: str, batch_id: str, part: int) -> str:
    return f"{raw_prefix(source, run_id, level)}{batch_id}-{part:03d}.jsonl.gz"


# ---------------------------------------------------------------- the convert stage: runs/{source}/{run_id}/...


def convert_plan_key(source: str, run_id: str) -> str:
    return f"{run_prefix(source, run_id)}/convert/plan.json"


def compaction_plan_key(source: str, run_id: str) -> str:
    return f"{run_prefix(source, run_id)}/convert/compaction.json"


def reports_prefix(source: str, run_id: str) -> str:
    return f"{run_prefix(source, run_id)}/convert/reports/"


def report_key(source: str, run_id: str, level: str, group_id: str) -> str:
    return f"{reports_prefix(source, run_id)}{level}/{group_id}.json"


def duplicates_prefix(source: str, run_id: str) -> str:
    return f"{run_prefix(source, run_id)}/convert/duplicates/"


def duplicates_key(source: str, run_id: str, level: str, partition: str) -> str:
    """What one partition's commit dropped as duplicates (`harvester/lake/dedup.py`)."""
    return f"{duplicates_prefix(source, run_id)}{level}/{partition}.json"


def staging_prefix(source: str, run_id: str, level: str | None = None) -> str:
    return f"{run_prefix(source, run_id)}/staging/" + (f"{level}/" if level else "")


def staging_key(source: str, run_id: str, level: str, partition: str, group_id: str) -> str:
    return f"{staging_prefix(source, run_id, level)}{partition}/{group_id}.parquet"


def group_id(keys: list[str]) -> str:
    """Deterministic id of a group of raw objects: the same keys give the same staging files."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the lake: processed/


def processed_prefix(source: str, level: str, partition: str | None = None) -> str:
    return f"processed/{source}/{level}/" + (f"{partition}/" if partition else "")


def processed_key(source: str, level: str, partition: str, run_id: str, n: int) -> str:
    return f"{processed_prefix(source, level, partition)}{run_id}-{n:04d}.parquet"


# ---------------------------------------------------------------- queries: queries/, results/


def query_prefix(query_id: str) -> str:
    return f"queries/{query_id}/"


def query_tasks_key(query_id: str) -> str:
    return f"{query_prefix(query_id)}tasks.json"


def partial_key(query_id: str, task: int) -> str:
    return f"{query_prefix(query_id)}partials/{task:05d}.json"


def result_keys(query_id: str) -> tuple[str, str]:
    return f"results/{query_id}.json", f"results/{query_id}.csv"
