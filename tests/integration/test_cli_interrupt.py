"""A local run interrupted with Ctrl-C keeps its state, and the next command resumes it to a complete output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from harvester.local.report import audit
from harvester.spec import load_spec
from tests.integration.conftest import API_KEY, demo_levels, write_spec

pytestmark = pytest.mark.integration


def test_ctrl_c_then_resume(vendor_factory, tmp_path):
    vendor = vendor_factory(troops=3, warriors_per_troop=5, datagroups_per_warrior=4, points_per_datagroup=200,
                            rate=60, latency_ms=5)
    spec_path = write_spec(tmp_path, vendor, demo_levels(), rate_limit={"requests_per_second": 60, "burst": 5})
    state = tmp_path / "state"
    env = {**os.environ, "E2E_API_KEY": API_KEY}
    cmd = [sys.executable, "-m", "harvester.cli"]
    proc = subprocess.Popen([*cmd, "run", "--local", str(spec_path), "--run-id", "c1", "--state", str(state)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while vendor.stats().by_route.get("points", 0) < 20:  # interrupt in the middle of the points level
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "harvest resume c1 --local" in err
    assert (state / "ledger.sqlite").exists()
    routes_before = dict(vendor.stats().by_route)

    done = subprocess.run([*cmd, "resume", "c1", "--local", "--state", str(state)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SUCCEEDED" in done.stdout
    spec = load_spec(spec_path)
    found = audit(state / "bucket", spec, "c1")
    truth = vendor.data.counts()
    for level in spec.levels:
        assert found[level.name] == {"records": truth[level.name], "unique": truth[level.name], "duplicates": 0}
    # the resume did not start over: the levels finished before Ctrl-C were not fetched again
    routes_after = vendor.stats().by_route
    for route in ("troops", "warriors", "datagroups"):
        assert routes_after.get(route) == routes_before.get(route), route
