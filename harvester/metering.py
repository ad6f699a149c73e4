"""What each Lambda invocation of a run uses, counted where it happens, for the run's cost (harvester/cost.py).

`@metered("fetch")` on a handler measures its duration and memory (billed as Lambda bills them: duration rounded
up to the millisecond x the configured memory) and, through botocore's event hooks, every AWS call the
invocation makes: the DynamoDB read and write units each call actually consumed (`ReturnConsumedCapacity`
is asked for on every call that supports it), S3 requests by price class and bytes, Secrets Manager calls. At the
end the counts are added, in one `UpdateItem ... ADD`, to the run's meter item (`pk = RUN#source#run_id`,
`sk = METER`): a separate item, as the workflow itself writes the run item with a conditional `PutItem`.

Custom metrics (`@counts_metrics(metrics)`, inside Powertools' `@metrics.log_metrics`): each metric the invocation
publishes, a name with one set of dimension values, is noted with the clock hour it is sent in, as a string in the
meter item's `metric_series` set; CloudWatch bills a custom metric for each hour it receives data ($0.30 a
metric-month, prorated by the hour: https://aws.amazon.com/cloudwatch/pricing/), so a run's share is the number of
distinct (hour, metric) pairs, however many invocations sent them.

The counts of one invocation live in a context variable, so invocations that share a process (the local
engine's threads) or hand work to threads (`asyncio.to_thread` copies the context) count what is theirs.

Consumed capacity: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_PutItem.html#DDB-PutItem-request-ReturnConsumedCapacity
Lambda billed duration: https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html (REPORT line)
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

METER_SK = "METER"

_current: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("harvester_meter", default=None)
#: the custom metric series of the current invocation, "hour|dimensions tag|name" (see counts_metrics)
_series: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("harvester_metric_series", default=None)
_installed: object = None  # the boto3 default session the hooks are on
_install_lock = threading.Lock()
#: the ledger table the meter items go to: harvester/aws.py names it (`write_to`), so this module needs none of it
_table: Callable[[], Any] | None = None

#: DynamoDB operations that accept ReturnConsumedCapacity; the read ones are billed in read units
_DDB_READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}
_DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
#: S3 request price classes (https://aws.amazon.com/s3/pricing/, "Requests & data retrievals"); DELETE is free
_S3_TIER1 = {"PutObject", "CopyObject", "ListObjects", "ListObjectsV2", "CreateMultipartUpload", "UploadPart",
             "CompleteMultipartUpload", "ListMultipartUploads", "ListParts"}
_S3_TIER2 = {"GetObject", "HeadObject", "SelectObjectContent"}


def install() -> None:
    """Register the hooks on boto3's default session (idempotent); clients made afterwards carry them, so call it
    before harvester/aws.py makes its clients (it does)."""
    global _installed
    with _install_lock:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        if _installed is boto3.DEFAULT_SESSION:  # a new default session (boto3.setup_default_session) needs them too
            return
        events = boto3.DEFAULT_SESSION.events
        events.register("provide-client-params.dynamodb.*", _ask_capacity)
        events.register("after-call.dynamodb.*", _count_dynamodb)
        events.register("provide-client-params.s3.PutObject", _count_s3_put_bytes)
        events.register("provide-client-params.s3.UploadPart", _count_s3_put_bytes)
        events.register("after-call.s3.*", _count_s3)
        events.register("after-call.secretsmanager.*", _count_secrets)
        _installed = boto3.DEFAULT_SESSION


def _add(key: str, n: float) -> None:
    meter = _current.get()
    if meter is not None:
        meter[key] += n


def _op(kwargs: dict) -> str:
    return kwargs["event_name"].rsplit(".", 1)[-1]


def _ask_capacity(params: dict, **kwargs) -> None:
    if _current.get() is not None and _op(kwargs) in _DDB_READS | _DDB_WRITES:
        params.setdefault("ReturnConsumedCapacity", "TOTAL")


def _count_dynamodb(parsed: dict, **kwargs) -> None:
    op = _op(kwargs)
    consumed = parsed.get("ConsumedCapacity")
    units = sum(c.get("CapacityUnits", 0) for c in consumed) if isinstance(consumed, list) else \
        (consumed or {}).get("CapacityUnits")
    if units is None:  # not reported (an emulator, an error): the least the operation costs
        units = 0.5 if op in _DDB_READS else 1.0
    _add("ddb_read_units" if op in _DDB_READS else "ddb_write_units", float(units))


def _count_s3_put_bytes(params: dict, **kwargs) -> None:
    body = params.get("Body")
    if isinstance(body, (bytes, bytearray, str)):
        _add("s3_bytes_written", len(body))


def _count_s3(parsed: dict, **kwargs) -> None:
    op = _op(kwargs)
    if op in _S3_TIER1:
        _add("s3_tier1_requests", 1)
    elif op in _S3_TIER2:
        _add("s3_tier2_requests", 1)
        if op == "GetObject":
            _add("s3_bytes_read", parsed.get("ContentLength") or 0)


def _count_secrets(parsed: dict, **kwargs) -> None:
    _add("secrets_calls", 1)


def counts_metrics(metrics: Any) -> Callable:
    """Decorate a handler inside `@metrics.log_metrics` (a Powertools Metrics): when it returns or raises, before
    Powertools flushes them, note the custom metric series it is about to publish."""

    def wrap(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(event, context):
            try:
                return handler(event, context)
            finally:
                note_metric_series(metrics)

        return run

    return wrap


def note_metric_series(metrics: Any) -> None:
    """Never fails the invocation (it runs in the handler's `finally`): a series not noted is a lower estimate."""
    series = _series.get()
    if series is None:
        return
    try:
        names = list(metrics.metric_set)
        dims = {"service": metrics.service, **metrics.dimension_set}  # Powertools adds `service` when it flushes
        tag = hashlib.sha1(json.dumps(sorted(dims.items()), default=str).encode()).hexdigest()[:10]
        hour = time.strftime("%Y%m%d%H", time.gmtime())
        series.update(f"{hour}|{tag}|{name}" for name in names)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logging.getLogger(__name__).warning("custom metrics not noted for the run's cost: %s", exc)


def write_to(table: Callable[[], Any]) -> None:
    """Name the ledger table (a callable returning a boto3 Table) the counts are added to."""
    global _table
    _table = table


def _run_of(event: Any, result: Any) -> tuple[str, str] | None:
    """(source, run_id) from the event or the result: `run` carries both in every harvest handler."""
    for value in (event, result):
        run = value.get("run") if isinstance(value, dict) else getattr(value, "run", None)
        if isinstance(run, dict) and run.get("source") and run.get("run_id"):
            return run["source"], run["run_id"]
    return None


def metered(function: str) -> Callable:
    """Decorate a harvest handler (outermost, so the whole invocation is measured)."""

    def wrap(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(event, context):
            install()
            meter: Counter = Counter()
            series: set[str] = set()
            token, series_token = _current.set(meter), _series.set(series)
            started = time.monotonic()
            result = None
            try:
                result = handler(event, context)
                return result
            finally:
                _current.reset(token)
                _series.reset(series_token)
                billed_ms = math.ceil((time.monotonic() - started) * 1000)
                memory = int(getattr(context, "memory_limit_in_mb", 0) or 0)
                meter[f"lambda_requests_{function}"] += 1
                meter["lambda_mb_ms"] += billed_ms * memory
                where = _run_of(event, result)
                if where:
                    _flush(*where, meter, series)

        return run

    return wrap


def _flush(source: str, run_id: str, meter: Counter, series: set[str] = frozenset()) -> None:
    """ADD every count to the run's meter item, then the metric series to its string set (a union: two invocations
    that sent the same metric in the same hour count it once). Two writes, so that a set grown past DynamoDB's 400 KB
    item limit (~9,000 entries of ~45 bytes: a run of some 750 clock hours at 12 metrics) loses only itself. Never
    fails the invocation (a lost count is a lower cost estimate, a failed batch would be a real loss)."""
    from decimal import Decimal

    counts = {k: Decimal(str(round(v, 3))) for k, v in meter.items() if v}
    _add_to_meter(source, run_id, counts)
    if series:
        _add_to_meter(source, run_id, {"metric_series": set(series)})


def _add_to_meter(source: str, run_id: str, values: dict[str, Any]) -> None:
    from harvester.ledger import PARTITION_KEY, SORT_KEY, run_pk

    try:
        if _table is None:
            raise RuntimeError("no ledger table to write the meter to (harvester.aws names it)")
        _table().update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: METER_SK},
            UpdateExpression="ADD " + ", ".join(f"#{k} :{k}" for k in values),
            ExpressionAttributeNames={f"#{k}": k for k in values},
            ExpressionAttributeValues={f":{k}": v for k, v in values.items()},
        )
    except Exception as exc:  # noqa: BLE001 - see _flush
        logging.getLogger(__name__).warning("run %s of %s: meter not recorded (%s): %s", run_id, source,
                                            ", ".join(sorted(values)), exc)
