"""Every query result equals DuckDB's answer on the same Parquet files."""

from __future__ import annotations

import math

import boto3
import duckdb
import pytest
from moto import mock_aws

from harvester.lake.compact import convert_run
from harvester.lake.index import FileIndex
from harvester.lake.query import (
    QueryError,
    format_table,
    partial_aggregate,
    plan_query,
    query_in_process,
    reduce_partials,
    validate_query,
)
from harvester.lake.store import S3Store
from harvester.lake.synthetic import create_ledger_table, demo_records, write_raw

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

BUCKET, TABLE = "lake-test", "ledger"
LEVELS = {"points": {"time_field": "ts", "types": {"value": "float64"}}}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_ledger_table(ddb, TABLE)
        store, index = S3Store(s3, BUCKET), FileIndex(ddb, TABLE)
        r1 = demo_records("r1", points_per_group=60, seed=1)
        # run 2: later window overlapping run 1's, warriors got new firmware, points gained a field
        r2 = demo_records("r2", points_per_group=60, seed=2, start="2026-11-21T00:30:00Z", firmware_offset=1,
                          fetched_at="2026-11-26T08:00:00Z")
        for i, p in enumerate(r2["points"]):
            p["quality"] = ["good", "poor", None][i % 3]
            if i % 17 == 0:
                p["status"] = None
        for run, recs in (("r1", r1), ("r2", r2)):
            write_raw(store, "demo", run, recs, batch_size=70)
            convert_run(store, index, source="demo", run_id=run, levels=LEVELS, target_bytes=6000, row_group_rows=100)
        root = tmp_path_factory.mktemp("lake")
        paths = {}
        for key, _ in store.list("processed/"):
            p = root / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(store.get(key))
            paths.setdefault(key.split("/")[2], []).append(str(p))
        yield store, index, paths


def _sql_value(v):
    return f"'{v}'" if isinstance(v, str) else str(v)


def duckdb_answer(q: dict, paths: dict) -> list[list]:
    """The same question in SQL, written independently of the engine."""
    nq = validate_query(q)
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"CREATE VIEW p AS SELECT * FROM read_parquet({paths[nq['level']]!r}, union_by_name=true)")
    joins = []
    for lv in sorted({r["level"] for r in nq["group_by"] + nq["filters"] if r["level"]}):
        con.execute(f"CREATE VIEW {lv} AS SELECT * FROM read_parquet({paths[lv]!r}, union_by_name=true)")
        # the lake keeps each record once: a row's ancestor is the latest fetched copy of its key
        con.execute(f"CREATE VIEW {lv}_latest AS SELECT * FROM {lv} "
                    f"QUALIFY row_number() OVER (PARTITION BY id ORDER BY _fetched_at DESC) = 1")
        joins.append(f"LEFT JOIN {lv}_latest {lv} ON p._lineage__{lv} = {lv}.id")

    def ref(r):
        return f'{r["level"]}.{r["column"]}' if r["level"] else f'p.{r["column"]}'

    where = []
    if nq["start"]:
        where.append(f"p.ts >= TIMESTAMPTZ '{nq['start']}'")
    if nq["end"]:
        where.append(f"p.ts < TIMESTAMPTZ '{nq['end']}'")
    for f in nq["filters"]:
        op, v = f["op"], f["value"]
        if op == "is_null":
            where.append(f"{ref(f)} IS NULL")
        elif op == "not_null":
            where.append(f"{ref(f)} IS NOT NULL")
        elif op in ("in", "not_in"):
            where.append(f"{ref(f)} {'NOT ' if op == 'not_in' else ''}IN ({', '.join(map(_sql_value, v))})")
        else:
            where.append(f"{ref(f)} {op} {_sql_value(v)}")
    sel = [f'{ref(g)} AS "{g["name"]}"' for g in nq["group_by"]]
    for a in nq["aggregates"]:
        c = f"p.{a['column']}" if a["column"] else None
        expr = {
            "count": f"count({c or '*'})", "sum": f"sum({c})", "min": f"min({c})", "max": f"max({c})",
            "mean": f"avg({c})",
            "share": f"avg(CASE WHEN {c} = {_sql_value(a['equals'])} THEN 1.0 WHEN {c} IS NULL THEN NULL ELSE 0.0 END)",
        }[a["op"]]
        sel.append(f'{expr} AS "{a["as"]}"')
    sql = f"SELECT {', '.join(sel)} FROM p {' '.join(joins)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if nq["group_by"]:
        n = len(nq["group_by"])
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(n))
        sql += " ORDER BY " + ", ".join(f"{i + 1} NULLS LAST" for i in range(n))
    return [list(r) for r in con.execute(sql).fetchall()]


def same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif hasattr(y, "isoformat"):
                if x != y.isoformat().replace("+00:00", "Z") and str(x)[:19] != y.strftime("%Y-%m-%dT%H:%M:%S"):
                    return False
            elif x != y:
                return False
    return True


UPTIME = {"op": "share", "column": "status", "equals": "up", "as": "uptime"}
QUERIES = {
    "uptime_by_firmware": {"group_by": ["warriors.firmware"], "aggregates": [{"op": "count"}, UPTIME],
                           "start": "2026-11-20T23:00:00Z", "end": "2026-11-21T02:00:00Z"},
    "all_time_no_group": {"aggregates": [{"op": "count"}, {"op": "sum", "column": "value"}, {"op": "min", "column": "value"},
                                         {"op": "max", "column": "value"}, {"op": "mean", "column": "value"},
                                         {"op": "count", "column": "quality"}]},
    "status_by_run_and_warrior": {"group_by": ["_run_id", "_lineage__warriors", "status"],
                                  "aggregates": [{"op": "count"}, {"op": "mean", "column": "value"}],
                                  "start": "2026-11-20T22:17:00Z", "end": "2026-11-21T01:33:30Z"},
    "filtered_own_and_ancestor": {"group_by": ["warriors.firmware", "troops.region"],
                                  "filters": [{"column": "value", "op": ">=", "value": 20},
                                              {"column": "status", "op": "!=", "value": "degraded"},
                                              {"column": "warriors.firmware", "op": "in", "value": ["1.3.1", "2.0.0", "2.1.4"]}],
                                  "aggregates": [{"op": "count"}, UPTIME, {"op": "max", "column": "value"}],
                                  "start": "2026-11-21T00:00:00Z", "end": "2026-11-22T00:00:00Z"},
    "new_column_across_runs": {"group_by": ["quality"], "aggregates": [{"op": "count"}, {"op": "sum", "column": "value"}],
                               "start": "2026-11-20T00:00:00Z", "end": "2026-11-23T00:00:00Z"},
    "straddling_edges": {"group_by": ["warriors.firmware"],
                         "aggregates": [{"op": "count"}, UPTIME, {"op": "min", "column": "ts"}],
                         "start": "2026-11-20T23:59:59.500Z", "end": "2026-11-21T00:41:07Z"},
    "null_filters": {"group_by": ["quality"], "filters": [{"column": "status", "op": "is_null"}],
                     "aggregates": [{"op": "count"}, {"op": "count", "column": "status"}]},
    "range_touches_no_file": {"group_by": ["warriors.firmware"], "aggregates": [{"op": "count"}, UPTIME],
                              "start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"},
    "gap_inside_a_day": {"aggregates": [{"op": "count"}, UPTIME],
                         "start": "2026-11-20T10:00:00Z", "end": "2026-11-20T12:00:00Z"},
    "warriors_level": {"level": "warriors", "group_by": ["firmware", "troops.region"],
                       "aggregates": [{"op": "count"}, {"op": "mean", "column": "specs__mass"}]},
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_query_equals_duckdb(lake, name):
    store, index, paths = lake
    q = {"source": "demo", "level": "points", **QUERIES[name]}
    got = query_in_process(store, index, q, max_task_files=3)
    want = duckdb_answer(q, paths)
    assert same(got["rows"], want), f"\nengine:\n{format_table(got)}\nduckdb:\n{want}"


def test_plan_skips_files_outside_range_and_tasks_merge(lake):
    store, index, _ = lake
    q = {"source": "demo", "level": "points", "group_by": ["warriors.firmware"], "aggregates": [UPTIME],
         "start": "2026-11-20T23:00:00Z", "end": "2026-11-21T00:00:00Z"}
    plan = plan_query(index, q, max_task_files=1)
    assert plan["files"] == len(plan["tasks"]) >= 1
    files = [f for t in plan["tasks"] for f in t["files"]]
    assert all(f["min_time"] < "2026-11-21T00:00:00" and f["max_time"] >= "2026-11-20T23:00:00" for f in files)
    assert plan["tasks"][0]["ancestors"]["warriors"]
    partials = [partial_aggregate(store, t, plan["query"]) for t in plan["tasks"]]
    assert reduce_partials(partials, plan["query"])["rows"] == query_in_process(store, index, q, write=False)["rows"]


def test_result_written_as_json_and_csv(lake):
    store, index, _ = lake
    res = query_in_process(store, index, {"source": "demo", "level": "points", **QUERIES["uptime_by_firmware"]})
    csv_text = store.get(res["summary"]["csv_key"]).decode()
    assert csv_text.splitlines()[0] == "warriors.firmware,count,uptime"
    assert len(csv_text.splitlines()) == len(res["rows"]) + 1
    assert res["summary"]["json_key"] == f"results/{res['query_id']}.json"


def test_bad_queries_are_rejected():
    with pytest.raises(QueryError, match="aggregate op"):
        validate_query({"source": "demo", "level": "points", "aggregates": [{"op": "median", "column": "value"}]})
    with pytest.raises(QueryError, match="needs 'equals'"):
        validate_query({"source": "demo", "level": "points", "aggregates": [{"op": "share", "column": "status"}]})
    with pytest.raises(QueryError, match="before"):
        validate_query({"source": "demo", "level": "points", "start": "2026-11-21", "end": "2026-11-20"})


def test_ancestor_columns_join_on_the_levels_primary_key():
    """A GitHub-shaped API whose first level's key is `login` (not `id`), and a level with a composite key:
    `--group-by orgs.login` returned one group with an empty key and `--filter orgs.login=acme` 0 rows, silently,
    because the join assumed an ancestor column named `id`. The convert stage now writes each keyed record's key
    (as its children's lineage holds it) as `_key`, and the query joins on it."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="gh-lake")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_ledger_table(ddb, "gh-ledger")
        store, index = S3Store(s3, "gh-lake"), FileIndex(ddb, "gh-ledger")

        def meta(level, lineage):
            return {"_source": "gh", "_run_id": "r1", "_level": level, "_lineage": lineage,
                    "_fetched_at": "2026-11-25T20:00:00Z"}

        orgs = [{"login": login, "plan": plan, **meta("orgs", {})} for login, plan in (("acme", "pro"), ("globex", "free"))]
        repos = [{"owner": o, "name": n, "stars": s, **meta("repos", {"orgs": o})}
                 for o, n, s in (("acme", "api", 5), ("acme", "web", 7), ("globex", "api", 1))]
        issues = []
        for i in range(30):
            owner, name = [("acme", "api"), ("acme", "web"), ("globex", "api")][i % 3]
            issues.append({"number": i, "created_at": f"2026-11-20T{i % 24:02d}:00:00Z",
                           **meta("issues", {"orgs": owner, "repos": f"{owner},{name}"})})
        write_raw(store, "gh", "r1", {"orgs": orgs, "repos": repos, "issues": issues})
        levels = {"orgs": {"primary_key": ["login"]}, "repos": {"primary_key": ["owner", "name"]},
                  # an issue's number is unique per repository (the lineage): several open in the same hour
                  "issues": {"time_field": "created_at", "primary_key": ["number"]}}
        convert_run(store, index, source="gh", run_id="r1", levels=levels)

        by_org = query_in_process(store, index, {"source": "gh", "level": "issues", "group_by": ["orgs.login"],
                                          "aggregates": [{"op": "count"}]}, write=False)
        assert sorted(by_org["rows"]) == [["acme", 20], ["globex", 10]]
        acme = query_in_process(store, index, {"source": "gh", "level": "issues", "filters": [
            {"column": "orgs.login", "op": "=", "value": "acme"}], "aggregates": [{"op": "count"}]}, write=False)
        assert acme["rows"] == [[20]]
        by_repo = query_in_process(store, index, {"source": "gh", "level": "issues", "group_by": ["repos.name", "repos.stars"],
                                           "aggregates": [{"op": "count"}]}, write=False)
        assert sorted(by_repo["rows"]) == [["api", 1, 10], ["api", 5, 10], ["web", 7, 10]]


@pytest.mark.parametrize("query, words", [
    ({"filters": [{"column": "status", "op": ">", "value": 5}]}, ["status", "string", "5"]),
    ({"filters": [{"column": "value", "op": "=", "value": "high"}]}, ["value", "double", "high"]),
    ({"aggregates": [{"op": "sum", "column": "status"}]}, ["sum", "status", "string"]),
    ({"aggregates": [{"op": "mean", "column": "status"}]}, ["mean", "status", "string"]),
    ({"filters": [{"column": "warriors.firmware", "op": "<", "value": 2}]}, ["warriors.firmware", "string"]),
])
def test_a_type_mismatch_is_a_query_error_naming_the_column(lake, query, words):
    """A filter or aggregate whose value cannot compare with the column's type failed inside the Map's workers
    and the user read `States.ExceedToleratedFailureThreshold`; the plan step checks the types against the files'
    schemas and names the column, its type and the value."""
    store, index, _ = lake
    with pytest.raises(QueryError) as err:
        plan_query(index, {"source": "demo", "level": "points", **query}, store=store)
    for word in words:
        assert word in str(err.value), str(err.value)
