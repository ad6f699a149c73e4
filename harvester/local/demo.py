"""`harvest demo`: start the simulated vendor, harvest it with sources/demo.yaml, check the result against the
vendor's own books (every record, once) and show what the vendor saw (rate, 429s)."""

from __future__ import annotations

import os
import secrets
import sys

from harvester.local.report import audit
from harvester.spec import load_spec

DEMO_LEVELS = ("troops", "warriors", "datagroups", "points")


def run_demo(args) -> int:
    from harvester.cli import execute
    from harvester.vendor.server import VendorServer

    key = secrets.token_hex(8)
    probe = load_spec(args.spec) if "DEMO_BASE_URL" in os.environ else None
    os.environ.setdefault("DEMO_BASE_URL", "http://127.0.0.1:1")  # only to read the spec's rate limit below
    spec = probe or load_spec(args.spec)
    limit = spec.rate_limit
    vendor = VendorServer(
        troops=args.troops,
        warriors_per_troop=args.warriors,
        datagroups_per_warrior=args.datagroups,
        points_per_datagroup=args.points,
        seed=args.seed,
        api_key=key,
        rate=args.rate if args.rate else (limit.requests_per_second if limit else None),
        burst=args.burst,
        latency_ms=args.latency_ms,
    )
    with vendor:
        os.environ["DEMO_BASE_URL"] = vendor.url
        os.environ["DEMO_API_KEY"] = key
        spec = load_spec(args.spec)
        truth = vendor.data.counts()
        print(f"simulated vendor on {vendor.url}: {truth} records, limit {vendor.config.rate} r/s "
              f"(burst {vendor.config.burst}), latency {args.latency_ms} ms", file=sys.stderr, flush=True)
        run, desc, seconds = execute(spec, args.spec, {"source": spec.name}, args.state, timeout=args.timeout, audit=False)
        stats = vendor.stats()
    if run is None:
        return 1
    found = audit(args.state / "bucket", spec, run["run_id"])
    ok = desc["status"] == "SUCCEEDED"
    print("check against the vendor's books:")
    for level in spec.levels:
        want = truth.get(level.name)
        got = found[level.name]
        ledger_count = run.get("levels", {}).get(level.name, {}).get("records")
        same = want == got["unique"] == got["records"] == ledger_count
        ok &= same
        print(f"  {level.name:<11} vendor {want:>7}  harvested {got['records']:>7}  unique {got['unique']:>7}  "
              f"ledger {ledger_count}  duplicates {got['duplicates']}  {'OK' if same else 'MISMATCH'}")
    busiest = stats.busiest_second()
    over = stats.seconds_over()
    utilisation = stats.served / (seconds * vendor.config.rate) if vendor.config.rate else None
    print(f"vendor saw: {stats.requests} requests, {stats.served} served, {stats.refused} refused (429), "
          f"busiest second {busiest[1] if busiest else 0} (limit {vendor.config.rate} + burst {vendor.config.burst}), "
          f"seconds over the limit: {over}" + (f", utilisation {utilisation:.2f}" if utilisation else ""))
    print("demo " + ("OK: every record harvested exactly once" if ok else "FAILED"))
    return 0 if ok and not over else 1
