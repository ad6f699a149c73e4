"""What each Lambda invocation of a run uses, counted where it happens, for the run's cost (harvester/cost.py).

`@metered("fetch")` on a handler measures its duration and memory (billed as Lambda bills them: duration rounded
up to the millisecond x the configured memory) and, through botocore's event hooks, every AWS call the
invocation makes: the DynamoDB read and write units each call actually consumed (`ReturnConsumedCapacity`
is asked for on every call that supports it), S3 requests by price class and bytes, Secrets Manager calls. At the
end the counts are added, in one `UpdateItem ... ADD`, to the run's meter item (`pk = RUN#source#run_id`,
`sk = METER`): a separate item, as the workflow itself writes the run item with a conditional `PutItem`.

The counts of one invocation live in a context variable, so invocations that share a process (the local
engine's threads) or hand work to threads (`asyncio.to_thread` copies the context) count what is theirs.

Consumed capacity: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_PutItem.html#DDB-PutItem-request-ReturnConsumedCapacity
Lambda billed duration: https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html (REPORT line)
"""

from __future__ import annotations

import contextvars
import logging
import functools
import math
import threading
import time
from collections import Counter
from typing import Any, Callable

METER_SK = "METER"

_current: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("harvester_meter", default=None)
_installed: object = None  # the boto3 default session the hooks are on
_install_lock = threading.Lock()

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
            token = _current.set(meter)
            started = time.monotonic()
            result = None
            try:
                result = handler(event, context)
                return result
            finally:
                _current.reset(token)
                billed_ms = math.ceil((time.monotonic() - started) * 1000)
                memory = int(getattr(context, "memory_limit_in_mb", 0) or 0)
                meter[f"lambda_requests_{function}"] += 1
                meter["lambda_mb_ms"] += billed_ms * memory
                where = _run_of(event, result)
                if where:
                    _flush(*where, meter)

        return run

    return wrap


def _flush(source: str, run_id: str, meter: Counter) -> None:
    """One write: ADD every count to the run's meter item. Never fails the invocation (a lost count is a lower
    cost estimate, a failed batch would be a real loss)."""
    from decimal import Decimal

    from harvester import aws
    from harvester.ledger import PARTITION_KEY, SORT_KEY, run_pk

    counts = {k: v for k, v in meter.items() if v}
    try:
        aws.table().update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: METER_SK},
            UpdateExpression="ADD " + ", ".join(f"#{k} :{k}" for k in counts),
            ExpressionAttributeNames={f"#{k}": k for k in counts},
            ExpressionAttributeValues={f":{k}": Decimal(str(round(v, 3))) for k, v in counts.items()},
        )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logging.getLogger(__name__).warning("run %s of %s: meter not recorded: %s", run_id, source, exc)
