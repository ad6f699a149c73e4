"""`harvest` without --local, against a deployed stack: here moto's server on loopback, holding what the synthesized
template names (the stack's CloudFormation outputs, the ledger table, the bucket and both workflows behind their
`live` aliases, with the real definitions and the real handlers). The CLI runs as a subprocess that reaches it only
through AWS_ENDPOINT_URL, as it would reach AWS."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from datetime import timedelta

import pytest

from harvester import cost
from harvester.cli.backend import OPTIONAL_OUTPUTS, REQUIRED_OUTPUTS
from harvester.local.engine import BUCKET, TABLE, LocalEngine
from harvester.simulator.faults import FaultConfig, FaultRule
from harvester.spec import load_spec
from tests.integration.conftest import API_KEY, demo_levels, write_spec
from tests.integration.test_lake_e2e import objects

pytestmark = pytest.mark.integration

SIZES = dict(troops=2, warriors_per_troop=3, datagroups_per_warrior=2, points_per_datagroup=30, rate=200)


@pytest.fixture(scope="module")
def template():
    """The synthesized app (as `cdk synth` builds it, minus bundling): its stack name and outputs."""
    from aws_cdk.assertions import Template

    from tests.infrastructure.helpers import make_app

    _, stack = make_app()
    return stack.stack_name, Template.from_stack(stack).to_json()["Outputs"]


class Deployed:
    def __init__(self, engine: LocalEngine, endpoint: str, stack: str, spec):
        self.engine, self.endpoint, self.stack, self.spec = engine, endpoint, stack, spec

    def harvest(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_PROFILE", "HARVESTER_STACK"))}
        env.update(AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   E2E_API_KEY=API_KEY)
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_DEFAULT_REGION", None)
        return subprocess.run([sys.executable, "-m", "harvester.cli", *args, "--region", "us-east-1"], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def json(self, *args: str) -> dict:
        out = self.harvest(*args, "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)


@contextmanager
def deploy(template, vendor, tmp_path, levels: list[dict], **top):
    """moto's server with the stack's resources and one source (`e2e`, on `vendor`); the Lambda tasks of its
    executions run the real handlers (the local engine's dispatcher, in this process)."""
    from moto.server import ThreadedMotoServer

    stack_name, outputs = template
    assert set(REQUIRED_OUTPUTS) | set(OPTIONAL_OUTPUTS) <= set(outputs), "the CLI reads outputs the stack lacks"
    spec_path = write_spec(tmp_path, vendor, levels, **top)
    with LocalEngine(tmp_path / "state", processes=0) as engine:
        engine.add_source(spec_path, load_spec(spec_path))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # shares mock_aws's backends
        server.start()
        try:
            values = {"StateMachineArn": engine.state_machine_arn, "StateMachineAliasArn": engine.alias_arn,
                      "QueryStateMachineAliasArn": engine.query_alias_arn, "BucketName": BUCKET,
                      "LedgerTableName": TABLE, "Sources": "e2e"}
            body = {"Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                    "Outputs": {k: {"Value": values.get(k, f"not-read-by-the-cli-{k}")} for k in outputs}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # moto does not model the placeholder resource
                engine.cfn = __import__("boto3").client("cloudformation", region_name="us-east-1")
                engine.cfn.create_stack(StackName=stack_name, TemplateBody=json.dumps(body))
            host, port = server.get_host_and_port()
            yield Deployed(engine, f"http://{host}:{port}", stack_name, load_spec(spec_path))
        finally:
            server.stop()


@pytest.fixture
def deployed(template, vendor_factory, tmp_path):
    vendor = vendor_factory(**SIZES)
    with deploy(template, vendor, tmp_path, demo_levels()) as stack:
        yield stack, vendor


def test_run_follow_runs_status_and_query_on_the_stack(deployed):
    stack, vendor = deployed
    out = stack.harvest("run", "e2e")
    assert out.returncode == 0, out.stderr[-3000:]
    started = next(ln for ln in out.stderr.splitlines() if ln.startswith("run "))
    run_id = started.split()[1]
    run = stack.engine.ledger.get_run("e2e", run_id)  # the id printed at the start is the run's id
    assert run is not None and run["status"] == "SUCCEEDED"
    assert f"stack {stack.stack} (us-east-1)" in started
    assert "SUCCEEDED" in out.stdout and str(run["totals"]["calls"]) in out.stdout
    # its cost, from what its invocations counted, printed at the end and stored on the run item
    meter = stack.engine.ledger.meter("e2e", run_id)
    assert meter["lambda_requests_fetch"] >= len(stack.spec.levels) and meter["lambda_mb_ms"] > 0
    assert run["cost"]["total_usd"] > 0 and run["cost"]["counts"]["lambda_requests"] == sum(
        v for k, v in meter.items() if k.startswith("lambda_requests_"))
    assert f"cost of run {run_id}" in out.stdout
    # the custom metrics its fetch invocations published, once per metric and clock hour, priced in its cost
    metric_names = {s.split("|", 1)[1] for s in meter["metric_series"]}
    assert len(metric_names) == cost.metrics_per_source(rate_limited=False)  # one set for all the levels
    assert run["cost"]["counts"]["metric_series_hours"] == len(meter["metric_series"])
    assert run["cost"]["usd"]["cloudwatch_metrics"] > 0

    assert stack.json("runs") == {"sources": ["e2e"]}
    runs = stack.json("runs", "e2e")["runs"]
    assert [(r["run_id"], r["shown_status"]) for r in runs] == [(run_id, "SUCCEEDED")]
    assert runs[0]["cost"]["total_usd"] == run["cost"]["total_usd"]
    status = stack.json("status", run_id)
    assert status["status"] == "SUCCEEDED"
    assert [lv["name"] for lv in status["levels"]] == [lv.name for lv in stack.spec.levels]
    assert sum(lv["calls"] for lv in status["levels"]) == vendor.stats().requests
    assert stack.json("failures", run_id)["failures"] == []
    again = stack.harvest("run", "e2e", "--run-id", run_id)  # refused by the workflow's plan step: bad input
    assert again.returncode == 2 and "already exists" in again.stderr, again.stderr[-2000:]
    followed = stack.harvest("status", run_id, "--follow", "--timeout", "60")
    assert followed.returncode == 0 and "SUCCEEDED" in followed.stdout, followed.stderr[-2000:]

    query = stack.json("query", "--source", "e2e", "--level", "points", "--group-by", "warriors.firmware",
                       "--agg", "count as points")
    assert sum(row[-1] for row in query["rows"]) == vendor.data.counts()["points"]


def test_an_incomplete_run_exits_3_lists_its_failures_and_resumes_to_0(deployed):
    stack, vendor = deployed
    victim = vendor.data.ids("datagroups")[1]
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/datagroups/*/points"], ids=[victim])))
    out = stack.harvest("run", "e2e", "--run-id", "r1")
    assert out.returncode == 3, out.stderr[-3000:]
    assert "INCOMPLETE" in out.stdout and "404" in out.stdout and "harvest resume r1" in out.stderr
    assert [r["shown_status"] for r in stack.json("runs", "e2e")["runs"]] == ["INCOMPLETE"]
    failures = stack.json("failures", "r1")["failures"]
    assert [(f["level"], f["status"]) for f in failures] == [("points", 404)] and victim in failures[0]["url"]
    assert stack.harvest("status", "r1").returncode == 3

    vendor.clear_faults()
    resumed = stack.harvest("resume", "r1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = stack.engine.ledger.get_run("e2e", "r1")
    assert run["status"] == "SUCCEEDED" and run["attempt"] == 2


def test_unknown_run_source_or_stack_is_bad_input(deployed):
    stack, _ = deployed
    for args in (["status", "nope"], ["failures", "nope"], ["resume", "nope"], ["run", "not-deployed"],
                 ["runs", "--stack", "NoSuchStack"]):
        out = stack.harvest(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, (args, out.stderr)


def test_a_backfill_on_the_stack_harvests_its_slices_and_leaves_the_daily_bookmark(template, vendor_factory, tmp_path):
    vendor = vendor_factory(**{**SIZES, "points_per_datagroup": 24 * 10, "interval_seconds": 3600, "variation": 0})
    start = vendor.data.config.start  # 2026-01-01T00:00Z, a point an hour
    vendor.set_clock(start + timedelta(days=10))
    levels = demo_levels({"points": {"type": "link_header", "size_param": "limit", "size": 30}})
    levels[-1]["window"] = {"start_param": "from", "end_param": "to", "format": "iso", "initial_start": "2026-01-01"}
    with deploy(template, vendor, tmp_path, levels, rate_limit={"requests_per_second": 150, "burst": 5}) as stack:
        # a window Plan run refuses: exit 2 (bad input), from the workflow itself when only the name is given
        bad = stack.harvest("backfill", "e2e", "--from", "2026-01-04", "--to", "2026-01-01", "--run-id", "bad")
        assert bad.returncode == 2, bad.stderr[-2000:]
        assert "window" in bad.stderr and stack.engine.ledger.get_run("e2e", "bad") is None

        out = stack.harvest("backfill", "e2e", "--from", "2026-01-01", "--to", "2026-01-04T00:00:00Z",
                            "--step", "P1D", "--run-id", "b1")
        assert out.returncode == 0, out.stderr[-3000:]
        assert "run b1 " in out.stderr and "SUCCEEDED" in out.stdout
        run = stack.engine.ledger.get_run("e2e", "b1")
        assert run["window"]["kind"] == "backfill" and run["window"]["step"] == "P1D"
        groups = vendor.data.ids("datagroups")
        assert run["levels"]["points"]["batches"] >= 1
        # one call per datagroup and daily slice (a day's 24 points on one page), and exactly those 3 days' points
        assert vendor.stats().by_route["points"] == 3 * len(groups) and vendor.stats().refused == 0
        got = set()
        for key in objects(stack.engine, "raw/e2e/b1/"):
            if "/points/" in key:
                body = gzip.decompress(stack.engine.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
                got |= {(r["_lineage"]["datagroups"], r["ts"]) for r in map(json.loads, body.splitlines())}
        assert got == {(g, ts) for g, ts in vendor.data.point_keys() if ts < "2026-01-04"}
        assert len(got) == 3 * 24 * len(groups)
        assert stack.engine.ledger.get_bookmark("e2e") is None  # a backfill never moves the daily bookmark
