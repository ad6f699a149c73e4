"""Query workflow: plan (index look-up) -> partial aggregates (a Distributed Map) -> reduce and write the result.

One function, three steps (the workflow's Payload names the step):

| step | state | what |
| --- | --- | --- |
| `plan` | Plan query | validate the query (a bad one fails here with `QueryError`), look the files up in the |
| | | time index, write the worker tasks to `queries/{query_id}/tasks.json` |
| `partial` | Aggregate partial (in Aggregate files) | one task's files -> partial aggregates in |
| | | `queries/{query_id}/partials/{task}.json` |
| `reduce` | Reduce and write result | merge the partials, write `results/{query_id}.json` and `.csv`, return a small summary |
"""

from __future__ import annotations

import json
from typing import Any, Literal

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from harvester import aws, s3keys
from harvester.lake.index import FileIndex
from harvester.lake.query import partial_aggregate, plan_query, reduce_partials, write_result
from harvester.lake.querymodel import QueryError, validate_query
from harvester.lake.store import S3Store, get_many

logger = Logger()
tracer = Tracer()

__all__ = ["handler", "QueryError"]  # QueryError is the workflow's Error name for a bad query

#: query workers at once (each reads its files from S3 concurrently)
DEFAULT_CONCURRENCY = 50
#: rows of the result returned in the execution output (the whole result is in S3)
PREVIEW_ROWS = 20


class PlanEvent(BaseModel):
    step: Literal["plan"]
    query: Any
    execution_name: str | None = None


class PartialEvent(BaseModel):
    step: Literal["partial"]
    task: dict[str, Any]
    query: dict[str, Any]


class ReduceEvent(BaseModel):
    step: Literal["reduce"]
    query: dict[str, Any]
    tasks: int


def lake_store() -> S3Store:
    return S3Store(aws.s3(), aws.bucket_name())


def file_index() -> FileIndex:
    return FileIndex(aws.dynamodb(), aws.table_name())


@event_parser(model=PlanEvent)
def plan_handler(event: PlanEvent, context: LambdaContext) -> dict:
    query = validate_query(event.query)
    index = file_index()
    plan = plan_query(index, query, store=lake_store())
    if not plan["tasks"] and not index.files_for_run(query["source"], query["level"]):
        raise QueryError(f"no Parquet files for source {query['source']!r}, level {query['level']!r}: "
                         "check the names, or harvest (and convert) that source first")
    qid = plan["query_id"]
    key = s3keys.query_tasks_key(qid)
    lake_store().put(key, json.dumps(plan["tasks"]).encode(), "application/json")
    logger.append_keys(query_id=qid)
    logger.info("query planned", extra={k: plan[k] for k in ("files", "bytes", "rows")} | {"tasks": len(plan["tasks"])})
    return {
        "query_id": qid, "query": plan["query"], "tasks_key": key, "tasks": len(plan["tasks"]),
        "files": plan["files"], "bytes": plan["bytes"], "rows": plan["rows"],
        "max_concurrency": max(1, min(len(plan["tasks"]), aws.int_setting("HARVESTER_QUERY_CONCURRENCY", DEFAULT_CONCURRENCY))),
    }


@event_parser(model=PartialEvent)
def partial_handler(event: PartialEvent, context: LambdaContext) -> dict:
    query, task = event.query, event.task
    logger.append_keys(query_id=query.get("query_id"), task=task.get("task"))
    partial = partial_aggregate(lake_store(), task, query)
    lake_store().put(s3keys.partial_key(partial["query_id"], partial["task"]), json.dumps(partial).encode(),
                     "application/json")
    logger.info("partial written", extra={"groups": len(partial["rows"]), "stats": partial["stats"]})
    return {"task": partial["task"], "groups": len(partial["rows"])}  # small: the Map collects one per task


@event_parser(model=ReduceEvent)
def reduce_handler(event: ReduceEvent, context: LambdaContext) -> dict:
    query = event.query
    qid = query["query_id"]
    logger.append_keys(query_id=qid)
    store = lake_store()
    # the partials of this plan's tasks only (a stale partial of an earlier, larger plan is not read)
    keys = [s3keys.partial_key(qid, i) for i in range(event.tasks)]
    partials = [json.loads(b) for b in get_many(store, keys)]
    result = reduce_partials(partials, query)
    result["stats"]["tasks"] = event.tasks
    result["query"] = {k: query[k] for k in ("source", "level", "start", "end")}
    summary = write_result(store, result)
    store.delete([k for k, _ in store.list(s3keys.query_prefix(qid))])
    logger.info("query done", extra=summary)
    return {**summary, "columns": result["columns"], "preview": result["rows"][:PREVIEW_ROWS]}


STEPS = {"plan": plan_handler, "partial": partial_handler, "reduce": reduce_handler}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    """The function's entry point: dispatch on the workflow's `step`."""
    step = event.get("step") if isinstance(event, dict) else None
    if step not in STEPS:
        raise ValueError(f"unknown query step {step!r}; one of {sorted(STEPS)}")
    return STEPS[step](event, context)
