"""Fault benchmark (issue 7): what transient faults cost a harvest, and that they lose and duplicate nothing.

    python bench/bench_faults.py [--quick] [--limits none,50] [--no-dlt]

The simulated vendor runs in its own process (bench/_vendor_proc.py). Hierarchy: 6 troops -> 61 warriors ->
1,094 datagroups -> 52,481 points = 1,162 calls (every list one page; ``--quick``: 346 calls). For each vendor limit (none =
unlimited, and 50 requests/s burst 5 with the spec declaring it), on one vendor:

1. the harvester without faults (the reference time);
2. the harvester with 10% of requests answered 503 at random;
3. the harvester with 2% of requests answered with a TCP reset;
4. dlt's rest_api source (bench/.venv-dlt, dlt 1.31.0) without faults, then with the same 10% 503s.

Fault rolls are the vendor's (deterministic per URL and attempt, seed 7), so both clients meet the same
pattern. Figures: wall seconds, ratio to the same client's fault-free time (target <= 1.5x for the
harvester), calls and faults the vendor saw, retries, records lost and duplicated against the vendor's books
(both must be 0). Prints a table; writes bench/results/faults-*.json. Not a timed test.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

FULL = dict(troops=6, warriors=10, datagroups=18)
QUICK = dict(troops=4, warriors=10, datagroups=8)
SEED = 7
FAULTS = {
    "none": None,
    "10% 503": {"rules": [{"kind": "server_error", "probability": 0.10, "status": 503}], "seed": SEED},
    "2% resets": {"rules": [{"kind": "reset", "probability": 0.02}], "seed": SEED},
}
COLUMNS = [("limit", "limit r/s"), ("who", "who"), ("faults", "faults"), ("wall", "seconds"),
           ("ratio", "x fault-free"), ("target", "target"), ("calls", "calls"), ("faulted", "faulted"),
           ("r429", "429s"), ("retries", "retries"), ("records", "records"), ("lost", "lost"), ("dup", "dup"),
           ("status", "status"), ("load", "load 1m")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="346 calls per harvest")
    p.add_argument("--limits", default="none,50", help="vendor limits, r/s or none (comma-separated)")
    p.add_argument("--no-dlt", action="store_true")
    args = p.parse_args()
    sizes = QUICK if args.quick else FULL
    limits = [None if x == "none" else float(x) for x in args.limits.split(",") if x]
    if not args.no_dlt:
        c.dlt_python()
    tmp = Path(tempfile.mkdtemp(prefix="bench-specs-"))
    results: dict = {"benchmark": "faults", "quick": args.quick, "sizes": sizes, "faults": FAULTS,
                     "machine": {"cores": __import__("os").cpu_count(), "python": platform.python_version(),
                                 "load_at_start": c.load()},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": [], "raw": []}
    rows = results["rows"]
    print(f"load {c.load()}; hierarchy {sizes}", file=sys.stderr, flush=True)

    def add(r: dict) -> None:
        rows.append(r)
        print(c.table([r], COLUMNS).splitlines()[-1], file=sys.stderr, flush=True)

    for limit in limits:
        label = "none" if limit is None else f"{int(limit)}"
        with c.Vendor(**sizes, rate=limit) as v:
            results["truth"] = v.counts()
            results["expected_calls"] = v.calls_per_level()
            base: dict[str, float] = {}
            for fault_name, faults in FAULTS.items():
                v.reset()
                v.set_faults(faults)
                spec = c.write_spec(tmp, f"flt-{label}-{len(rows)}", v.url, limit)
                res = c.run_ours(spec, v)
                stats = v.stats()
                fired = sum(stats.get("faults", {}).values())
                v.set_faults(None)
                times = v.times(clear=True)
                run = res["runs"][0]
                chk = run["check"] or {}
                wall = run["seconds"]
                if fault_name == "none":
                    base["harvester"] = wall
                add({"limit": label, "who": "harvester", "faults": fault_name, "wall": round(wall, 1),
                     "ratio": round(wall / base["harvester"], 2), "target": "<= 1.5x, 0 lost, 0 dup",
                     "calls": stats["requests"], "faulted": fired, "r429": stats["refused"],
                     "retries": run["retries"], "records": chk.get("records"), "lost": chk.get("lost"),
                     "dup": chk.get("duplicates"), "status": run["status"], "load": c.load().split()[0]})
                results["raw"].append({"limit": label, "who": "harvester", "faults": fault_name, "ours": res,
                                       "vendor": {k: stats.get(k) for k in ("requests", "served", "refused",
                                                                            "faults", "by_status")},
                                       "figures": c.window_figures(times, limit)})
            if args.no_dlt:
                continue
            for fault_name in ("none", "10% 503"):
                v.reset()
                v.set_faults(FAULTS[fault_name])
                res = c.run_dlt(v)
                stats = v.stats()
                v.set_faults(None)
                times = v.times(clear=True)
                chk = res.get("check") or {}
                wall = res.get("seconds") or 0.0
                if fault_name == "none":
                    base["dlt"] = wall
                add({"limit": label, "who": "dlt", "faults": fault_name, "wall": round(wall, 1),
                     "ratio": round(wall / base["dlt"], 2) if base.get("dlt") else None, "target": "(peer)",
                     "calls": stats["requests"], "faulted": sum(stats.get("faults", {}).values()),
                     "r429": stats["refused"], "retries": None, "records": chk.get("records"),
                     "lost": chk.get("lost"), "dup": chk.get("duplicates"),
                     "status": "OK" if res.get("ok") else f"FAILED {res.get('error', '')[:60]}",
                     "load": c.load().split()[0]})
                results["raw"].append({"limit": label, "who": "dlt", "faults": fault_name, "dlt": res,
                                       "vendor": {k: stats.get(k) for k in ("requests", "served", "refused",
                                                                            "faults", "by_status")},
                                       "figures": c.window_figures(times, limit)})

    results["load_at_end"] = c.load()
    print()
    print(f"fault benchmark: hierarchy {sizes} ({results['expected_calls']} calls, "
          f"{sum(results['truth'].values())} records per harvest); load at start "
          f"{results['machine']['load_at_start']}, at end {results['load_at_end']}")
    print(c.table(rows, COLUMNS))
    print("seconds: the run's wall time (harvester: execution start to stop on the local engine; dlt: extract + "
          "normalize + load); x fault-free: against the same client's fault-free run on the same vendor")
    path = c.save("faults" + ("-quick" if args.quick else ""), results)
    print(f"figures: {path.relative_to(c.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
