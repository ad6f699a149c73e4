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
