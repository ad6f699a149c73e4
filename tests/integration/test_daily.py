"""Daily operation end to end (issue 12): windows from the ledger's bookmark, resumes that fill their own window,
backfills in slices, and a lake that counts each record once. The simulated vendor's clock moves between runs; the
workflow is the real definition on the local engine."""

from __future__ import annotations

import gzip
import json
import math
from datetime import timedelta
from pathlib import Path

import pytest

from harvester.local.engine import LocalEngine
from harvester.simulator.faults import FaultConfig, FaultRule
from harvester.spec import load_spec
from tests.integration.conftest import demo_levels, write_spec
from tests.integration.test_lake_e2e import BUCKET, connect, download_lake, objects, table

pytestmark = pytest.mark.integration

PAGE = 10  # points per page
VENDOR = dict(troops=2, warriors_per_troop=2, datagroups_per_warrior=2, points_per_datagroup=24 * 40,
              interval_seconds=3600, variation=0, rate=1000, burst=50)
WINDOW = {"start_param": "from", "end_param": "to", "format": "iso", "offset": "+02:00",
          "initial_start": "2026-01-01T00:00:00Z", "lookback": "PT2H"}


def windowed_levels(window: dict) -> list[dict]:
    levels = demo_levels({"points": {"type": "link_header", "size_param": "limit", "size": PAGE}})
    levels[-1]["window"] = window
    return levels


def point_calls(vendor) -> int:
    return vendor.stats().by_route.get("points", 0)


def raw_points(engine, source: str) -> list[tuple[str, str]]:
    """(datagroup, ts) of every raw point line of every run, duplicates kept."""
    out = []
    for key in objects(engine, f"raw/{source}/"):
        if "/points/" in key:
            body = gzip.decompress(engine.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            out += [(r["_lineage"]["datagroups"], r["ts"]) for r in map(json.loads, body.splitlines())]
    return out


def lake_point_count(engine, source: str) -> int:
    desc, result = engine.query({"source": source, "level": "points", "start": "2026-01-01T00:00:00Z",
                                 "end": "2026-03-01T00:00:00Z", "aggregates": [{"op": "count", "as": "n"}]},
                                timeout=120)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    return result["rows"][0][0] if result["rows"] else 0


def test_three_daily_runs_fetch_only_their_windows_and_an_interrupted_day_is_resumed(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(**VENDOR)
    groups = len(vendor.data.ids("datagroups"))
    start = vendor.data.config.start
    spec = engine.add(write_spec(tmp_path, vendor, windowed_levels(WINDOW), name="daily"))

    def day(n: int):
        return start + timedelta(days=n)

    # day 1: the first window is [initial_start, now): 24 hourly points per datagroup
    vendor.set_clock(day(1))
    before = point_calls(vendor)
    desc = engine.run({"source": spec.name, "run_id": "d1", "as_of": day(1).isoformat()}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert point_calls(vendor) - before == groups * math.ceil(24 / PAGE)
    run = engine.ledger.get_run(spec.name, "d1")
    assert run["window"] == {"kind": "daily", "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
                             "new_start": "2026-01-01T00:00:00Z", "step": ""}
    assert engine.ledger.get_bookmark(spec.name)["end"] == "2026-01-02T00:00:00Z"

    # day 2: one datagroup's points fail; the run ends incomplete and the bookmark stays at day 1's end
    vendor.advance_clock(timedelta(days=1))
    victim = vendor.data.ids("datagroups")[1]
    vendor.set_faults(FaultConfig.of(FaultRule("server_error", paths=["/v1/datagroups/*/points"], ids=[victim])))
    desc = engine.run({"source": spec.name, "run_id": "d2", "as_of": day(2).isoformat()}, timeout=300)
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete", desc
    mark = engine.ledger.get_bookmark(spec.name)
    assert mark["end"] == "2026-01-02T00:00:00Z" and mark["claimed_end"] == "2026-01-03T00:00:00Z"
    assert engine.ledger.get_run(spec.name, "d2")["window"]["start"] == "2026-01-01T22:00:00Z"  # the lookback
    # the resume (not the next day's run) fills day 2's window: only the victim's calls are made again
    vendor.clear_faults()
    vendor.advance_clock(timedelta(hours=5))  # late: the resume still asks for day 2's window only
    before = point_calls(vendor)
    desc = engine.run({"source": spec.name, "resume": "d2"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert point_calls(vendor) - before == math.ceil(26 / PAGE)
    assert engine.ledger.get_bookmark(spec.name)["end"] == "2026-01-03T00:00:00Z"

    # day 3 starts where day 2's window ended (minus the lookback), whatever the resume's time
    vendor.set_clock(day(3))
    before = point_calls(vendor)
    desc = engine.run({"source": spec.name, "run_id": "d3", "as_of": day(3).isoformat()}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert engine.ledger.get_run(spec.name, "d3")["window"]["start"] == "2026-01-02T22:00:00Z"
    assert point_calls(vendor) - before == groups * math.ceil(26 / PAGE)  # not the 72 points of a full harvest

    # the union of the raw output is the vendor's books; the lookback fetched 2 h twice a day, on purpose
    raw = raw_points(engine, spec.name)
    assert set(raw) == vendor.data.point_keys() and len(raw) == len(set(raw)) + 2 * 2 * groups
    # ... and the lake counts each point once
    assert lake_point_count(engine, spec.name) == vendor.data.counts()["points"] == 72 * groups


def test_a_backfill_of_30_daily_slices_runs_under_the_limit_resumes_a_failed_slice_alone_and_keeps_the_bookmark(
    vendor_factory, engine, tmp_path
):
    # each answer takes 120 ms and the limit spaces calls 50 ms apart: calls made in parallel must overlap at the
    # vendor (with instant answers they need not, and max_in_flight would say nothing about our parallelism)
    vendor = vendor_factory(**{**VENDOR, "troops": 1, "rate": 20, "burst": 5, "latency_ms": 120})
    start = vendor.data.config.start
    groups = vendor.data.ids("datagroups")
    levels = windowed_levels({**WINDOW, "initial_start": "2026-01-31T00:00:00Z", "format": "epoch_s"})
    levels[-1]["pagination"]["size"] = 30  # a day's 24 points: one call per datagroup and slice
    levels[-1]["batch_size"] = 2
    spec = engine.add(write_spec(tmp_path, vendor, levels, name="backfill",
                                 rate_limit={"requests_per_second": 20, "burst": 5}))
    vendor.set_clock(start + timedelta(days=31))
    desc = engine.run({"source": spec.name, "run_id": "daily", "as_of": "2026-02-01T00:00:00Z"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    mark = engine.ledger.get_bookmark(spec.name)

    # January in daily slices: a Map item per (2 datagroups, slice); one datagroup fails everywhere
    victim = groups[0]
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/datagroups/*/points"], ids=[victim])))
    vendor.reset_stats()
    desc = engine.run({"source": spec.name, "run_id": "jan",
                       "window": {"start": "2026-01-01", "end": "2026-01-31T00:00:00Z", "step": "P1D"}}, timeout=600)
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete", desc
    run = engine.ledger.get_run(spec.name, "jan")
    assert run["window"]["kind"] == "backfill" and run["window"]["step"] == "P1D"
    assert run["levels"]["points"]["batches"] == 30 * len(groups) // 2
    assert run["levels"]["points"]["failed_batches"] == 30, [  # the victim's 30, and no other cause
        (b["sk"], b.get("error"), str(b.get("cause"))[:200]) for b in engine.ledger.batches(spec.name, "jan", 3)
        if b.get("status") == "FAILED" and "Not Found" not in str(b.get("cause"))]
    stats = vendor.stats()
    assert stats.seconds_over() == 0 and stats.refused == 0 and stats.max_in_flight >= 2  # parallel, under the limit

    # the resume makes only the failed slices' calls: the victim's 30 days, one call each
    vendor.clear_faults()
    before = point_calls(vendor)
    desc = engine.run({"source": spec.name, "resume": "jan"}, timeout=600)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert point_calls(vendor) - before == 30
    # a backfill never moves the daily bookmark
    assert engine.ledger.get_bookmark(spec.name) == mark

    # the lake: every point of January plus the daily run's day, once
    assert set(raw_points(engine, spec.name)) == vendor.data.point_keys()
    assert lake_point_count(engine, spec.name) == vendor.data.counts()["points"] == 31 * 24 * len(groups)
    paths = download_lake(engine, spec.name, tmp_path / "lake")
    con = connect()
    assert con.execute(f"SELECT count(*), count(DISTINCT (_lineage__datagroups, ts)) FROM {table(paths, 'points')}"
                       ).fetchone() == (31 * 24 * len(groups),) * 2


def test_the_cursor_variant_sends_each_parent_its_largest_value_from_the_last_successful_run(
    vendor_factory, engine, tmp_path
):
    vendor = vendor_factory(**{**VENDOR, "troops": 1})
    groups = vendor.data.ids("datagroups")
    start = vendor.data.config.start
    window = {"cursor": {"field": "ts", "param": "since"}, "initial_start": "2025-12-31T23:00:00Z"}
    spec = engine.add(write_spec(tmp_path, vendor, windowed_levels(window), name="cursor"))
    vendor.set_clock(start + timedelta(days=1))
    assert engine.run({"source": spec.name, "run_id": "c1"}, timeout=300)["status"] == "SUCCEEDED"
    # day 2, one datagroup fails: the run is incomplete and the next run starts from c1's cursors, not c2's
    vendor.set_clock(start + timedelta(days=2))
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/datagroups/*/points"], ids=[groups[0]])))
    assert engine.run({"source": spec.name, "run_id": "c2"}, timeout=300)["status"] == "FAILED"
    vendor.clear_faults()
    vendor.set_clock(start + timedelta(days=3))
    before = point_calls(vendor)
    desc = engine.run({"source": spec.name, "run_id": "c3"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    # every datagroup asks since its last point of day 1: two days of points, 48 each = 5 pages of 10
    assert point_calls(vendor) - before == len(groups) * math.ceil(48 / PAGE)
    item = next(engine.ledger.iter_batches(spec.name, "c3", 3))
    assert set(item["cursors"].values()) == {"2026-01-03T23:00:00Z"}
    raw = raw_points(engine, spec.name)
    assert set(raw) == vendor.data.point_keys()
    assert lake_point_count(engine, spec.name) == vendor.data.counts()["points"] == 72 * len(groups)


def lake_points(engine, source: str, root) -> list[tuple]:
    """Every point row of the lake as (datagroup, ts, value, status), sorted; duplicates kept."""
    paths = download_lake(engine, source, root)
    return connect().execute(
        f"SELECT _lineage__datagroups, strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ'), value, status "
        f"FROM {table(paths, 'points')} ORDER BY 1, 2").fetchall()


def uptime_by_datagroup(engine, source: str) -> list:
    desc, result = engine.query({"source": source, "level": "points", "start": "2026-01-01T00:00:00Z",
                                 "end": "2026-02-01T00:00:00Z", "group_by": ["datagroups.id"],
                                 "aggregates": [{"op": "count", "as": "n"}, {"op": "max", "column": "value"},
                                                {"op": "share", "column": "status", "equals": "up"}]}, timeout=120)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    return result["rows"]


def test_a_backfill_of_30_daily_slices_runs_in_parallel_and_ends_with_the_lake_of_30_daily_runs(
    vendor_factory, tmp_path
):
    """Two identical vendors (same seed and books; the backfill's answers 150 ms late, so that two batches in flight
    overlap for certain), two state folders: January as one backfill in daily slices, and as 30 daily runs with
    the vendor's clock a day on between them. Both lakes must be the vendor's books, each point once, and
    answer a query alike."""
    config = {**VENDOR, "troops": 1, "warriors_per_troop": 1, "points_per_datagroup": 24 * 31, "rate": 10, "burst": 5}
    rate_limit = {"requests_per_second": 10, "burst": 5}
    end = "2026-01-31T00:00:00Z"

    def spec(vendor) -> Path:
        """Two levels, the warrior's datagroups and their points, so that 30 local runs take seconds each."""
        levels = windowed_levels(WINDOW)[2:]
        levels[0]["path"] = f"/warriors/{vendor.data.ids('warriors')[0]}/datagroups"
        levels[1]["pagination"]["size"] = 30  # a day's 24 points (26 with the lookback): one call per datagroup
        levels[1]["batch_size"] = 2  # a Map item per slice (both datagroups)
        return write_spec(tmp_path, vendor, levels, name="jan", rate_limit=rate_limit, max_in_flight=1)

    # the backfill: 30 slices of a day; each batch sends one request at a time, so two requests in flight at the
    # vendor are two batches (Map items) in flight
    vendor = vendor_factory(**config, latency_ms=150)
    groups = vendor.data.ids("datagroups")
    vendor.set_clock(vendor.data.config.start + timedelta(days=30))
    truth = vendor.data.point_keys()
    path = spec(vendor)
    with LocalEngine(tmp_path / "backfill") as engine:
        engine.add_source(path, load_spec(path))
        desc = engine.run({"source": "jan", "run_id": "backfill",
                           "window": {"start": "2026-01-01T00:00:00Z", "end": end, "step": "P1D"}}, timeout=300)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        run = engine.ledger.get_run("jan", "backfill")
        assert engine.ledger.get_bookmark("jan") is None  # a backfill takes no daily window
        backfill_lake = lake_points(engine, "jan", tmp_path / "lake-backfill")
        backfill_answer = uptime_by_datagroup(engine, "jan")
    stats = vendor.stats()
    assert run["window"]["kind"] == "backfill" and run["levels"]["points"]["batches"] == 30
    assert stats.by_route["points"] == 30 * len(groups)  # one call per slice and datagroup: no slice twice
    assert stats.max_in_flight >= 2  # batches ran side by side
    # under the limit: the vendor's token bucket (10/s, burst 5) refused nothing, and a bucket admits at most
    # rate x t + burst requests in any t seconds, so no 1-s window held more than 15
    assert stats.refused == 0 and stats.seconds_over() == 0

    # 30 daily runs on a vendor with the same books, its clock a day on before each
    vendor = vendor_factory(**config)
    path = spec(vendor)
    with LocalEngine(tmp_path / "daily") as engine:
        engine.add_source(path, load_spec(path))
        for day in range(1, 31):
            now = vendor.data.config.start + timedelta(days=day)
            vendor.set_clock(now)
            desc = engine.run({"source": "jan", "run_id": f"day{day:02d}", "as_of": now.isoformat()}, timeout=120)
            assert desc["status"] == "SUCCEEDED", (day, desc.get("cause"))
        assert engine.ledger.get_bookmark("jan")["end"] == end
        daily_lake = lake_points(engine, "jan", tmp_path / "lake-daily")
        daily_answer = uptime_by_datagroup(engine, "jan")
    assert vendor.data.point_keys() == truth and vendor.stats().by_route["points"] == 30 * len(groups)

    # the same lake: the vendor's books, each point once (the daily runs' 2-h lookbacks were dropped)
    assert daily_lake == backfill_lake
    assert len(backfill_lake) == len(truth) == 30 * 24 * len(groups)
    assert {(g, ts) for g, ts, _, _ in backfill_lake} == truth
    assert daily_answer == backfill_answer and [r[1] for r in daily_answer] == [30 * 24] * len(groups)
