"""The one validation of a query (harvester/lake/querymodel.py): what the Plan query step and `harvest query` refuse,
each with a QueryError naming the field; and what a valid query becomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harvester.cli import main
from harvester.cli.codes import EXIT_BAD_INPUT
from harvester.lake.querymodel import QueryError, validate_query

BASE = {"source": "demo", "level": "points"}


@pytest.mark.parametrize("raw, message", [
    (["demo"], "must be a JSON object"),
    ({**BASE, "group": ["x"]}, r"unknown query field\(s\) \['group'\]"),
    ({"level": "points"}, "source"),
    ({**BASE, "source": ""}, "source"),
    ({**BASE, "filters": "status=up"}, "filters"),
    ({**BASE, "filters": ["status=up"]}, "filters.0"),
    ({**BASE, "filters": [{"column": "status", "op": "~", "value": "up"}]}, "filter op '~'"),
    ({**BASE, "filters": [{"column": "status", "op": "in", "value": "up"}]}, "needs a list value"),
    ({**BASE, "aggregates": [{"op": "median", "column": "value"}]}, "aggregate op 'median'"),
    ({**BASE, "aggregates": [{"op": "sum"}]}, "aggregate 'sum' needs a 'column'"),
    ({**BASE, "aggregates": [{"op": "share", "column": "status"}]}, "needs 'equals'"),
    ({**BASE, "aggregates": [{"op": "sum", "column": "warriors.mass"}]}, "own columns"),
    ({**BASE, "aggregates": [{"op": "count", "bogus": 1}]}, "bogus"),
    ({**BASE, "start": "yesterday"}, "bad query"),
    ({**BASE, "start": "2026-11-21", "end": "2026-11-20"}, "before"),
    ({**BASE, "group_by": ["n"], "aggregates": [{"op": "count", "as": "n"}]}, "collide"),
])
def test_a_bad_query_is_a_query_error_naming_the_problem(raw, message):
    with pytest.raises(QueryError, match=message):
        validate_query(raw)


def test_a_valid_query_is_normalized_once():
    q = validate_query({**BASE, "start": "2026-11-20", "group_by": ["warriors.firmware", "status"],
                        "filters": [{"column": "value", "op": "==", "value": 3}],
                        "aggregates": [{"op": "share", "column": "status", "equals": "up", "as": "uptime"},
                                       {"op": "mean", "column": "value"}],
                        "ancestor_keys": {"warriors": "id"}})
    assert q["start"] == "2026-11-20T00:00:00.000000Z" and q["end"] is None
    assert [g["name"] for g in q["group_by"]] == ["warriors.firmware", "status"]
    assert q["group_by"][0]["key"] == "id" and "key" not in q["group_by"][1]
    assert q["filters"][0]["op"] == "="
    assert [a["as"] for a in q["aggregates"]] == ["uptime", "mean_value"]
    assert {p["kind"] for p in q["parts"]} == {"eqsum", "count", "sum"}
    assert validate_query(q) == q  # a normalized query passes as it is (the workers get it so)
    assert validate_query(BASE)["aggregates"][0]["op"] == "count"  # the default aggregate
    assert validate_query({**BASE, "filters": None, "group_by": None, "ancestor_keys": None})["filters"] == []


def test_harvest_query_refuses_a_bad_query_before_starting_an_execution(tmp_path, capsys):
    """The CLI started the query workflow (and the local engine) for a query the workflow then failed; it now refuses
    it with the workflow's message and the bad-input exit code, and starts nothing."""
    state = tmp_path / "state"
    code = main(["query", "--local", "--state", str(state), "--source", "demo", "--level", "points",
                 "--agg", "median:value"])
    assert code == EXIT_BAD_INPUT
    assert "aggregate op 'median'" in capsys.readouterr().err
    assert not state.exists()


def test_the_cli_and_the_query_model_do_not_load_pyarrow():
    """The query model is plain Python: `harvest` (every command imports the query module) starts without loading
    pyarrow, as it did before the CLI validated queries with it."""
    code = "import sys, harvester.cli, harvester.lake.querymodel; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
