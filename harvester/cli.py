"""`harvest`: run the workflow locally, resume it, inspect the ledger, or run the demo against the simulator.

    harvest demo                          simulated vendor + sources/demo.yaml, checked against the vendor
    harvest run --local SPEC.yaml         the same workflow as on AWS, on moto, output in ./harvest-state
    harvest resume RUN_ID --local         fetch only what an earlier run is missing
    harvest runs SOURCE                   the ledger: runs of a source; `harvest runs SOURCE RUN_ID` one run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from harvester.spec import SourceSpec, SpecError, load_spec, parse_spec

DEFAULT_STATE = Path("harvest-state")
PACKAGE_SOURCES = Path(__file__).resolve().parent.parent / "sources"


def _print(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def _stored_spec(state: Path, run_id: str) -> SourceSpec:
    """The spec an earlier local run used, from the state folder."""
    matches = sorted((state / "bucket" / "runs").glob(f"*/{run_id}/spec.json"))
    if not matches:
        raise SpecError(f"no run {run_id!r} in {state} (looked for bucket/runs/*/{run_id}/spec.json)")
    return parse_spec(json.loads(matches[0].read_text()), str(matches[0]))


def execute(
    spec: SourceSpec,
    spec_path: Path | None,
    execution_input: dict[str, Any],
    state: Path,
    *,
    timeout: float,
    batch_seconds: float | None = None,
    audit: bool = True,
) -> tuple[dict[str, Any] | None, dict[str, Any], float]:
    """Run one execution of the workflow locally; returns (run item, execution description, seconds)."""
    from harvester.local.engine import LocalEngine
    from harvester.local.report import Progress, audit as audit_run, summary_lines

    with LocalEngine(state, batch_seconds=batch_seconds) as engine:
        if spec_path is not None:
            engine.add_source(spec_path, spec)
        else:  # resume with the spec the run was planned with
            tmp = engine._sources_dir / f"{spec.name}.yaml"
            tmp.write_text(json.dumps(spec.model_dump(mode="json")))
        progress = Progress(engine.ledger, spec)
        t0 = time.monotonic()
        arn = engine.start(execution_input)
        print(f"started {arn.rsplit(':', 1)[-1]} for source {spec.name}", file=sys.stderr, flush=True)

        def tick() -> None:
            if progress.run_id is None:
                progress.run_id = execution_input.get("resume") or engine.run_id_of(arn, spec.name)
            progress()

        try:
            desc = engine.wait(arn, timeout=timeout, progress=tick)
        except KeyboardInterrupt:
            print("\ninterrupted: saving state; resume with `harvest resume RUN_ID --local`", file=sys.stderr)
            engine.sfn.stop_execution(executionArn=arn, error="Local.Interrupted", cause="Ctrl-C")
            raise
        seconds = time.monotonic() - t0
        run_id = execution_input.get("resume") or engine.run_id_of(arn, spec.name)
        run = engine.ledger.get_run(spec.name, run_id) if run_id else None
    result = audit_run(state / "bucket", spec, run["run_id"]) if (audit and run) else None
    _print(summary_lines(run, spec, seconds, state / "bucket", result))
    if desc["status"] != "SUCCEEDED":
        print(f"execution {desc['status']}: {desc.get('error', '')}: {desc.get('cause', '')}"[:2000], file=sys.stderr)
    return run, desc, seconds


def cmd_run(args) -> int:
    spec = load_spec(args.spec)
    execution_input: dict[str, Any] = {"source": spec.name}
    if args.run_id:
        execution_input["run_id"] = args.run_id
    run, desc, _ = execute(spec, Path(args.spec), execution_input, args.state, timeout=args.timeout)
    return 0 if desc["status"] == "SUCCEEDED" else 1


def cmd_resume(args) -> int:
    if args.spec:
        spec, path = load_spec(args.spec), Path(args.spec)
    else:
        spec, path = _stored_spec(args.state, args.run_id), None
    run, desc, _ = execute(spec, path, {"source": spec.name, "resume": args.run_id}, args.state, timeout=args.timeout)
    return 0 if desc["status"] == "SUCCEEDED" else 1


def cmd_runs(args) -> int:
    from harvester.ledger import _plain

    ledger_file = args.state / "ledger.jsonl"
    if not ledger_file.exists():
        print(f"no local ledger at {ledger_file}", file=sys.stderr)
        return 1
    items = [json.loads(line) for line in ledger_file.read_text().splitlines() if line.strip()]
    prefix = f"RUN#{args.source}#"
    if args.run_id:
        mine = [_plain(i) for i in items if i["pk"] == f"{prefix}{args.run_id}"]
        run = next((i for i in mine if i["sk"] == "RUN"), None)
        if run is None:
            print(f"no run {args.run_id} of {args.source}", file=sys.stderr)
            return 1
        print(json.dumps(run, indent=1, sort_keys=True))
        fails = [i for i in mine if i["sk"].startswith("FAIL#")]
        failed_batches = [i for i in mine if i["sk"].startswith("BATCH#") and i.get("status") != "SUCCEEDED"]
        for b in failed_batches:
            print(f"batch {b['batch_id']} (level {b.get('level')}): {b.get('status')} {b.get('error', '')} {b.get('cause', '')[:300]}")
        for f in fails:
            print(f"failed call: {f.get('status')} {f.get('url')} -- {f.get('reason')} {f.get('excerpt', '')[:120]!r}")
        return 0
    runs = sorted((i for i in items if i["pk"].startswith(prefix) and i["sk"] == "RUN"), key=lambda i: i.get("started_at", ""))
    for r in runs:
        t = r.get("totals", {})
        print(f"{r['run_id']:<34} {r.get('status', '?'):<10} attempt {r.get('attempt', 1)}  calls {t.get('calls', 0):>7}  "
              f"records {t.get('records', 0):>8}  started {r.get('started_at')}")
    return 0


def cmd_demo(args) -> int:
    from harvester.local.demo import run_demo

    return run_demo(args)


def cmd_vendor(args) -> int:
    from harvester.vendor.__main__ import main as vendor_main

    return vendor_main(args.vendor_args) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harvest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, timeout=3600.0):
        sp.add_argument("--state", type=Path, default=DEFAULT_STATE, help="folder kept between commands (bucket mirror + ledger)")
        sp.add_argument("--timeout", type=float, default=timeout, help="seconds before the local execution is stopped")

    r = sub.add_parser("run", help="run the workflow for a source spec")
    r.add_argument("--local", action="store_true", required=True, help="run on this machine (moto); the only mode so far")
    r.add_argument("spec", help="path of the source spec (YAML)")
    r.add_argument("--run-id", help="run id (default: start time + execution name)")
    common(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("resume", help="resume an earlier run: fetch only what it is missing")
    s.add_argument("run_id")
    s.add_argument("--local", action="store_true", required=True)
    s.add_argument("--spec", help="use this spec instead of the one the run was planned with")
    common(s)
    s.set_defaults(func=cmd_resume)

    ls = sub.add_parser("runs", help="list a source's runs in the local ledger, or show one run with its failures")
    ls.add_argument("source")
    ls.add_argument("run_id", nargs="?")
    ls.add_argument("--state", type=Path, default=DEFAULT_STATE)
    ls.set_defaults(func=cmd_runs)

    d = sub.add_parser("demo", help="start the simulated vendor and harvest it with sources/demo.yaml")
    d.add_argument("--troops", type=int, default=6)
    d.add_argument("--warriors", type=int, default=10, help="warriors per troop")
    d.add_argument("--datagroups", type=int, default=8, help="datagroups per warrior")
    d.add_argument("--points", type=int, default=300, help="points per datagroup")
    d.add_argument("--rate", type=float, default=50.0, help="the vendor's rate limit, requests/s (the spec uses the same)")
    d.add_argument("--burst", type=int, default=5)
    d.add_argument("--latency-ms", type=float, default=5.0)
    d.add_argument("--seed", type=int, default=3)
    d.add_argument("--spec", type=Path, default=PACKAGE_SOURCES / "demo.yaml")
    common(d, timeout=1800.0)
    d.set_defaults(func=cmd_demo, state=Path("harvest-demo"))

    v = sub.add_parser("vendor", help="run the simulated vendor on its own (see --help of it)", add_help=False)
    v.add_argument("vendor_args", nargs=argparse.REMAINDER)
    v.set_defaults(func=cmd_vendor)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
