"""`harvest report RUN_ID`: a real local harvest against the simulated vendor, its report built from the ledger
and opened in a real headless browser (Debian's Chromium, driven by playwright); and the same command against a
deployed stack (moto's server, as tests/integration/test_cli_aws.py does it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harvester.simulator.faults import FaultConfig, FaultRule
from tests.integration.conftest import API_KEY, demo_levels, write_spec
from tests.integration.test_cli_aws import deployed, template  # noqa: F401 - the AWS-mode fixtures

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (.ci/run installs it)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # kept after the run, ignored by git
CHARTS = ("rate", "throttles", "progress", "batches", "records", "cost")


def harvest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "E2E_API_KEY": API_KEY}
    return subprocess.run([sys.executable, "-m", "harvester.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def open_in_chromium(page_path: Path, screenshot: Path) -> dict:
    """Load the page in headless Chromium; what it logged, what it tried to fetch, and what its charts hold."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            messages, requests = [], []
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            facts = page.evaluate("""() => {
                const out = {charts: {}};
                for (const sec of document.querySelectorAll('section[id^="chart-"]')) {
                    const svg = sec.querySelector('svg');
                    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                    out.charts[sec.id.slice(6)] = {paths: svg ? svg.querySelectorAll('path').length : 0,
                                                   width: box.width, height: box.height};
                }
                const d = id => { const p = document.querySelector(`[id="${id}"] path`); return p && p.getAttribute('d'); };
                const box = id => { const p = document.querySelector(`[id="${id}"] path`);
                                    const b = p && p.getBoundingClientRect(); return b && [b.width, b.height]; };
                out.limit = d('rate-limit-line'); out.limitBox = box('rate-limit-line');
                out.measured = d('rate-measured-rate'); out.measuredBox = box('rate-measured-rate');
                out.failures = (document.getElementById('chart-batches') || {}).textContent || '';
                out.data = JSON.parse(document.getElementById('report-data').textContent);
                return out;
            }""")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / screenshot.name)
    return {**facts, "messages": messages, "requests": requests}


def test_the_report_of_a_local_run_opens_in_chromium_with_every_chart_drawn(vendor_factory, tmp_path):
    vendor = vendor_factory(troops=2, warriors_per_troop=3, datagroups_per_warrior=3, points_per_datagroup=200,
                            rate=30, latency_ms=5)
    spec_path = write_spec(tmp_path, vendor, demo_levels(), rate_limit={"requests_per_second": 30, "burst": 5})
    state = tmp_path / "state"
    first = harvest("run", "--local", str(spec_path), "--run-id", "r1", "--state", str(state))
    assert first.returncode == 0, first.stderr[-3000:]
    victim = vendor.data.ids("datagroups")[2]  # the second run ends incomplete: one failed call to show
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/datagroups/*/points"], ids=[victim])))
    before = vendor.stats()
    second = harvest("run", "--local", str(spec_path), "--run-id", "r2", "--state", str(state))
    assert second.returncode == 3, second.stderr[-3000:]
    after = vendor.stats()

    out = harvest("report", "r2", "--state", str(state), "--out", str(tmp_path / "report"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    # what the workers recorded second by second adds up to what the vendor saw, in the seconds it saw it
    sent = data["series"]["sent"]
    assert round(sum(sent)) == after.requests - before.requests == data["rate"]["requests"]
    vendor_seconds = {s: c["served"] + c["refused"] for s, c in after.per_second.items()
                      if s not in before.per_second}
    ours = {data["series"]["t0"] + i: v for i, v in enumerate(sent) if v}
    off = sum(abs(ours.get(s, 0) - vendor_seconds.get(s, 0)) for s in set(ours) | set(vendor_seconds))
    assert off <= 0.25 * sum(sent), (ours, vendor_seconds)
    assert round(sum(data["series"]["throttled"])) == after.refused - before.refused == data["rate"]["throttled"]
    assert data["rate"]["limit"] == 30 and data["status"] == "INCOMPLETE"
    assert [r["previous"] for r in data["records"]] == [r["this"] for r in data["records"]][:3] + [
        vendor.data.counts()["points"]]  # the first run had every point; the second misses the victim's
    assert [(f["level"], f["status"]) for f in data["failures"]] == [("points", 404)]
    assert sum(b["calls"] for b in data["batches"]) == round(sum(sent)) and all(b["spans"] for b in data["batches"])
    assert data["cost"]["total_usd"] > 0
    assert set(data["files"]) == {"html", *CHARTS}
    for key in CHARTS:
        assert Path(data["files"][key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key

    seen = open_in_chromium(Path(data["files"]["html"]), tmp_path / "report-local.png")
    assert seen["messages"] == [], seen["messages"]
    assert all(u.startswith("file:") for u in seen["requests"]), "the page fetched something: not self-contained"
    assert set(seen["charts"]) == set(CHARTS)
    for key, chart in seen["charts"].items():
        assert chart["paths"] >= 3 and chart["width"] > 500 and chart["height"] > 100, (key, chart)
    # the rate chart: a horizontal limit line across the plot, and the measured series with a point per second
    assert seen["limit"] and seen["limitBox"][0] > 400 and seen["limitBox"][1] < 3, seen["limit"]
    assert seen["measured"] and seen["measured"].count("L") >= sum(1 for v in sent if v), seen["measured"]
    assert seen["measuredBox"][1] > 20
    assert "404" in seen["failures"] and victim in seen["failures"]
    assert seen["data"]["run_id"] == "r2"


def test_the_report_of_a_run_on_the_stack(deployed, tmp_path):  # noqa: F811 - the fixture imported above
    stack, vendor = deployed
    out = stack.harvest("run", "e2e", "--run-id", "a1")
    assert out.returncode == 0, out.stderr[-3000:]
    report = stack.harvest("report", "a1", "--out", str(tmp_path / "aws-report"), "--json")
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads(report.stdout)
    assert data["where"] == f"stack {stack.stack} (us-east-1)" and data["status"] == "SUCCEEDED"
    assert round(sum(data["series"]["sent"])) == vendor.stats().requests == data["rate"]["requests"]
    assert [r["this"] for r in data["records"]] == [vendor.data.counts()[lv.name] for lv in stack.spec.levels]
    run = stack.engine.ledger.get_run("e2e", "a1")
    assert data["cost"]["total_usd"] == run["cost"]["total_usd"] > 0
    page = Path(data["files"]["html"]).read_text(encoding="utf-8")
    assert 'id="rate-measured-rate"' in page and "<script src" not in page and "http" not in page.split("<body>")[0]
    missing = stack.harvest("report", "nope", "--out", str(tmp_path / "none"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: no run"), missing.stderr
