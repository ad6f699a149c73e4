"""Shared parts of the harvest benchmarks (bench_ratelimit.py, bench_faults.py).

- ``Vendor``: the simulated vendor in a subprocess (``bench/_vendor_proc.py`` = ``python -m harvester.simulator``
  plus a per-request clock), so its CPU does not share the harvester's GIL; stats over HTTP.
- ``window_figures``: calls, span, busiest sliding 1-second window, windows over limit + burst.
- ``run_ours``: one or more executions of a spec on the local engine (moto), checked against the vendor's
  books (records per level, duplicates).
- ``dlt_python`` / ``run_dlt``: dlt's rest_api source, in its own virtualenv (bench/.venv-dlt, created here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

import httpx
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
DLT_VENV = BENCH / ".venv-dlt"
DLT_VERSION = "1.31.0"
API_KEY = "bench-key"
BURST = 5
LEVEL_NAMES = ("troops", "warriors", "datagroups", "points")


# ---------------------------------------------------------------------------------------------- vendor


#: the vendor process's niceness (``BENCH_VENDOR_NICE``, default -10: ahead of the harvester's processes). A real
#: vendor has its own machines; here it shares 2 cores with moto, the engine and the fetch workers, and a vendor
#: process waiting 25 ms for a CPU sees the requests that queued meanwhile arrive at once: against a burst of 5 at
#: 200 r/s (25 ms) that is a 429 the harvester's sends did not cause. Lowering niceness needs root; without it the
#: vendor shares the CPUs evenly and the bench says so.
VENDOR_NICE = int(os.environ.get("BENCH_VENDOR_NICE", "-10"))


def _prioritise(pid: int) -> int:
    """Set the vendor's niceness to VENDOR_NICE if allowed; the niceness it runs at."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, VENDOR_NICE)
    except PermissionError:
        print(f"vendor niceness {VENDOR_NICE} not allowed (not root): it shares the CPUs evenly", file=sys.stderr)
    return os.getpriority(os.PRIO_PROCESS, pid)


class Vendor:
    """``python bench/_vendor_proc.py ...`` on a free port; stopped (SIGTERM to its own pid) on exit."""

    def __init__(self, *, troops: int, warriors: int, datagroups: int, points: int = 48,
                 rate: float | None = None, burst: int = BURST, latency_ms: float = 0.0, seed: int = 42,
                 interval_seconds: int | None = None, variation: float | None = None) -> None:
        self.rate, self.burst, self.latency_ms = rate, burst, latency_ms
        self.data_args = dict(troops=troops, warriors=warriors, datagroups=datagroups, points=points, seed=seed)
        cmd = [sys.executable, str(BENCH / "_vendor_proc.py"), "--port", "0", "--api-key", API_KEY,
               "--troops", str(troops), "--warriors-per-troop", str(warriors),
               "--datagroups-per-warrior", str(datagroups), "--points-per-datagroup", str(points),
               "--seed", str(seed), "--burst", str(burst), "--latency-ms", str(latency_ms)]
        if rate:
            cmd += ["--rate", str(rate)]
        if interval_seconds:
            cmd += ["--interval-seconds", str(interval_seconds)]
        if variation is not None:
            cmd += ["--variation", str(variation)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line.startswith("vendor listening on "):
            self.proc.kill()
            raise RuntimeError(f"vendor did not start: {line!r}")
        self.url = line.split()[3]
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.nice = _prioritise(self.proc.pid)

    def __enter__(self) -> Vendor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_stats").json()

    def counts(self) -> dict[str, int]:
        return self.http.get("/_admin/counts").json()

    def set_clock(self, now: str | None) -> None:
        """The vendor's clock (ISO-8601): only points before it exist (None: every point)."""
        self.http.post("/_admin/clock", json={"now": now}).raise_for_status()

    def times(self, clear: bool = False, levels: bool = False) -> list[tuple]:
        """(arrival time, status) of every /v1 request; with ``levels``, (time, status, level)."""
        raw = self.http.get("/_bench/times", params={"clear": "1"} if clear else {}).json()
        return [tuple(x) if levels else (x[0], x[1]) for x in raw]

    def reset(self) -> None:
        """Zero the books and the clock; refill the rate-limit bucket (a fresh start for the next client)."""
        self.http.post("/_admin/reset", json={"buckets": True})
        self.times(clear=True)

    def set_faults(self, faults: dict[str, Any] | None) -> None:
        if faults:
            self.http.post("/_admin/faults", json=faults).raise_for_status()
        else:
            self.http.delete("/_admin/faults")

    def faults_fired(self) -> list[int]:
        return self.http.get("/_admin/faults").json().get("fired", [])

    def calls_per_level(self) -> int:
        """Calls a complete harvest makes: every list fits in one page at the bench's page sizes."""
        c = self.counts()
        return 1 + c["troops"] + c["warriors"] + c["datagroups"]


# ------------------------------------------------------------------------------------------ figures


def window_figures(times: list[tuple[float, int]], rate: float | None, burst: int = BURST) -> dict[str, Any]:
    """What the vendor saw, from the arrival time of every request.

    span: first to last request (s); busiest: most requests in any sliding 1-second window (every request
    sent, refused ones included: what the client put on the wire) and most served (2xx); over: windows whose
    count exceeds limit + burst (max excess, and how many calendar seconds exceeded it)."""
    ts = sorted(t for t, _ in times)
    ok = sorted(t for t, s in times if 200 <= s < 300)
    out: dict[str, Any] = {"requests": len(ts), "served_2xx": len(ok),
                           "refused_429": sum(1 for _, s in times if s == 429)}
    if not ts:
        return {**out, "span": 0.0, "busiest_sent": 0, "busiest_served": 0}
    out["first"], out["last"] = ts[0], ts[-1]
    out["span"] = round(ts[-1] - ts[0], 3)

    def busiest(xs: list[float]) -> int:
        best = 0
        for i, t in enumerate(xs):
            best = max(best, bisect_right(xs, t + 1.0 - 1e-9) - i)
        return best

    out["busiest_sent"] = busiest(ts)
    out["busiest_served"] = busiest(ok)
    per_second: dict[int, int] = {}
    for t in ts:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    out["busiest_calendar_second"] = max(per_second.values())
    if rate:
        cap = rate + burst
        out["limit_plus_burst"] = cap
        out["worst_over_sent"] = max(0, out["busiest_sent"] - cap)
        out["worst_over_served"] = max(0, out["busiest_served"] - cap)
        out["seconds_over_sent"] = sum(1 for n in per_second.values() if n > cap)
        out["utilisation"] = round(len(ok) / (max(out["span"], 1e-9) * rate), 3)
    return out


def level_phases(times: list[tuple[float, int, str]]) -> list[dict[str, Any]]:
    """Per level, in order of the first request: when its requests started and ended (seconds from the first
    request of all), how many, and the idle gap before it (time since the previous level's last request)."""
    if not times:
        return []
    t0 = min(t for t, _, _ in times)
    spans: dict[str, list[float]] = {}
    for t, _, level in times:
        spans.setdefault(level, []).append(t)
    out, prev_end = [], None
    for level, ts in sorted(spans.items(), key=lambda kv: min(kv[1])):
        first, last = min(ts), max(ts)
        out.append({"level": level, "calls": len(ts), "start": round(first - t0, 2), "end": round(last - t0, 2),
                    "rate": round(len(ts) / (last - first), 1) if last > first else None,
                    "gap_before": None if prev_end is None else round(first - prev_end, 2)})
        prev_end = last if prev_end is None else max(prev_end, last)
    return out


def rate_timeline(times: list[tuple[float, int]]) -> list[int]:
    """Requests per calendar second, first to last."""
    ts = sorted(int(t) for t, _ in times)
    if not ts:
        return []
    counts = [0] * (ts[-1] - ts[0] + 1)
    for t in ts:
        counts[t - ts[0]] += 1
    return counts


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


# --------------------------------------------------------------------------------------------- ours


def bench_levels() -> list[dict[str, Any]]:
    """The vendor's four levels, one page per list at these sizes (the same for dlt: bench/_dlt_harvest.py)."""
    return [
        {"name": "troops", "alias": "troop", "path": "/troops", "records": "data", "primary_key": "id",
         "pagination": {"type": "page_number", "page_param": "page", "size_param": "per_page", "size": 50,
                        "total_path": "total"}},
        {"name": "warriors", "alias": "warrior", "path": "/troops/{troop.id}/warriors", "records": "items",
         "primary_key": "id",
         "pagination": {"type": "offset", "offset_param": "offset", "limit_param": "limit", "limit": 50,
                        "total_path": "total"}},
        {"name": "datagroups", "alias": "datagroup", "path": "/warriors/{warrior.id}/datagroups",
         "records": "results", "primary_key": "id",
         "pagination": {"type": "cursor", "cursor_param": "cursor", "cursor_path": "next_cursor",
                        "size_param": "limit", "size": 50}},
        {"name": "points", "path": "/datagroups/{datagroup.id}/points",
         "pagination": {"type": "link_header", "size_param": "limit", "size": 100}, "time_field": "ts"},
    ]


def write_spec(folder: Path, name: str, vendor_url: str, rate: float | None, *, burst: int = BURST,
               max_concurrency: int = 4, extra: dict[str, Any] | None = None) -> Path:
    os.environ["BENCH_API_KEY"] = API_KEY
    spec: dict[str, Any] = {
        "name": name,
        "base_url": vendor_url + "/v1",
        "auth": {"type": "header", "name": "X-Api-Key", "env": "BENCH_API_KEY"},
        "max_concurrency": max_concurrency,
        "levels": bench_levels(),
        **({"max_in_flight": int(os.environ["BENCH_MAX_IN_FLIGHT"])} if os.environ.get("BENCH_MAX_IN_FLIGHT") else {}),
        **(extra or {}),
    }
    if rate:
        spec["rate_limit"] = {"requests_per_second": rate, "burst": burst}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


#: fetch worker processes of the local engine (0: every handler in the engine's own process)
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "8"))


def run_ours(spec_path: Path, vendor: Vendor, *, executions: int = 1, timeout: float = 3600,
             keep: Path | None = None) -> dict[str, Any]:
    """``executions`` executions of the spec started together on one local engine (so they share the moto
    ledger table, hence the limiter's bucket item); each checked against the vendor's books."""
    from harvester.local.engine import LocalEngine
    from harvester.local.report import audit
    from harvester.spec import load_spec

    spec = load_spec(spec_path)
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    truth = vendor.counts()
    runs = []
    quiet = _Quiet()  # the handlers' log and metric lines (stdout) would bury the figures
    try:
        with quiet, LocalEngine(state, processes=PROCESSES) as engine:
            engine.add_source(spec_path, spec)
            t0 = time.time()
            arns = [engine.start({"source": spec.name}) for _ in range(executions)]
            descs = [engine.wait(arn, timeout=timeout, poll=0.5) for arn in arns]  # times: moto's start/stop dates
            wall = time.time() - t0
            for arn, desc in zip(arns, descs):
                run_id = engine.run_id_of(arn, spec.name)
                item = engine.ledger.get_run(spec.name, run_id) if run_id else None
                batches = engine.ledger.batches(spec.name, run_id) if run_id else []
                runs.append({"status": desc["status"], "run_id": run_id, "run": item, "cpu": batch_cpu(batches),
                             "stopped": desc.get("stopDate").timestamp() if desc.get("stopDate") else None,
                             "started": desc["startDate"].timestamp(), "error": desc.get("error")})
        for r in runs:
            r["check"] = check(audit(state / "bucket", spec, r["run_id"]), truth) if r["run_id"] else None
            item = r.pop("run") or {}
            totals = item.get("totals", {})
            r["calls"] = int(totals.get("calls", 0))
            r["records"] = int(totals.get("records", 0))
            r["throttled"] = int(totals.get("throttled", 0))
            r["retries"] = int(totals.get("retries", 0))
            r["token_wait_seconds"] = float(totals.get("token_wait_seconds", 0) or 0)
            r["limiter_writes"] = int(totals.get("limiter_writes", 0) or 0)
            r["seconds"] = round((r["stopped"] or time.time()) - r["started"], 3)
    finally:
        if any(r.get("status") != "SUCCEEDED" for r in runs) or not runs:
            keep = keep or RESULTS / f"failed-state-{spec.name}-{time.strftime('%Y%m%dT%H%M%S')}"
            print(f"a run did not succeed: its state (bucket, ledger) is kept in {keep}", file=sys.stderr)
        if keep:
            shutil.copytree(state, keep, dirs_exist_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    return {"wall": round(wall, 3), "runs": runs, "started": t0}


def batch_cpu(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds of the fetch workers (each batch's worker process, ``cpu_seconds`` in its ledger item) and the
    calls they made: the whole run's, and the points level's alone (the bulk of a harvest, one worker's steady
    state)."""
    def figures(items):
        cpu = sum(float(b.get("cpu_seconds") or 0) for b in items)
        calls = sum(int(b.get("calls") or 0) for b in items)
        return {"cpu_seconds": round(cpu, 3), "calls": calls, "batches": len(items),
                "cpu_ms_per_call": round(1000 * cpu / calls, 3) if calls else None}

    def level(b: dict[str, Any]) -> int:
        return int(str(b.get("sk", "BATCH#-1#")).split("#")[1])

    leaf = max((level(b) for b in batches), default=None)
    out = figures(batches)
    out["leaf"] = figures([b for b in batches if level(b) == leaf])
    return out


class _Quiet:
    """Send file descriptor 1 (stdout) to /dev/null for a while; the figures are printed afterwards."""

    def __enter__(self):
        sys.stdout.flush()
        self.saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)


def check(found: dict[str, dict[str, int]], truth: dict[str, int]) -> dict[str, Any]:
    """Lost and duplicated records against the vendor's books, summed over the levels."""
    lost = sum(max(0, truth[level] - found.get(level, {}).get("unique", 0)) for level in LEVEL_NAMES)
    dup = sum(found.get(level, {}).get("duplicates", 0) for level in LEVEL_NAMES)
    records = sum(found.get(level, {}).get("records", 0) for level in LEVEL_NAMES)
    return {"records": records, "expected": sum(truth[level] for level in LEVEL_NAMES), "lost": lost,
            "duplicates": dup, "per_level": found}


# ---------------------------------------------------------------------------------------------- dlt


def dlt_python() -> Path:
    """The benchmark's own virtualenv with dlt (created on first use: python -m venv + pip install)."""
    py = DLT_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run(
        [str(py), "-c", f"import dlt, sys; sys.exit(dlt.__version__ != {DLT_VERSION!r})"],
        capture_output=True).returncode == 0
    if not ok:
        print(f"creating {DLT_VENV.relative_to(ROOT)} with dlt=={DLT_VERSION} (once)...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DLT_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"dlt=={DLT_VERSION}"], check=True)
    return py


def run_dlt(vendor: Vendor, *, parallelized: bool = False, timeout: float = 3600) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="bench-dlt-"))
    truth = vendor.counts()
    cmd = [str(dlt_python()), str(BENCH / "_dlt_harvest.py"), "--base-url", vendor.url, "--key", API_KEY,
           "--out", str(out)] + (["--parallelized"] if parallelized else [])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=out, env=env)
        lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"ok": False, "error": p.stderr[-600:]}
    except subprocess.TimeoutExpired:  # cut (a limited run that would take an hour): the vendor's books say how far
        result = {"ok": False, "cut": True, "seconds": round(time.time() - t0, 1),
                  "error": f"stopped after {timeout:.0f} s (--dlt-seconds)"}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if result.get("records"):
        result["check"] = check(result.pop("records"), truth)
    return result


# -------------------------------------------------------------------------------------------- output


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain text table: columns are (key, header)."""
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    latest = RESULTS / f"{name}-latest.json"
    latest.write_text(path.read_text())
    return path
