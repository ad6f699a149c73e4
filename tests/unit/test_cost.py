"""A run's cost from counts: what a metered handler counts on moto's DynamoDB and S3, and the prices applied."""

from __future__ import annotations

import dataclasses

import boto3
import pytest
from moto import mock_aws

from harvester import cost, metering
from harvester.ledger import Ledger, create_table_kwargs, run_pk

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)


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


def test_the_custom_metrics_an_invocation_publishes_are_counted_per_series_and_hour(aws):
    """CloudWatch bills a custom metric (a name with one set of dimension values) for each hour it receives data:
    the handler's metrics are noted before Powertools flushes them, and priced in the run's cost."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    metrics = Metrics(namespace="HarvesterTest", service="harvester")

    @metering.metered("fetch")
    @metrics.log_metrics
    @metering.counts_metrics(metrics)
    def handler(event, context):
        metrics.add_dimension(name="level", value=event["level"])
        metrics.add_metric(name="Calls", unit=MetricUnit.Count, value=3)
        metrics.add_metric(name="Records", unit=MetricUnit.Count, value=30)
        if event["level"] == "b":
            raise RuntimeError("a failed batch publishes what it counted too")
        return {"ok": True}

    run = {"source": "demo", "run_id": "r3"}
    for level in ("a", "a", "a"):
        handler({"run": run, "level": level}, Context())
    with pytest.raises(RuntimeError):
        handler({"run": run, "level": "b"}, Context())
    series = Ledger(aws.table()).meter("demo", "r3")["metric_series"]
    # two names x two levels, each in the clock hour it was sent (two hours if the test crossed one)
    assert len({s.split("|", 1)[1] for s in series}) == 4 and len(series) in (4, 6, 8)
    usage = cost.usage_of_run({"levels": {"a": {}, "b": {}}}, Ledger(aws.table()).meter("demo", "r3"))
    assert usage.metric_series_hours == len(series)
    assert cost.breakdown(usage)["usd"]["cloudwatch_metrics"] == round(len(series) * 0.30 / 730, 6)


class ItemSizeLimit:
    """moto's table with DynamoDB's 400 KB item limit, which moto does not enforce on UpdateItem: an update whose
    values alone pass it is refused with the error AWS gives
    (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-items)."""

    def __init__(self, table):
        self.table = table

    def update_item(self, **kwargs):
        from botocore.exceptions import ClientError

        size = sum(len(str(v)) for v in kwargs["ExpressionAttributeValues"].values())
        if size > 400 * 1024:
            raise ClientError({"Error": {"Code": "ValidationException",
                                         "Message": "Item size has exceeded the maximum allowed size"}}, "UpdateItem")
        return self.table.update_item(**kwargs)


def test_a_series_set_too_large_for_the_item_loses_only_itself(aws, caplog, monkeypatch):
    """The counts are a write of their own: a metric series set DynamoDB refuses does not take them along."""
    from collections import Counter

    monkeypatch.setattr(metering, "_table", lambda: ItemSizeLimit(aws.table()))
    big = {f"2026120100|{i:010d}|{'x' * 60}" for i in range(6000)}  # ~500 KB
    metering._flush("demo", "r4", Counter({"lambda_requests_fetch": 1, "lambda_mb_ms": 2048}), big)
    meter = Ledger(aws.table()).meter("demo", "r4")
    assert meter["lambda_requests_fetch"] == 1 and meter["lambda_mb_ms"] == 2048
    assert "metric_series" not in meter and "meter not recorded (metric_series)" in caplog.text


def test_prices_are_applied_per_unit():
    usage = cost.Usage(transitions=1000, lambda_requests=1_000_000, lambda_gb_seconds=1000, ddb_write_units=1_000_000,
                       ddb_read_units=1_000_000, s3_tier1_requests=1000, s3_tier2_requests=1000, secrets_calls=10_000,
                       log_bytes=1e9, metric_series_hours=730)
    got = cost.breakdown(usage, "us-east-1", "arm64")["usd"]
    assert got == {"step_functions": 0.025, "lambda_requests": 0.2, "lambda_compute": 0.013333,
                   "dynamodb": 0.75, "s3_requests": 0.0054, "secrets_manager": 0.05, "cloudwatch_logs": 0.5,
                   "cloudwatch_metrics": 0.3}
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


@pytest.mark.parametrize("rate", [20, None])
def test_the_metrics_the_estimate_prices_are_the_ones_a_fetch_invocation_publishes(rate):
    """`harvest cost` prices metrics_per_source() custom metrics per source and hour: the fetch handler's own and the
    rate limiter's, counted here on a real limiter's close() beside the handler's add_metrics (in memory, so the
    figure stays true when either changes)."""
    import asyncio

    from harvester.ratelimit import limiter_for
    from lambdas import fetch

    fetch.metrics.clear_metrics()
    try:
        fetch.add_metrics({"call_stats": {"calls": 2, "mean_latency_ms": 12.0}, "records_written": 5})

        async def two_calls() -> None:
            lim = limiter_for(f"cost-{rate}", rate, 5, metrics=fetch.metrics)
            await lim.acquire()
            await lim.acquire()
            await lim.close()

        asyncio.run(two_calls())
        names = sorted(fetch.metrics.metric_set)
        assert len(names) == cost.metrics_per_source(rate_limited=rate is not None), names
    finally:
        fetch.metrics.clear_metrics()
