"""`--json` as a script reads it: the whole of stdout is one JSON document, whatever the run does in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from tests.integration.conftest import API_KEY, demo_levels, write_spec

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "harvester.cli"]


def harvest(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}  # the demo sets its own
    env["E2E_API_KEY"] = API_KEY  # write_spec's specs read it
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)


def test_demo_json_is_one_document_on_stdout(tmp_path):
    """The demo's summary, checked against the vendor's own books, the ledger (`harvest runs --json`) and the
    Parquet files on disk."""
    from harvester.simulator.data import DataConfig, VendorData

    state = tmp_path / "state"
    out = harvest("demo", "--json", "--troops", "1", "--warriors", "2", "--datagroups", "3", "--points", "40",
                  "--rate", "200", "--processes", "0", "--state", str(state))
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)  # the whole of stdout is one document: no table, no progress, no log line
    assert "simulated vendor on" in out.stderr and doc["vendor"]["url"] in out.stderr

    saved = json.loads((state / "demo-vendor.json").read_text())["config"]["data"]
    saved["start"] = datetime.fromisoformat(saved["start"])
    truth = VendorData(DataConfig(**saved)).counts()
    runs = json.loads(harvest("runs", "demo", "--state", str(state), "--json").stdout)["runs"]
    assert [r["run_id"] for r in runs] == [doc["run_id"]]
    assert (doc["source"], doc["status"], doc["exit_code"], doc["ok"]) == ("demo", "SUCCEEDED", 0, True)
    assert doc["run"]["totals"] == runs[0]["totals"] and doc["cost"] == runs[0]["cost"]
    assert doc["cost"]["total_usd"] > 0

    assert {c["level"]: c["vendor"] for c in doc["check"]} == truth
    assert all(c["harvested"] == c["unique"] == c["ledger"] == c["vendor"] and c["ok"] for c in doc["check"])
    assert doc["vendor"]["served"] == doc["run"]["totals"]["calls"] and doc["vendor"]["seconds_over_limit"] == 0

    assert os.path.isdir(doc["output"]) and doc["run_id"] in doc["output"]
    assert os.path.isdir(doc["lake"]["location"])
    for row in doc["lake"]["levels"]:
        files = list((state / "bucket" / row["prefix"]).rglob("*.parquet"))
        assert len(files) == row["files"] > 0 and row["rows"] == truth[row["level"]] and row["ok"], row

    query = doc["query"]
    assert query["columns"] == ["warriors.firmware", "points", "uptime"]
    assert sum(r[1] for r in query["rows"]) == truth["points"]
    assert all(0 <= r[2] <= 1 for r in query["rows"])
    assert (state / "bucket" / "results" / f"{query['query_id']}.json").is_file()


def test_a_long_local_run_prints_nothing_but_its_document(vendor_factory, tmp_path):
    """Over 100 fetch invocations in one process (--processes 0). Powertools keeps a process's metrics in one shared
    set that only a flush clears, and locally metrics are disabled, so nothing flushed: the 100th value of a metric
    printed an EMF document on stdout (or raised "Must contain a metric namespace" in a process that had imported the
    handler before the engine set its environment)."""
    vendor = vendor_factory(troops=1, warriors_per_troop=4, datagroups_per_warrior=27, points_per_datagroup=2,
                            variation=0, rate=400)
    levels = demo_levels()
    levels[-1]["batch_size"] = 1  # one fetch invocation per datagroup: 108 of them
    spec_path = write_spec(tmp_path, vendor, levels, rate_limit={"requests_per_second": 400, "burst": 20})
    out = harvest("run", "--local", str(spec_path), "--json", "--processes", "0", "--state", str(tmp_path / "state"))
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["run"]["levels"]["points"]["records"] == vendor.data.counts()["points"] == 216
    assert doc["cost"]["counts"]["lambda_requests"] > 108
