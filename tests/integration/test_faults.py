"""Fault-injection suite: every fault the simulated vendor can inject, run through the real workflow on the local
engine. Each run is compared with the vendor's books (the fault-free truth): the same set of records, none
twice; where a fault is permanent, the ledger lists exactly the affected calls, and a resume after the fault
is switched off makes only the calls that were missing."""

from __future__ import annotations

import types

import pytest

from harvester import storage
from harvester.local.moto_patches import LambdaKilled
from harvester.simulator.faults import FaultConfig, FaultRule
from tests.integration.conftest import demo_levels, write_spec
from tests.integration.test_harvest_e2e import assert_complete, harvested

pytestmark = pytest.mark.integration

SIZES = dict(troops=2, warriors_per_troop=4, datagroups_per_warrior=2, points_per_datagroup=90)
FAST_RETRIES = {"max_attempts": 8, "base_delay": 0.02, "max_delay": 0.5}


@pytest.fixture
def sfn_waits(monkeypatch):
    """Step Functions Retry waits, recorded instead of slept (moto's executor sleeps them in its retrier)."""
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    waits: list[float] = []
    monkeypatch.setattr(retrier_decl, "time", types.SimpleNamespace(sleep=waits.append))
    return waits


def harvest(engine, vendor, tmp_path, run_id, **spec_top):
    top = {"retries": FAST_RETRIES, "timeouts": {"connect": 2, "read": 0.5}, **spec_top}
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels(), **top))
    desc = engine.run({"source": spec.name, "run_id": run_id}, timeout=240)
    return spec, desc


TRANSIENT = {
    "503": FaultRule("server_error", probability=0.15, status=503),
    "500": FaultRule("server_error", probability=0.15, status=500),
    "502": FaultRule("server_error", probability=0.15, status=502),
    "429-with-retry-after": FaultRule("rate_limit", probability=0.3, retry_after=0.2, times=15),
    "429-without-retry-after": FaultRule("rate_limit", probability=0.3, retry_after=None, times=15),
    "slow-beyond-timeout": FaultRule("slow", probability=0.1, seconds=1.0, times=5),
    "reset": FaultRule("reset", probability=0.1),
    "truncated": FaultRule("truncated", probability=0.1),
    "malformed": FaultRule("malformed", probability=0.1),
    "wrong-content-type": FaultRule("wrong_content_type", probability=0.3),
    "html-200": FaultRule("html", probability=0.1),
    "empty-page": FaultRule("empty_page", probability=0.3),
}


@pytest.mark.parametrize("fault", list(TRANSIENT), ids=list(TRANSIENT))
def test_transient_fault_loses_nothing(fault, vendor_factory, engine, tmp_path):
    vendor = vendor_factory(**SIZES)
    vendor.set_faults(FaultConfig.of(TRANSIENT[fault], seed=7))
    spec, desc = harvest(engine, vendor, tmp_path, "r1")
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert sum(vendor.stats().faults.values()) > 0, "the fault never fired: the test would prove nothing"
    assert_complete(harvested(engine, spec, "r1"), vendor)
    assert engine.ledger.failures(spec.name, "r1") == []


def test_outage_is_waited_out(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(**SIZES)
    vendor.set_faults(FaultConfig(outage_seconds=1.5))
    spec, desc = harvest(engine, vendor, tmp_path, "r1", retries={"max_attempts": 12, "base_delay": 0.1, "max_delay": 1.0})
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert vendor.stats().faults.get("outage", 0) > 0
    assert_complete(harvested(engine, spec, "r1"), vendor)


def test_permanent_faults_are_listed_and_resumed(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(**SIZES)
    groups = vendor.data.ids("datagroups")
    victims = [groups[1], groups[5]]
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/datagroups/*/points"], ids=victims)))
    spec, desc = harvest(engine, vendor, tmp_path, "rp")
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete"
    fails = engine.ledger.failures(spec.name, "rp")
    assert sorted(f["parent"].rsplit("/", 1)[-1] for f in fails) == sorted(victims)
    assert all(f["status"] == 404 and "404" in f["reason"] and f["url"].endswith(("/points?limit=40",)) for f in fails)

    vendor.clear_faults()
    vendor.reset_stats()
    desc = engine.run({"source": spec.name, "resume": "rp"}, timeout=240)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert_complete(harvested(engine, spec, "rp"), vendor)
    pages = sum(-(-vendor.data.point_count(g) // 40) for g in victims)
    assert vendor.stats().requests == pages  # only the missing calls
    run = engine.ledger.get_run(spec.name, "rp")
    assert run["attempt_calls"]["2"] == pages and run["status"] == "SUCCEEDED"


def test_auth_failure_stops_the_batch_and_resume_after_fixing_the_key(vendor_factory, engine, tmp_path, monkeypatch):
    vendor = vendor_factory(**SIZES)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels(), retries=FAST_RETRIES))
    monkeypatch.setenv("E2E_API_KEY", "wrong-key")
    desc = engine.run({"source": spec.name, "run_id": "ra"}, timeout=120)
    assert desc["error"] == "Harvest.Incomplete"
    fails = engine.ledger.failures(spec.name, "ra")
    assert [f["status"] for f in fails] == [401] and vendor.stats().requests == 1
    monkeypatch.setenv("E2E_API_KEY", vendor.config.api_key)
    assert engine.run({"source": spec.name, "resume": "ra"}, timeout=240)["status"] == "SUCCEEDED"
    assert_complete(harvested(engine, spec, "ra"), vendor)


def test_worker_killed_halfway_is_finished_by_its_retry(vendor_factory, engine, tmp_path, monkeypatch, sfn_waits):
    """Lambda kills a points batch after it wrote its records but before its checkpoint (a timeout mid-batch):
    Step Functions retries it (Sandbox.Timedout) and the retry overwrites the same part: no duplicates."""
    vendor = vendor_factory(**SIZES)
    killed: list[str] = []
    original = storage.HarvestBucket.put_json

    def put_json(self, key, value):
        if "/checkpoints/3/" in key and not killed:
            killed.append(key)
            raise LambdaKilled("Task timed out after 900.00 seconds")
        return original(self, key, value)

    monkeypatch.setattr(storage.HarvestBucket, "put_json", put_json)
    spec, desc = harvest(engine, vendor, tmp_path, "rk")
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert killed and sfn_waits, "the kill and the Step Functions retry both happened"
    out = harvested(engine, spec, "rk")
    assert_complete(out, vendor)  # includes: no duplicate points


def test_time_budget_checkpoints_and_continues(vendor_factory, tmp_path):
    """A worker whose Lambda time is nearly spent checkpoints and raises BatchIncomplete; Retry continues it."""
    from harvester.local.engine import LocalEngine
    from harvester.spec import load_spec

    vendor = vendor_factory(**{**SIZES, "points_per_datagroup": 400}, latency_ms=40)  # 10 pages per list
    path = write_spec(tmp_path, vendor, demo_levels(), retries=FAST_RETRIES, max_in_flight=1)
    with LocalEngine(tmp_path / "state", batch_seconds=1.5) as engine:
        spec = load_spec(path)
        engine.add_source(path, spec)
        desc = engine.run({"source": spec.name, "run_id": "rb"}, timeout=240)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        batches = engine.ledger.batches(spec.name, "rb", 3)
        assert max(b["invocations"] for b in batches) > 2  # batches needed several invocations
        assert max(b["parts"] for b in batches) > 2
        assert_complete(harvested(engine, spec, "rb"), vendor)
