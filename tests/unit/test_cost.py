"""A run's cost from counts: what a metered handler counts on moto's DynamoDB and S3, and the prices applied."""

from __future__ import annotations

import dataclasses

import boto3
import pytest
from moto import mock_aws

from harvester import cost, metering
from harvester.ledger import Ledger, create_table_kwargs, run_pk


@dataclasses.dataclass
class Context:
    memory_limit_in_mb: int = 1024


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("HARVESTER_TABLE", "ledger")
    monkeypatch.setenv("HARVESTER_BUCKET", "bucket")
    with mock_aws():
        from harvester import aws as harvester_aws

        harvester_aws._local.__dict__.clear()  # clients of this test's mock, made after the hooks
        metering.install()
        boto3.client("dynamodb").create_table(**create_table_kwargs("ledger"))
        boto3.client("s3").create_bucket(Bucket="bucket")
        yield harvester_aws
        harvester_aws._local.__dict__.clear()


def test_a_metered_invocation_adds_what_it_used_to_the_runs_meter_item(aws):
    run = {"source": "demo", "run_id": "r1"}

    @metering.metered("fetch")
    def handler(event, context):
        aws.s3().put_object(Bucket="bucket", Key="a", Body=b"x" * 1000)
        aws.s3().get_object(Bucket="bucket", Key="a")["Body"].read()
        aws.table().put_item(Item={"pk": "x", "sk": "y", "blob": "z" * 3000})
        aws.table().get_item(Key={"pk": "x", "sk": "y"})
        return {"ok": True}

    handler({"run": run}, Context(1769))
    handler({"run": run}, Context(1769))
    boto3.client("s3").put_object(Bucket="bucket", Key="b", Body=b"not in an invocation: not counted")

    meter = Ledger(aws.table()).meter("demo", "r1")
    assert meter["lambda_requests_fetch"] == 2
    assert meter["s3_tier1_requests"] == 2 and meter["s3_tier2_requests"] == 2
    assert meter["s3_bytes_written"] == 2000 and meter["s3_bytes_read"] == 2000
    # the units DynamoDB reports for each call (ReturnConsumedCapacity, asked for by the hook): moto reports 1.0 per
    # write and 0.5 per eventually consistent read whatever the size, where AWS would report 3 for this 3 KB item
    assert meter["ddb_write_units"] == 2 * 1.0 and meter["ddb_read_units"] == 2 * 0.5
    assert meter["lambda_mb_ms"] > 0 and meter["lambda_mb_ms"] % 1769 == 0  # billed ms x configured MB
    assert aws.table().get_item(Key={"pk": run_pk("demo", "r1"), "sk": "RUN"}).get("Item") is None  # not the run item


def test_a_failing_invocation_is_counted_too(aws):
    @metering.metered("advance")
    def handler(event, context):
        aws.table().get_item(Key={"pk": "x", "sk": "y"})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        handler({"run": {"source": "demo", "run_id": "r2"}}, Context(512))
    assert Ledger(aws.table()).meter("demo", "r2")["lambda_requests_advance"] == 1


def test_prices_are_applied_per_unit():
    usage = cost.Usage(transitions=1000, lambda_requests=1_000_000, lambda_gb_seconds=1000, ddb_write_units=1_000_000,
                       ddb_read_units=1_000_000, s3_tier1_requests=1000, s3_tier2_requests=1000, secrets_calls=10_000,
                       log_bytes=1e9)
    got = cost.breakdown(usage, "us-east-1", "arm64")["usd"]
    assert got == {"step_functions": 0.025, "lambda_requests": 0.2, "lambda_compute": 0.013333,
                   "dynamodb": 0.75, "s3_requests": 0.0054, "secrets_manager": 0.05, "cloudwatch_logs": 0.5}
    assert cost.breakdown(usage, "us-east-1", "x86_64")["usd"]["lambda_compute"] == 0.016667
    with pytest.raises(ValueError, match="no prices for region"):
        cost.breakdown(usage, "xx-nowhere-1")


def test_a_runs_usage_counts_children_retries_and_failed_batches():
    run = {"levels": {"a": {}, "b": {}}, "totals": {"failed_batches": 1}}
    meter = {"lambda_requests_plan": 1, "lambda_requests_fetch": 10, "lambda_requests_advance": 2,
             "lambda_requests_convert": 5, "lambda_mb_ms": 2048 * 1000, "ddb_write_units": 7}
    u = cost.usage_of_run(run, meter)
    assert u.lambda_requests == 18 and u.lambda_gb_seconds == 2.0
    # parent 11 + 3 per level; children: 10 fetch items, 2 for the failed batch, 5 - 3 convert/compact items
    assert u.transitions == 11 + 6 + 10 + 2 + 2
    assert u.ddb_write_units == 7 + cost.WORKFLOW_WRITES_PER_RUN + 1


def test_the_cli_defaults_are_the_stacks():
    pytest.importorskip("aws_cdk")
    from harvester.cli.costs import DEFAULT_ARCH, DEFAULT_LOG_LEVEL
    from stacks.config import HarvesterConfig

    defaults = {f.name: f.default for f in dataclasses.fields(HarvesterConfig)}
    assert (defaults["arch"], defaults["workflowLogLevel"]) == (DEFAULT_ARCH, DEFAULT_LOG_LEVEL)
