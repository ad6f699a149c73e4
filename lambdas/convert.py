"""Convert stage of the harvest workflow: a run's raw gzip NDJSON -> Parquet under processed/, and the file index.

One function, five steps (the workflow's Payload names the step, so one pyarrow bundle serves them all):

| step | state | what |
| --- | --- | --- |
| `plan` | Plan conversion | groups of raw objects -> `runs/{source}/{run_id}/convert/plan.json` (the Map's items) |
| `group` | Convert group (in Convert raw) | one group -> staging Parquet per partition, bad values reported |
| `plan_compaction` | Plan compaction | one item per (level, partition) -> `.../convert/compaction.json` |
| `compact` | Compact partition (in Compact partitions) | staging -> a few large files, index items |
| `finish` | Record lake counts | staging removed; files, rows, bad values per level onto the run item |
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from harvester import aws, s3keys
from harvester.lake.compact import DEFAULT_TARGET_BYTES, cleanup_staging, compact_partition, plan_compaction
from harvester.lake.convert import DEFAULT_GROUP_BYTES, convert_group, load_plan, plan_conversion
from harvester.lake.index import FileIndex
from harvester.lake.store import S3Store, get_many
from harvester.metering import metered

logger = Logger()
tracer = Tracer()

#: Map concurrency of the convert and compact steps (the vendor is not involved: only Lambda and S3 limits)
DEFAULT_CONCURRENCY = 10


class RunEvent(BaseModel):
    step: Literal["plan", "plan_compaction", "finish"]
    run: dict[str, Any]


class GroupEvent(BaseModel):
    step: Literal["group"]
    group: dict[str, Any]


class CompactEvent(BaseModel):
    step: Literal["compact"]
    partition: dict[str, Any]


def lake_store() -> S3Store:
    return S3Store(aws.s3(), aws.bucket_name())


def file_index() -> FileIndex:
    return FileIndex(aws.dynamodb(), aws.table_name())


def _concurrency(items: int) -> int:
    return max(1, min(items, aws.int_setting("HARVESTER_LAKE_CONCURRENCY", DEFAULT_CONCURRENCY)))


def _levels(run: dict) -> dict[str, dict]:
    spec = aws.run_spec(run)
    return {lv.name: {"time_field": lv.time_field, "types": dict(lv.types), "primary_key": lv.primary_key}
            for lv in spec.levels}


# ------------------------------------------------------------------------------------------------ steps


@event_parser(model=RunEvent)
def plan_handler(event: RunEvent, context: LambdaContext) -> dict:
    run = event.run
    summary = plan_conversion(
        lake_store(), source=run["source"], run_id=run["run_id"], levels=_levels(run),
        group_bytes=aws.int_setting("HARVESTER_LAKE_GROUP_BYTES", DEFAULT_GROUP_BYTES),
    )
    logger.info("conversion planned", extra=summary)
    return {**summary, "max_concurrency": _concurrency(summary["groups"])}


@event_parser(model=GroupEvent)
def group_handler(event: GroupEvent, context: LambdaContext) -> dict:
    group = event.group
    logger.append_keys(level=group.get("level"), group_id=group.get("group_id"))
    result = convert_group(lake_store(), **group)
    bad = result["bad_values"]
    if bad["count"] or bad["notes"]:
        logger.warning("values that could not be converted", extra={"bad_values": bad, "report_key": result["report_key"]})
    logger.info("group converted", extra={"objects": result["objects"], "rows": result["rows"],
                                          "partitions": len(result["partitions"])})
    # small on purpose: the Map collects one of these per group
    return {"rows": result["rows"], "bad_values": bad["count"]}


@event_parser(model=RunEvent)
def plan_compaction_handler(event: RunEvent, context: LambdaContext) -> dict:
    run = event.run
    store = lake_store()
    items = plan_compaction(store, source=run["source"], run_id=run["run_id"])
    key = s3keys.compaction_plan_key(run["source"], run["run_id"])
    store.put(key, json.dumps(items).encode(), "application/json")
    logger.info("compaction planned", extra={"partitions": len(items)})
    return {"plan_key": key, "partitions": len(items), "max_concurrency": _concurrency(len(items))}


@event_parser(model=CompactEvent)
def compact_handler(event: CompactEvent, context: LambdaContext) -> dict:
    item = event.partition
    logger.append_keys(level=item.get("level"), partition=item.get("partition"))
    result = compact_partition(
        lake_store(), file_index(),
        target_bytes=aws.int_setting("HARVESTER_LAKE_TARGET_BYTES", DEFAULT_TARGET_BYTES), **item,
    )
    logger.info("partition committed", extra={"files": len(result["files"]), "rows": result["rows"],
                                              "bytes": result["bytes"], "removed": result["removed"]})
    return {"files": len(result["files"]), "rows": result["rows"]}


def lake_counts(store, index: FileIndex, *, source: str, run_id: str, levels: list[str]) -> dict:
    """What the run put in the lake, per level: committed files (from the index) and bad values (from the
    reports of the groups in the current plan; a report of an older plan's group is ignored)."""
    plan = load_plan(store, source, run_id)
    current = {(i["level"], i["group_id"]) for i in plan}
    out: dict[str, dict] = {}
    for level in levels:
        files = index.files_for_run(source, level, run_id)
        out[level] = {
            "files": len(files),
            "rows": sum(f["rows"] for f in files),
            "bytes": sum(f["bytes"] for f in files),
            "partitions": len({f["partition"] for f in files}),
            "bad_values": 0,
        }
    reports = [k for k, _ in store.list(s3keys.reports_prefix(source, run_id))]
    reports = [k for k in reports if (k.split("/")[-2], k.rsplit("/", 1)[-1].removesuffix(".json")) in current]
    for blob in get_many(store, reports):
        report = json.loads(blob)
        level = out.setdefault(report["level"], {"files": 0, "rows": 0, "bytes": 0, "partitions": 0, "bad_values": 0})
        level["bad_values"] += int(report.get("count", 0))
        for field, n in (report.get("by_field") or {}).items():
            level.setdefault("bad_by_field", {})
            level["bad_by_field"][field] = level["bad_by_field"].get(field, 0) + int(n)
        if report.get("notes"):
            level.setdefault("notes", {}).update(report["notes"])
    # records this run's commits dropped because the lake already had them or had them twice (harvester/lake/dedup.py)
    dup_keys = [k for k, _ in store.list(s3keys.duplicates_prefix(source, run_id))]
    dropped = 0
    for blob in get_many(store, dup_keys):
        report = json.loads(blob)
        level = out.setdefault(report["level"], {"files": 0, "rows": 0, "bytes": 0, "partitions": 0, "bad_values": 0})
        level["duplicates_dropped"] = level.get("duplicates_dropped", 0) + int(report["total"])
        dropped += int(report["total"])
    return {"levels": out, "groups": len(plan), "duplicates_dropped": dropped}


@event_parser(model=RunEvent)
def finish_handler(event: RunEvent, context: LambdaContext) -> dict:
    run = event.run
    source, run_id = run["source"], run["run_id"]
    store = lake_store()
    removed = cleanup_staging(store, source=source, run_id=run_id)
    lake = lake_counts(store, file_index(), source=source, run_id=run_id, levels=list(_levels(run)))
    lake["converted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    aws.ledger().record_lake(source, run_id, lake)
    logger.info("lake counts recorded", extra={"lake": lake, "staging_removed": removed})
    return {level: {k: v.get(k, 0) for k in ("files", "rows", "bad_values", "duplicates_dropped")}
            for level, v in lake["levels"].items()}


STEPS = {
    "plan": plan_handler,
    "group": group_handler,
    "plan_compaction": plan_compaction_handler,
    "compact": compact_handler,
    "finish": finish_handler,
}


@metered("convert")  # duration, memory and AWS calls of the invocation, for the run's cost
@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    """The function's entry point: dispatch on the workflow's `step`."""
    step = event.get("step") if isinstance(event, dict) else None
    if step not in STEPS:
        raise ValueError(f"unknown convert step {step!r}; one of {sorted(STEPS)}")
    run = event.get("run") or {}
    if run:
        logger.append_keys(run_id=run.get("run_id"), source=run.get("source"))
    return STEPS[step](event, context)
