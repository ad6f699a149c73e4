"""Local runs in the CLI: the workflow on the local engine through harvester/local/session.py, followed live, stopped
on Ctrl-C/SIGTERM/--timeout with a resume hint, reported at the end; the rest is harvester/cli/runs.py."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harvester.cli import runs
from harvester.cli.backend import engine_backend
from harvester.local.session import MAX_PROCESSES, LocalSession
from harvester.local.session import stored_spec as stored_spec_file
from harvester.spec import SourceSpec

__all__ = ["MAX_PROCESSES", "Stopped", "execute", "stored_spec_file"]


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
    on_end: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any], float]:
    """Run one execution of the workflow locally and follow it; returns (run item, execution description,
    seconds). ``processes`` and ``iam``: see LocalSession. ``on_end`` takes the run's closing JSON document instead
    of it being printed (runs.report_end)."""
    if "run_id" not in execution_input and "resume" not in execution_input:
        named, execution_name, _ = runs.new_run_input(spec.name, None)
        execution_input = {**execution_input, **named}  # a backfill's window stays
    run_id = execution_input.get("resume") or execution_input["run_id"]
    # the handlers' log lines (JSON) would cut through the progress display: failure causes are in the ledger,
    # and the failures table at the end shows them
    session = LocalSession(state, spec, spec_path, processes=processes, iam=iam, batch_seconds=batch_seconds,
                           command=f"harvest {' '.join(sys.argv[1:3])}".strip())
    with session:
        backend = engine_backend(session.engine, state)
        t0 = time.monotonic()
        arn = session.start(execution_input, execution_name)
        runs.run_started_line(run_id, spec.name, backend.where, arn)
        try:
            with _signals_stop():
                desc = runs.follow(backend, spec.name, run_id, arn, spec, timeout=timeout)
        except (KeyboardInterrupt, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            session.stop(arn, timed_out=timed_out)
            print(f"\n{'--timeout ran out' if timed_out else 'interrupted'}: the run is stopped, its state is in "
                  f"{state}; continue with `harvest resume {run_id} --local --state {state}`", file=sys.stderr)
            raise
        seconds = time.monotonic() - t0
        run = session.run_item(run_id)
        if session.failure is None:
            duplicates = session.audit(run_id) if (audit and run) else None
            runs.report_end(backend, run, desc, spec, seconds, as_json=as_json, duplicates=duplicates,
                            output=str(session.output(run_id)), sink=on_end)
    if session.failure is not None:  # e.g. disk full: what the folder holds is not this run
        raise session.failure
    return run, desc, seconds
