"""Fetch batch: every page for a batch of parents; records to raw/, the next level's items to runs/."""

from __future__ import annotations

import asyncio
import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from harvester import aws
from harvester.functions import METRICS_NAMESPACE, SERVICE_NAME
from harvester.metering import counts_metrics, metered
from harvester.payloads import FetchEvent
from harvester.ratelimit import limiter_for
from harvester.secrets import resolve_secret
from harvester.spec import SourceSpec
from harvester.worker import BatchFailed, BatchIncomplete, harvest_batch, time_plan

logger = Logger()
tracer = Tracer()
# named here, not only by the function's environment: Powertools reads POWERTOOLS_METRICS_NAMESPACE when Metrics() is
# built, at import, so a process that imported this module before that environment was set (a test, a tool) held a
# Metrics with no namespace, and its first EMF document raised SchemaValidationError. Same values as the environment.
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)

__all__ = ["handler", "BatchFailed", "BatchIncomplete"]


def time_budget(context: LambdaContext, spec: SourceSpec) -> tuple[float, float]:
    """(seconds to start calls in, seconds every call ends in) from the time Lambda leaves this invocation: the
    reserve is the spec's connect + read timeout plus the write time (harvester.worker.time_plan). Lambda stops
    an invocation at its timeout, whatever it is doing:
    https://docs.aws.amazon.com/lambda/latest/dg/configuration-timeout.html"""
    override = os.environ.get("HARVESTER_BATCH_SECONDS")
    return time_plan(context.get_remaining_time_in_millis() / 1000, spec, float(override) if override else None)


@metered("fetch")  # duration, memory and AWS calls of the invocation, for the run's cost
@logger.inject_lambda_context(correlation_id_path="run.run_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
@counts_metrics(metrics)  # the custom metrics it publishes, for the run's cost (before log_metrics flushes them)
@event_parser(model=FetchEvent)
def handler(event: FetchEvent, context: LambdaContext) -> dict:
    spec = aws.run_spec(event.run)
    level = spec.levels[event.level]
    logger.append_keys(source=spec.name, level=level.name, batch_id=event.batch.batch_id)
    metrics.add_dimension(name="source", value=spec.name)
    # the level as metadata (in the EMF log line, for Logs Insights), not a dimension: each dimension value is a
    # custom metric of its own, billed for every hour it receives data (harvester/cost.py)
    metrics.add_metadata(key="level", value=level.name)
    limiter = limiter_for(
        spec.name,
        spec.rate_limit.requests_per_second if spec.rate_limit else None,
        spec.rate_limit.burst if spec.rate_limit else 1,
        table=aws.table(),
        metrics=metrics,  # the limiter adds TokensGranted, Waits, WaitSeconds, Throttles, LeaseWrites, CurrentRate
    )

    budget, window = time_budget(context, spec)

    async def work() -> dict:
        try:
            return await harvest_batch(
                spec, event.run, event.level, event.batch,
                store=aws.store(), ledger=aws.ledger(), limiter=limiter,
                secret=resolve_secret(spec), time_budget=budget, call_window=window, workers=event.workers,
            )
        finally:
            await limiter.close()

    try:
        result = asyncio.run(work())
    except (BatchIncomplete, BatchFailed) as exc:
        logger.warning(str(exc), extra={"error": type(exc).__name__})
        add_metrics(getattr(exc, "result", {}))
        raise
    add_metrics(result)
    logger.info("batch done", extra={k: v for k, v in result.items() if k != "calls_by_attempt"})
    return {k: result[k] for k in ("batch_id", "status", "records", "calls") if k in result}


def add_metrics(result: dict) -> None:
    stats = result.get("call_stats", {})
    metrics.add_metric(name="Calls", unit=MetricUnit.Count, value=stats.get("calls", 0))
    metrics.add_metric(name="Throttled", unit=MetricUnit.Count, value=stats.get("throttled", 0))
    metrics.add_metric(name="Retries", unit=MetricUnit.Count, value=stats.get("retries", 0))
    metrics.add_metric(name="Records", unit=MetricUnit.Count, value=result.get("records_written", 0))
    metrics.add_metric(name="BytesWritten", unit=MetricUnit.Bytes, value=result.get("bytes_written", 0))
    if stats.get("calls"):
        metrics.add_metric(name="CallLatency", unit=MetricUnit.Milliseconds, value=stats["mean_latency_ms"])
