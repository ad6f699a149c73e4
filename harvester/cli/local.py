"""Local runs: the workflow on the local engine (moto) with its state folder; what only a local run has (the
worker fleet to stop, the lock on the folder, the duplicate audit) lives here, the rest is harvester/cli/runs.py."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from harvester import storage
from harvester.cli import runs
from harvester.cli.backend import engine_backend
from harvester.spec import SourceSpec, SpecError, parse_spec

#: the most fetch worker processes a local run starts by default (each is a Python process of ~70 MB)
MAX_PROCESSES = 8


class Stopped(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during a local run: stop the fleet, print how to resume."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.code = 128 + signum


class _signals_stop:
    """SIGTERM raises Stopped in the main thread (as Ctrl-C raises KeyboardInterrupt), so the fleet is stopped and
    the resume hint printed instead of the process vanishing with its workers orphaned."""

    def __enter__(self):
        def handler(signum, frame):
            raise Stopped(signum)

        self._previous = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def stored_spec_file(state: Path, run_id: str) -> SourceSpec:
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
    as_json: bool = False,
    execution_name: str | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any], float]:
    """Run one execution of the workflow locally; returns (run item, execution description, seconds).

    ``processes``: worker processes per function, each held to its function's limits (default: the workers a
    level of the spec runs at once, ``SourceSpec.workers()``, at most MAX_PROCESSES, so a level's Map never waits
    for a free worker; 0: every handler in this process). ``iam``: authorize every AWS call as the role that makes
    it on AWS (False: only to measure what that costs)."""
    from harvester.local.engine import LocalEngine
    from harvester.local.report import audit as audit_run

    if processes is None:
        processes = min(spec.workers(), MAX_PROCESSES)
    if "run_id" not in execution_input and "resume" not in execution_input:
        named, execution_name, _ = runs.new_run_input(spec.name, None)
        execution_input = {**execution_input, **named}  # a backfill's window stays
    run_id = execution_input.get("resume") or execution_input["run_id"]
    # the handlers' log lines (JSON) would cut through the progress display: failure causes are in the ledger,
    # and the failures table at the end shows them
    with LocalEngine(state, batch_seconds=batch_seconds, processes=processes, iam=iam, log_level="CRITICAL",
                     command=f"harvest {' '.join(sys.argv[1:3])}".strip()) as engine:
        if spec_path is not None:
            engine.add_source(spec_path, spec)
        else:  # resume with the spec the run was planned with
            (engine._sources_dir / f"{spec.name}.yaml").write_text(json.dumps(spec.model_dump(mode="json")))
        backend = engine_backend(engine, state)
        t0 = time.monotonic()
        arn = backend.start(execution_input, execution_name)
        runs.run_started_line(run_id, spec.name, backend.where, arn)
        try:
            with _signals_stop():
                desc = runs.follow(backend, spec.name, run_id, arn, spec, timeout=timeout)
        except (KeyboardInterrupt, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            why = "--timeout ran out" if timed_out else "interrupted"
            backend.stop(arn, "Local.Timeout" if timed_out else "Local.Interrupted", why)
            print(f"\n{why}: the run is stopped, its state is in {state}; continue with "
                  f"`harvest resume {run_id} --local --state {state}`", file=sys.stderr)
            raise
        seconds = time.monotonic() - t0
        run = engine.ledger.get_run(spec.name, run_id)
        if engine.state.failure is None:
            duplicates = audit_run(state / "bucket", spec, run_id) if (audit and run) else None
            runs.report_end(backend, run, desc, spec, seconds, as_json=as_json, duplicates=duplicates,
                            output=str(state / "bucket" / storage.raw_prefix(spec.name, run_id)))
    if engine.state.failure is not None:  # e.g. disk full: what the folder holds is not this run
        raise engine.state.failure
    return run, desc, seconds
