"""`harvest`: run the workflow on AWS (the deployed stack) or on this machine (`--local`), follow it, inspect,
resume, query, or run the demo against the simulator. The same commands in both modes.

    harvest run SOURCE                    start a run on the deployed stack (its `live` alias) and follow it
    harvest run --local SPEC.yaml         the same workflow on this machine (moto), state in ./harvest-state
    harvest runs [SOURCE]                 the sources with runs, or a source's runs (newest first)
    harvest status RUN_ID [--follow]      one run: progress per level, live until it ends with --follow
    harvest failures RUN_ID               the failed calls (URL, status, reason) and failed batches
    harvest resume RUN_ID                 fetch only what an earlier run is missing
    harvest report RUN_ID [--out DIR]     one HTML file with charts (rate against the limit, 429s, progress,
                                          batches, failures, records against the previous run, cost) and PNGs
    harvest query --source demo --level points --start 2026-01-01 --end 2026-01-02 \\
        --group-by warriors.firmware --agg count --agg "share:status=up as uptime"
                                          the query workflow over the Parquet lake; prints the result table
    harvest demo                          simulated vendor + sources/demo.yaml, checked against the vendor

Without --local a command finds the stack from its CloudFormation outputs: --stack (default HARVESTER_STACK_NAME
or Harvester), --region and --profile as the AWS CLI has them. --json on every command prints JSON for scripts.
Exit codes: 0 succeeded, 1 failed, 2 bad input (unknown run, source or stack), 3 incomplete (resume it),
4 local state folder unusable, 124 timeout, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from harvester.cli import codes, runs
from harvester.cli.backend import DEFAULT_STATE, aws_backend, local_reader
from harvester.cli.codes import BadInput
from harvester.cli.local import MAX_PROCESSES, Stopped, execute, stored_spec_file
from harvester.spec import SpecError, load_spec

PACKAGE_SOURCES = Path(__file__).resolve().parent.parent.parent / "sources"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("harvester")
    except PackageNotFoundError:
        return "unknown"


def _aws(args):
    return aws_backend(args.stack, args.region, args.profile)


def _reader(args):
    """The place a read-only command looks: the state folder's ledger, or the stack's table."""
    return local_reader(args.state) if args.local else nullcontext(_aws(args))


# --- run / resume --------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    return _new_run(args)


def cmd_backfill(args) -> int:
    """A backfill: the spec's windowed level over [--from, --to), sliced by --step into Map items; the daily
    bookmark is not moved. Locally, or on the deployed stack as a `window` in the execution input."""
    return _new_run(args, {"start": args.start, "end": args.end, **({"step": args.step} if args.step else {})})


def _new_run(args, window: dict | None = None) -> int:
    """A new run of a source (a backfill with a `window`): on the local engine from its spec file, or on the
    deployed stack by spec file or by name. Everything that can be checked here is checked before anything is
    written or started: the source on the stack, a backfill's window as Plan run would take it (where the spec is at
    hand; with a deployed name alone the workflow's Plan run refuses it, exit 2), the credential and the vendor."""
    spec = load_spec(args.spec) if args.local or Path(args.spec).is_file() else None
    source = spec.name if spec is not None else args.spec
    backend = None if args.local else _aws(args)
    if backend is not None:
        runs.check_source(backend, source)
    inp, name, run_id = runs.new_run_input(source, args.run_id)
    if window is not None:
        inp = {**inp, "window": window}
        if spec is not None:
            from harvester.run import InputError, parse_input, plan_window

            try:
                plan_window(parse_input(inp), spec, name, "", None)
            except InputError as exc:
                raise BadInput(str(exc)) from None
    if backend is not None:
        return _start_and_follow(args, backend, source, run_id, inp, name)
    from harvester.preflight import check_local

    check_local(spec)  # before the state folder exists: a missing key or a vendor down writes nothing
    run, desc, _ = execute(spec, Path(args.spec), inp, args.state, timeout=args.timeout, processes=args.processes,
                           iam=not args.no_iam, as_json=args.json, execution_name=name)
    return codes.exit_code(desc)


def cmd_resume(args) -> int:
    if args.local:
        if args.spec:
            spec, path = load_spec(args.spec), Path(args.spec)
        else:
            spec, path = stored_spec_file(args.state, args.run_id), None
        from harvester.cli.demo import demo_vendor_for

        with demo_vendor_for(args.state, spec):  # a demo run: its simulated vendor again, on the same port
            from harvester.preflight import check_local

            check_local(spec)
            run, desc, _ = execute(spec, path, {"source": spec.name, "resume": args.run_id}, args.state,
                                   timeout=args.timeout, processes=args.processes, iam=not args.no_iam,
                                   as_json=args.json)
        return codes.exit_code(desc)
    backend = _aws(args)
    run = backend.run_item(args.run_id, args.source)
    return _start_and_follow(args, backend, run["source"], args.run_id,
                             {"source": run["source"], "resume": args.run_id}, None)


def _start_and_follow(args, backend, source: str, run_id: str, inp: dict, name: str | None) -> int:
    """AWS: start the execution on the `live` alias, then follow it unless --detach. Ctrl-C or --timeout leave
    the run going on AWS (follow it again with `harvest status RUN_ID --follow`)."""
    import time

    arn = backend.start(inp, name)
    runs.run_started_line(run_id, source, backend.where, arn)
    if args.detach:
        if args.json:
            runs.view.emit_json({"run_id": run_id, "source": source, "execution_arn": arn})
        return codes.EXIT_OK
    t0 = time.monotonic()
    try:
        desc = runs.follow(backend, source, run_id, arn, None, timeout=args.timeout)
    except (KeyboardInterrupt, TimeoutError) as exc:
        print(f"\n{'--timeout ran out' if isinstance(exc, TimeoutError) else 'detached'}: run {run_id} goes on in "
              f"{backend.where}; follow it with `harvest status {run_id} --follow {backend.resume_flags}`".rstrip(),
              file=sys.stderr)
        raise
    run = backend.ledger.get_run(source, run_id)
    spec = runs.stored_spec(backend, source, run_id)
    return runs.report_end(backend, run, desc, spec, time.monotonic() - t0, as_json=args.json,
                           output=f"s3://{backend.bucket}/raw/{source}/{run_id}/")


# --- read-only commands --------------------------------------------------------------------------------------
def cmd_runs(args) -> int:
    with _reader(args) as backend:
        if args.run_id:  # the old `harvest runs SOURCE RUN_ID`: one run, as `status` shows it
            return runs.show_status(backend, args.run_id, args.source, args.json)
        return runs.show_runs(backend, args.source, args.limit, args.json)


def cmd_status(args) -> int:
    if not args.follow:
        with _reader(args) as backend:
            return runs.show_status(backend, args.run_id, args.source, args.json)
    if args.local:
        return _follow_local(args)
    backend = _aws(args)
    run = backend.run_item(args.run_id, args.source)
    desc = runs.follow(backend, run["source"], args.run_id, run.get("execution_arn"), None, timeout=args.timeout)
    run = backend.ledger.get_run(run["source"], args.run_id)
    return runs.report_end(backend, run, desc, runs.stored_spec(backend, run["source"], args.run_id), None,
                           as_json=args.json)


def _follow_local(args) -> int:
    """A local run in another process: re-read the state folder until its run item ends."""
    with local_reader(args.state) as backend:
        run = backend.run_item(args.run_id, args.source)
    source = run["source"]

    def take():
        with local_reader(args.state) as b:
            return runs.snapshot(b, source, args.run_id)()

    def ended():
        now = take()[0]
        return None if now.get("status") == "RUNNING" else now

    with local_reader(args.state) as backend:
        spec = runs.stored_spec(backend, source, args.run_id)
    backend.poll = 1.0
    item = runs.follow(backend, source, args.run_id, None, spec, timeout=args.timeout, take=take, ended=ended)
    with local_reader(args.state) as backend:
        return runs.report_end(backend, item, item, spec, None, as_json=args.json)


def cmd_failures(args) -> int:
    with _reader(args) as backend:
        return runs.show_failures(backend, args.run_id, args.source, args.json)


def cmd_report(args) -> int:
    from harvester.cli.report import show_report

    with _reader(args) as backend:
        return show_report(backend, args.run_id, args.source, args.out, args.json)


def cmd_query(args) -> int:
    from harvester.cli.query import cmd_query as run

    return run(args, lambda: _aws(args))


def cmd_cost(args) -> int:
    from harvester.cli.costs import cmd_cost as estimate

    return estimate(args)


def cmd_demo(args) -> int:
    from harvester.cli.demo import run_demo

    return run_demo(args)


# --- parser: one function per command, registered in COMMANDS ------------------------------------------------
def _where(sp, local_only_help: str = "run on this machine (moto) with the state folder, not on AWS") -> None:
    """Where a command acts: the local state folder or a deployed stack."""
    sp.add_argument("--local", action="store_true", help=local_only_help)
    sp.add_argument("--state", type=Path, default=None,
                    help=f"the local state folder (bucket mirror + ledger; implies --local; default {DEFAULT_STATE})")
    sp.add_argument("--stack", help="the deployed stack (default: HARVESTER_STACK_NAME or Harvester)")
    sp.add_argument("--region", help="its AWS region (default: the AWS CLI's, AWS_REGION)")
    sp.add_argument("--profile", help="the AWS CLI profile to use (default: AWS_PROFILE or the default)")
    sp.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")


def _engine_opts(sp, timeout: float = 3600.0, workers: bool = True) -> None:
    """How long to wait, and the local engine's IAM check and worker processes."""
    sp.add_argument("--timeout", type=float, default=timeout,
                    help="seconds to wait: a local run is stopped then, an AWS run goes on (exit 124)")
    sp.add_argument("--no-iam", action="store_true",
                    help="--local: do not authorize AWS calls against the stack's IAM policies (on by default, "
                         "as on AWS; off only to measure what the check costs)")
    if workers:
        sp.add_argument("--processes", type=int, default=None, metavar="N",
                        help="--local: every function in up to N worker processes, like Lambda containers, "
                             "held to its timeout, memory and /tmp (default: the workers a level "
                             f"runs at once, at most {MAX_PROCESSES}; 0: all in this process)")


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="start a run of a source and follow it")
    r.add_argument("spec", metavar="SOURCE|SPEC",
                   help="a deployed source's name, or a spec file (YAML; --local: the spec to run)")
    r.add_argument("--run-id", help="run id (default: start time + execution name)")
    r.add_argument("--detach", action="store_true", help="AWS: print the run id and return once it is started")
    _where(r)
    _engine_opts(r)
    r.set_defaults(func=cmd_run)


def _add_backfill(sub) -> None:
    b = sub.add_parser("backfill", help="harvest a past time range of a windowed source, in slices (the daily "
                       "bookmark stays)")
    b.add_argument("spec", metavar="SOURCE|SPEC", help="a deployed source's name, or a spec file (YAML; a level "
                   "declares window:; --local: the spec to run)")
    b.add_argument("--from", dest="start", required=True, help="start of the range, inclusive (ISO-8601 or a date)")
    b.add_argument("--to", dest="end", required=True, help="end of the range, exclusive (ISO-8601 or a date)")
    b.add_argument("--step", help="slice length, e.g. P1D or PT6H (default: the window's step, else one slice)")
    b.add_argument("--run-id", help="run id (default: start time + execution name)")
    b.add_argument("--detach", action="store_true", help="AWS: print the run id and return once it is started")
    _where(b)
    _engine_opts(b)
    b.set_defaults(func=cmd_backfill)


def _add_resume(sub) -> None:
    s = sub.add_parser("resume", help="resume an earlier run: fetch only what it is missing")
    s.add_argument("run_id")
    s.add_argument("--source", help="the run's source (default: found from the run id)")
    s.add_argument("--spec", help="--local: use this spec instead of the one the run was planned with")
    s.add_argument("--detach", action="store_true", help="AWS: return once the resume is started")
    _where(s)
    _engine_opts(s)
    s.set_defaults(func=cmd_resume)


def _add_runs(sub) -> None:
    ls = sub.add_parser("runs", help="the sources with runs, or the runs of one source (newest first)")
    ls.add_argument("source", nargs="?")
    ls.add_argument("run_id", nargs="?", help="(same as `harvest status RUN_ID`)")
    ls.add_argument("--limit", type=int, default=20, help="the newest N runs (default 20)")
    _where(ls)
    ls.set_defaults(func=cmd_runs)


def _add_status(sub) -> None:
    st = sub.add_parser("status", help="one run's progress per level; --follow: live until it ends")
    st.add_argument("run_id")
    st.add_argument("--source", help="the run's source (default: found from the run id)")
    st.add_argument("--follow", action="store_true", help="redraw until the run ends; exit with its code")
    st.add_argument("--timeout", type=float, default=24 * 3600.0, help="--follow: stop following after this many s")
    _where(st)
    st.set_defaults(func=cmd_status)


def _add_failures(sub) -> None:
    f = sub.add_parser("failures", help="a run's failed calls (URL, status, reason) and failed batches")
    f.add_argument("run_id")
    f.add_argument("--source", help="the run's source (default: found from the run id)")
    _where(f)
    f.set_defaults(func=cmd_failures)


def _add_report(sub) -> None:
    rp = sub.add_parser("report", help="a run's report: one self-contained HTML file with charts, and their PNGs",
                        description="Sent requests per second against the rate limit, 429s and retries, each level's "
                        "progress, the batches as a timeline, the failures, records against the previous run and the "
                        "cost, from the ledger (the same for a local run and an AWS run). --json prints its data.")
    rp.add_argument("run_id")
    rp.add_argument("--source", help="the run's source (default: found from the run id)")
    rp.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="where report.html and the PNGs go (default ./harvest-report-RUN_ID)")
    _where(rp)
    rp.set_defaults(func=cmd_report)


def _add_cost(sub) -> None:
    c = sub.add_parser("cost", help="estimate what a run of a spec costs on AWS before it exists",
                       description="The cost model of harvester/cost.py with the counts a run of N calls would have; "
                       "a finished run's own cost is printed at its end and shown by `harvest runs SOURCE`.")
    c.add_argument("spec", help="path of the source spec (YAML)")
    c.add_argument("--calls", type=int, required=True, metavar="N", help="the calls the run makes")
    c.add_argument("--region", default="us-east-1", help="whose prices (default us-east-1)")
    c.add_argument("--arch", choices=("arm64", "x86_64"), default="arm64", help="the functions' architecture")
    c.add_argument("--log-level", default="ERROR", choices=("OFF", "FATAL", "ERROR", "ALL"),
                   help="the workflow's log level (the stack's workflowLogLevel, default ERROR)")
    c.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    c.set_defaults(func=cmd_cost)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="start the simulated vendor and harvest it with sources/demo.yaml (local)")
    # dests: the simulated vendor's config fields (harvester/cli/demo.py VENDOR_OPTIONS)
    d.add_argument("--troops", type=int, default=6)
    d.add_argument("--warriors", dest="warriors_per_troop", type=int, default=10, help="warriors per troop")
    d.add_argument("--datagroups", dest="datagroups_per_warrior", type=int, default=8, help="datagroups per warrior")
    d.add_argument("--points", dest="points_per_datagroup", type=int, default=300, help="points per datagroup")
    d.add_argument("--rate", type=float, default=50.0,
                   help="the vendor's rate limit, requests/s (the spec uses the same)")
    d.add_argument("--burst", type=int, default=5)
    d.add_argument("--latency-ms", type=float, default=5.0)
    d.add_argument("--seed", type=int, default=3)
    d.add_argument("--spec", type=Path, default=PACKAGE_SOURCES / "demo.yaml")
    d.add_argument("--state", type=Path, default=None, help=f"folder kept between commands (default {DEFAULT_STATE})")
    d.add_argument("--local", action="store_true", help="(always local)")
    d.add_argument("--json", action="store_true", help="print the demo's summary as one JSON document for scripts: the "
                   "run (as `harvest run --json`), the checks against the vendor's books, the lake, the query")
    _engine_opts(d, timeout=1800.0)
    d.set_defaults(func=cmd_demo)


def _add_query(sub) -> None:
    q = sub.add_parser(
        "query",
        help="run the query workflow over the Parquet lake and print the result table",
        description="Aggregates over a level's Parquet files, found through the time index; columns of an ancestor "
        "level are written LEVEL.COLUMN (warriors.firmware for a point).",
        epilog="example: harvest query --local --source demo --level points "
        "--start 2026-01-01T00:00:00Z --end 2026-01-02T00:00:00Z --group-by warriors.firmware "
        "--agg count --agg 'share:status=up as uptime' --filter 'status!=degraded'",
    )
    q.add_argument("--source", help="source name")
    q.add_argument("--level", help="level to aggregate (e.g. points)")
    q.add_argument("--start", help="start of the time range, inclusive (ISO-8601; default: unbounded)")
    q.add_argument("--end", help="end of the time range, exclusive (ISO-8601; default: unbounded)")
    q.add_argument("--group-by", action="append", metavar="COLUMN",
                   help="group-by column(s), repeatable or comma-separated")
    q.add_argument("--agg", action="append", metavar="SPEC",
                   help="aggregate OP[:COLUMN[=VALUE]][ as NAME]: count, count:value, sum:value, mean:value, "
                        "min:value, max:value, share:status=up (repeatable; default count)")
    q.add_argument("--filter", action="append", metavar="EXPR",
                   help="filter COLUMN OP VALUE: = != < <= > >=, 'COL in A,B', 'COL not_in A,B', 'COL is_null', "
                        "'COL not_null' (repeatable, all must hold)")
    q.add_argument("--query-file", help="a query as JSON (the query workflow's input); the options above override it")
    q.add_argument("--print-query", action="store_true", help="print the query sent to the workflow first")
    _where(q)
    _engine_opts(q, timeout=600.0, workers=False)
    q.set_defaults(func=cmd_query)


def _add_vendor(sub) -> None:
    # `harvest vendor ...` is handed to the vendor's own parser before this one sees it (see main); listed here
    # for --help
    sub.add_parser("vendor", help="run the simulated vendor on its own (`harvest vendor --help` for its options)",
                   add_help=False)


#: the subcommands in --help order; a new command is a `_add_NAME(sub)` function and one line here
COMMANDS = (
    _add_run,
    _add_backfill,
    _add_resume,
    _add_runs,
    _add_status,
    _add_failures,
    _add_report,
    _add_cost,
    _add_demo,
    _add_query,
    _add_vendor,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harvest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"harvest {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from harvester.local.state import StateError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["vendor"]:  # every option (--help too) is the vendor's
        from harvester.simulator.__main__ import main as vendor_main

        return vendor_main(argv[1:], prog="harvest vendor") or 0
    args = build_parser().parse_args(argv)
    if hasattr(args, "local"):  # a state folder exists only locally: naming one means --local
        args.local = args.local or args.state is not None or args.command == "demo"
        args.state = args.state if args.state is not None else DEFAULT_STATE
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return codes.EXIT_BAD_INPUT
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return codes.EXIT_BAD_INPUT
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return codes.EXIT_STATE
    except Stopped as exc:
        return exc.code
    except KeyboardInterrupt:
        return codes.EXIT_INTERRUPTED
    except TimeoutError:
        return codes.EXIT_TIMEOUT
    except BrokenPipeError:  # `harvest ... | head`: the reader is gone (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return codes.EXIT_OK
