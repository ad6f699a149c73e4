"""What a run costs on AWS, from counts, not guesses: the handlers count what they use (harvester/metering.py, the
run's METER item), the run item counts calls, batches and levels; the workflow's own steps are counted from its
definition. Prices per region in ONE table below, with the date they were read. `estimate()` is the same model
before a run exists (`harvest cost SPEC --calls N`).

Not counted: storage (GB-months, depends on retention, not on a run), data transfer out of AWS (the vendor's
answers come in: inbound is free), the free tiers (a run is priced as if they were used up).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from harvester import sizing

#: when the prices below were read from the AWS pricing pages
PRICES_TAKEN = "2026-12-01"

#: the hours of a month in AWS's prorating (365 x 24 / 12)
HOURS_PER_MONTH = 730

#: USD; per region. Sources (each read on PRICES_TAKEN):
#:  Step Functions Standard: $0.025 per 1,000 state transitions, https://aws.amazon.com/step-functions/pricing/
#:  Lambda: $0.20 per 1M requests; $0.0000166667 per GB-s x86_64, $0.0000133334 per GB-s arm64 (first tier),
#:    https://aws.amazon.com/lambda/pricing/
#:  DynamoDB on-demand: $0.625 per 1M write request units, $0.125 per 1M read request units,
#:    https://aws.amazon.com/dynamodb/pricing/on-demand/
#:  S3 Standard: $0.005 per 1,000 PUT/COPY/POST/LIST, $0.0004 per 1,000 GET/SELECT, https://aws.amazon.com/s3/pricing/
#:  Secrets Manager: $0.05 per 10,000 API calls, https://aws.amazon.com/secrets-manager/pricing/
#:  CloudWatch Logs: $0.50 per GB ingested (standard class), https://aws.amazon.com/cloudwatch/pricing/
#:  CloudWatch custom metrics: $0.30 per metric-month (first 10,000), prorated by the hour and metered only when
#:    data is sent, https://aws.amazon.com/cloudwatch/pricing/ (a metric-hour: 0.30 / 730)
PRICES: dict[str, dict[str, float]] = {
    "us-east-1": {
        "sfn_transition": 0.025 / 1000,
        "lambda_request": 0.20 / 1e6,
        "lambda_gb_second_arm64": 0.0000133334,
        "lambda_gb_second_x86_64": 0.0000166667,
        "ddb_write_unit": 0.625 / 1e6,
        "ddb_read_unit": 0.125 / 1e6,
        "s3_tier1_request": 0.005 / 1000,
        "s3_tier2_request": 0.0004 / 1000,
        "secrets_call": 0.05 / 10000,
        "logs_gb": 0.50,
        "metric_hour": 0.30 / HOURS_PER_MONTH,
    },
}
PRICES["us-east-2"] = PRICES["us-west-2"] = PRICES["eu-west-1"] = PRICES["us-east-1"]  # same list prices there

#: the Lambda platform's START, END and REPORT lines per invocation, written whatever the application's log level
PLATFORM_LOG_BYTES = 340
#: a logged workflow event (ERROR level logs only failures; ALL logs every history event with its data)
WORKFLOW_EVENT_LOG_BYTES = 600
#: parent workflow steps per run (statemachines/harvest.asl.json): Plan run, New run or resume?, Record run
#: start|resume, Plan conversion, Convert raw, Plan compaction, Compact partitions, Record lake counts, Any failed
#: batches?, Record run success|incomplete, Harvest complete|incomplete; and per level: Harvest level, Advance
#: level, More levels?
PARENT_STEPS_PER_RUN = 11
PARENT_STEPS_PER_LEVEL = 3
#: DynamoDB writes the workflow makes itself per run (run start/resume, run end) and per failed batch
WORKFLOW_WRITES_PER_RUN = 2
#: custom metrics the fetch handler publishes per source (dimensions service and source; the level is metadata, not
#: a dimension, or each level would be billed as metrics of its own): its own six (Calls, Throttled, Retries,
#: Records, BytesWritten, CallLatency; lambdas/fetch.py) and the rate limiter's (six, or two without a rate limit;
#: harvester/ratelimit.py)
FETCH_METRICS = 6


def metrics_per_source(rate_limited: bool) -> int:
    return FETCH_METRICS + (6 if rate_limited else 2)


@dataclass
class Usage:
    """The counted parts of one run (or of an estimate)."""

    transitions: float = 0
    lambda_requests: float = 0
    lambda_gb_seconds: float = 0
    ddb_write_units: float = 0
    ddb_read_units: float = 0
    s3_tier1_requests: float = 0
    s3_tier2_requests: float = 0
    s3_bytes_written: float = 0
    s3_bytes_read: float = 0
    secrets_calls: float = 0
    log_bytes: float = 0
    metric_series_hours: float = 0  # distinct (custom metric, clock hour) pairs the run's invocations sent
    notes: list[str] = field(default_factory=list)


def prices_for(region: str) -> dict[str, float]:
    if region not in PRICES:
        raise ValueError(f"no prices for region {region!r} in harvester/cost.py (known: {', '.join(sorted(PRICES))})")
    return PRICES[region]


def breakdown(usage: Usage, region: str = "us-east-1", arch: str = "arm64") -> dict[str, Any]:
    """USD per part and in total, with the counts they come from."""
    p = prices_for(region)
    parts = {
        "step_functions": usage.transitions * p["sfn_transition"],
        "lambda_requests": usage.lambda_requests * p["lambda_request"],
        "lambda_compute": usage.lambda_gb_seconds * p[f"lambda_gb_second_{arch}"],
        "dynamodb": usage.ddb_write_units * p["ddb_write_unit"] + usage.ddb_read_units * p["ddb_read_unit"],
        "s3_requests": usage.s3_tier1_requests * p["s3_tier1_request"] + usage.s3_tier2_requests * p["s3_tier2_request"],
        "secrets_manager": usage.secrets_calls * p["secrets_call"],
        "cloudwatch_logs": usage.log_bytes / 1e9 * p["logs_gb"],
        "cloudwatch_metrics": usage.metric_series_hours * p["metric_hour"],
    }
    counts = {k: round(v, 3) for k, v in asdict(usage).items() if k != "notes"}
    return {"usd": {k: round(v, 6) for k, v in parts.items()}, "total_usd": round(sum(parts.values()), 6),
            "counts": counts, "region": region, "arch": arch, "prices_taken": PRICES_TAKEN, "notes": usage.notes}


def _log_bytes(lambda_requests: float, transitions: float, failed_events: float, log_level: str) -> float:
    workflow = {"ALL": transitions * 2, "ERROR": failed_events, "FATAL": 0, "OFF": 0}.get(log_level, failed_events)
    return lambda_requests * PLATFORM_LOG_BYTES + workflow * WORKFLOW_EVENT_LOG_BYTES


def usage_of_run(run: dict[str, Any], meter: dict[str, Any] | None, *, log_level: str = "ERROR") -> Usage:
    """A finished run's usage: the handlers' counts (METER item) plus the workflow's own steps and writes."""
    meter = meter or {}
    levels = len(run.get("levels") or {}) or 1
    totals = run.get("totals") or {}
    failed = float(totals.get("failed_batches", 0) or 0)
    requests = {k.removeprefix("lambda_requests_"): float(v) for k, v in meter.items() if k.startswith("lambda_requests_")}
    # children of the Distributed Maps: one transition per Fetch batch invocation (a retry is another), two more
    # for a failed batch (Record batch failure, Batch failed); one per convert/compact item. The parent's own
    # Lambda steps (plan, advance, the convert function's plan/finish steps) are in the parent's count.
    convert_parent_steps = 3  # Plan conversion, Plan compaction, Record lake counts
    children = requests.get("fetch", 0) + 2 * failed + max(requests.get("convert", 0) - convert_parent_steps, 0)
    parent = PARENT_STEPS_PER_RUN + PARENT_STEPS_PER_LEVEL * levels
    u = Usage(
        transitions=parent + children,
        lambda_requests=sum(requests.values()),
        lambda_gb_seconds=float(meter.get("lambda_mb_ms", 0)) / 1024 / 1000,
        ddb_write_units=float(meter.get("ddb_write_units", 0)) + WORKFLOW_WRITES_PER_RUN + failed,
        ddb_read_units=float(meter.get("ddb_read_units", 0)),
        s3_tier1_requests=float(meter.get("s3_tier1_requests", 0)),
        s3_tier2_requests=float(meter.get("s3_tier2_requests", 0)),
        s3_bytes_written=float(meter.get("s3_bytes_written", 0)),
        s3_bytes_read=float(meter.get("s3_bytes_read", 0)),
        secrets_calls=float(meter.get("secrets_calls", 0)),
        metric_series_hours=len(meter.get("metric_series") or ()),
    )
    u.log_bytes = _log_bytes(u.lambda_requests, u.transitions, 2 * failed, log_level)
    if not meter:
        u.notes.append("no METER item: the run predates metering, only the workflow's own steps are counted")
    u.notes.append(f"Step Functions transitions of the parent from the definition ({levels} levels), children from "
                   "the counted invocations; log bytes from workflowLogLevel " + log_level)
    return u


@dataclass
class Model:
    """Per-call and per-invocation figures of an estimate, measured on a seed-sized local run of the demo (29,228
    calls, 73 invocations; README, "Cost per run"): the rate limiter leases tokens in blocks, so DynamoDB sees
    about one write per ten calls, not one per call."""

    calls_per_batch: float = 0  # 0: from the spec (SourceSpec.batch_size of the deepest level)
    fetch_seconds_per_call: float = 0.05  # without a rate limit: worker time per call
    ddb_write_units_per_call: float = 0.11  # limiter leases, batch items, progress and failures (measured 0.108)
    ddb_read_units_per_call: float = 0.09  # limiter reads, ledger reads (measured 0.088)
    s3_tier1_per_invocation: float = 2.5  # parts, checkpoints, manifests, Parquet (measured 156 / 73)
    s3_tier2_per_invocation: float = 1.0  # manifests, specs, checkpoints read back (measured 71 / 73)
    convert_invocations: float = 6  # plan, groups, plan compaction, compaction items, finish
    convert_gb_seconds: float = 2.0  # the lake conversion of a seed-sized run, all steps


def estimate(spec, calls: int, *, log_level: str = "ERROR", model: Model | None = None) -> Usage:
    """The usage of a run of `spec` that makes `calls` calls, with the formulas of `usage_of_run`. The fetch
    compute is the time the calls take at the spec's rate limit, every fetch worker busy (waiting for its share
    of tokens) all along, at the fetch function's memory."""
    from harvester.functions import FUNCTION_CATALOG

    m = model or Model()
    levels = len(spec.levels)
    per_batch = m.calls_per_batch or sizing.batch_size(spec, levels - 1)  # the deepest level makes most of the calls
    batches = max(levels, math.ceil(calls / per_batch))
    rate = spec.rate_limit.requests_per_second if spec.rate_limit else None
    seconds = calls / rate if rate else calls * m.fetch_seconds_per_call
    workers = sizing.workers(spec)
    fetch_gb_s = max(seconds, 1) * workers * FUNCTION_CATALOG["fetch"].memory_mb / 1024
    small_gb_s = (1 + levels) * 0.5 * 0.5  # plan and advance: ~0.5 s at 512 MB each
    invocations = 1 + batches + levels + m.convert_invocations
    u = Usage(
        transitions=PARENT_STEPS_PER_RUN + PARENT_STEPS_PER_LEVEL * levels + batches + m.convert_invocations - 3,
        lambda_requests=invocations,
        lambda_gb_seconds=fetch_gb_s + small_gb_s + m.convert_gb_seconds,
        ddb_write_units=calls * m.ddb_write_units_per_call + WORKFLOW_WRITES_PER_RUN,
        ddb_read_units=calls * m.ddb_read_units_per_call,
        s3_tier1_requests=invocations * m.s3_tier1_per_invocation,
        s3_tier2_requests=invocations * m.s3_tier2_per_invocation,
        secrets_calls=batches if getattr(spec, "auth", None) and getattr(spec.auth, "secret", None) else 0,
        # the source's metrics in the clock hours the run spans: 1 + seconds / 3600 on average over start times
        metric_series_hours=metrics_per_source(rate is not None) * (1 + seconds / 3600),
    )
    u.log_bytes = _log_bytes(u.lambda_requests, u.transitions, 0, log_level)
    u.notes.append(f"estimate: {calls} calls in ~{batches} batches, {seconds:,.0f} s at "
                   f"{f'{rate:g} r/s' if rate else 'no rate limit'} with {workers} fetch workers")
    return u
