"""Daily harvests (issue 12): a week of daily runs with a window against a full re-harvest each day and dlt.

    python bench/bench_daily.py [--days 7] [--quick] [--rate 50] [--dlt start_param,window]

The simulated vendor runs in its own process (bench/_vendor_proc.py) with a clock: points every 15 minutes, 96 a
day per datagroup; each simulated day the clock moves on by one day. Hierarchy: 4 troops -> ~20 warriors -> ~120
datagroups (``--quick``: 2 -> ~10 -> ~30). Each day, on one local engine (one ledger, so the bookmark persists):

1. the windowed spec (points level: ``window:`` with from/to, lookback 1 h): a daily run with ``as_of`` = the
   vendor's clock, fetching the points since the previous run's window (plus the lookback);
2. the same spec without a window: a full re-harvest of every point the vendor has;
3. dlt's ``incremental`` (rest_api source, bench/_dlt_daily.py in bench/.venv-dlt, dlt 1.31.0): the same four
   levels, a cursor on the points' ``ts``, its state and its loaded data kept from day to day; by default in two of
   the forms dlt documents (``--dlt start_param,window``; that file explains all four): ``start_param`` (dlt keeps
   the cursor in its state and sends it as ``from``) and ``window`` (this script keeps the bookmark and passes the
   day as ``initial_value``/``end_value``, sent as ``from``/``to``).

Figures per day and kind: calls the vendor served (all levels, and the points level), 429s, records harvested,
the execution's seconds (dlt: extract, normalize and load), the lake's point count (harvester: a query over
every day, each point once whatever the overlaps; dlt: unique points in its destination) against the vendor's
books. The harvester's two lakes must hold the vendor's books exactly (exit 1 otherwise); dlt's are reported.
Prints a table; writes bench/results/daily-*.json. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL = 900  # a point every 15 minutes
WINDOW = {"start_param": "from", "end_param": "to", "format": "iso", "initial_start": START.isoformat(),
          "lookback": "PT1H"}
COLUMNS = [("day", "day"), ("kind", "kind"), ("window", "window"), ("calls", "calls"), ("point_calls", "points requests"),
           ("refused", "429s"), ("records", "records"), ("seconds", "seconds"), ("lake_points", "lake points"),
           ("vendor_points", "vendor points"), ("status", "status"), ("load", "load 1m")]
DLT_VARIANTS = ("start_param", "placeholder", "range", "window")


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def lake_points(engine, source: str) -> int:
    desc, result = engine.query({"source": source, "level": "points", "start": iso(START),
                                 "end": iso(START + timedelta(days=400)), "aggregates": [{"op": "count"}]},
                                timeout=600)
    return result["rows"][0][0] if desc["status"] == "SUCCEEDED" and result and result["rows"] else -1


def one_run(engine, vendor: c.Vendor, source: str, execution_input: dict) -> dict:
    before = vendor.stats()
    t0 = time.time()
    desc = engine.run(execution_input, timeout=3600)
    seconds = (desc.get("stopDate").timestamp() - desc["startDate"].timestamp()) if desc.get("stopDate") else time.time() - t0
    after = vendor.stats()
    run = engine.ledger.get_run(source, execution_input["run_id"]) or {}
    window = run.get("window") or {}
    return {
        "status": desc["status"],
        **served(before, after),
        "records": int((run.get("totals") or {}).get("records", 0)),
        "seconds": round(seconds, 1),
        "window": f"{window['start'][5:16]}..{window['end'][5:16]}" if window.get("start") else "all",
        "duplicates_dropped": (run.get("lake") or {}).get("duplicates_dropped"),
    }


def served(before: dict, after: dict) -> dict:
    """What the vendor did between two of its snapshots: calls served (all, points), 429s."""
    return {"calls": after["served"] - before["served"],
            "point_calls": after["by_route"].get("points", 0) - before["by_route"].get("points", 0),
            "refused": after["refused"] - before["refused"]}


def dlt_day(vendor: c.Vendor, out: Path, variant: str, day: int) -> dict:
    """One day of dlt's incremental (bench/_dlt_daily.py in the bench's dlt virtualenv); ``out`` persists. Stateful
    forms start at the first day (dlt's state moves on); stateless ones get the day: [previous clock, clock)."""
    stateless = variant in ("range", "window")
    first = START + timedelta(days=day - 1) if stateless else START
    cmd = [str(c.dlt_python()), str(c.BENCH / "_dlt_daily.py"), "--base-url", vendor.url, "--key", c.API_KEY,
           "--out", str(out), "--variant", variant, "--initial-value", iso(first),
           "--end-value", iso(START + timedelta(days=day))]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    before = vendor.stats()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=out.parent, env=env)
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    res = json.loads(lines[-1]) if lines else {"ok": False, "error": p.stderr[-600:]}
    return {"status": "SUCCEEDED" if res.get("ok") else f"FAILED {res.get('error', '')[:80]}",
            **served(before, vendor.stats()), "records": res.get("records"), "seconds": round(res.get("seconds", 0), 1),
            "window": f"{iso(first)[5:16]}..{iso(START + timedelta(days=day))[5:16]}" if stateless else "from = cursor",
            "lake_points": res.get("lake_unique"), "lake_rows": res.get("lake_rows")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="a smaller hierarchy (~30 datagroups)")
    p.add_argument("--rate", type=float, default=50.0, help="the vendor's limit, requests/s (the specs declare it)")
    p.add_argument("--dlt", default="start_param,window",
                   help=f"dlt's incremental forms to run, comma-separated, of {','.join(DLT_VARIANTS)} ('' for none)")
    args = p.parse_args()
    variants = [v for v in args.dlt.split(",") if v]
    if set(variants) - set(DLT_VARIANTS):
        p.error(f"--dlt: one of {DLT_VARIANTS}")
    sizes = dict(troops=2, warriors=5, datagroups=3) if args.quick else dict(troops=4, warriors=5, datagroups=6)

    from harvester.local.engine import LocalEngine
    from harvester.spec import load_spec

    rows = []
    if variants:
        c.dlt_python()  # its virtualenv, created on first use
    folder = Path(tempfile.mkdtemp(prefix="bench-daily-"))
    with c.Vendor(**sizes, points=96 * (args.days + 2), rate=args.rate, interval_seconds=INTERVAL,
                  variation=0.0) as vendor:
        daily = c.write_spec(folder, "daily", vendor.url, args.rate)
        spec = load_spec(daily)
        windowed = spec.model_dump(mode="json", exclude_none=True)
        windowed["levels"][-1]["window"] = WINDOW
        windowed["levels"][-1].pop("params", None)
        import yaml

        daily.write_text(yaml.safe_dump(windowed, sort_keys=False))
        full = c.write_spec(folder, "full", vendor.url, args.rate)
        with c._Quiet(), LocalEngine(folder / "state", processes=c.PROCESSES) as engine:
            engine.add_source(daily, load_spec(daily))
            engine.add_source(full, load_spec(full))
            for day in range(1, args.days + 1):
                now = START + timedelta(days=day)
                vendor.set_clock(iso(now))
                truth = vendor.counts()["points"]
                for kind, source, extra in (("daily window", "daily", {"as_of": iso(now)}),
                                            ("full re-harvest", "full", {})):
                    row = one_run(engine, vendor, source, {"source": source, "run_id": f"day{day}", **extra})
                    row.update(day=day, kind=kind, vendor_points=truth, lake_points=lake_points(engine, source),
                               load=c.load().split()[0])
                    rows.append(row)
                for variant in variants:
                    row = dlt_day(vendor, folder / f"dlt-{variant}", variant, day)
                    row.update(day=day, kind=f"dlt {variant}", vendor_points=truth, load=c.load().split()[0])
                    rows.append(row)
    print(c.table(rows, COLUMNS))
    kinds = ["daily window", "full re-harvest"] + [f"dlt {v}" for v in variants]
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            last = rs[-1]
            print(f"{kind}: {sum(r['calls'] for r in rs)} calls ({sum(r['refused'] for r in rs)} 429s), "
                  f"{sum(r['seconds'] for r in rs):.1f} s over {len(rs)} days; last day {last['calls']} calls, "
                  f"{last['seconds']} s; lake {last['lake_points']} of the vendor's {last['vendor_points']} points"
                  + (f" ({last['lake_rows'] - last['lake_points']} duplicate rows)" if last.get("lake_rows") else ""))
    ours = [r for r in rows if r["kind"] in kinds[:2]]
    ok = all(r["status"] == "SUCCEEDED" and r["lake_points"] == r["vendor_points"] for r in ours)
    print("every day: the harvester's lakes hold each of the vendor's points once" if ok else "MISMATCH: see the table")
    c.save("daily", {"rows": rows, "sizes": sizes, "rate": args.rate, "days": args.days,
                     "machine": platform.platform(), "cpus": os.cpu_count(), "load": c.load()})
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
