"""AWS clients and settings for the Lambda handlers (and the local engine, which runs the same handlers).

Handlers run on several threads in the local engine, so boto3 resources are kept per thread.
"""

from __future__ import annotations

import functools
import os
import threading

import boto3

from harvester import metering
from harvester.ledger import Ledger
from harvester.spec import SourceSpec, find_spec, parse_spec
from harvester.storage import HarvestBucket

_local = threading.local()
metering.install()  # before any client is made: clients carry the hooks of the session they were made from


def setting(name: str) -> str:
    try:
        return os.environ[name]
    except KeyError:
        raise RuntimeError(f"environment variable {name} is not set (the stack sets it on every function)") from None


def s3():
    if not hasattr(_local, "s3"):
        _local.s3 = boto3.client("s3")
    return _local.s3


def table():
    if not hasattr(_local, "table"):
        _local.table = boto3.resource("dynamodb").Table(setting("HARVESTER_TABLE"))
    return _local.table


metering.write_to(table)


def dynamodb():
    """A DynamoDB *client* (the lake's file index speaks the low-level API)."""
    if not hasattr(_local, "dynamodb"):
        _local.dynamodb = boto3.client("dynamodb")
    return _local.dynamodb


def bucket_name() -> str:
    return setting("HARVESTER_BUCKET")


def table_name() -> str:
    return setting("HARVESTER_TABLE")


def int_setting(name: str, default: int) -> int:
    """An optional integer setting (the stack may leave it unset)."""
    value = os.environ.get(name)
    return int(value) if value else default


# The lake's store and file index are built in lambdas/convert.py and lambdas/query.py from the clients above:
# importing harvester.lake here would put it (and its pyarrow imports) into every bundle, since a bundle carries
# the whole import closure of its handler.


def store() -> HarvestBucket:
    return HarvestBucket(s3(), setting("HARVESTER_BUCKET"))


def ledger() -> Ledger:
    return Ledger(table())


def source_spec(source: str) -> SourceSpec:
    """A source's spec from the deployed `sources/` folder (plan step only)."""
    return find_spec(setting("HARVESTER_SOURCES_DIR"), source)


@functools.lru_cache(maxsize=32)
def _run_spec(bucket: str, key: str, spec_hash: str) -> SourceSpec:
    spec = parse_spec(store().get_json(key), f"s3://{bucket}/{key}")
    if spec.spec_hash() != spec_hash:
        raise RuntimeError(f"s3://{bucket}/{key} changed during the run (hash {spec.spec_hash()}, run has {spec_hash})")
    return spec


def run_spec(run: dict) -> SourceSpec:
    """The spec a run was planned with (written by the plan step), cached per container by its hash."""
    return _run_spec(setting("HARVESTER_BUCKET"), run["spec_key"], run["spec_hash"])


def execution_status(execution_arn: str) -> str | None:
    """The execution's status, or None when Step Functions has no such execution (ExecutionDoesNotExist)."""
    if not hasattr(_local, "sfn"):
        _local.sfn = boto3.client("stepfunctions")
    try:
        return _local.sfn.describe_execution(executionArn=execution_arn)["status"]
    except _local.sfn.exceptions.ExecutionDoesNotExist:
        return None
