"""Offline IAM: the local engine authorizes every AWS call as the role that makes it on AWS, against the policies
`cdk synth` writes for this app, and the IAM defects that enforcement exposed (issue 10) stay fixed."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from harvester import storage
from harvester.local.engine import BUCKET
from harvester.local.iam import acting_as
from tests.integration.conftest import demo_levels, write_spec

pytestmark = pytest.mark.integration

#: what each function reads that may not exist yet (HarvestBucket.get_json with a default): function -> example keys
OPTIONAL_READS = {
    "fetch": [storage.checkpoint_key("demo", "20260101T000000Z-00000000", 1, "b-000001")],
}


def role(engine, function: str) -> str:
    return engine.authorizer.model.functions[function]


def error_code(call) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return err.value.response["Error"]["Code"]


# --- the enforcement itself -------------------------------------------------------------------------------------
def test_calls_are_authorized_as_the_callers_role(engine):
    engine.s3.put_object(Bucket=BUCKET, Key="raw/demo/r/x.jsonl.gz", Body=b"x")  # the harness: not checked
    with acting_as(role(engine, "plan")):  # plan writes run state, never records
        assert error_code(lambda: engine.s3.put_object(Bucket=BUCKET, Key="raw/demo/r/y", Body=b"y")) == "AccessDenied"
        engine.s3.put_object(Bucket=BUCKET, Key="runs/demo/r/spec.json", Body=b"{}")
    with acting_as(role(engine, "fetch")):  # fetch deletes nothing, and reads no other table
        assert error_code(lambda: engine.s3.delete_object(Bucket=BUCKET, Key="raw/demo/r/x.jsonl.gz")) == "AccessDenied"
        assert error_code(lambda: engine.dynamodb.scan(TableName="harvester-ledger")) == "AccessDeniedException"
    assert engine.authorizer.denials


def test_a_missing_key_is_403_without_list_permission(engine):
    """The state machine role may read runs/* but not list the bucket: S3 answers 403, not 404."""
    with acting_as(engine.authorizer.model.state_machines["harvester-harvest"]):
        assert error_code(lambda: engine.s3.get_object(Bucket=BUCKET, Key="runs/demo/none.json")) == "AccessDenied"
        assert error_code(lambda: engine.s3.head_object(Bucket=BUCKET, Key="runs/demo/none.json")) == "403"


def test_the_state_machine_integrations_run_as_its_role(vendor_factory, engine, tmp_path):
    """Without its ledger grant the workflow's own DynamoDB putItem is refused as on AWS, and its Lambda
    invocations without lambda:InvokeFunction on the live alias."""
    vendor = vendor_factory(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=1)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    policies = engine.authorizer.model.roles[engine.authorizer.model.state_machines["harvester-harvest"]]
    for sid, error in (("LedgerWrites", "DynamoDB.AccessDeniedException"), ("InvokeFunctions", "Lambda.AccessDeniedException")):
        saved = [dict(p) for p in policies]
        for p in policies:
            p["Statement"] = [s for s in p["Statement"] if s.get("Sid") != sid]
        engine.authorizer._decide.cache_clear()
        try:
            arn = engine.start({"source": spec.name})
            desc = engine.wait(arn, timeout=120)
        finally:
            policies[:] = saved
            engine.authorizer._decide.cache_clear()
        failures = [e for e in engine.history(arn) if e["type"] == "TaskFailed"]
        assert desc["status"] == "FAILED" and failures, desc
        assert failures[0]["taskFailedEventDetails"]["error"] == error


def test_a_handler_thread_pool_keeps_the_callers_role(engine):
    from concurrent.futures import ThreadPoolExecutor

    from harvester.local.iam import CALLER

    with acting_as("SomeRole"), ThreadPoolExecutor(2) as pool:
        assert pool.submit(CALLER.get).result() == "SomeRole"


def test_a_denial_inside_a_handler_is_the_functions_error(vendor_factory, engine, tmp_path):
    """A handler whose own call is denied fails as a function error named after the exception (as Lambda reports
    it), not as a refused invocation (Lambda.AccessDeniedException)."""
    vendor = vendor_factory(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=1)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    for policy in engine.authorizer.model.roles[role(engine, "plan")]:
        policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != "WriteObjects"]
    engine.authorizer._decide.cache_clear()
    desc = engine.wait(engine.start({"source": spec.name}), timeout=60)
    assert desc["status"] == "FAILED"
    assert not desc["error"].startswith("Lambda.") and "AccessDenied" in desc["error"] + desc["cause"], desc


# --- D2: optional keys ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", sorted(OPTIONAL_READS))
def test_an_optional_key_that_does_not_exist_yet_reads_as_absent(engine, function):
    """A batch's first fetch reads its checkpoint before one exists. On AWS a GetObject of a missing key answers
    404 NoSuchKey only with s3:ListBucket on the bucket, decided on the GetObject request, which carries no
    s3:prefix: the grant's s3:prefix condition made it 403 AccessDenied, and every batch failed."""
    store = storage.HarvestBucket(engine.s3, BUCKET)
    with acting_as(role(engine, function)):
        for key in OPTIONAL_READS[function]:
            assert store.get_json(key, default=None) is None


@pytest.mark.parametrize("function", ["plan", "fetch", "advance", "convert", "query"])
def test_every_function_sees_a_missing_key_under_its_read_prefixes_as_missing(engine, function):
    from harvester.functions import FUNCTION_CATALOG

    with acting_as(role(engine, function)):
        for prefix in FUNCTION_CATALOG[function].access.s3_read:
            key = prefix.replace("*", "x") + "missing/none.json"
            assert error_code(lambda key=key: engine.s3.get_object(Bucket=BUCKET, Key=key)) == "NoSuchKey", prefix


def test_a_harvest_succeeds_with_iam_enforced(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(troops=2, warriors_per_troop=2, datagroups_per_warrior=1, points_per_datagroup=3)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    desc = engine.run({"source": spec.name}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert engine.authorizer.checked > 0 and engine.authorizer.unattributed == 0
    assert not [d for d in engine.authorizer.denials if "note" not in d], engine.authorizer.denials


# --- D4: the guard against resuming a run that is still running ------------------------------------------------
def test_resuming_a_run_whose_execution_is_still_running_is_refused(vendor_factory, engine, tmp_path):
    """The plan step asks Step Functions whether the run's execution still runs (states:DescribeExecution, as the
    plan function's role). Without that grant AWS answers AccessDeniedException, which the plan step took for
    "not running": it resumed a run that was still running."""
    import threading

    vendor = vendor_factory(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=1)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    fetching, release = threading.Event(), threading.Event()

    def hold_fetch(name, event):  # the first execution's first batch waits until the resume has been tried
        if name == "harvester-fetch" and not fetching.is_set():
            fetching.set()
            release.wait(60)

    engine.dispatcher.hooks.append(hold_fetch)
    first = engine.start({"source": spec.name})
    try:
        assert fetching.wait(60)
        run_id = engine.run_id_of(first, spec.name)
        desc = engine.wait(engine.start({"source": spec.name, "resume": run_id}), timeout=120)
        assert desc["status"] == "FAILED", desc
        assert desc["error"] == "InputError" and "still RUNNING" in json.loads(desc["cause"])["errorMessage"]
    finally:
        release.set()
    assert engine.wait(first, timeout=120)["status"] == "SUCCEEDED"


# --- D1: the scheduled path --------------------------------------------------------------------------------------
def test_the_scheduled_path_starts_and_completes_a_run(vendor_factory, engine, monkeypatch):
    """What an EventBridge Scheduler schedule does, read from the synthesized template: StartExecution on its
    target (the live alias ARN) with its input, as its role. Step Functions authorizes a start through an alias
    on the state machine's own ARN (with states:StateMachineQualifier): a grant on the alias ARN is denied."""
    from harvester.spec import load_spec
    from stacks.sources import SOURCES_DIR
    from tests.integration.conftest import API_KEY

    [schedule] = [s for s in engine.authorizer.model.schedules if json.loads(s["input"]) == {"source": "demo"}]
    assert schedule["target"] == engine.alias_arn
    vendor = vendor_factory(troops=1, warriors_per_troop=2, datagroups_per_warrior=1, points_per_datagroup=3)
    monkeypatch.setenv("DEMO_BASE_URL", vendor.url)
    monkeypatch.setenv("DEMO_API_KEY", API_KEY)
    engine.add_source(SOURCES_DIR / "demo.yaml", load_spec(SOURCES_DIR / "demo.yaml"))
    with acting_as(schedule["role"]):
        arn = engine.sfn.start_execution(stateMachineArn=schedule["target"], input=schedule["input"])["executionArn"]
    desc = engine.wait(arn, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert engine.run_id_of(arn, "demo")


def test_fetch_worker_processes_act_as_the_fetch_role(vendor_factory, tmp_path):
    """The fetch handler runs in worker processes that reach moto over HTTP; they authorize as the fetch role
    too: without its WriteObjects grant, the batch fails with S3's AccessDenied."""
    import os
    from pathlib import Path

    from harvester.local.engine import LocalEngine
    from harvester.local.iam import MODEL_ENV
    from harvester.spec import load_spec

    vendor = vendor_factory(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=1)
    with LocalEngine(tmp_path / "state", processes=1) as engine:
        model = json.loads(Path(os.environ[MODEL_ENV]).read_text())
        for policy in model["roles"][model["functions"]["fetch"]]:
            policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != "WriteObjects"]
        narrowed = tmp_path / "model.json"
        narrowed.write_text(json.dumps(model))
        saved, os.environ[MODEL_ENV] = os.environ[MODEL_ENV], str(narrowed)  # what each invocation's worker reads
        try:
            path = write_spec(tmp_path, vendor, demo_levels())
            engine.add_source(path, load_spec(path))
            arn = engine.start({"source": "e2e"})
            desc = engine.wait(arn, timeout=120)
        finally:
            os.environ[MODEL_ENV] = saved
        assert engine.dispatcher.pool.pids(), "the fetch handler ran in a worker process"
        items = engine.table.scan()["Items"]
        assert desc["status"] != "SUCCEEDED", desc
        assert "AccessDenied" in json.dumps(items, default=str), (desc, items)
