"""`harvest demo`: start the simulated vendor, harvest it with sources/demo.yaml, check the result against the
vendor's own books (every record, once) and show what the vendor saw (rate, 429s); then check the Parquet lake the
workflow's convert stage wrote (rows per level = the ledger's records) and run the showcase query through the
query workflow: uptime % of the data points by firmware version over the demo's time range."""

from __future__ import annotations

import json
import os
import secrets
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from harvester.local.report import audit
from harvester.spec import SpecError, load_spec

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
        remember_vendor(args.state, vendor, key)
        truth = vendor.data.counts()
        print(f"simulated vendor on {vendor.url}: {truth} records, limit {vendor.config.rate} r/s "
              f"(burst {vendor.config.burst}), latency {args.latency_ms} ms", file=sys.stderr, flush=True)
        data = vendor.data
        start = data.config.start
        end = start + timedelta(seconds=data.config.interval_seconds * max(
            [data.point_count(g) for g in data.ids("datagroups")] or [0]))
        # the demo spec's points level has a daily window; the demo harvests the vendor's whole history as a
        # backfill of that window (repeatable: a backfill never moves the daily bookmark)
        execution_input = {"source": spec.name}
        if spec.window_level is not None:
            execution_input["window"] = {"start": start.isoformat(), "end": end.isoformat()}
        run, desc, seconds = execute(spec, args.spec, execution_input, args.state, timeout=args.timeout, audit=False,
                                     processes=args.processes, iam=not args.no_iam)
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
    ok &= lake_check(run, spec)
    ok &= showcase_query(args.state, spec.name, start, end, timeout=args.timeout, iam=not args.no_iam)
    print("demo " + ("OK: every record harvested exactly once, converted and queried" if ok else "FAILED"))
    return 0 if ok and not over else 1


#: the latest demo's vendor (its settings, key and port), so that `harvest resume` of a demo run can start the same
#: vendor again: the simulated vendor's data is a function of its settings and seed
VENDOR_FILE = "demo-vendor.json"


def remember_vendor(state: Path, vendor, key: str) -> None:
    from dataclasses import asdict

    state.mkdir(parents=True, exist_ok=True)
    settings = {"port": vendor.port, "url": vendor.url, "api_key": key, "config": asdict(vendor.config)}
    settings["config"]["data"]["start"] = vendor.config.data.start.isoformat()
    (state / VENDOR_FILE).write_text(json.dumps(settings, indent=1, default=str))


@contextmanager
def demo_vendor_for(state: Path, spec):
    """The vendor a demo run harvested, started again on its port (a resume of that run calls the same URLs); a
    run of any other source, or of an earlier demo, gets nothing and fails as any run whose vendor is gone."""
    from harvester.vendor.server import VendorServer
    from harvester.vendor.data import DataConfig
    from harvester.vendor.server import VendorConfig

    path = state / VENDOR_FILE
    saved = json.loads(path.read_text()) if path.exists() else None
    if spec.name != "demo" or not saved or not spec.base_url.startswith(saved["url"]):
        yield None
        return
    config = dict(saved["config"])
    data = dict(config.pop("data"))
    data["start"] = datetime.fromisoformat(data["start"])
    config = VendorConfig(data=DataConfig(**data), **{k: tuple(v) if k == "api_keys" else v for k, v in config.items()})
    try:
        vendor = VendorServer(config, port=saved["port"]).start()
    except OSError as exc:
        raise SpecError(f"the demo's vendor cannot listen on {saved['url']} again ({exc}): free the port, or "
                        f"start a new `harvest demo`") from None
    os.environ["DEMO_API_KEY"] = saved["api_key"]
    try:
        yield vendor
    finally:
        vendor.stop()


def lake_check(run: dict, spec) -> bool:
    """The run item's Parquet counts (written by the convert stage) against its harvested records."""
    lake = (run.get("lake") or {}).get("levels", {})
    print(f"lake: Parquet (zstd) under processed/{spec.name}/, per level:")
    ok = bool(lake)
    for level in spec.levels:
        got = lake.get(level.name, {})
        want = run.get("levels", {}).get(level.name, {}).get("records")
        same = want is not None and got.get("rows") == want
        ok &= same
        print(f"  {level.name:<11} files {got.get('files', 0):>3}  partitions {got.get('partitions', 0):>3}  "
              f"rows {got.get('rows', 0):>7}  ledger {want}  bad values {got.get('bad_values', 0)}  "
              f"{(got.get('bytes', 0) / 1e6):.2f} MB  {'OK' if same else 'MISMATCH'}")
    return ok


def showcase_query(state, source: str, start, end, *, timeout: float, iam: bool = True) -> bool:
    """Seed 001's question through the query workflow: uptime % of the data points by firmware version."""
    from harvester.cli import query_lines, run_query

    query = {
        "source": source, "level": "points",
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "group_by": ["warriors.firmware"],
        "aggregates": [{"op": "count", "as": "points"}, {"op": "share", "column": "status", "equals": "up", "as": "uptime"}],
    }
    print(f"uptime by firmware, {query['start']} .. {query['end']} (harvest query --local --state {state} "
          f"--source {source} --level points --start {query['start']} --end {query['end']} "
          f"--group-by warriors.firmware --agg 'count as points' --agg 'share:status=up as uptime'):")
    desc, result, seconds = run_query(state, query, timeout=timeout, iam=iam)
    if result is None:
        print(f"query {desc['status']}: {desc.get('error')}: {desc.get('cause', '')[:500]}")
        return False
    for row in result["rows"]:
        row[-1] = None if row[-1] is None else f"{100 * row[-1]:.2f}"
    result["columns"][-1] = "uptime %"
    print("\n".join("  " + line for line in query_lines(result, seconds, state)))
    return bool(result["rows"])
