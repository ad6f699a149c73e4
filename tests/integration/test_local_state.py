"""The local state folder never loses a run: written as the run goes, locked, with one clear line when it cannot
be used, and every stop clean. Real `harvest` processes, real signals, the simulated vendor on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harvester.local.report import audit
from harvester.spec import load_spec
from tests.integration.conftest import API_KEY, demo_levels, write_spec

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "harvester.cli"]


def env() -> dict[str, str]:
    return {**os.environ, "E2E_API_KEY": API_KEY}


def harvest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env(), capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(b")", 1)[1].split()
            if fields[0] != b"Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z":
            out.add(pid)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return f"{pid} (gone)"


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def assert_exact(state: Path, spec_path: Path, vendor, run_id: str) -> None:
    spec = load_spec(spec_path)
    found = audit(state / "bucket", spec, run_id)
    truth = vendor.data.counts()
    for level in spec.levels:
        assert found[level.name] == {"records": truth[level.name], "unique": truth[level.name], "duplicates": 0}, (
            run_id, level.name)


def small_source(vendor_factory, tmp_path, **vendor_options):
    vendor = vendor_factory(troops=2, warriors_per_troop=3, datagroups_per_warrior=3, points_per_datagroup=90,
                            **vendor_options)
    return vendor, write_spec(tmp_path, vendor, demo_levels(), max_concurrency=2)


def test_sigkill_at_twenty_points_then_resume_loses_nothing(vendor_factory, tmp_path):
    """SIGKILL of the CLI at 20 points of a run (starting up, loading the folder, mid-level, while writing):
    every kill takes the worker processes down with it, the next command resumes, the run ends with every record
    exactly once, and an earlier run in the same folder stays intact."""
    vendor = vendor_factory(troops=2, warriors_per_troop=3, datagroups_per_warrior=3, points_per_datagroup=300,
                            latency_ms=20)
    spec_path = write_spec(tmp_path, vendor, demo_levels(), max_concurrency=2)
    state = tmp_path / "state"
    first = harvest("run", "--local", str(spec_path), "--run-id", "before", "--state", str(state), "--processes", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert_exact(state, spec_path, vendor, "before")

    rng = random.Random(13)
    kills = 0
    # a part and a checkpoint every 40 records, so a run killed every few calls still gets somewhere
    os.environ["HARVESTER_FLUSH_RECORDS"] = "40"
    try:
        for _ in range(80):
            known = (state / "bucket" / "runs" / "e2e" / "target" / "spec.json").exists()
            args = (["resume", "target"] if known else ["run", str(spec_path), "--run-id", "target"])
            proc = start(*args, "--local", "--state", str(state), "--processes", "2")
            calls_before = vendor.stats().requests
            # a kill point: a moment of start-up (imports, loading the folder) or a few vendor calls into the run
            # (the run needs ~170 calls: at most 15 an attempt makes 20 kill points whatever the machine's speed)
            if kills < 20 and rng.random() < 0.3:
                time.sleep(rng.uniform(0.2, 2.5))
            else:
                target, deadline = rng.randint(3, 15), time.monotonic() + 30
                while (vendor.stats().requests - calls_before < target and proc.poll() is None
                       and time.monotonic() < deadline):
                    time.sleep(0.01)
            if proc.poll() is not None:  # the run finished before this kill point
                assert proc.returncode == 0, proc.communicate()[1][-2000:]
                break
            below = descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            kills += 1
            assert not wait_gone(below, 5.0), "worker processes outlived the killed CLI"
        else:
            pytest.fail(f"the run never finished ({kills} kills)")
    finally:
        os.environ.pop("HARVESTER_FLUSH_RECORDS", None)
    assert kills >= 20, f"only {kills} kill points before the run finished: make the run longer"
    final = harvest("resume", "target", "--local", "--state", str(state))
    assert final.returncode == 0, final.stderr[-2000:]
    assert_exact(state, spec_path, vendor, "target")
    assert_exact(state, spec_path, vendor, "before")


def test_a_second_run_into_a_busy_folder_is_refused_and_readers_work(vendor_factory, tmp_path):
    vendor, spec_path = small_source(vendor_factory, tmp_path, latency_ms=40)
    state = tmp_path / "state"
    first = start("run", "--local", str(spec_path), "--run-id", "one", "--state", str(state))
    deadline = time.monotonic() + 60
    while vendor.stats().requests < 5:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    second = harvest("run", "--local", str(spec_path), "--run-id", "two", "--state", str(state))
    assert second.returncode == 4, second.stderr
    assert f"pid {first.pid}" in second.stderr and "harvest run" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    runs = harvest("runs", "e2e", "--state", str(state))  # a reader, during the run
    assert runs.returncode == 0 and "one" in runs.stdout, runs.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert not (state / "bucket" / "runs" / "e2e" / "two").exists()
    assert_exact(state, spec_path, vendor, "one")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "timeout"])
def test_every_stop_is_quick_clean_and_resumable(vendor_factory, tmp_path, how):
    """A vendor that takes 3 s per call: SIGTERM, Ctrl-C and --timeout stop the fleet within 5 s, leave no process
    behind, say how to resume with a documented exit code, and the resume completes the run."""
    vendor, spec_path = small_source(vendor_factory, tmp_path, latency_ms=3000)
    state = tmp_path / "state"
    extra = ["--timeout", "8"] if how == "timeout" else []
    proc = start("run", "--local", str(spec_path), "--run-id", "r", "--state", str(state), "--processes", "2", *extra)
    deadline = time.monotonic() + 60
    while vendor.stats().by_route.get("warriors", 0) < 1:  # calls in flight in the workers
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    below = descendants(proc.pid)
    assert below, "the run has worker processes"
    t0 = time.monotonic()
    if how != "timeout":
        proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    expected = {"SIGTERM": 143, "SIGINT": 130, "timeout": 124}[how]
    assert proc.returncode == expected, err[-2000:]
    assert took < (5 if how != "timeout" else 15), f"took {took:.1f} s to stop"
    assert "harvest resume r --local" in err and "Traceback" not in err, err[-2000:]
    left = wait_gone(below, 3.0)
    assert not left, f"processes left behind: {[cmdline(pid) for pid in left]}"
    vendor.config.latency_ms = 0
    done = harvest("resume", "r", "--local", "--state", str(state))
    assert done.returncode == 0, done.stderr[-2000:]
    assert_exact(state, spec_path, vendor, "r")


def test_a_damaged_ledger_is_one_clear_line(vendor_factory, tmp_path):
    vendor, spec_path = small_source(vendor_factory, tmp_path)
    state = tmp_path / "state"
    assert harvest("run", "--local", str(spec_path), "--run-id", "ok", "--state", str(state)).returncode == 0
    db = state / "ledger.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.write_bytes(db.read_bytes()[:1000] + b"\x00garbage" * 200)
    for args in (["runs", "e2e"], ["resume", "ok", "--local"]):
        out = harvest(*args, "--state", str(state))
        assert out.returncode == 4, (args, out.stderr)
        assert str(db) in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_an_old_ledger_with_a_torn_line_names_the_line(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ledger.jsonl").write_text('{"pk": "RUN#x#1", "sk": "RUN", "status": "SUCCEEDED"}\n{"pk": "RUN#x#2", "s')
    out = harvest("runs", "x", "--state", str(state))
    assert out.returncode == 4 and f"{state / 'ledger.jsonl'}:2" in out.stderr, out.stderr


def test_disk_full_is_one_clear_line(vendor_factory, tmp_path):
    """The state folder on a 256 KB file system: the run stops on the first write that does not fit, with one line
    that names the file, exit code 4, and no second copy left filling the disk."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        vendor = vendor_factory(troops=3, warriors_per_troop=5, datagroups_per_warrior=4, points_per_datagroup=800)
        spec_path = write_spec(tmp_path, vendor, demo_levels())
        out = harvest("run", "--local", str(spec_path), "--run-id", "big", "--state", str(mount / "state"))
        assert out.returncode == 4, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
        assert lines and "disk full writing" in lines[0] and str(mount) in lines[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert not (mount / "state" / "bucket.tmp").exists()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_an_interrupted_demo_resumes(tmp_path):
    """`harvest demo` interrupted: the hint it prints works, because the demo keeps its vendor's settings, key and
    port in the state folder and `harvest resume` starts that vendor again."""
    import json
    import re
    from datetime import datetime

    from harvester.cli import _stored_spec
    from harvester.simulator.data import DataConfig, VendorData

    state = tmp_path / "state"
    proc = subprocess.Popen([*CLI, "demo", "--troops", "2", "--warriors", "3", "--datagroups", "4", "--points", "400",
                             "--rate", "40", "--state", str(state)],
                            env={k: v for k, v in os.environ.items() if not k.startswith("DEMO_")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((state / "bucket" / "raw" / "demo").glob("*/datagroups/*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    hint = re.search(r"`(harvest resume (\S+) --local --state \S+)`", err)
    assert hint, err[-2000:]
    run_id = hint.group(2)
    done = subprocess.run([*CLI, *hint.group(1).split()[1:]], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("DEMO_")})
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((state / "demo-vendor.json").read_text())["config"]["data"]
    saved["start"] = datetime.fromisoformat(saved["start"])
    truth = VendorData(DataConfig(**saved)).counts()
    spec = _stored_spec(state, run_id)
    found = audit(state / "bucket", spec, run_id)
    for level in spec.levels:
        assert found[level.name] == {"records": truth[level.name], "unique": truth[level.name], "duplicates": 0}


def test_a_new_users_local_run_prints_its_run_id_tables_and_no_log_lines(vendor_factory, tmp_path):
    """The id printed at the start is the run id; a run with failed calls ends INCOMPLETE (exit 3) with a table of
    its failures, not with the handlers' JSON log lines cutting through the progress."""
    from harvester.simulator.faults import FaultConfig, FaultRule

    vendor = vendor_factory(troops=2, warriors_per_troop=2, datagroups_per_warrior=2, points_per_datagroup=20, rate=200)
    victim = vendor.data.ids("datagroups")[0]
    vendor.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/datagroups/*/points"], ids=[victim])))
    spec_path = write_spec(tmp_path, vendor, demo_levels())
    state = tmp_path / "state"
    out = harvest("run", "--local", str(spec_path), "--state", str(state), "--processes", "2")
    assert out.returncode == 3, out.stderr[-2000:]
    run_id = next(ln for ln in out.stderr.splitlines() if ln.startswith("run ")).split()[1]
    runs = json.loads(harvest("runs", "e2e", "--state", str(state), "--json").stdout)["runs"]
    assert [(r["run_id"], r["shown_status"]) for r in runs] == [(run_id, "INCOMPLETE")]
    assert "INCOMPLETE" in out.stdout and victim in out.stdout and "404" in out.stdout
    assert not [ln for ln in out.stderr.splitlines() if ln.lstrip().startswith("{")], out.stderr[-2000:]
    assert f"harvest resume {run_id} --local --state {state}" in out.stderr
    assert f"cost of run {run_id}" in out.stdout and runs[0]["cost"]["counts"]["lambda_requests"] >= 4


def test_a_stopped_batch_writes_what_it_fetched_and_its_checkpoint(vendor_factory, tmp_path):
    """SIGTERM in the middle of the points level: the fetch workers are asked to stop (not killed), abandon the
    calls in flight, and write the pages they have with a checkpoint, so the resume does not fetch them again."""
    import json

    vendor, spec_path = small_source(vendor_factory, tmp_path, latency_ms=150)
    state = tmp_path / "state"
    proc = start("run", "--local", str(spec_path), "--run-id", "r", "--state", str(state), "--processes", "2")
    deadline = time.monotonic() + 120
    while vendor.stats().by_route.get("points", 0) < 12:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    points_before = vendor.stats().by_route.get("points", 0)
    checkpoints = [json.loads(p.read_text()) for p in (state / "bucket" / "runs" / "e2e" / "r" / "checkpoints" / "3")
                   .glob("*.json")] if (state / "bucket" / "runs" / "e2e" / "r" / "checkpoints" / "3").exists() else []
    kept = sum(len(c.get("done", [])) + len(c.get("partial", {})) for c in checkpoints)
    assert kept > 0, f"no points progress kept after the stop ({len(checkpoints)} checkpoints)"
    vendor.config.latency_ms = 0
    done = harvest("resume", "r", "--local", "--state", str(state))
    assert done.returncode == 0, done.stderr[-2000:]
    assert_exact(state, spec_path, vendor, "r")
    pages = sum(-(-vendor.data.point_count(g) // 40) or 1 for g in vendor.data.ids("datagroups"))
    refetched = vendor.stats().by_route.get("points", 0) - pages
    print(f"\n  points pages {pages}, served before the stop {points_before}, fetched twice {refetched}")
    assert refetched <= 2 * 8, "more pages fetched twice than calls that can be in flight"


def test_a_deleted_raw_object_is_fetched_again_by_resume(vendor_factory, tmp_path):
    """A raw object the ledger counts on is gone (deleted by hand, a broken disk): the resume notices it, fetches
    that batch again and ends with every record exactly once (it said SUCCEEDED and fetched nothing)."""
    vendor, spec_path = small_source(vendor_factory, tmp_path)
    state = tmp_path / "state"
    first = harvest("run", "--local", str(spec_path), "--run-id", "r", "--state", str(state))
    assert first.returncode == 0, first.stderr[-2000:]
    victims = sorted((state / "bucket" / "raw" / "e2e" / "r" / "points").glob("*.jsonl.gz"))
    assert len(victims) > 1
    victims[1].unlink()
    again = harvest("resume", "r", "--local", "--state", str(state))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "fetched again" in again.stderr + again.stdout
    assert_exact(state, spec_path, vendor, "r")
