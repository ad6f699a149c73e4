"""The lake end to end: the harvest workflow's convert stage and the query workflow on the local engine, against the
simulated vendor. The Parquet files must hold exactly what was harvested, and every query answer must equal
DuckDB's on the same files."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import duckdb
import pytest

from harvester import s3keys
from harvester.simulator.data import VendorData
from harvester.simulator.faults import FaultConfig, FaultRule
from tests.integration.conftest import demo_levels, write_spec

pytestmark = pytest.mark.integration

BUCKET = "harvester-local"
LEVELS = ("troops", "warriors", "datagroups", "points")
VENDOR = dict(troops=2, warriors_per_troop=4, datagroups_per_warrior=3, points_per_datagroup=400, rate=1000, burst=50)


class WiderVendorData(VendorData):
    """The same hierarchy, after the vendor added a field to warriors (hw_rev) and to points (quality)."""

    def _build(self) -> None:
        super()._build()
        for n, w in enumerate(self._warriors):
            w["hw_rev"] = f"rev-{n % 2}"

    def _generate_points(self, datagroup_id: str):
        return tuple({**p, "quality": ("good", "poor")[i % 2]} for i, p in enumerate(super()._generate_points(datagroup_id)))


def objects(engine, prefix: str) -> list[str]:
    keys, kwargs = [], {}
    while True:
        resp = engine.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kwargs)
        keys += [o["Key"] for o in resp.get("Contents", [])]
        if not resp.get("IsTruncated"):
            return keys
        kwargs["ContinuationToken"] = resp["NextContinuationToken"]


def download_lake(engine, source: str, root) -> dict[str, list[str]]:
    """Every committed Parquet file, copied out of moto's S3: {level: [paths]}."""
    paths: dict[str, list[str]] = {}
    for key in objects(engine, s3keys.processed_prefix(source, "")[:-1]):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(engine.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        paths.setdefault(key.split("/")[2], []).append(str(path))
    return paths


def connect():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def table(paths: dict[str, list[str]], level: str) -> str:
    files = ", ".join(f"'{p}'" for p in sorted(paths[level]))
    return f"read_parquet([{files}], union_by_name = true, hive_partitioning = false)"


def assert_same(result: dict, expected: list[tuple]) -> None:
    got = [tuple(r) for r in result["rows"]]
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected):
        for a, b in zip(g, e):
            if isinstance(a, float) or isinstance(b, float):
                assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9), (g, e)
            else:
                assert a == b, (g, e)


def check_lake(engine, spec, run_id: str, paths) -> dict:
    """Parquet rows per level = the ledger's records = the run item's lake counts; no staging left behind."""
    run = engine.ledger.get_run(spec.name, run_id)
    con = connect()
    for level in LEVELS:
        rows = con.execute(f"SELECT count(*) FROM {table(paths, level)} WHERE _run_id = '{run_id}'").fetchone()[0]
        assert rows == run["levels"][level]["records"] == run["lake"]["levels"][level]["rows"], level
        assert run["lake"]["levels"][level]["files"] >= 1
        assert run["lake"]["levels"][level]["bad_values"] == 0
    assert objects(engine, s3keys.staging_prefix(spec.name, run_id)) == []
    return run


def uptime_sql(paths, start: str, end: str, where: str = "", group: str = "w.firmware") -> str:
    return f"""
        SELECT {group} AS g, count(*) AS n, avg((p.status = 'up')::INT) AS uptime
        FROM {table(paths, 'points')} p
        LEFT JOIN (SELECT * FROM {table(paths, "warriors")}
                   QUALIFY row_number() OVER (PARTITION BY id ORDER BY _fetched_at DESC) = 1) w
          ON w.id = p._lineage__warriors
        WHERE p.ts >= TIMESTAMPTZ '{start}' AND p.ts < TIMESTAMPTZ '{end}' {where}
        GROUP BY ALL ORDER BY g NULLS LAST"""


def uptime_query(source: str, start: str, end: str, group: str = "warriors.firmware", filters=None) -> dict:
    return {"source": source, "level": "points", "start": start, "end": end, "filters": filters or [],
            "group_by": [group],
            "aggregates": [{"op": "count", "as": "n"}, {"op": "share", "column": "status", "equals": "up", "as": "uptime"}]}


def test_harvest_converts_exactly_the_harvest_and_queries_equal_duckdb_across_a_widened_schema(
    vendor_factory, engine, tmp_path
):
    vendor = vendor_factory(**VENDOR)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels(), name="lake"))
    desc = engine.run({"source": spec.name, "run_id": "r1"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    entered = [e["stateEnteredEventDetails"]["name"] for e in engine.history(desc["executionArn"])
               if "stateEnteredEventDetails" in e]
    assert entered[entered.index("Plan conversion"):] == [
        "Plan conversion", "Convert raw", "Plan compaction", "Compact partitions", "Record lake counts",
        "Any failed batches?", "Record run success", "Daily window?", "Harvest complete"]
    assert json.loads(desc["output"])["lake"]["levels"]["points"]["rows"] == vendor.data.counts()["points"]

    paths = download_lake(engine, spec.name, tmp_path / "lake1")
    check_lake(engine, spec, "r1", paths)
    con = connect()
    # exactly the vendor's records: every id once, every point (datagroup, ts) once
    for level in ("troops", "warriors", "datagroups"):
        ids = [r[0] for r in con.execute(f"SELECT id FROM {table(paths, level)}").fetchall()]
        assert sorted(ids) == sorted(vendor.data.ids(level)), level
    points = con.execute(f"SELECT _lineage__datagroups, strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') "
                     f"FROM {table(paths, 'points')}").fetchall()
    assert len(points) == len(set(points)) and set(points) == vendor.data.point_keys()
    # time-series points are partitioned by event date (400 points x 5 min span two days), the rest by run date
    assert {p.split("/")[-2] for p in paths["points"]} == {"event_date=2026-01-01", "event_date=2026-01-02"}
    assert all("/run_date=" in p for p in paths["warriors"])

    # the query workflow equals DuckDB: a range inside the data, one straddling the day edge, one touching no file
    cases = [
        ("2026-01-01T02:00:00Z", "2026-01-01T09:30:00Z", [], ""),
        ("2026-01-01T20:00:00Z", "2026-01-02T03:17:00Z",
         [{"column": "value", "op": ">", "value": 10}, {"column": "troops.region", "op": "not_null"}],
         "AND p.value > 10"),
        ("2027-03-01T00:00:00Z", "2027-03-02T00:00:00Z", [], ""),
    ]
    for start, end, filters, where in cases:
        desc, result = engine.query(uptime_query(spec.name, start, end, filters=filters), timeout=120)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        assert result["columns"] == ["warriors.firmware", "n", "uptime"]
        assert_same(result, con.execute(uptime_sql(paths, start, end, where)).fetchall())
        assert len(result["rows"]) == (3 if start < "2027" else 0)  # the three firmware versions, or no file
        summary = json.loads(desc["output"])
        assert summary["json_key"] == f"results/{result['query_id']}.json"
        csv = engine.s3.get_object(Bucket=BUCKET, Key=summary["csv_key"])["Body"].read().decode()
        assert csv.splitlines()[0] == "warriors.firmware,n,uptime" and len(csv.splitlines()) == len(result["rows"]) + 1
    assert result["rows"] == []  # the last range touches no file
    assert objects(engine, "queries/") == []  # tasks and partials are removed once the result is written

    # a bad query fails in the first state, with the problem named
    arn = engine.sfn.start_execution(stateMachineArn=engine.query_state_machine_arn, name="bad-query",
                                     input=json.dumps({"source": spec.name, "level": "points", "group": ["x"]}))["executionArn"]
    desc = engine.wait(arn, timeout=60)
    assert desc["status"] == "FAILED" and desc["error"] == "QueryError"
    assert "unknown query field(s) ['group']" in json.loads(desc["cause"])["errorMessage"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in engine.history(arn) if "stateEnteredEventDetails" in e]
    assert entered == ["Plan query"]

    # a second run: the vendor added a field to warriors and to points, and its points are a day later; the schema
    # widens, nothing fails; the troops, warriors and datagroups it lists again are kept once, its copy
    vendor.stop()
    later = datetime(2026, 1, 2, tzinfo=UTC)
    wider = vendor_factory(data=WiderVendorData(start=later, **{k: v for k, v in VENDOR.items() if k not in ("rate", "burst")}),
                           rate=1000, burst=50)
    write_spec(tmp_path, wider, demo_levels(), name="lake")
    engine.add(tmp_path / "lake.yaml")
    desc = engine.run({"source": spec.name, "run_id": "r2"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    paths = download_lake(engine, spec.name, tmp_path / "lake2")
    r2 = check_lake(engine, spec, "r2", paths)
    upper = sum(len(vendor.data.ids(level)) for level in LEVELS[:3])
    overlap = sum(len(vendor.data.points(g, start=later)) for g in vendor.data.ids("datagroups"))
    assert overlap > 0 and r2["lake"]["duplicates_dropped"] == upper + overlap  # r1's copies of what r2 fetched again
    rows_r1 = con.execute(f"SELECT _level, count(*) FROM read_parquet({[p for ps in paths.values() for p in ps]!r}, "
                          "union_by_name = true) WHERE _run_id = 'r1' GROUP BY ALL").fetchall()
    assert rows_r1 == [("points", vendor.data.counts()["points"] - overlap)]
    r2_files = [p for p in paths["points"] if "/r2-" in p]
    r1_files = [p for p in paths["points"] if "/r1-" in p]
    assert "quality" in [d[0] for d in con.execute(f"SELECT * FROM read_parquet('{r2_files[0]}') LIMIT 0").description]
    assert "quality" not in [d[0] for d in con.execute(f"SELECT * FROM read_parquet('{r1_files[0]}') LIMIT 0").description]

    start, end = "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"
    for group, filters, where in [
        ("warriors.firmware", [], ""),  # both runs' points, joined to the warriors' latest copy
        ("quality", [], ""),  # only in run 2: run 1's points group under null
        ("warriors.hw_rev", [{"column": "quality", "op": "=", "value": "good"}], "AND p.quality = 'good'"),
    ]:
        desc, result = engine.query(uptime_query(spec.name, start, end, group=group, filters=filters), timeout=120)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        sql_group = {"warriors.firmware": "w.firmware", "quality": "p.quality", "warriors.hw_rev": "w.hw_rev"}[group]
        expected = con.execute(uptime_sql(paths, start, end, where, group=sql_group)).fetchall()
        assert_same(result, expected)
    total = sum(r[1] for r in engine.query(uptime_query(spec.name, start, end), timeout=120)[1]["rows"])
    assert total == vendor.data.counts()["points"] + wider.data.counts()["points"] - overlap  # each point once


def test_run_with_failed_batches_converts_what_was_harvested_then_ends_incomplete(vendor_factory, engine, tmp_path):
    vendor = vendor_factory(troops=2, warriors_per_troop=3, datagroups_per_warrior=2, points_per_datagroup=30,
                            rate=1000, burst=50)
    spec = engine.add(write_spec(tmp_path, vendor, demo_levels(), name="partial"))
    victim = vendor.data.ids("warriors")[1]
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/warriors/*/datagroups"], ids=[victim])))
    desc = engine.run({"source": spec.name, "run_id": "p1"}, timeout=300)
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete"
    entered = [e["stateEnteredEventDetails"]["name"] for e in engine.history(desc["executionArn"])
               if "stateEnteredEventDetails" in e]
    assert entered[-4:] == ["Record lake counts", "Any failed batches?", "Record run incomplete", "Harvest incomplete"]
    paths = download_lake(engine, spec.name, tmp_path / "lake")
    run = check_lake(engine, spec, "p1", paths)
    assert run["status"] == "FAILED" and run["levels"]["datagroups"]["failed_batches"] == 1
    assert run["lake"]["levels"]["points"]["rows"] < vendor.data.counts()["points"]

    # the resume fetches the rest and converts the whole run again: still exactly one row per record
    vendor.clear_faults()
    desc = engine.run({"source": spec.name, "resume": "p1"}, timeout=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    paths = download_lake(engine, spec.name, tmp_path / "lake-resumed")
    run = check_lake(engine, spec, "p1", paths)
    assert run["lake"]["levels"]["points"]["rows"] == vendor.data.counts()["points"]
    files = engine.dynamodb.query(TableName="harvester-ledger", KeyConditionExpression="pk = :pk",
                                  ExpressionAttributeValues={":pk": {"S": f"FILES#{spec.name}#points#RUNS"}})["Items"]
    assert len(files) == run["lake"]["levels"]["points"]["files"] == len(paths["points"])

    # a worker that fails (its file is gone) fails the query with the reason, not a partial answer
    engine.s3.delete_object(Bucket=BUCKET, Key=run_key(paths["points"][0], spec.name))
    desc, result = engine.query({"source": spec.name, "level": "points"}, timeout=120)
    assert desc["status"] == "FAILED" and desc["error"] == "Query.Failed" and result is None
    assert desc["cause"].startswith("States.ExceedToleratedFailureThreshold")


def run_key(path: str, source: str) -> str:
    """The S3 key of a downloaded lake file."""
    return path[path.index(f"processed/{source}/"):]
