"""One Map item end to end: the batch worker against the simulated vendor over real HTTP, S3 and DynamoDB on moto.

Checks the idempotency contract: deterministic keys, a finished batch is skipped, a batch cut short continues
without duplicates, a permanent failure is in the ledger and a resume refetches only that parent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from harvester import storage
from harvester.ledger import Ledger, batch_sk, create_table_kwargs, expires_at
from harvester.ratelimit import limiter_for
from harvester.simulator.faults import FaultConfig, FaultRule
from harvester.simulator.server import VendorServer
from harvester.spec import SourceSpec, parse_spec
from harvester.worker import BatchFailed, BatchIncomplete, child_batch_id, harvest_batch, parent_key

KEY = "worker-key"
BUCKET = "harvest-test"
SOURCE = "test"




@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    with VendorServer(troops=5, warriors_per_troop=3, datagroups_per_warrior=2, variation=0, page_size=2,
                      api_key=KEY) as server:
        yield server


@pytest.fixture
def aws() -> Iterator[tuple[storage.HarvestBucket, Ledger]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        ddb = boto3.resource("dynamodb", region_name="us-east-1")
        table = ddb.create_table(**create_table_kwargs("ledger"))
        yield storage.HarvestBucket(s3, BUCKET), Ledger(table)


def make_spec(vendor: VendorServer, max_in_flight: int | None = None) -> SourceSpec:
    return parse_spec({
        "name": SOURCE,
        "base_url": vendor.url + "/v1",
        "auth": {"type": "header", "name": "X-Api-Key", "env": "UNUSED"},
        "max_in_flight": max_in_flight,
        "retries": {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05},
        "timeouts": {"connect": 2, "read": 5},
        "levels": [
            {"name": "troops", "alias": "troop", "path": "/troops", "records": "data", "primary_key": "id",
             "pagination": {"type": "page_number", "size": 2, "total_path": "total"}},
            {"name": "warriors", "alias": "warrior", "path": "/troops/{troop.id}/warriors", "records": "items",
             "primary_key": "id", "batch_size": 4,
             "pagination": {"type": "offset", "limit": 2, "total_path": "total"}},
            {"name": "datagroups", "path": "/warriors/{warrior.id}/datagroups", "records": "results",
             "pagination": {"type": "cursor", "cursor_path": "next_cursor", "size_param": "limit", "size": 2}},
        ],
    })


def make_run(run_id: str = "r1", attempt: int = 1) -> dict[str, Any]:
    return {"source": SOURCE, "run_id": run_id, "attempt": attempt, "expires_at": expires_at(1)}


def troop_batch(vendor: VendorServer, batch_id: str = "b1") -> dict[str, Any]:
    return {"batch_id": batch_id, "parents": [{"troops": {"id": t}} for t in vendor.data.ids("troops")]}


def harvest(spec, run, level, batch, aws, *, budget: float = 60.0, limiter=None) -> dict[str, Any]:
    store, ledger = aws
    limiter = limiter or limiter_for(SOURCE, None, 0)
    return asyncio.run(harvest_batch(spec, run, level, batch, store=store, ledger=ledger, limiter=limiter,
                                     secret=KEY, time_budget=budget))


def raw_records(store: storage.HarvestBucket, run_id: str, level_name: str) -> list[dict[str, Any]]:
    out = []
    for key in store.list_keys(storage.raw_prefix(SOURCE, run_id, level_name)):
        out.extend(store.read_records(key))
    return out


def ids(records: list[dict[str, Any]]) -> list[str]:
    return sorted(r["id"] for r in records)


# ---------------------------------------------------------------------------------------------------------------
def test_root_batch_writes_records_children_checkpoint_and_ledger(vendor, aws):
    store, ledger = aws
    spec = make_spec(vendor)
    batch = {"batch_id": "root", "parents": [{}]}
    result = harvest(spec, make_run(), 0, batch, aws)
    assert result["status"] == "SUCCEEDED" and result["records"] == 5 and result["children"] == 5
    assert result["calls"] == 3 and result["pages"] == 3  # 5 troops in pages of 2

    raw = store.list_keys("raw/")
    assert raw == [storage.raw_key(SOURCE, "r1", "troops", "root", 0)] == ["raw/test/r1/troops/root-000.jsonl.gz"]
    records = list(store.read_records(raw[0]))
    assert [{k: v for k, v in r.items() if not k.startswith("_")} for r in records] == vendor.data.troops()
    assert all(r["_source"] == SOURCE and r["_run_id"] == "r1" and r["_level"] == "troops" and r["_lineage"] == {}
               and r["_fetched_at"] for r in records)

    # the next level's Map items: chunks of the warriors level's batch_size (4), keyed deterministically
    items = store.get_json(storage.children_key(SOURCE, "r1", 1, "root", 0))
    assert [len(i["parents"]) for i in items] == [4, 1]
    assert [i["batch_id"] for i in items] == [child_batch_id("root", 0, 0), child_batch_id("root", 0, 1)]
    assert items[0]["sk"] == batch_sk(1, items[0]["batch_id"])
    assert [p for i in items for p in i["parents"]] == [{"troops": {"id": t}} for t in vendor.data.ids("troops")]

    ck = store.get_json(storage.checkpoint_key(SOURCE, "r1", 0, "root"))
    assert ck["done"] == ["root"] and ck["parts"] == 1
    item = ledger.get_batch(SOURCE, "r1", 0, "root")
    assert item["status"] == "SUCCEEDED" and item["records"] == 5 and item["calls"] == 3 and item["failures"] == 0
    assert item["calls_by_attempt"] == {"1": 3} and ledger.failures(SOURCE, "r1") == []


def test_child_batch_records_carry_lineage_and_children_carry_context(vendor, aws):
    store, ledger = aws
    spec = make_spec(vendor)
    result = harvest(spec, make_run(), 1, troop_batch(vendor), aws)
    assert result["status"] == "SUCCEEDED" and result["records"] == 15
    records = raw_records(store, "r1", "warriors")
    assert ids(records) == ids(vendor.data.warriors())
    for r in records:
        assert r["_lineage"] == {"troops": r["troop_id"]} and r["_level"] == "warriors"
    items = store.get_json(storage.children_key(SOURCE, "r1", 2, "b1", 0))
    parents = [p for i in items for p in i["parents"]]
    assert parents == [{"troops": {"id": w["troop_id"]}, "warriors": {"id": w["id"]}} for w in vendor.data.warriors()]
    assert parent_key(parents[0], spec) == "t0001/w000001"


def test_output_keys_are_deterministic_and_a_rerun_overwrites(vendor, aws):
    store, ledger = aws
    spec = make_spec(vendor)
    harvest(spec, make_run(), 1, troop_batch(vendor), aws)
    keys = store.list_keys("")
    # the same batch in another run gets the same keys under that run's prefix
    harvest(spec, make_run("r2"), 1, troop_batch(vendor), aws)
    assert sorted(store.list_keys("runs/test/r2/") + store.list_keys("raw/test/r2/")) == sorted(
        k.replace("/r1/", "/r2/") for k in keys)
    assert keys == [
        "raw/test/r1/warriors/b1-000.jsonl.gz",
        "runs/test/r1/checkpoints/1/b1.json",
        "runs/test/r1/children/2/b1-000.json",
    ]
    # and they hold the same records
    first = store.s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    second = store.s3.get_object(Bucket=BUCKET, Key=keys[0].replace("/r1/", "/r2/"))["Body"].read()
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("_run_id", "_fetched_at")} for r in rs]  # noqa: E731
    assert strip(storage.decode_ndjson_gz(first)) == strip(storage.decode_ndjson_gz(second))


def test_rerunning_a_succeeded_batch_is_skipped(vendor, aws):
    store, ledger = aws
    spec = make_spec(vendor)
    harvest(spec, make_run(), 1, troop_batch(vendor), aws)
    before = {k: store.s3.head_object(Bucket=BUCKET, Key=k)["LastModified"] for k in store.list_keys("")}
    vendor.reset_stats()
    limiter = limiter_for(SOURCE, None, 0)
    result = harvest(spec, make_run(), 1, troop_batch(vendor), aws, limiter=limiter)
    assert result == {"batch_id": "b1", "status": "SUCCEEDED", "skipped": True}
    assert vendor.stats().requests == 0 and limiter.stats()["tokens_granted"] == 0
    assert {k: store.s3.head_object(Bucket=BUCKET, Key=k)["LastModified"] for k in store.list_keys("")} == before


def test_a_batch_cut_by_its_time_budget_continues_without_duplicates(aws):
    store, ledger = aws
    # one parent at a time, each parent's list takes ~0.3 s (3 pages of 100 ms)
    with VendorServer(troops=8, warriors_per_troop=5, variation=0, page_size=2, api_key=KEY,
                      latency_ms=100) as server:
        spec = make_spec(server, max_in_flight=1)
        batch = troop_batch(server)
        with pytest.raises(BatchIncomplete) as info:
            harvest(spec, make_run(), 1, batch, aws, budget=1.5)
        assert "the next attempt continues from the checkpoint" in str(info.value)
        ck = store.get_json(storage.checkpoint_key(SOURCE, "r1", 1, "b1"))
        done_first = list(ck["done"])
        assert 0 < len(done_first) < 8 and ck["parts"] == 1
        assert ledger.get_batch(SOURCE, "r1", 1, "b1")["status"] == "RUNNING"
        first_requests = server.stats().requests

        server.reset_stats()
        result = harvest(spec, make_run(), 1, batch, aws)
        assert result["status"] == "SUCCEEDED" and result["parts"] == 2 and result["invocations"] == 2
        # the continuation asked only for the pages not yet fetched (a list cut mid-way continues at its next
        # page): every one of the 8 x 3 pages was requested exactly once over both invocations
        assert first_requests + server.stats().requests == 3 * 8
        assert result["calls"] == first_requests + server.stats().requests

        cut = raw_records(store, "r1", "warriors")
        server.configure(latency_ms=0)
        harvest(spec, make_run("whole"), 1, batch, aws)
        whole = raw_records(store, "whole", "warriors")
    strip = lambda rs: sorted((r["id"], r["troop_id"], r["name"], str(r["_lineage"])) for r in rs)  # noqa: E731
    assert len(cut) == 40 and strip(cut) == strip(whole)
    assert len({r["id"] for r in cut}) == 40
    children = [p for k in store.list_keys(storage.children_prefix(SOURCE, "r1", 2)) for i in store.get_json(k)
                for p in i["parents"]]
    assert sorted(p["warriors"]["id"] for p in children) == sorted(r["id"] for r in whole)
    assert ledger.get_batch(SOURCE, "r1", 1, "b1")["records"] == 40


def test_a_permanent_404_fails_the_batch_and_a_resume_fetches_only_that_parent(vendor, aws):
    store, ledger = aws
    spec = make_spec(vendor)
    batch = troop_batch(vendor)
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/troops/*/warriors"], ids=["t0003"])))
    with pytest.raises(BatchFailed) as info:
        harvest(spec, make_run(attempt=1), 1, batch, aws)
    assert "1 of 5 parents failed" in str(info.value) and "404" in str(info.value)

    failures = ledger.failures(SOURCE, "r1", 1)
    assert len(failures) == 1
    fail = failures[0]
    assert fail["sk"] == "FAIL#01#b1#00000" and fail["status"] == 404 and fail["parent"] == "t0003"
    assert fail["url"] == vendor.url + "/v1/troops/t0003/warriors?offset=0&limit=2"
    assert "not found" in fail["excerpt"] and fail["expires_at"] > time.time()
    item = ledger.get_batch(SOURCE, "r1", 1, "b1")
    assert item["status"] == "FAILED" and item["failures"] == 1 and item["done_parents"] == 4
    assert ids(raw_records(store, "r1", "warriors")) == ids(
        [w for w in vendor.data.warriors() if w["troop_id"] != "t0003"])

    # a continuation of the same attempt does not hammer the failed parent again
    vendor.reset_stats()
    with pytest.raises(BatchFailed):
        harvest(spec, make_run(attempt=1), 1, batch, aws)
    assert vendor.stats().requests == 0

    # the vendor is fixed; a resume (attempt 2) fetches only t0003
    vendor.clear_faults()
    vendor.reset_stats()
    result = harvest(spec, make_run(attempt=2), 1, batch, aws)
    assert result["status"] == "SUCCEEDED" and result["failures"] == 0
    assert vendor.stats().requests == 2 and vendor.stats().records == {"warriors": 3}
    assert result["calls_by_attempt"] == {"1": 4 * 2 + 1, "2": 2}
    assert ledger.failures(SOURCE, "r1") == []
    assert ledger.get_batch(SOURCE, "r1", 1, "b1")["status"] == "SUCCEEDED"
    records = raw_records(store, "r1", "warriors")
    assert ids(records) == ids(vendor.data.warriors()) and len(records) == 15


def test_an_auth_failure_on_the_first_parents_in_a_row_stops_the_batch(vendor, aws):
    """A wrong credential fails every parent: after AUTH_STOP (3) in a row with no good page the batch stops (one
    forbidden parent among good ones does not: tests/unit/test_misbehaving.py)."""
    store, ledger = aws
    spec = make_spec(vendor, max_in_flight=1)
    with pytest.raises(BatchFailed) as info:
        asyncio.run(harvest_batch(spec, make_run(), 1, troop_batch(vendor), store=aws[0], ledger=aws[1],
                                  limiter=limiter_for(SOURCE, None, 0), secret="wrong", time_budget=60))
    assert "check the credential" in str(info.value) and "5 parents left for a resume" in str(info.value)
    assert vendor.stats().unauthorized == 3  # the other two parents were not tried
    assert ledger.get_batch(SOURCE, "r1", 1, "b1")["status"] == "FAILED"
    assert store.list_keys("raw/") == []


def test_a_record_without_the_key_children_need_fails_that_parent(vendor, aws):
    store, ledger = aws
    spec = make_spec(vendor)
    data = spec.model_dump()
    data["levels"][1]["primary_key"] = ["serial"]  # warriors have no serial
    spec = parse_spec(data)
    with pytest.raises(BatchFailed):
        harvest(spec, make_run(), 1, troop_batch(vendor), aws)
    failures = ledger.failures(SOURCE, "r1", 1)
    assert len(failures) == 5 and all("has no field 'serial'" in f["reason"] for f in failures)
    assert store.list_keys("raw/") == []


def test_a_long_list_cut_by_the_deadline_continues_from_its_next_page(aws):
    """One parent whose list outlasts an invocation: each invocation stores the pages it got and the next one
    starts at the first page not fetched, so every page is requested exactly once and no record is written twice."""
    store, ledger = aws
    with VendorServer(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=60,
                      variation=0, api_key=KEY, latency_ms=30) as server:
        spec = parse_spec({
            "name": SOURCE, "base_url": server.url + "/v1",
            "auth": {"type": "header", "name": "X-Api-Key", "env": "UNUSED"}, "max_in_flight": 1,
            "levels": [
                {"name": "datagroups", "alias": "datagroup", "path": "/warriors/w000001/datagroups",
                 "records": "results", "primary_key": "id", "pagination": {"type": "cursor", "cursor_path": "next_cursor"}},
                {"name": "points", "path": "/datagroups/{datagroup.id}/points",
                 "pagination": {"type": "link_header", "size_param": "limit", "size": 3}},
            ],
        })
        group = server.data.ids("datagroups")[0]
        run = {"source": SOURCE, "run_id": "r1", "attempt": 1, "expires_at": expires_at(1)}
        batch = {"batch_id": "b1", "parents": [{"datagroups": {"id": group}}]}
        invocations = 0
        while True:
            invocations += 1
            try:
                asyncio.run(harvest_batch(spec, run, 1, batch, store=store, ledger=ledger, limiter=limiter_for(SOURCE, None, 0),
                                          secret=KEY, time_budget=0.25))
                break
            except BatchIncomplete:
                assert invocations < 40
        assert invocations > 2
        points = [r["ts"] for k in store.list_keys("raw/") for r in store.read_records(k)]
        assert sorted(points) == [p["ts"] for p in server.data.points(group)]
        assert server.stats().requests == 20  # 60 points / 3 per page: each page once, never restarted


class RecordingLedger(Ledger):
    """The real ledger (moto), remembering the progress it was given."""

    def __init__(self, table) -> None:
        super().__init__(table)
        self.progress: list[dict[str, Any]] = []

    def put_progress(self, source, run_id, level, batch_id, fields, ttl) -> bool:
        written = super().put_progress(source, run_id, level, batch_id, fields, ttl)
        self.progress.append({**fields, "written": written})
        return written


def test_a_running_batch_shows_its_progress_and_a_late_progress_write_changes_nothing(aws, monkeypatch):
    import harvester.worker as worker

    monkeypatch.setattr(worker, "PROGRESS_SECONDS", 0.1)
    store, plain = aws
    ledger = RecordingLedger(plain.table)
    with VendorServer(troops=8, warriors_per_troop=3, datagroups_per_warrior=2, variation=0, page_size=2,
                      api_key=KEY, latency_ms=40) as slow:
        spec = parse_spec({**make_spec(slow).model_dump(mode="json"), "max_in_flight": 1}, "slow.yaml")
        result = asyncio.run(harvest_batch(spec, make_run(), 1, troop_batch(slow), store=store, ledger=ledger,
                                           limiter=limiter_for(SOURCE, None, 0), secret=KEY, time_budget=60))
    assert result["status"] == "SUCCEEDED"
    seen = [p for p in ledger.progress if p["written"]]
    assert len(seen) >= 3 and all(p["status"] == "RUNNING" for p in seen)
    calls = [p["calls"] for p in seen]
    assert calls == sorted(calls) and 0 <= calls[0] < calls[-1] <= result["calls"]
    final = ledger.get_batch(SOURCE, "r1", 1, "b1")
    assert final["status"] == "SUCCEEDED" and final["calls"] == result["calls"]
    # a progress write that arrives after the batch ended (a slow thread) leaves the final item alone
    late = {"status": "RUNNING", "calls": 1, "last_attempt": 1}
    assert ledger.put_progress(SOURCE, "r1", 1, "b1", late, expires_at(1)) is False
    assert ledger.get_batch(SOURCE, "r1", 1, "b1")["status"] == "SUCCEEDED"
    # the next attempt (a resume) shows its own progress over the end of the earlier one
    assert ledger.put_progress(SOURCE, "r1", 1, "b1", {**late, "last_attempt": 2}, expires_at(1)) is True
    assert ledger.get_batch(SOURCE, "r1", 1, "b1")["status"] == "RUNNING"
