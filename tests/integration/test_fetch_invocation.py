"""The fetch worker against what Lambda does to an invocation: it stops it at the function's timeout
(Sandbox.Timedout) or when it runs out of memory, whatever it is doing, and everything not yet written is lost.

- a vendor call that answers slowly never carries the handler past its deadline (the read timeout, 30 s by
  default, is longer than any fixed reserve): the handler ends in time, with its work written;
- a batch with many pages writes several raw parts as it goes, so its memory is bounded by the flush size;
- a worker process killed mid-batch loses at most its last flush interval, and a resume ends with every record
  exactly once (checked against the vendor's books).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import boto3
import pytest
import yaml
from moto import mock_aws

from harvester import storage
from harvester.ledger import Ledger, create_table_kwargs, expires_at
from harvester.ratelimit import limiter_for
from harvester.simulator.faults import FaultConfig, FaultRule
from harvester.simulator.server import VendorServer
from harvester.spec import load_spec, parse_spec
from harvester.worker import BatchIncomplete, harvest_batch

pytestmark = pytest.mark.integration

KEY = "invocation-key"


def two_levels(base_url: str, points_page: int, **top) -> dict:
    """Warrior w000001's datagroups, then every point of each (one parent per datagroup)."""
    return {
        "name": top.pop("name", "inv"), "base_url": base_url,
        "auth": {"type": "header", "name": "X-Api-Key", "env": "INV_API_KEY"},
        "levels": [
            {"name": "datagroups", "alias": "datagroup", "path": "/warriors/w000001/datagroups",
             "records": "results", "primary_key": "id",
             "pagination": {"type": "cursor", "cursor_path": "next_cursor", "size_param": "limit", "size": 50}},
            {"name": "points", "path": "/datagroups/{datagroup.id}/points", "batch_size": 50,
             "pagination": {"type": "link_header", "size_param": "limit", "size": points_page}, "time_field": "ts"},
        ],
        **top,
    }


def stored_points(s3, bucket: str, source: str, run_id: str) -> list[tuple[str, str]]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=storage.raw_prefix(source, run_id, "points")):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out.extend((r["_lineage"]["datagroups"], r["ts"]) for r in storage.decode_ndjson_gz(body))
    return out


# ---------------------------------------------------------------------------------------------------------------
def test_reserve_covers_a_whole_call_and_the_writes():
    from harvester.worker import reserve_seconds, time_plan

    spec = parse_spec(two_levels("http://127.0.0.1:1/v1", 100))
    assert reserve_seconds(spec) >= spec.timeouts.read + spec.timeouts.connect
    budget, window = time_plan(900.0, spec)
    # a call started at the end of the budget, running its whole timeout, ends before the writes must start
    assert budget + spec.timeouts.connect + spec.timeouts.read <= window < 900.0


def test_a_slow_vendor_call_never_carries_the_handler_past_its_deadline(tmp_path, monkeypatch):
    """The real fetch handler with a Lambda context of 12 s; the fourth parent's first call takes 20 s (the spec's
    read timeout is the default 30 s). Lambda would stop the invocation at 12 s and lose everything it fetched.
    The handler must end before its deadline, with the three finished lists written and checkpointed, and the
    next invocation must finish the batch, asking for each page once (the cut call again)."""
    from harvester.local.engine import BUCKET, FakeContext, LocalEngine
    from lambdas.fetch import handler

    monkeypatch.setenv("INV_API_KEY", KEY)
    with VendorServer(troops=1, warriors_per_troop=1, datagroups_per_warrior=6, points_per_datagroup=60,
                      variation=0, api_key=KEY, latency_ms=50) as vendor, LocalEngine(tmp_path / "state") as engine:
        spec = parse_spec(two_levels(vendor.url + "/v1", 20, max_in_flight=1))
        assert spec.timeouts.read == 30
        groups = vendor.data.ids("datagroups")
        vendor.set_faults(FaultConfig.of(FaultRule("slow", seconds=20, times=1, ids=[groups[3]],
                                                   paths=["/v1/datagroups/*/points"])))
        run = {"source": spec.name, "run_id": "d1", "attempt": 1, "expires_at": expires_at(1),
               "spec_key": storage.spec_key(spec.name, "d1"), "spec_hash": spec.spec_hash()}
        storage.HarvestBucket(engine.s3, BUCKET).put_json(run["spec_key"], spec.model_dump(mode="json"))
        event = {"run": run, "level": 1, "batch": {"batch_id": "b1", "parents": [{"datagroups": {"id": g}} for g in groups]}}

        context = FakeContext("harvester-fetch", 12)
        with pytest.raises(BatchIncomplete):
            handler(event, context)
        left = context.get_remaining_time_in_millis() / 1000
        assert left > 0, "the handler ran past its Lambda deadline: Lambda would have stopped it (Sandbox.Timedout)"

        ck = storage.HarvestBucket(engine.s3, BUCKET).get_json(storage.checkpoint_key(spec.name, "d1", 1, "b1"))
        assert ck["done"] == sorted(groups[:3])
        assert sorted(stored_points(engine.s3, BUCKET, spec.name, "d1")) == sorted(
            (g, p["ts"]) for g in groups[:3] for p in vendor.data.points(g))

        assert handler(event, FakeContext("harvester-fetch", 12))["status"] == "SUCCEEDED"
        got = stored_points(engine.s3, BUCKET, spec.name, "d1")
        assert len(got) == len(set(got)) and set(got) == vendor.data.point_keys()
        # every page served once; the call cut at the deadline is still sleeping in the vendor, never answered
        assert vendor.stats().served == 6 * 3


def test_a_long_retry_after_never_carries_the_handler_past_its_deadline(tmp_path, monkeypatch):
    """A 429 with Retry-After: 15 s pauses the source's shared rate limiter for every lane; lanes waiting for a
    send slot must give up at the call window's end instead of sleeping past the Lambda deadline (12 s). The
    invocations the state's Retry makes then finish the batch, every point once."""
    from harvester.local.engine import BUCKET, FakeContext, LocalEngine
    from lambdas.fetch import handler

    monkeypatch.setenv("INV_API_KEY", KEY)
    with VendorServer(troops=1, warriors_per_troop=1, datagroups_per_warrior=8, points_per_datagroup=60,
                      variation=0, api_key=KEY, latency_ms=20) as vendor, LocalEngine(tmp_path / "state") as engine:
        spec = parse_spec(two_levels(vendor.url + "/v1", 20, max_in_flight=4,
                                     rate_limit={"requests_per_second": 20, "burst": 2}))
        groups = vendor.data.ids("datagroups")
        vendor.set_faults(FaultConfig.of(FaultRule("rate_limit", retry_after=15, times=1, ids=[groups[2]],
                                                   paths=["/v1/datagroups/*/points"])))
        run = {"source": spec.name, "run_id": "d2", "attempt": 1, "expires_at": expires_at(1),
               "spec_key": storage.spec_key(spec.name, "d2"), "spec_hash": spec.spec_hash()}
        storage.HarvestBucket(engine.s3, BUCKET).put_json(run["spec_key"], spec.model_dump(mode="json"))
        event = {"run": run, "level": 1, "batch": {"batch_id": "b1", "parents": [{"datagroups": {"id": g}} for g in groups]}}

        for invocation in range(1, 6):
            context = FakeContext("harvester-fetch", 12)
            try:
                result = handler(event, context)
            except BatchIncomplete:
                result = None
            assert context.get_remaining_time_in_millis() > 0, f"invocation {invocation} ran past its Lambda deadline"
            if result is not None:
                break
        assert invocation > 1 and result["status"] == "SUCCEEDED"
        got = stored_points(engine.s3, BUCKET, spec.name, "d2")
        assert len(got) == len(set(got)) and set(got) == vendor.data.point_keys()


# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def vendor_process():
    """The vendor in a process of its own, so that the memory traced here is the worker's alone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester.simulator", "--port", "0", "--troops", "1", "--warriors-per-troop", "1",
         "--datagroups-per-warrior", "4", "--points-per-datagroup", "10000", "--variation", "0", "--api-key", KEY],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("vendor listening on "), line
    yield line.split()[3]
    proc.terminate()
    proc.wait(10)


def test_a_page_heavy_batch_writes_several_parts_and_its_memory_stays_bounded(vendor_process, monkeypatch):
    """40,000 points for one batch (4 parents of 10,000): with a part written every 2,000 records the worker never
    holds the batch, only a flush interval. Today's worker held every record until the end: a batch larger than
    the function's memory (1,024 MB) would fail with Runtime.OutOfMemory and lose everything."""
    monkeypatch.setenv("HARVESTER_FLUSH_RECORDS", "2000")
    spec = parse_spec(two_levels(vendor_process + "/v1", 1000, max_in_flight=2))
    run = {"source": spec.name, "run_id": "m1", "attempt": 1, "expires_at": expires_at(1)}
    groups = [f"g{n:06d}" for n in range(1, 5)]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="mem")
        table = boto3.resource("dynamodb", region_name="us-east-1").create_table(**create_table_kwargs("ledger"))
        store, ledger = storage.HarvestBucket(s3, "mem"), Ledger(table)
        first = asyncio.run(harvest_batch(spec, run, 1, {"batch_id": "warm", "parents": [{"datagroups": {"id": groups[0]}}]},
                                          store=store, ledger=ledger, limiter=limiter_for(spec.name, None, 0),
                                          secret=KEY, time_budget=120))  # imports and connections warm
        assert first["records"] == 10_000, first
        tracemalloc.start()
        try:
            batch = {"batch_id": "b1", "parents": [{"datagroups": {"id": g}} for g in groups]}
            result = asyncio.run(harvest_batch(spec, run, 1, batch,
                                               store=store, ledger=ledger, limiter=limiter_for(spec.name, None, 0),
                                               secret=KEY, time_budget=120))
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            held = [r for k in store.list_keys(storage.raw_prefix(spec.name, "m1", "points")) if "/b1-" in k
                    for r in store.read_records(k)]
            _, whole = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        whole -= base  # the batch's records held at once, as the worker used to
        print(f"peak traced while harvesting: {peak / 2**20:.1f} MiB; the batch's records in memory: {whole / 2**20:.1f} MiB")
        assert peak < whole / 4, (peak, whole)
        assert result["status"] == "SUCCEEDED" and result["records"] == 40_000 == len(held)
        assert len({(r["_lineage"]["datagroups"], r["ts"]) for r in held}) == 40_000  # lists cut by flushes, none twice
        assert result["parts"] >= 10  # a part every ~2,000 records


# ---------------------------------------------------------------------------------------------------------------
def test_a_worker_killed_mid_batch_loses_at_most_its_last_flush_interval(tmp_path, monkeypatch):
    """The fetch worker process is SIGKILLed (as Lambda stops a timed-out or out-of-memory invocation) when the
    vendor has served half of a 18,000-point batch. The records of every flush before the kill stay committed (the
    checkpoint counts them), so the vendor served at most a flush interval (plus the pages in flight) that nobody
    stored; the resume continues from the checkpoint and ends with every point exactly once."""
    from harvester.local.engine import LocalEngine

    flush = 500
    monkeypatch.setenv("HARVESTER_FLUSH_RECORDS", str(flush))
    monkeypatch.setenv("INV_API_KEY", KEY)
    with VendorServer(troops=1, warriors_per_troop=1, datagroups_per_warrior=6, points_per_datagroup=3000,
                      variation=0, api_key=KEY, latency_ms=10) as vendor, \
            LocalEngine(tmp_path / "state", processes=1) as engine:
        path = tmp_path / "inv.yaml"
        path.write_text(yaml.safe_dump(two_levels(vendor.url + "/v1", 100, max_in_flight=2)))
        spec = load_spec(path)
        engine.add_source(path, spec)
        total = vendor.data.counts()["points"]
        killed: list[int] = []

        def killer() -> None:
            while not killed and time.monotonic() < stop_at:
                if vendor.stats().records.get("points", 0) >= total // 2:
                    for pid in engine.dispatcher.pool.pids("fetch"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                time.sleep(0.005)

        stop_at = time.monotonic() + 120
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        desc = engine.run({"source": spec.name, "run_id": "k1"}, timeout=240)
        thread.join()
        assert killed and desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete", desc.get("cause")

        served = vendor.stats().records["points"]
        store = storage.HarvestBucket(engine.s3, "harvester-local")
        committed = sum(store.get_json(k)["records"] for k in store.list_keys(f"runs/{spec.name}/k1/checkpoints/1/"))
        lost = served - committed
        print(f"served before the run failed: {served}, committed: {committed}, lost: {lost}")
        # uncommitted at any moment: a part being written (a flush interval: up to `flush` records plus a page per
        # lane), the next one filling up meanwhile (the same), and a page per lane served but not yet received
        lanes, page = 2, 100
        assert 0 <= lost <= 2 * (flush + lanes * page) + lanes * page, "more than the last flush interval was lost"

        desc = engine.run({"source": spec.name, "resume": "k1"}, timeout=240)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        got = stored_points(engine.s3, "harvester-local", spec.name, "k1")
        assert len(got) == len(set(got)), "a point was written twice"
        assert set(got) == vendor.data.point_keys()
        assert vendor.stats().records["points"] - served == total - committed  # the resume fetched only the rest
        assert engine.ledger.get_run(spec.name, "k1")["levels"]["points"]["records"] == total
