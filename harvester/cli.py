"""`harvest`: run the workflow locally, resume it, inspect the ledger, or run the demo against the simulator.

    harvest demo                          simulated vendor + sources/demo.yaml, checked against the vendor
    harvest run --local SPEC.yaml         the same workflow as on AWS, on moto, output in ./harvest-state
    harvest resume RUN_ID --local         fetch only what an earlier run is missing
    harvest runs SOURCE                   the ledger: runs of a source; `harvest runs SOURCE RUN_ID` one run
    harvest query --local --source demo --level points --start 2026-01-01 --end 2026-01-02 \
        --group-by warriors.firmware --agg count --agg "share:status=up as uptime"
                                          the query workflow over the Parquet lake; prints the result table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from harvester.spec import SourceSpec, SpecError, load_spec, parse_spec

DEFAULT_STATE = Path("harvest-state")
PACKAGE_SOURCES = Path(__file__).resolve().parent.parent / "sources"

#: exit codes (README, "When things fail"): a script can tell a finished run from one to resume and from bad input
EXIT_OK = 0  # the run (or command) succeeded
EXIT_FAILED = 1  # the run failed (a crash recorded on the run item): fix, then resume
EXIT_BAD_INPUT = 2  # bad spec, bad arguments, unknown run: nothing was written
EXIT_INCOMPLETE = 3  # the run ended with failed batches (the ledger lists them): resume it
EXIT_STATE = 4  # the state folder is in use, damaged or out of disk space (the message names the file)
EXIT_TIMEOUT = 124  # --timeout ran out: the run was stopped, resume it
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); 143 for SIGTERM: the run was stopped, resume it


class Stopped(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during a local run: stop the fleet, print how to resume."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.code = 128 + signum


def exit_code(desc: dict[str, Any]) -> int:
    if desc["status"] == "SUCCEEDED":
        return EXIT_OK
    return EXIT_INCOMPLETE if desc.get("error") == "Harvest.Incomplete" else EXIT_FAILED


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
    processes: int | None = None,
    iam: bool = True,
) -> tuple[dict[str, Any] | None, dict[str, Any], float]:
    """Run one execution of the workflow locally; returns (run item, execution description, seconds).

    ``processes``: worker processes per function, each held to its function's limits (default: the workers a
    level of the spec runs at once, ``SourceSpec.workers()``, at most MAX_PROCESSES, so a level's Map never waits
    for a free worker; 0: every handler in this process). ``iam``: authorize every AWS call as the role that makes
    it on AWS (False: only to measure what that costs)."""
    from harvester.local.engine import LocalEngine
    from harvester.local.report import Progress, audit as audit_run, summary_lines

    if processes is None:
        processes = min(spec.workers(), MAX_PROCESSES)
    with LocalEngine(state, batch_seconds=batch_seconds, processes=processes, iam=iam,
                     command=f"harvest {' '.join(sys.argv[1:3])}".strip()) as engine:
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
            with _signals_stop():
                desc = engine.wait(arn, timeout=timeout, progress=tick)
        except (KeyboardInterrupt, TimeoutError) as exc:
            why = "--timeout ran out" if isinstance(exc, TimeoutError) else "interrupted"
            engine.stop(arn, error="Local.Timeout" if isinstance(exc, TimeoutError) else "Local.Interrupted",
                        cause=why)
            run_id = execution_input.get("resume") or engine.run_id_of(arn, spec.name) or "RUN_ID"
            print(f"\n{why}: the run is stopped, its state is in {state}; continue with "
                  f"`harvest resume {run_id} --local --state {state}`", file=sys.stderr)
            raise
        seconds = time.monotonic() - t0
        run_id = execution_input.get("resume") or engine.run_id_of(arn, spec.name)
        run = engine.ledger.get_run(spec.name, run_id) if run_id else None
    if engine.state.failure is not None:  # e.g. disk full: what the folder holds is not this run
        raise engine.state.failure
    result = audit_run(state / "bucket", spec, run["run_id"]) if (audit and run) else None
    _print(summary_lines(run, spec, seconds, state / "bucket", result, execution_error=desc.get("error")))
    if desc["status"] != "SUCCEEDED":
        print(f"execution {desc['status']}: {desc.get('error', '')}: {desc.get('cause', '')}"[:2000], file=sys.stderr)
    return run, desc, seconds


class _signals_stop:
    """SIGTERM raises Stopped in the main thread (as Ctrl-C raises KeyboardInterrupt), so the fleet is stopped and
    the resume hint printed instead of the process vanishing with its workers orphaned."""

    def __enter__(self):
        import signal

        def handler(signum, frame):
            raise Stopped(signum)

        self._previous = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc):
        import signal

        signal.signal(signal.SIGTERM, self._previous)


def cmd_run(args) -> int:
    spec = load_spec(args.spec)
    from harvester.preflight import check_local

    check_local(spec)  # before the state folder exists: a missing key or a vendor down writes nothing
    execution_input: dict[str, Any] = {"source": spec.name}
    if args.run_id:
        execution_input["run_id"] = args.run_id
    run, desc, _ = execute(spec, Path(args.spec), execution_input, args.state, timeout=args.timeout,
                           processes=args.processes, iam=not args.no_iam)
    return exit_code(desc)


def cmd_backfill(args) -> int:
    """A backfill: the spec's windowed level over [--from, --to), sliced by --step into Map items; the daily
    bookmark is not moved."""
    spec = load_spec(args.spec)
    window = {"start": args.start, "end": args.end, **({"step": args.step} if args.step else {})}
    execution_input: dict[str, Any] = {"source": spec.name, "window": window}
    if args.run_id:
        execution_input["run_id"] = args.run_id
    run, desc, _ = execute(spec, Path(args.spec), execution_input, args.state, timeout=args.timeout,
                           processes=args.processes, iam=not args.no_iam)
    return exit_code(desc)


def cmd_resume(args) -> int:
    if args.spec:
        spec, path = load_spec(args.spec), Path(args.spec)
    else:
        spec, path = _stored_spec(args.state, args.run_id), None
    from harvester.local.demo import demo_vendor_for

    with demo_vendor_for(args.state, spec):  # a demo run: its simulated vendor again, on the same port
        from harvester.preflight import check_local

        check_local(spec)
        run, desc, _ = execute(spec, path, {"source": spec.name, "resume": args.run_id}, args.state,
                               timeout=args.timeout, processes=args.processes, iam=not args.no_iam)
    return exit_code(desc)


def cmd_runs(args) -> int:
    from harvester.local.state import LocalState

    state = LocalState(args.state)
    if not (state.ledger_db.exists() or (args.state / "ledger.jsonl").exists()):
        print(f"no local ledger at {state.ledger_db}", file=sys.stderr)
        return 1
    items = state.items()  # read during a run too (SQLite, WAL)
    prefix = f"RUN#{args.source}#"
    if args.run_id:
        mine = [i for i in items if i["pk"] == f"{prefix}{args.run_id}"]
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


# --- query ----------------------------------------------------------------------------------------------------
_FILTER = re.compile(r"^\s*(?P<col>[A-Za-z_][\w.]*)\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<val>.*?)\s*$")
_FILTER_WORD = re.compile(r"^\s*(?P<col>[A-Za-z_][\w.]*)\s+(?P<op>in|not_in|is_null|not_null)\b\s*(?P<val>.*?)\s*$")


def _value(text: str) -> Any:
    """A filter or `share` value: JSON when it parses as a number, true/false or null, else the text itself
    (so 1.3.1, up and 007 stay text; 5 and 2.5 are numbers; quote with "..." to force text)."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, (int, float, bool, str)) or v is None else text


def parse_agg(text: str) -> dict[str, Any]:
    """`OP[:COLUMN[=VALUE]][ as NAME]`: count, count:value, sum:value, mean:value, min:ts, max:ts, share:status=up."""
    body, _, name = text.partition(" as ")
    op, _, rest = body.strip().partition(":")
    agg: dict[str, Any] = {"op": op.strip()}
    if rest:
        column, eq, value = rest.partition("=")
        agg["column"] = column.strip()
        if eq:
            agg["equals"] = _value(value.strip())
    if name.strip():
        agg["as"] = name.strip()
    return agg


def parse_filter(text: str) -> dict[str, Any]:
    """`COL=VALUE`, `COL!=VALUE`, `COL<VALUE` (<=, >, >=), `COL in A,B`, `COL not_in A,B`, `COL is_null`, `COL not_null`."""
    m = _FILTER_WORD.match(text)
    if m:
        op = m["op"]
        if op in ("in", "not_in"):
            return {"column": m["col"], "op": op, "value": [_value(v.strip()) for v in m["val"].split(",") if v.strip()]}
        return {"column": m["col"], "op": op}
    m = _FILTER.match(text)
    if not m:
        raise SpecError(f"--filter {text!r}: expected COLUMN OP VALUE (ops = != < <= > >=, in, not_in, is_null, not_null)")
    return {"column": m["col"], "op": m["op"], "value": _value(m["val"])}


def resolve_columns(bucket_dir: Path, query: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Local convenience: a bare column the queried level does not have but exactly one ancestor level has becomes
    LEVEL.COLUMN (`firmware` -> `warriors.firmware` for points). Reads the Parquet footers in the state folder
    (every file: a column may exist in some runs only). Returns (a note per rewrite, problems with columns)."""
    import pyarrow.parquet as pq

    from harvester.lake import layout
    from harvester.lake.schema import SEP

    def columns(level: str) -> set[str]:
        files = sorted((bucket_dir / layout.processed_prefix(query["source"], level)).glob("*/*.parquet"))
        return {name for f in files for name in pq.read_schema(f).names}

    if not query.get("source") or not query.get("level"):
        return [], []
    own = columns(query["level"])
    if not own:
        return [], []
    ancestors = {c.removeprefix("_lineage" + SEP): set() for c in own if c.startswith("_lineage" + SEP)}
    for lv in ancestors:
        ancestors[lv] = columns(lv)
    notes: list[str] = []
    problems: list[str] = []

    def fix(ref: Any) -> Any:
        if not isinstance(ref, str):
            return ref
        level, _, column = ref.rpartition(".")
        if level:
            if level in ancestors and column.replace(".", SEP) not in ancestors[level]:
                problems.append(f"{ref}: level {level} has no column {column!r}")
            return ref
        if ref in own:
            return ref
        having = [lv for lv, cols in ancestors.items() if ref in cols]
        if len(having) == 1:
            notes.append(f"{ref} -> {having[0]}.{ref} (not a column of {query['level']})")
            return f"{having[0]}.{ref}"
        problems.append(f"{ref}: not a column of {query['level']}" + (
            f" (ambiguous: {', '.join(having)} have it; write LEVEL.{ref})" if having else
            f"; its columns: {', '.join(sorted(c for c in own if not c.startswith('_')))}"))
        return ref

    query["group_by"] = [fix(g) for g in query.get("group_by") or []]
    for f in query.get("filters") or []:
        f["column"] = fix(f.get("column"))
    for a in query.get("aggregates") or []:
        if a.get("column") and a["column"].replace(".", SEP) not in own:
            problems.append(f"aggregate {a.get('op')}:{a['column']}: not a column of {query['level']}")
    return notes, problems


def query_from_args(args) -> dict[str, Any]:
    query: dict[str, Any] = _query_file(args.query_file) if args.query_file else {}
    for name in ("source", "level", "start", "end"):
        if getattr(args, name):
            query[name] = getattr(args, name)
    if args.group_by:
        query["group_by"] = [c.strip() for g in args.group_by for c in g.split(",") if c.strip()]
    if args.filter:
        query["filters"] = [parse_filter(f) for f in args.filter]
    if args.agg:
        query["aggregates"] = [parse_agg(a) for a in args.agg]
    return query


def run_query(state: Path, query: dict[str, Any], *, timeout: float,
              iam: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None, float]:
    """One execution of the query workflow on the local engine over the state folder's lake."""
    from harvester.local.engine import LocalEngine

    with LocalEngine(state, lock=False, iam=iam) as engine:  # a reader: works during a run in the same folder
        t0 = time.monotonic()
        desc, result = engine.query(query, timeout=timeout)
        return desc, result, time.monotonic() - t0


def query_lines(result: dict[str, Any], seconds: float, state: Path) -> list[str]:
    from harvester.lake.query import format_table

    stats = result.get("stats", {})
    return [
        *format_table(result).splitlines(),
        f"{len(result['rows'])} rows; {stats.get('files', 0)} files, {stats.get('rows_scanned', 0)} rows scanned, "
        f"{stats.get('tasks', 0)} tasks, {seconds:.1f} s (query workflow)",
        f"result: {state / 'bucket' / 'results' / result['query_id']}.json and .csv",
    ]


def cmd_query(args) -> int:
    query = query_from_args(args)
    notes, problems = resolve_columns(args.state / "bucket", query)
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    if problems:
        print("error: " + "\n       ".join(problems), file=sys.stderr)
        return 2
    if args.print_query:
        print(json.dumps(query, indent=1))
    desc, result, seconds = run_query(args.state, query, timeout=args.timeout, iam=not args.no_iam)
    if result is None:
        cause = desc.get("cause", "")
        try:
            cause = json.loads(cause).get("errorMessage", cause)
        except (ValueError, AttributeError):
            pass
        print(f"error: query {desc['status']}: {desc.get('error', '')}: {cause}"[:2000], file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: result[k] for k in ("query_id", "columns", "rows", "stats")}, indent=1, default=str))
    else:
        _print(query_lines(result, seconds, args.state))
    return 0


def _query_file(path: str) -> dict[str, Any]:
    try:
        query = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"--query-file {path}: cannot read it ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"--query-file {path}: not JSON ({str(exc)[:200]})") from None
    if not isinstance(query, dict):
        raise SpecError(f"--query-file {path}: expected a JSON object, got {type(query).__name__}")
    return query


def cmd_demo(args) -> int:
    from harvester.local.demo import run_demo

    return run_demo(args)


def cmd_vendor(args) -> int:
    from harvester.vendor.__main__ import main as vendor_main

    return vendor_main(args.vendor_args) or 0


#: the most fetch worker processes a local run starts by default (each is a Python process of ~70 MB)
MAX_PROCESSES = 8


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harvest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, timeout=3600.0, workers=True):
        sp.add_argument("--state", type=Path, default=DEFAULT_STATE, help="folder kept between commands (bucket mirror + ledger)")
        sp.add_argument("--timeout", type=float, default=timeout, help="seconds before the local execution is stopped")
        sp.add_argument("--no-iam", action="store_true",
                        help="do not authorize AWS calls against the stack's IAM policies (on by default, as on AWS; "
                             "off only to measure what the check costs)")
        if not workers:
            return
        sp.add_argument("--processes", type=int, default=None, metavar="N",
                        help="every function in up to N worker processes, like Lambda containers, held to its "
                             "timeout, memory and /tmp (default: the workers a level "
                             f"runs at once, at most {MAX_PROCESSES}; 0: all in this process)")

    r = sub.add_parser("run", help="run the workflow for a source spec")
    r.add_argument("--local", action="store_true", required=True, help="run on this machine (moto); the only mode so far")
    r.add_argument("spec", help="path of the source spec (YAML)")
    r.add_argument("--run-id", help="run id (default: start time + execution name)")
    common(r)
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("backfill", help="harvest a past time range of a windowed spec, in slices (the daily bookmark stays)")
    b.add_argument("--local", action="store_true", required=True, help="run on this machine (moto); the only mode so far")
    b.add_argument("spec", help="path of the source spec (YAML; a level declares window:)")
    b.add_argument("--from", dest="start", required=True, help="start of the range, inclusive (ISO-8601 or a date)")
    b.add_argument("--to", dest="end", required=True, help="end of the range, exclusive (ISO-8601 or a date)")
    b.add_argument("--step", help="slice length, e.g. P1D or PT6H (default: the window's step, else one slice)")
    b.add_argument("--run-id", help="run id (default: start time + execution name)")
    common(b)
    b.set_defaults(func=cmd_backfill)

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
    d.set_defaults(func=cmd_demo)

    q = sub.add_parser(
        "query",
        help="run the query workflow over the Parquet lake and print the result table",
        description="Aggregates over a level's Parquet files, found through the time index; columns of an ancestor "
        "level are written LEVEL.COLUMN (warriors.firmware for a point).",
        epilog="example: harvest query --local --source demo --level points "
        "--start 2026-01-01T00:00:00Z --end 2026-01-02T00:00:00Z --group-by warriors.firmware "
        "--agg count --agg 'share:status=up as uptime' --filter 'status!=degraded'",
    )
    q.add_argument("--local", action="store_true", required=True, help="run on this machine (moto); the only mode so far")
    q.add_argument("--source", help="source name")
    q.add_argument("--level", help="level to aggregate (e.g. points)")
    q.add_argument("--start", help="start of the time range, inclusive (ISO-8601; default: unbounded)")
    q.add_argument("--end", help="end of the time range, exclusive (ISO-8601; default: unbounded)")
    q.add_argument("--group-by", action="append", metavar="COLUMN", help="group-by column(s), repeatable or comma-separated")
    q.add_argument("--agg", action="append", metavar="SPEC",
                   help="aggregate OP[:COLUMN[=VALUE]][ as NAME]: count, count:value, sum:value, mean:value, min:value, "
                        "max:value, share:status=up (repeatable; default count)")  # fmt: skip
    q.add_argument("--filter", action="append", metavar="EXPR",
                   help="filter COLUMN OP VALUE: = != < <= > >=, 'COL in A,B', 'COL not_in A,B', 'COL is_null', "
                        "'COL not_null' (repeatable, all must hold)")  # fmt: skip
    q.add_argument("--query-file", help="a query as JSON (the query workflow's input); the options above override it")
    q.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    q.add_argument("--print-query", action="store_true", help="print the query sent to the workflow first")
    common(q, timeout=600.0, workers=False)
    q.set_defaults(func=cmd_query)

    v = sub.add_parser("vendor", help="run the simulated vendor on its own (see --help of it)", add_help=False)
    v.add_argument("vendor_args", nargs=argparse.REMAINDER)
    v.set_defaults(func=cmd_vendor)
    return p


def main(argv: list[str] | None = None) -> int:
    from harvester.local.state import StateError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STATE
    except Stopped as exc:
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except TimeoutError:
        return EXIT_TIMEOUT


if __name__ == "__main__":
    sys.exit(main())
