"""Raw NDJSON -> Parquet: round trip, naming, types, bad values, schema widening, deterministic keys, sizes."""

from __future__ import annotations

import gzip
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from harvester import s3keys
from harvester.lake.compact import compact_partition, convert_run, plan_compaction
from harvester.lake.convert import convert_group, convert_table, load_plan, plan_conversion, split_partitions
from harvester.lake.index import FileIndex
from harvester.lake.schema import lineage_column, parse_type
from harvester.lake.store import S3Store
from harvester.lake.synthetic import create_ledger_table, demo_records, ndjson_gz, write_raw

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

BUCKET, TABLE = "lake-test", "ledger"
LEVELS = {"points": {"time_field": "ts", "types": {"value": "float64"}}}


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_ledger_table(ddb, TABLE)
        yield S3Store(s3, BUCKET), FileIndex(ddb, TABLE)


def read_level(store, level) -> pa.Table:
    tables = [pq.read_table(pa.BufferReader(store.get(k))) for k, _ in store.list(f"processed/demo/{level}/")]
    from harvester.lake.schema import conform, unify

    schema = unify([t.schema for t in tables])
    return pa.concat_tables([conform(t, schema) for t in tables])


def test_round_trip_counts_values_and_naming(aws):
    store, index = aws
    recs = demo_records("r1", points_per_group=30)
    write_raw(store, "demo", "r1", recs, batch_size=40)
    res = convert_run(store, index, source="demo", run_id="r1", levels=LEVELS)
    assert res["rows"] == {lv: len(v) for lv, v in recs.items()}
    assert res["bad_values"]["count"] == 0

    warriors = read_level(store, "warriors")
    assert {"specs__mass", "specs__model", lineage_column("troops"), "firmware", "_fetched_at"} <= set(warriors.column_names)
    assert warriors.schema.field("_fetched_at").type == pa.timestamp("us", tz="UTC")
    got = sorted(warriors.select(["id", "firmware", "specs__mass", "_lineage__troops"]).to_pylist(), key=lambda r: r["id"])
    want = sorted(({"id": w["id"], "firmware": w["firmware"], "specs__mass": w["specs"]["mass"],
                    "_lineage__troops": w["_lineage"]["troops"]}
                   for w in recs["warriors"]), key=lambda r: r["id"])
    assert got == want

    points = read_level(store, "points")
    assert points.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    key = lambda r: (r["_lineage__datagroups"], r["ts"])  # noqa: E731
    got = sorted(({"ts": r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ"), "value": r["value"], "status": r["status"],
                   "_lineage__datagroups": r["_lineage__datagroups"]} for r in points.to_pylist()), key=key)
    want = sorted(({"ts": p["ts"], "value": p["value"], "status": p["status"],
                    "_lineage__datagroups": p["_lineage"]["datagroups"]}
                   for p in recs["points"]), key=key)
    assert got == want

    # Hive partitions: event date for the time series, run date (of _fetched_at) otherwise
    keys = [k for k, _ in store.list("processed/demo/")]
    assert {k.split("/")[3] for k in keys if "/points/" in k} == {"event_date=2026-11-20", "event_date=2026-11-21"}
    assert {k.split("/")[3] for k in keys if "/warriors/" in k} == {"run_date=2026-11-25"}
    assert not store.list(s3keys.staging_prefix("demo", "r1"))  # staging cleaned up


def test_schema_widens_across_runs(aws):
    store, index = aws
    r1 = demo_records("r1", points_per_group=5)
    r2 = demo_records("r2", points_per_group=5, start="2026-11-20T23:00:00Z")
    for p in r2["points"]:
        p["quality"] = "good"
        p["value"] = int(p["value"])  # ints where run 1 had floats: widened, not failed
    for run, recs in (("r1", r1), ("r2", r2)):
        write_raw(store, "demo", run, recs, batch_size=50)
        convert_run(store, index, source="demo", run_id=run, levels={"points": {"time_field": "ts"}})
    old = [k for k, _ in store.list("processed/demo/points/") if "/r1-" in k]
    new = [k for k, _ in store.list("processed/demo/points/") if "/r2-" in k]
    assert "quality" not in pq.read_schema(pa.BufferReader(store.get(old[0]))).names
    assert "quality" in pq.read_schema(pa.BufferReader(store.get(new[0]))).names
    points = read_level(store, "points")
    assert points.num_rows == len(r1["points"]) + len(r2["points"])
    assert points.schema.field("value").type == pa.float64()
    q = points.column("quality").to_pylist()
    assert q.count("good") == len(r2["points"]) and q.count(None) == len(r1["points"])


META = {"_lineage": {}, "_run_id": "r1", "_source": "demo", "_level": "points", "_fetched_at": "2026-11-25T00:00:00Z"}


def test_bad_values_kept_null_and_reported(aws):
    store, _ = aws
    recs = [
        {"ts": "2026-11-20T00:00:00Z", "value": "12.5", "price": "1.23456", "code": "007", **META},
        {"ts": "yesterday", "value": "n/a", "price": "x", "code": 7, **META},
        {"ts": "2026-11-20T01:00:00+01:00", "value": 3, "price": 2, "code": "9", **META},
    ]
    key = "raw/demo/r1/points/b0-000.jsonl.gz"
    store.put(key, ndjson_gz(recs))
    out = convert_group(store, source="demo", run_id="r1", level="points", keys=[key], time_field="ts",
                        types={"value": "float64", "price": "decimal(18,4)", "code": "string"})
    bad = out["bad_values"]
    assert bad["count"] == 3
    assert bad["by_field"] == {"ts": 1, "value": 1, "price": 1}
    assert {"field": "value", "value": "n/a", "key": key, "line": 2} in bad["samples"]
    report = json.loads(store.get(out["report_key"]))
    assert report["count"] == 3 and len(report["samples"]) == 3
    # the row is kept, its unconvertible values are null; the null-time row is in the null partition
    assert out["partitions"][f"event_date={s3keys.HIVE_NULL}"]["rows"] == 1
    t = pq.read_table(pa.BufferReader(store.get(out["partitions"]["event_date=2026-11-20"]["key"])))
    assert t.schema.field("price").type == parse_type("decimal(18,4)")
    assert [str(v) for v in t["price"].to_pylist()] == ["1.2346", "2.0000"]
    assert t["code"].to_pylist() == ["007", "9"]  # declared string: stays text even when JSON had a number
    assert t["value"].to_pylist() == [12.5, 3.0]
    assert [v.isoformat() for v in t["ts"].to_pylist()] == ["2026-11-20T00:00:00+00:00", "2026-11-20T00:00:00+00:00"]


def test_mixed_json_types_are_text_and_noted():
    recs = [{"a": 1, "_lineage": {"troops": 1}}, {"a": "x", "_lineage": {"troops": 2}}, {"a": {"b": 1}}]
    table, bad = convert_table([ndjson_gz(recs)], ["k"])
    assert table.column("a").to_pylist() == ["1", "x", None]
    assert "a" in bad.notes and bad.count == 0
    assert "a__b" in table.column_names and "_lineage__troops" in table.column_names


def test_keys_deterministic_retry_overwrites_and_target_size(aws):
    store, index = aws
    recs = demo_records("r1", points_per_group=80, warriors_per_troop=4)
    write_raw(store, "demo", "r1", recs, batch_size=60)
    plan = plan_conversion(store, source="demo", run_id="r1", levels=LEVELS, group_bytes=4000)
    assert plan["groups"] > plan["levels"]["points"] >= 3
    items = load_plan(store, "demo", "r1")
    first = [convert_group(store, **i) for i in items]
    again = [convert_group(store, **i) for i in items]  # a retried Map: same staging keys, overwritten
    assert [r["partitions"] for r in first] == [r["partitions"] for r in again]
    assert plan_compaction(store, source="demo", run_id="r1") == plan_compaction(store, source="demo", run_id="r1")

    pts = [c for c in plan_compaction(store, source="demo", run_id="r1") if c["level"] == "points"]
    small = [compact_partition(store, index, target_bytes=5000, row_group_rows=100, **c) for c in pts]
    assert all(len(s["files"]) >= 2 for s in small)  # several files of about the target size, not one per batch
    names = [f["key"] for s in small for f in s["files"]]
    assert all(k.startswith("processed/demo/points/event_date=") and k.split("/")[-1].startswith("r1-") for k in names)
    snap = {k: store.get(k) for k in names}
    retry = [compact_partition(store, index, target_bytes=5000, row_group_rows=100, **c) for c in pts]
    assert [f["key"] for s in retry for f in s["files"]] == names
    assert all(store.get(k) == v for k, v in snap.items())  # byte for byte

    # a retry with a larger target writes fewer files and removes the extra ones with their index items
    big = [compact_partition(store, index, target_bytes=10**9, **c) for c in pts]
    assert all(len(s["files"]) == 1 for s in big) and all(s["removed"] for s in big)
    left = [k for k, _ in store.list("processed/demo/points/")]
    assert left == sorted(f["key"] for s in big for f in s["files"])
    assert sorted(f["key"] for f in index.files_for_run("demo", "points", "r1")) == left
    assert sum(s["rows"] for s in big) == len(recs["points"])


def test_stale_staging_of_an_old_plan_is_ignored(aws):
    store, _ = aws
    recs = demo_records("r1", points_per_group=5)
    write_raw(store, "demo", "r1", recs, batch_size=50)
    plan_conversion(store, source="demo", run_id="r1", levels=LEVELS)
    for i in load_plan(store, "demo", "r1"):
        convert_group(store, **i)
    store.put(s3keys.staging_key("demo", "r1", "points", "event_date=2026-11-20", "0123456789abcdef"), b"junk")
    items = plan_compaction(store, source="demo", run_id="r1")
    assert all("0123456789abcdef" not in k for it in items for k in it["staging_keys"])


def test_multi_member_gzip_and_partition_split():
    part1 = gzip.compress(b'{"ts": "2026-11-20T23:59:59Z", "_lineage": {}}\n')
    part2 = gzip.compress(b'{"ts": "2026-11-21T00:00:00Z", "_lineage": {}}\n')
    table, _ = convert_table([part1 + part2], ["k"], time_field="ts")
    assert table.num_rows == 2
    parts = split_partitions(table, time_field="ts")
    assert [(p, t.num_rows) for p, t in parts] == [("event_date=2026-11-20", 1), ("event_date=2026-11-21", 1)]
    assert [p for p, _ in split_partitions(table, time_field=None, run_date="2026-11-25")] == ["run_date=2026-11-25"]


EPOCH_2026_01_01 = 1_767_225_600  # 2026-01-01T00:00:00Z in seconds


@pytest.mark.parametrize("scale, unit", [(1, "s"), (1_000, "ms"), (1_000_000, "us"), (1_000_000_000, "ns")])
def test_numeric_time_field_unit_is_inferred_from_magnitude(scale, unit):
    """A numeric time field without a declared type: epoch seconds were read as milliseconds (every point in
    event_date=1970-01-21, and a time-range query over the real dates found 0 rows, silently). The unit is
    inferred from the values' magnitude, per file, and noted in the convert report."""
    lines = [{"ts": (EPOCH_2026_01_01 + 3600 * h) * scale, "v": h, "_lineage": {}} for h in (0, 25)]
    blob = gzip.compress("\n".join(json.dumps(x) for x in lines).encode())
    table, bad = convert_table([blob], ["k"], time_field="ts")
    parts = split_partitions(table, time_field="ts")
    assert [(p, t.num_rows) for p, t in parts] == [("event_date=2026-01-01", 1), ("event_date=2026-01-02", 1)]
    assert table["ts"].to_pylist()[0].isoformat() == "2026-01-01T00:00:00+00:00"
    assert unit in bad.summary()["notes"].get("ts", ""), bad.summary()
    assert bad.count == 0


def test_fractional_epoch_seconds_keep_their_fraction():
    blob = gzip.compress(json.dumps({"ts": EPOCH_2026_01_01 + 0.25, "_lineage": {}}).encode())
    table, bad = convert_table([blob], ["k"], time_field="ts")
    assert table["ts"].to_pylist()[0].isoformat() == "2026-01-01T00:00:00.250000+00:00"


def test_a_declared_time_type_is_used_as_written():
    """`types: {ts: timestamp[s]}` says what the numbers are: no inference (and int64 keeps them numbers)."""
    blob = gzip.compress(json.dumps({"ts": EPOCH_2026_01_01, "_lineage": {}}).encode())
    table, bad = convert_table([blob], ["k"], time_field="ts", types={"ts": "timestamp[s]"})
    assert table["ts"].to_pylist()[0].isoformat() == "2026-01-01T00:00:00+00:00" and not bad.notes


@pytest.mark.parametrize("text, expect", [
    ("2026-01-01T05:00:00+05:00", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01T00:00:00", "2026-01-01T00:00:00+00:00"),  # no offset: UTC
])
def test_time_strings_with_offsets_z_dates(text, expect):
    blob = gzip.compress(json.dumps({"ts": text, "_lineage": {}}).encode())
    table, bad = convert_table([blob], ["k"], time_field="ts")
    assert table["ts"].to_pylist()[0].isoformat() == expect and bad.count == 0


def test_garbage_times_are_bad_values_not_1970():
    lines = [{"ts": "2026-01-01T00:00:00Z", "_lineage": {}}, {"ts": "yesterday", "_lineage": {}}]
    blob = gzip.compress("\n".join(json.dumps(x) for x in lines).encode())
    table, bad = convert_table([blob], ["k"], time_field="ts")
    assert table["ts"].to_pylist()[1] is None and bad.by_field == {"ts": 1}
