"""Limits the local engine enforces as AWS does: the 256 KiB state payload (a Distributed Map's result included),
the 6 MB Lambda payloads, a function's timeout, memory and ephemeral storage. Each test runs the real workflow
definition on the local engine; each names the AWS behaviour it holds the engine to."""

from __future__ import annotations

import json

import pytest

from harvester.local.engine import BUCKET
from harvester.local.moto_patches import MAX_STATE_BYTES
from tests.integration.conftest import demo_levels, write_spec

pytestmark = pytest.mark.integration

#: 4,000 datagroups: the points level runs >= 8 batches of up to 500 parents
WIDE = dict(troops=4, warriors_per_troop=10, datagroups_per_warrior=100, points_per_datagroup=2)


def fail_points_batches(engine):
    """Every points batch (level 3) fails in its Lambda: a batch the workflow records as failed."""

    def hook(name, event):
        if name.endswith("fetch") and event.get("level") == 3:
            raise RuntimeError("vendor unreachable for this batch")

    engine.dispatcher.hooks.append(hook)


def test_failed_batches_end_the_run_incomplete_not_over_the_state_limit(vendor_factory, engine, tmp_path):
    """D5. A failed child of a Distributed Map comes back in the Map's result with its whole input (a batch of 500
    parents) unless a ResultWriter is set; 8 failed batches pass 256 KiB, and States.DataLimitExceeded is terminal
    (no Catch takes it): the run would FAIL with its run item left RUNNING instead of ending "incomplete". With a
    ResultWriter the results go to S3 and the Map's output is a small object."""
    vendor = vendor_factory(**WIDE)
    levels = demo_levels({"datagroups": {"type": "cursor", "cursor_path": "next_cursor", "size_param": "limit", "size": 100}})
    levels[3]["batch_size"] = 500
    spec = engine.add(write_spec(tmp_path, vendor, levels, max_concurrency=4))
    fail_points_batches(engine)
    arn = engine.start({"source": spec.name, "run_id": "wide"})
    desc = engine.wait(arn, timeout=600)

    assert desc["status"] == "FAILED"
    assert desc.get("error") == "Harvest.Incomplete", (desc.get("error"), desc.get("cause", "")[:300])
    run = engine.ledger.get_run(spec.name, "wide")
    assert run["status"] == "FAILED" and run["error"] == "Harvest.Incomplete"

    # the Map's results, as AWS writes them: a manifest and one file per status, failed children with their input
    manifests = [o["Key"] for o in engine.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]
                 if o["Key"].endswith("/manifest.json") and "/map-results/" in o["Key"]]  # fmt: skip
    failed = []
    for key in manifests:
        manifest = json.loads(engine.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        for entry in manifest["ResultFiles"]["FAILED"]:
            failed += json.loads(engine.s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read())
    inputs = [json.loads(f["Input"]) for f in failed]
    assert len(failed) >= 8 and all(i["level"] == 3 for i in inputs)  # every points batch, no other
    assert all(f["Status"] == "FAILED" and f["Error"] == "Batch.Failed" for f in failed)
    assert max(len(i["batch"]["parents"]) for i in inputs) == 500
    assert sum(len(f["Input"].encode()) for f in failed) > MAX_STATE_BYTES  # what the Map's result would have held


# --- a function's timeout, memory and ephemeral storage (worker processes) -------------------------------------
HANDLERS = "tests.integration.limit_handlers"


@pytest.fixture
def sfn_waits(monkeypatch):
    """Step Functions Retry waits, recorded instead of slept."""
    import types

    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    waits: list[float] = []
    monkeypatch.setattr(retrier_decl, "time", types.SimpleNamespace(sleep=waits.append))
    return waits


def run_local(tmp_path, vendor, functions, *, processes=1, run_id="l1", timeout=180, inspect=None):
    """One run on an engine with these catalog changes; `inspect(engine, spec)` reads its state before it closes."""
    from harvester.local.engine import LocalEngine
    from harvester.spec import load_spec

    path = write_spec(tmp_path, vendor, demo_levels(), name="limits")
    with LocalEngine(tmp_path / "state", processes=processes, functions=functions) as engine:
        spec = load_spec(path)
        engine.add_source(path, spec)
        desc = engine.run({"source": spec.name, "run_id": run_id}, timeout=timeout)
        if inspect:
            inspect(engine, spec)
        return engine, spec, desc


SMALL = dict(troops=1, warriors_per_troop=2, datagroups_per_warrior=2, points_per_datagroup=5)


def test_a_handler_past_its_timeout_is_stopped_and_reported_as_lambda_does(vendor_factory, tmp_path, monkeypatch,
                                                                            sfn_waits):
    """Lambda stops a handler at its function's timeout and reports `Sandbox.Timedout`: the workflow retries it
    (Retry on Sandbox.Timedout) and then records the batch as failed; the hung worker process is gone."""
    import time

    monkeypatch.setenv("LIMIT_SLEEP_S", "300")
    started = time.monotonic()
    failed = []

    def inspect(engine, spec):
        failed.extend(b for b in engine.ledger.batches(spec.name, "l1", 3) if b.get("status") == "FAILED")

    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL),
                                   # 8 s: the fetch worker keeps 5 s for its writes, so a shorter function
                                   # could not fetch the levels before the hanging one
                                   {"fetch": {"timeout_s": 8, "handler": f"{HANDLERS}.slow_points_fetch"}},
                                   inspect=inspect)  # fmt: skip
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete", desc.get("cause")
    assert failed and all(b["error"] == "Sandbox.Timedout" for b in failed)
    assert "Task timed out after 8.00 seconds" in failed[0]["cause"]
    assert len(sfn_waits) >= 3  # retried as Sandbox.Timedout before the Catch
    assert time.monotonic() - started < 150  # each attempt was stopped at 8 s, none slept its 300 s


def test_a_handler_over_its_memory_fails_as_out_of_memory(vendor_factory, tmp_path, monkeypatch):
    """A process over its function's memory size is killed; Lambda reports `Runtime.OutOfMemory`."""
    monkeypatch.setenv("LIMIT_MB", "400")
    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL),
                                   {"plan": {"memory_mb": 300, "handler": f"{HANDLERS}.greedy_plan"}})
    assert desc["status"] == "FAILED" and desc["error"] == "Runtime.OutOfMemory", (desc.get("error"), desc.get("cause"))


def test_a_handler_within_its_memory_runs(vendor_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMIT_MB", "50")
    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL), {"plan": {"handler": f"{HANDLERS}.greedy_plan"}})
    assert desc["status"] == "SUCCEEDED", (desc.get("error"), desc.get("cause"))


def test_a_handler_over_its_ephemeral_storage_fails_with_no_space_left(vendor_factory, tmp_path, monkeypatch):
    """/tmp is the function's ephemeral storage; past it a write fails with ENOSPC (an unhandled OSError)."""
    monkeypatch.setenv("LIMIT_MB", "3")
    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL),
                                   {"plan": {"ephemeral_mb": 2, "handler": f"{HANDLERS}.tmp_filling_plan"}})
    assert desc["status"] == "FAILED" and desc["error"] == "OSError", (desc.get("error"), desc.get("cause"))
    assert "No space left on device" in desc["cause"]


# --- payloads (in-process engine) --------------------------------------------------------------------------------
def test_a_response_over_6_mb_fails_the_invocation(vendor_factory, tmp_path, monkeypatch):
    """Lambda refuses a synchronous response over 6 MB: errorType Function.ResponseSizeTooLarge."""
    monkeypatch.setenv("LIMIT_KB", str(7 * 1024))
    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL), {"plan": {"handler": f"{HANDLERS}.big_answer_plan"}},
                                   processes=0)  # fmt: skip
    assert desc["status"] == "FAILED" and desc["error"] == "Function.ResponseSizeTooLarge", desc.get("error")


def test_a_response_over_256_kib_fails_the_state_for_good(vendor_factory, tmp_path, monkeypatch):
    """Under 6 MB Lambda returns it, but a Task's result over 256 KiB is States.DataLimitExceeded, terminal."""
    monkeypatch.setenv("LIMIT_KB", "300")
    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL), {"plan": {"handler": f"{HANDLERS}.big_answer_plan"}},
                                   processes=0)  # fmt: skip
    assert desc["status"] == "FAILED" and desc["error"] == "States.DataLimitExceeded", desc.get("error")


def test_in_process_a_handler_past_its_timeout_is_reported_timed_out(vendor_factory, tmp_path, monkeypatch):
    """Without worker processes the handler cannot be stopped, but the state machine still sees Sandbox.Timedout."""
    monkeypatch.setenv("LIMIT_SLEEP_S", "1.5")
    engine, spec, desc = run_local(tmp_path, vendor_factory(**SMALL),
                                   {"plan": {"timeout_s": 1, "handler": f"{HANDLERS}.slow_plan"}}, processes=0)
    assert desc["status"] == "FAILED" and desc["error"] == "Sandbox.Timedout", desc.get("error")
