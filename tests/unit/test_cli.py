"""The `harvest` command line as a new user meets it: the real parser and commands, a real state folder."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pytest

from harvester.local.state import LocalState


def harvest(*args: str) -> subprocess.CompletedProcess:
    """`harvest ARGS` in this process (the console script's `main`), its output captured."""
    from harvester.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # --help, --version
            code = exc.code or 0
    return subprocess.CompletedProcess(["harvest", *args], code, out.getvalue(), err.getvalue())


def run_item(source: str, run_id: str, status: str, error: str | None = None, **extra) -> dict:
    item = {"pk": f"RUN#{source}#{run_id}", "sk": "RUN", "source": source, "run_id": run_id, "status": status,
            "attempt": 1, "started_at": "2026-12-01T05:00:00+00:00", "gsi1pk": f"SOURCE#{source}",
            "gsi1sk": f"2026-12-01T05:00:00+00:00#{run_id}", "totals": {"calls": 10, "records": 5}, **extra}
    return {**item, "error": error} if error else item


@pytest.fixture
def state(tmp_path):
    """A state folder whose ledger holds a crashed run, an incomplete one (with one failed call) and a good one."""
    from boto3.dynamodb.types import TypeSerializer

    store = LocalState(tmp_path / "state")

    class folder:  # items as DynamoDB stores them (typed), as moto's table writes them through
        folder = store.folder

        @staticmethod
        def put_item(item):
            store.put_item({k: TypeSerializer().serialize(v) for k, v in item.items()})
    folder.put_item(run_item("alpha", "crashed", "FAILED", "States.TaskFailed", cause="boom"))
    folder.put_item(run_item("alpha", "partial", "FAILED", "Harvest.Incomplete"))
    folder.put_item({"pk": "RUN#alpha#partial", "sk": "BATCH#01#b1", "batch_id": "b1", "level": 1,
                     "status": "FAILED", "calls": 7, "failures": 2, "records": 3})
    for n in range(2):
        folder.put_item({"pk": "RUN#alpha#partial", "sk": f"FAIL#01#b1#{n:05d}", "batch_id": "b1", "level": 1,
                         "status": 404, "url": f"https://x/items/{n}", "reason": "HTTP 404"})
    folder.put_item(run_item("beta", "good", "SUCCEEDED"))
    return folder.folder


def test_vendor_options_and_help_reach_the_vendor():
    out = harvest("vendor", "--help")
    assert out.returncode == 0, out.stderr
    assert "--troops" in out.stdout and "--port" in out.stdout


def test_vendor_usage_names_the_command_it_was_run_as():
    """Its usage and errors say `harvest vendor` through the harvest CLI, `python -m harvester.simulator` run so."""
    import sys

    out = harvest("vendor", "--help")
    assert out.stdout.startswith("usage: harvest vendor "), out.stdout[:300]
    bad = harvest("vendor", "--no-such-option")
    assert bad.returncode == 2 and "harvest vendor: error: unrecognized arguments" in bad.stderr, bad.stderr
    direct = subprocess.run([sys.executable, "-m", "harvester.simulator", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert direct.returncode == 0 and direct.stdout.startswith("usage: python -m harvester.simulator "), direct


def test_version():
    out = harvest("--version")
    assert out.returncode == 0 and out.stdout.startswith("harvest "), out.stderr


def test_runs_without_a_source_lists_the_sources(state):
    out = harvest("runs", "--local", "--state", str(state), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"sources": ["alpha", "beta"]}


def test_incomplete_and_crashed_runs_are_told_apart(state):
    out = harvest("runs", "alpha", "--state", str(state), "--json")
    assert out.returncode == 0, out.stderr
    shown = {r["run_id"]: r["shown_status"] for r in json.loads(out.stdout)["runs"]}
    assert shown == {"crashed": "FAILED", "partial": "INCOMPLETE"}
    table = harvest("runs", "alpha", "--state", str(state))
    assert "INCOMPLETE" in table.stdout and "FAILED" in table.stdout
    assert harvest("status", "partial", "--state", str(state)).returncode == 3
    assert harvest("status", "crashed", "--state", str(state)).returncode == 1
    assert harvest("status", "good", "--state", str(state)).returncode == 0


def test_one_run_is_a_table_or_json_not_a_raw_item(state):
    out = harvest("runs", "alpha", "partial", "--state", str(state))
    assert out.returncode == 3, out.stderr
    assert '"pk"' not in out.stdout and "RUN#" not in out.stdout
    as_json = json.loads(harvest("runs", "alpha", "partial", "--state", str(state), "--json").stdout)
    assert as_json["status"] == "INCOMPLETE"


def test_failed_calls_are_counted_as_calls_and_listed(state):
    status = json.loads(harvest("status", "partial", "--state", str(state), "--json").stdout)
    level = status["levels"][1]
    assert (level["calls"], level["failures"], level["failed_batches"]) == (7, 2, 1)
    out = harvest("failures", "partial", "--state", str(state), "--json")
    assert out.returncode == 0, out.stderr
    assert [f["url"] for f in json.loads(out.stdout)["failures"]] == ["https://x/items/0", "https://x/items/1"]


def test_an_unknown_run_is_bad_input(state):
    for args in (["status", "nope"], ["failures", "nope"], ["runs", "alpha", "nope"], ["resume", "nope"]):
        out = harvest(*args, "--state", str(state))
        assert out.returncode == 2, (args, out.returncode, out.stderr)
        assert "Traceback" not in out.stderr


def test_cost_estimates_a_seed_sized_run_under_ten_cents():
    """Issue 14's target: a seed-sized run (29,201 calls, 50 r/s) at most $0.10 on arm64 in us-east-1."""
    from pathlib import Path

    spec = Path(__file__).resolve().parents[2] / "sources" / "demo.yaml"
    out = harvest("cost", str(spec), "--calls", "29201", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["region"] == "us-east-1" and result["arch"] == "arm64" and result["prices_taken"]
    assert 0 < result["total_usd"] <= 0.10, result
    assert set(result["usd"]) == {"step_functions", "lambda_requests", "lambda_compute", "dynamodb", "s3_requests",
                                  "secrets_manager", "cloudwatch_logs", "cloudwatch_metrics"}
    # the fetch function's 12 custom metrics (one set for all levels), over 1 + 584 s / 3600 clock hours on average
    assert result["counts"]["metric_series_hours"] == pytest.approx(12 * (1 + 29201 / 50 / 3600), rel=0.01)
    table = harvest("cost", str(spec), "--calls", "29201")
    assert "total" in table.stdout and "$" in table.stdout


def test_following_a_run_that_has_ended_returns_its_code_at_once(state):
    out = harvest("status", "partial", "--follow", "--state", str(state), "--timeout", "30")
    assert out.returncode == 3, out.stderr
    assert "INCOMPLETE" in out.stdout and "https://x/items/0" in out.stdout and "harvest resume partial" in out.stderr
