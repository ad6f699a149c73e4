"""Daily harvests (issue 12): a week of daily runs with a window against a full re-harvest each day.

    python bench/bench_daily.py [--days 7] [--quick] [--rate 50]

The simulated vendor runs in its own process (bench/_vendor_proc.py) with a clock: points every 15 minutes, 96 a
day per datagroup; each simulated day the clock moves on by one day. Hierarchy: 4 troops -> ~20 warriors -> ~120
datagroups (``--quick``: 2 -> ~10 -> ~30). Each day, on one local engine (one ledger, so the bookmark persists):

1. the windowed spec (points level: ``window:`` with from/to, lookback 1 h): a daily run with ``as_of`` = the
   vendor's clock, fetching the points since the previous run's window (plus the lookback);
2. the same spec without a window: a full re-harvest of every point the vendor has.

Figures per day and kind: calls the vendor served (all levels, and the points level), records harvested, the
execution's seconds, the lake's point count (a query over every day: each point once whatever the overlaps).
Both must end with the lake holding the vendor's books exactly. Prints a table; writes
bench/results/daily-*.json. Not a timed test.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
INTERVAL = 900  # a point every 15 minutes
WINDOW = {"start_param": "from", "end_param": "to", "format": "iso", "initial_start": START.isoformat(),
          "lookback": "PT1H"}
COLUMNS = [("day", "day"), ("kind", "kind"), ("window", "window"), ("calls", "calls"), ("point_calls", "points calls"),
           ("records", "records"), ("seconds", "seconds"), ("lake_points", "lake points"),
           ("vendor_points", "vendor points"), ("status", "status")]


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
        "calls": after["served"] - before["served"],
        "point_calls": after["by_route"].get("points", 0) - before["by_route"].get("points", 0),
        "records": int((run.get("totals") or {}).get("records", 0)),
        "seconds": round(seconds, 1),
        "window": f"{window['start'][5:16]}..{window['end'][5:16]}" if window.get("start") else "all",
        "duplicates_dropped": (run.get("lake") or {}).get("duplicates_dropped"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="a smaller hierarchy (~30 datagroups)")
    p.add_argument("--rate", type=float, default=50.0, help="the vendor's limit, requests/s (the specs declare it)")
    args = p.parse_args()
    sizes = dict(troops=2, warriors=5, datagroups=3) if args.quick else dict(troops=4, warriors=5, datagroups=6)

    from harvester.local.engine import LocalEngine
    from harvester.spec import load_spec

    rows = []
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
                    row.update(day=day, kind=kind, vendor_points=truth, lake_points=lake_points(engine, source))
                    rows.append(row)
    print(c.table(rows, COLUMNS))
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("daily window", "full re-harvest")}
    for kind, rs in by_kind.items():
        print(f"{kind}: {sum(r['calls'] for r in rs)} calls, {sum(r['seconds'] for r in rs):.1f} s over "
              f"{len(rs)} days; last day {rs[-1]['calls']} calls, {rs[-1]['seconds']} s")
    ok = all(r["status"] == "SUCCEEDED" and r["lake_points"] == r["vendor_points"] for r in rows)
    print("every day: the lake holds each of the vendor's points once" if ok else "MISMATCH: see the table")
    c.save("daily", {"rows": rows, "sizes": sizes, "rate": args.rate, "days": args.days,
                     "machine": platform.platform(), "load": c.load()})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
