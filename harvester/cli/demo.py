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
from typing import Any

from harvester.cli import view
from harvester.local.report import audit
from harvester.spec import SpecError, load_spec

DEMO_LEVELS = ("troops", "warriors", "datagroups", "points")


#: the demo's options that are the simulated vendor's (DataConfig and VendorConfig fields: simulator.server.vendor_config)
VENDOR_OPTIONS = ("troops", "warriors_per_troop", "datagroups_per_warrior", "points_per_datagroup", "seed", "burst",
                  "latency_ms")


def run_demo(args) -> int:
    """The demo; with --json its summary is one JSON document on stdout (the run's closing document, as `harvest
    run --json` prints it, with the checks against the vendor, the lake and the query), the rest on stderr."""
    from harvester.cli.local import execute
    from harvester.simulator.server import VendorServer

    key = secrets.token_hex(8)
    probe = load_spec(args.spec) if "DEMO_BASE_URL" in os.environ else None
    os.environ.setdefault("DEMO_BASE_URL", "http://127.0.0.1:1")  # only to read the spec's rate limit below
    limit = (probe or load_spec(args.spec)).rate_limit
    rate = args.rate if args.rate else (limit.requests_per_second if limit else None)
    ended: dict[str, Any] = {}
    with VendorServer(api_key=key, rate=rate, **{k: getattr(args, k) for k in VENDOR_OPTIONS}) as vendor:
        os.environ["DEMO_BASE_URL"] = vendor.url
        os.environ["DEMO_API_KEY"] = key
        spec = load_spec(args.spec)
        remember_vendor(args.state, vendor, key)
        truth = vendor.data.counts()
        print(f"simulated vendor on {vendor.url}: {truth} records, limit {vendor.config.rate} r/s "
              f"(burst {vendor.config.burst}), latency {args.latency_ms} ms", file=sys.stderr, flush=True)
        start, end = history(vendor.data)
        # the demo spec's points level has a daily window; the demo harvests the vendor's whole history as a
        # backfill of that window (repeatable: a backfill never moves the daily bookmark)
        execution_input = {"source": spec.name}
        if spec.window_level is not None:
            execution_input["window"] = {"start": start.isoformat(), "end": end.isoformat()}
        run, desc, seconds = execute(spec, args.spec, execution_input, args.state, timeout=args.timeout, audit=False,
                                     processes=args.processes, iam=not args.no_iam,
                                     on_end=ended.update if args.json else None)
        seen = vendor_figures(vendor, seconds)
    if run is None:
        if args.json:
            view.emit_json({**ended, "ok": False, "exit_code": 1, "vendor": seen})
        return 1
    summary = {"run_id": run["run_id"], "source": spec.name, "vendor": seen,
               "check": book_check(truth, audit(args.state / "bucket", spec, run["run_id"]), run, spec),
               "lake": lake_rows(args.state, run, spec),
               "query": showcase_query(args.state, spec.name, start, end, timeout=args.timeout, iam=not args.no_iam)}
    ok = (desc["status"] == "SUCCEEDED" and all(r["ok"] for r in summary["check"] + summary["lake"]["levels"])
          and bool(summary["lake"]["levels"]) and bool(summary["query"].get("rows")))
    code = 0 if ok and not seen["seconds_over_limit"] else 1
    if args.json:
        view.emit_json({**ended, **summary, "ok": ok, "exit_code": code})
    else:
        print_summary(args.state, summary, ok)
    return code


def history(data) -> tuple[datetime, datetime]:
    """The time range of the vendor's points: [its start, its start + the longest datagroup's points)."""
    start = data.config.start
    return start, start + timedelta(seconds=data.config.interval_seconds * max(
        [data.point_count(g) for g in data.ids("datagroups")] or [0]))


def vendor_figures(vendor, seconds: float) -> dict[str, Any]:
    """What the vendor saw (its own books): requests, 429s, the busiest second against rate + burst."""
    stats, config = vendor.stats(), vendor.config
    busiest = stats.busiest_second()
    return {"url": vendor.url, "records": vendor.data.counts(), "rate": config.rate, "burst": config.burst,
            "latency_ms": config.latency_ms, "requests": stats.requests, "served": stats.served,
            "refused": stats.refused, "busiest_second": busiest[1] if busiest else 0,
            "seconds_over_limit": stats.seconds_over(),
            "utilisation": round(stats.served / (seconds * config.rate), 3) if config.rate and seconds else None}


def book_check(truth: dict[str, int], found: dict[str, dict[str, int]], run: dict, spec) -> list[dict[str, Any]]:
    """Per level: the vendor's records against the raw output (records, unique) and the ledger's count."""
    rows = []
    for level in spec.levels:
        got = found[level.name]
        row = {"level": level.name, "vendor": truth.get(level.name), "harvested": got["records"],
               "unique": got["unique"], "ledger": run.get("levels", {}).get(level.name, {}).get("records"),
               "duplicates": got["duplicates"]}
        rows.append({**row, "ok": row["vendor"] == row["unique"] == row["harvested"] == row["ledger"]})
    return rows


def print_summary(state: Path, summary: dict[str, Any], ok: bool) -> None:
    """The demo's text: the checks against the vendor's books, what the vendor saw, the lake, the query."""
    print("check against the vendor's books:")
    for c in summary["check"]:
        print(f"  {c['level']:<11} vendor {c['vendor']:>7}  harvested {c['harvested']:>7}  unique {c['unique']:>7}  "
              f"ledger {c['ledger']}  duplicates {c['duplicates']}  {'OK' if c['ok'] else 'MISMATCH'}")
    v = summary["vendor"]
    print(f"vendor saw: {v['requests']} requests, {v['served']} served, {v['refused']} refused (429), "
          f"busiest second {v['busiest_second']} (limit {v['rate']} + burst {v['burst']}), "
          f"seconds over the limit: {v['seconds_over_limit']}"
          + (f", utilisation {v['utilisation']:.2f}" if v["utilisation"] else ""))
    print(f"lake: Parquet (zstd) under processed/{summary['source']}/, per level:")
    for row in summary["lake"]["levels"]:
        print(f"  {row['level']:<11} files {row['files']:>3}  partitions {row['partitions']:>3}  rows {row['rows']:>7}  "
              f"ledger {row['ledger']}  bad values {row['bad_values']}  {row['bytes'] / 1e6:.2f} MB  "
              f"{'OK' if row['ok'] else 'MISMATCH'}")
    print_query(state, summary["query"])
    print("demo " + ("OK: every record harvested exactly once, converted and queried" if ok else "FAILED"))


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
    from harvester.simulator.server import VendorServer

    path = state / VENDOR_FILE
    saved = json.loads(path.read_text()) if path.exists() else None
    if spec.name != "demo" or not saved or not spec.base_url.startswith(saved["url"]):
        yield None
        return
    config = dict(saved["config"])
    data = dict(config.pop("data"))
    data["start"] = datetime.fromisoformat(data["start"])
    try:
        vendor = VendorServer(port=saved["port"], **config, **data).start()
    except OSError as exc:
        raise SpecError(f"the demo's vendor cannot listen on {saved['url']} again ({exc}): free the port, or "
                        f"start a new `harvest demo`") from None
    os.environ["DEMO_API_KEY"] = saved["api_key"]
    try:
        yield vendor
    finally:
        vendor.stop()


def lake_rows(state: Path, run: dict, spec) -> dict[str, Any]:
    """The run item's Parquet counts (written by the convert stage) against its harvested records, per level."""
    from harvester import s3keys

    lake = (run.get("lake") or {}).get("levels", {})
    rows = []
    for level in spec.levels:
        got = lake.get(level.name, {})
        want = run.get("levels", {}).get(level.name, {}).get("records")
        rows.append({"level": level.name, "prefix": s3keys.processed_prefix(spec.name, level.name),
                     **{k: got.get(k, 0) for k in ("files", "partitions", "rows", "bad_values", "bytes")},
                     "ledger": want, "ok": want is not None and got.get("rows") == want})
    return {"location": str(state / "bucket" / "processed" / spec.name), "levels": rows}


def showcase_query(state, source: str, start, end, *, timeout: float, iam: bool = True) -> dict[str, Any]:
    """Seed 001's question through the query workflow: uptime of the data points by firmware version (a share,
    0..1); the query and its result (or the execution's error)."""
    from harvester.cli.query import run_query

    query = {
        "source": source, "level": "points",
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "group_by": ["warriors.firmware"],
        "aggregates": [{"op": "count", "as": "points"}, {"op": "share", "column": "status", "equals": "up", "as": "uptime"}],
    }
    desc, result, seconds = run_query(state, query, timeout=timeout, iam=iam)
    if result is None:
        return {"query": query, "status": desc["status"], "error": desc.get("error"), "cause": desc.get("cause", "")}
    return {"query": query, "status": desc["status"], "seconds": round(seconds, 3),
            **{k: result[k] for k in ("query_id", "columns", "rows", "stats")}}


def print_query(state, shown: dict[str, Any]) -> None:
    from harvester.cli.query import query_lines

    q = shown["query"]
    print(f"uptime by firmware, {q['start']} .. {q['end']} (harvest query --local --state {state} "
          f"--source {q['source']} --level points --start {q['start']} --end {q['end']} "
          f"--group-by warriors.firmware --agg 'count as points' --agg 'share:status=up as uptime'):")
    if "rows" not in shown:
        print(f"query {shown['status']}: {shown['error']}: {shown['cause'][:500]}")
        return
    rows = [[*r[:-1], None if r[-1] is None else f"{100 * r[-1]:.2f}"] for r in shown["rows"]]
    result = {**shown, "rows": rows, "columns": [*shown["columns"][:-1], "uptime %"]}
    print("\n".join("  " + line for line in query_lines(result, shown["seconds"], state)))
