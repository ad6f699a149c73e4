"""The lake counts each record once (issue 12, item 4): overlapping runs (a lookback, a re-run, a backfill) keep one
copy of a record per partition, the most recently fetched; the other run's files and time-index items are rewritten;
a retried commit changes nothing more; keys that are only unique per parent are told apart by their lineage."""

from __future__ import annotations

import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from harvester import s3keys
from harvester.lake.compact import compact_partition, convert_run, plan_compaction
from harvester.lake.convert import convert_group, load_plan, plan_conversion
from harvester.lake.index import FileIndex
from harvester.lake.query import query_in_process
from harvester.lake.store import S3Store
from harvester.lake.synthetic import create_ledger_table, demo_records, write_raw

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

LEVELS = {"troops": {"primary_key": ["id"]}, "warriors": {"primary_key": ["id"]},
          "datagroups": {"primary_key": ["id"]}, "points": {"time_field": "ts", "types": {"value": "float64"}}}


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="dedup")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_ledger_table(ddb, "ledger")
        yield S3Store(s3, "dedup"), FileIndex(ddb, "ledger")


def points(store) -> list[tuple]:
    out = []
    for key, _ in store.list("processed/demo/points/"):
        t = pq.read_table(pa.BufferReader(store.get(key)))
        out += list(zip(t["_lineage__datagroups"].to_pylist(), t["ts"].to_pylist(), t["_run_id"].to_pylist(),
                        t["value"].to_pylist()))
    return out


def count(store, index) -> int:
    res = query_in_process(store, index, {"source": "demo", "level": "points", "start": "2026-11-01T00:00:00Z",
                                   "end": "2026-12-01T00:00:00Z", "aggregates": [{"op": "count"}]}, write=False)
    return res["rows"][0][0]


def test_overlapping_runs_keep_one_copy_the_latest_fetched_and_a_retry_changes_nothing(aws):
    store, index = aws
    # r1: 40 points per datagroup from 22:00; r2 fetched later starts 1 h 40 min in (a lookback): 20 overlap
    r1 = demo_records("r1", points_per_group=40, seed=1, fetched_at="2026-11-25T08:00:00Z")
    r2 = demo_records("r2", points_per_group=40, seed=2, start="2026-11-20T23:40:00Z", fetched_at="2026-11-25T20:00:00Z")
    r2["points"].append(dict(r2["points"][0]))  # the vendor listed one point twice within r2
    groups = len(r1["datagroups"])
    for run, recs in (("r1", r1), ("r2", r2)):
        write_raw(store, "demo", run, recs, batch_size=70)
        convert_run(store, index, source="demo", run_id=run, levels=LEVELS, target_bytes=4000)
    rows = points(store)
    keys = [(g, ts) for g, ts, _, _ in rows]
    assert len(keys) == len(set(keys)) == 60 * groups  # 40 + 40 - 20 overlapping, each once
    # the overlap is r2's copy (fetched later), with r2's values
    r2_values = {(p["_lineage"]["datagroups"], p["ts"]): p["value"] for p in r2["points"]}
    for g, ts, run, value in rows:
        iso = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        if (g, iso) in r2_values:
            assert run == "r2" and value == r2_values[(g, iso)]
    # the time index follows the rewritten files: counts from it equal the files, and a query counts once
    for level in ("points", "warriors"):
        files = index.files_for_run("demo", level)
        on_disk = {k for k, _ in store.list(f"processed/demo/{level}/")}
        assert {f["key"] for f in files} == on_disk
        assert sum(f["rows"] for f in files) == sum(
            pq.read_metadata(pa.BufferReader(store.get(k))).num_rows for k in on_disk)
    assert count(store, index) == 60 * groups
    # upper levels re-listed by r2 on the same run date (their partition): one copy each, r2's
    warriors = [k for k, _ in store.list("processed/demo/warriors/")]
    assert all("/r2-" in k for k in warriors)

    # the duplicates are reported per partition (r2 dropped 20 per datagroup from r1, and its own repeated point)
    reports = [k for k, _ in store.list(s3keys.duplicates_prefix("demo", "r2"))]
    total = sum(json.loads(store.get(k))["total"] for k in reports)
    assert total == 20 * groups + 1 + len(r1["troops"]) + len(r1["warriors"]) + len(r1["datagroups"])

    # a retried commit of r2 (staging kept) finds nothing more to drop and keeps its report
    plan_conversion(store, source="demo", run_id="r2", levels=LEVELS)
    for item in load_plan(store, "demo", "r2"):
        convert_group(store, **item)
    for item in plan_compaction(store, source="demo", run_id="r2"):
        compact_partition(store, index, target_bytes=4000, **item)
    assert sorted(points(store)) == sorted(rows)
    assert sum(json.loads(store.get(k))["total"] for k in reports) == total

    # r1 converted again (a resume of the older run): its copies are older, r2's stay
    convert_run(store, index, source="demo", run_id="r1", levels=LEVELS, target_bytes=4000)
    assert sorted(points(store)) == sorted(rows)
    assert count(store, index) == 60 * groups


def test_a_key_unique_only_per_parent_is_told_apart_by_its_lineage(aws):
    store, index = aws
    recs = demo_records("r1", points_per_group=3)
    for g in recs["datagroups"]:
        g["id"] = "cpu"  # every warrior has a datagroup "cpu": the same key under different parents
    write_raw(store, "demo", "r1", recs)
    res = convert_run(store, index, source="demo", run_id="r1", levels=LEVELS)
    assert res["rows"]["datagroups"] == len(recs["datagroups"])
    kept = sum(pq.read_metadata(pa.BufferReader(store.get(k))).num_rows
               for k, _ in store.list("processed/demo/datagroups/"))
    assert kept == len(recs["warriors"])  # one "cpu" per warrior (demo_records gives each warrior two groups)
