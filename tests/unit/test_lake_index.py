"""Time index of files: look-ups by range without listing S3."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from harvester.lake.index import FileIndex
from harvester.lake.synthetic import create_ledger_table

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)


def entry(key, lo, hi, run="r1", level="points"):
    return {"key": key, "source": "demo", "level": level, "partition": f"event_date={(lo or 'x')[:10]}", "run_id": run,
            "time_column": "ts", "min_time": lo, "max_time": hi, "rows": 10, "bytes": 1000, "expires_at": 1900000000}


@pytest.fixture
def index():
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_ledger_table(ddb, "ledger")
        idx = FileIndex(ddb, "ledger")
        idx.put_files([
            entry("a", "2026-11-20T00:00:00.000000Z", "2026-11-20T23:59:00.000000Z"),
            entry("b", "2026-11-21T00:00:00.000000Z", "2026-11-21T06:00:00.000000Z"),
            entry("c", "2026-11-18T12:00:00.000000Z", "2026-11-22T12:00:00.000000Z", run="r2"),  # spans days
            entry("d", None, None, run="r2"),  # rows without a time
            entry("w", "2026-11-25T20:00:00.000000Z", "2026-11-25T20:01:00.000000Z", level="warriors"),
        ])
        yield idx, ddb


def keys(files):
    return [f["key"] for f in files]


def test_lookup_overlap(index):
    idx, _ = index
    assert keys(idx.lookup("demo", "points", "2026-11-20T12:00:00Z", "2026-11-21T00:00:00Z")) == ["a", "c"]
    assert keys(idx.lookup("demo", "points", "2026-11-21T00:00:00Z", "2026-11-21T00:00:01Z")) == ["b", "c"]
    # a file that starts days before the range is found (c)
    assert keys(idx.lookup("demo", "points", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z")) == ["c"]
    assert keys(idx.lookup("demo", "points", "2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z")) == []
    assert keys(idx.lookup("demo", "points", "2026-11-20T23:59:00.000001Z", "2026-11-20T23:59:59Z")) == ["c"]
    assert keys(idx.lookup("demo", "points")) == ["a", "b", "c"]
    assert keys(idx.lookup("demo", "points", None, "2026-11-20T00:00:00Z")) == ["c"]


def test_item_layout_and_runs(index):
    idx, ddb = index
    f = idx.lookup("demo", "points", "2026-11-21T00:00:00Z", "2026-11-21T01:00:00Z")[0]
    assert f["rows"] == 10 and f["bytes"] == 1000 and f["run_id"] == "r1" and f["partition"] == "event_date=2026-11-21"
    items = ddb.query(TableName="ledger", KeyConditionExpression="pk = :p",
                      ExpressionAttributeValues={":p": {"S": "FILES#demo#points"}})["Items"]
    assert sorted(i["sk"]["S"] for i in items if i["key"]["S"] == "c") == [f"2026-11-{d}#c" for d in (18, 19, 20, 21, 22)]
    assert all("expires_at" in i for i in items)
    assert keys(idx.files_for_run("demo", "points", "r2")) == ["c", "d"]
    assert keys(idx.files_for_run("demo", "points")) == ["a", "b", "c", "d"]
    idx.remove_files([entry("c", "2026-11-18T12:00:00.000000Z", "2026-11-22T12:00:00.000000Z", run="r2")])
    assert keys(idx.lookup("demo", "points")) == ["a", "b"]
    assert keys(idx.files_for_run("demo", "points", "r2")) == ["d"]
