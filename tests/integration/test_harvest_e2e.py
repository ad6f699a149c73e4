"""The harvest workflow end to end: the real definition on moto's executor, the real handlers, the simulated
vendor on 127.0.0.1. Every test compares the output with the vendor's own books."""

from __future__ import annotations

import json
import os

import pytest

from harvester import storage
from harvester.simulator.faults import FaultConfig, FaultRule
from tests.integration.conftest import demo_levels, write_spec

pytestmark = pytest.mark.integration


def harvested(engine, spec, run_id):
    """{level: [records]} read back from the local bucket (through moto's S3, as a user's tools would)."""
    out = {}
    for level in spec.levels:
        keys = engine.s3.list_objects_v2(Bucket="harvester-local", Prefix=storage.raw_prefix(spec.name, run_id, level.name))
        recs = []
        for obj in keys.get("Contents", []):
            body = engine.s3.get_object(Bucket="harvester-local", Key=obj["Key"])["Body"].read()
            recs.extend(storage.decode_ndjson_gz(body))
        out[level.name] = recs
    return out


def assert_complete(out, vendor):
    data = vendor.data
    for level in ("troops", "warriors", "datagroups"):
        ids = data.ids(level)
        got = [r["id"] for r in out[level]]
        assert len(got) == len(set(got)), f"duplicates in {level}"
        assert set(got) == set(ids), f"{level}: missing {set(ids) - set(got)}, extra {set(got) - set(ids)}"
    points = [(r["_lineage"]["datagroups"], r["ts"]) for r in out["points"]]
    assert len(points) == len(set(points)), "duplicate points"
    assert set(points) == data.point_keys()
    # lineage: every warrior's troop is the one the vendor says
    for w in out["warriors"]:
        assert w["_lineage"] == {"troops": w["troop_id"]}


@pytest.mark.parametrize(
    "styles",
    [
        pytest.param({}, id="page-offset-cursor-link"),
        pytest.param({"troops": "none", "warriors": "next_url", "datagroups": "page", "points": "offset"},
                     id="none-nexturl-page-offset"),
    ],
)
def test_four_levels_every_record_once(styles, vendor_factory, engine, tmp_path):
    spec_pagination = {
        "none": {"type": "none"},
        "next_url": {"type": "next_url", "next_url_path": "links.next"},
        "page": {"type": "page_number", "size": 4, "total_path": "total"},
        "offset": {"type": "offset", "limit": 25},
    }
    pagination = {lvl: spec_pagination[s] for lvl, s in styles.items()}
    vendor = vendor_factory(troops=3, warriors_per_troop=6, datagroups_per_warrior=4, points_per_datagroup=60,
                            pagination=styles, page_size={"warriors": 5}, rate=400, burst=20)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels(pagination),
                                 rate_limit={"requests_per_second": 300, "burst": 10}))
    desc = engine.run({"source": spec.name, "run_id": "r1"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    out = harvested(engine, spec, "r1")
    assert_complete(out, vendor)
    counts = vendor.data.counts()
    assert sum(counts.values()) > 2000

    run = engine.ledger.get_run(spec.name, "r1")
    assert run["status"] == "SUCCEEDED" and run["finished_at"]
    served = vendor.stats().by_route
    for level in counts:
        assert run["levels"][level]["records"] == counts[level]
        assert run["levels"][level]["failed_batches"] == 0
        # the ledger's calls are the vendor's requests on that level's route: each style's pages were asked for
        # once each (assert_complete: none skipped)
        assert run["levels"][level]["calls"] == served[level], (level, run["levels"][level], served)
    # lists longer than a page were paged in either style (60 points a datagroup, pages of 40 or 25)
    assert run["levels"]["points"]["pages"] > run["levels"]["points"]["parents"], run["levels"]["points"]
    stats = vendor.stats()
    assert run["totals"]["calls"] == stats.requests  # every call the vendor saw is in the ledger, and no more
    assert stats.seconds_over() == 0
    # raw objects are batched: far fewer objects than calls
    n_objects = sum(1 for _ in engine.s3.list_objects_v2(Bucket="harvester-local", Prefix="raw/")["Contents"])
    assert n_objects < stats.requests / 3
    # the run is listed by date in the GSI
    assert [r["run_id"] for r in engine.ledger.list_runs(spec.name)] == ["r1"]


def test_query_style_path_bearer_auth(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(troops=2, warriors_per_troop=5, datagroups_per_warrior=2, points_per_datagroup=30,
                            auth="bearer")
    levels = demo_levels(warriors_path="/warriors", warriors_params={"troopId": "{troop.id}"})
    spec = engine.add(write_spec(tmp_path, vendor, levels, auth={"type": "bearer", "env": "E2E_API_KEY"}))
    desc = engine.run({"source": spec.name, "run_id": "bearer"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert_complete(harvested(engine, spec, "bearer"), vendor)


def test_bad_input_fails_in_first_state_and_writes_nothing(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=1)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    cases = [
        ({}, "InputError", "source"),
        ({"source": spec.name, "surprise": 1}, "InputError", "surprise"),
        ({"source": "nope"}, "SpecError", "unknown source 'nope'"),
        ({"source": spec.name, "resume": "bad id!"}, "InputError", "not a run id"),
        ({"source": spec.name, "resume": "never-ran"}, "InputError", "no such run"),
    ]
    for execution_input, error, text in cases:
        arn = engine.start(execution_input)
        desc = engine.wait(arn, timeout=60)
        assert desc["status"] == "FAILED"
        assert desc["error"] == error
        assert text in json.loads(desc["cause"])["errorMessage"]
        entered = [e["stateEnteredEventDetails"]["name"] for e in engine.history(arn) if "stateEnteredEventDetails" in e]
        assert entered == ["Plan run"]
    assert "Contents" not in engine.s3.list_objects_v2(Bucket="harvester-local")
    assert engine.table.scan()["Items"] == []
    assert vendor.stats().requests == 0


def test_missing_credential_and_dead_vendor_fail_before_writing(vendor_factory, engine, tmp_path, monkeypatch):
    vendor = vendor_factory(troops=1, warriors_per_troop=1, datagroups_per_warrior=1, points_per_datagroup=1)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    monkeypatch.delenv("E2E_API_KEY")
    desc = engine.run({"source": spec.name}, timeout=60)
    assert desc["error"] == "SpecError" and "E2E_API_KEY" in desc["cause"]
    monkeypatch.setenv("E2E_API_KEY", "x")
    vendor.stop()
    desc = engine.run({"source": spec.name}, timeout=60)
    assert desc["error"] == "SpecError" and "does not answer" in desc["cause"]
    assert "Contents" not in engine.s3.list_objects_v2(Bucket="harvester-local")
    assert engine.table.scan()["Items"] == []


def test_same_run_id_twice_is_refused(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(troops=1, warriors_per_troop=2, datagroups_per_warrior=1, points_per_datagroup=3)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    assert engine.run({"source": spec.name, "run_id": "once"}, timeout=120)["status"] == "SUCCEEDED"
    desc = engine.run({"source": spec.name, "run_id": "once"}, timeout=60)
    assert desc["error"] == "InputError" and '"resume": "once"' in json.loads(desc["cause"])["errorMessage"]


def test_permanent_404_is_recorded_and_a_resume_fetches_only_what_is_missing(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(troops=2, warriors_per_troop=4, datagroups_per_warrior=3, points_per_datagroup=20)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels()))
    victim = vendor.data.ids("warriors")[3]
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/warriors/*/datagroups"], ids=[victim])))
    desc = engine.run({"source": spec.name, "run_id": "r404"}, timeout=300)
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete"
    run = engine.ledger.get_run(spec.name, "r404")
    assert run["status"] == "FAILED"
    fails = engine.ledger.failures(spec.name, "r404")
    assert [(f["status"], f["parent"]) for f in fails] == [(404, f"{vendor.data.warrior(victim)['troop_id']}/{victim}")]
    assert f"/v1/warriors/{victim}/datagroups" in fails[0]["url"] and "404" in fails[0]["reason"]
    first_calls = vendor.stats().requests

    vendor.clear_faults()
    vendor.reset_stats()
    desc = engine.run({"source": spec.name, "resume": "r404"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    out = harvested(engine, spec, "r404")
    assert_complete(out, vendor)
    run = engine.ledger.get_run(spec.name, "r404")
    assert run["status"] == "SUCCEEDED" and run["attempt"] == 2
    assert engine.ledger.failures(spec.name, "r404") == []
    # the second attempt made only the missing calls: the victim's datagroups (1 page) and their points
    victim_groups = vendor.data.datagroups(victim)
    expected = 1 + sum(-(-vendor.data.point_count(g["id"]) // 40) or 1 for g in victim_groups)
    assert vendor.stats().requests == expected
    assert run["attempt_calls"] == {"1": first_calls, "2": expected}


def test_fetch_workers_in_their_own_processes(vendor_factory, tmp_path):
    """`processes=N` (what `harvest run --local` and `harvest demo` use): the fetch handler runs in worker
    processes that reach moto over HTTP; the run is the same, every record once, and the shared limiter's bucket
    item (written by the workers) is in the table the engine sees."""
    from harvester.local.engine import LocalEngine
    from harvester.ratelimit import bucket_key
    from harvester.spec import load_spec

    vendor = vendor_factory(troops=2, warriors_per_troop=5, datagroups_per_warrior=3, points_per_datagroup=50,
                            rate=200, burst=10)
    path = write_spec(tmp_path, vendor, demo_levels(), name="procs", rate_limit={"requests_per_second": 150, "burst": 10})
    with LocalEngine(tmp_path / "state", processes=2) as engine:
        spec = load_spec(path)
        engine.add_source(path, spec)
        desc = engine.run({"source": spec.name, "run_id": "p1"}, timeout=300)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        workers = engine.dispatcher.pool.pids()
        assert workers and all(pid != os.getpid() for pid in workers)
        assert_complete(harvested(engine, spec, "p1"), vendor)
        run = engine.ledger.get_run(spec.name, "p1")
        assert run["totals"]["calls"] == vendor.stats().requests
        bucket = engine.table.get_item(Key=bucket_key(spec.name))["Item"]
        assert int(bucket["tokens_leased"]) >= vendor.stats().requests
    assert vendor.stats().seconds_over() == 0


def test_a_worker_process_that_dies_fails_its_batch_and_a_resume_finishes_it(vendor_factory, tmp_path):
    """Every fetch worker process is killed (SIGKILL, as an out-of-memory kill) as the points level starts: its
    invocations fail with Runtime.ExitError, as Lambda reports a runtime that exited; the failed batches are in
    the ledger, the next invocations get fresh workers, and a resume harvests what is missing, nothing twice."""
    import signal

    from harvester.local.engine import LocalEngine
    from harvester.spec import load_spec

    vendor = vendor_factory(troops=2, warriors_per_troop=4, datagroups_per_warrior=3, points_per_datagroup=50)
    path = write_spec(tmp_path, vendor, demo_levels(), name="dies")
    with LocalEngine(tmp_path / "state", processes=2) as engine:
        spec = load_spec(path)
        engine.add_source(path, spec)
        killed: list[int] = []

        def kill_workers(name: str, event: dict) -> None:
            if name.endswith("fetch") and event["level"] == 3 and not killed:
                for pid in engine.dispatcher.pool.pids("fetch"):  # the fetch workers (every function has its own)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

        engine.dispatcher.hooks.append(kill_workers)
        desc = engine.run({"source": spec.name, "run_id": "k1"}, timeout=300)
        assert killed and desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete"
        failed = [b for b in engine.ledger.batches(spec.name, "k1", 3) if b.get("status") == "FAILED"]
        assert failed and all(b["error"] == "Runtime.ExitError" for b in failed), [
            (b["sk"], b["error"], str(b.get("cause"))[:300]) for b in failed]
        assert not set(engine.dispatcher.pool.pids("fetch")) & set(killed)  # fresh workers after the deaths

        desc = engine.run({"source": spec.name, "resume": "k1"}, timeout=300)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        assert_complete(harvested(engine, spec, "k1"), vendor)
