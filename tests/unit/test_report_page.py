"""The report page of a run that has not sent a request yet (just started, or refused before its first call): the
page and every chart are still written, with empty series, not a crash."""

from __future__ import annotations

from harvester.cli.report_page import CHARTS, write_report


def test_a_run_without_requests_still_gets_its_page(tmp_path):
    data = {
        "run_id": "r0", "source": "demo", "status": "RUNNING", "attempt": 1, "started_at": "2026-12-01T08:00:00Z",
        "finished_at": None, "where": "state folder x", "t0_utc": None,
        "rate": {"requests": 0, "active_seconds": 0, "peak_per_second": 0.0, "mean_per_second": 0.0, "throttled": 0,
                 "retries": 0, "limit": 50.0, "burst": 5, "utilisation": 0.0, "seconds_over_limit": 0},
        "series": {"t0": None, "step": 1, "sent": [], "throttled": [], "retries": [], "levels": {"troops": []}},
        "levels": [{"name": "troops", "batches": 0, "running": 1, "failed_batches": 0, "calls": 0, "records": 0,
                    "throttled": 0, "failures": 0}],
        "batches": [{"level": "troops", "level_index": 0, "batch_id": "b", "status": "RUNNING", "calls": 0,
                     "records": 0, "throttled": 0, "invocations": 0, "seconds": None, "spans": []}],
        "failures": [], "previous": None, "records": [{"level": "troops", "this": None, "previous": None}],
        "cost": None,
    }
    files = write_report(data, tmp_path)
    page = files["html"].read_text(encoding="utf-8")
    assert set(files) == {"html", *(key for key, *_ in CHARTS)}
    assert all(f'id="chart-{key}"' in page for key, *_ in CHARTS)
    assert 'id="rate-limit-line"' in page and "No failed calls or batches." in page
