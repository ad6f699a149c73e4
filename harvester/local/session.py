"""A local session: the workflow on the local engine (moto) over a state folder, as one public API for the CLI
(harvester/cli/local.py), the demo and scripts: open the engine with the run's spec, start an execution on its
`live` alias, stop it with its worker fleet, read the run item, audit the records. It prints nothing: following a
run and showing it are the CLI's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from harvester import sizing, storage
from harvester.spec import SourceSpec, SpecError, parse_spec

#: the most worker processes per function a local run starts by default (each is a Python process of ~70 MB)
MAX_PROCESSES = 8


def default_processes(spec: SourceSpec) -> int:
    """The workers a level of the spec runs at once (``SourceSpec.workers()``), at most MAX_PROCESSES, so a level's
    Map never waits for a free worker."""
    return min(sizing.workers(spec), MAX_PROCESSES)


def stored_spec(state: Path, run_id: str) -> SourceSpec:
    """The spec an earlier local run used, from the state folder."""
    matches = sorted((state / "bucket" / "runs").glob(f"*/{run_id}/spec.json"))
    if not matches:
        raise SpecError(f"no run {run_id!r} in {state} (looked for bucket/runs/*/{run_id}/spec.json)")
    return parse_spec(json.loads(matches[0].read_text()), str(matches[0]))


class LocalSession:
    """The local engine over `state` with `spec` deployed as a source (from `spec_path`, or, for a resume, the
    parsed spec the run was planned with). A context manager: the engine, its lock on the folder and its worker
    processes live as long as the `with` block.

    ``processes``: worker processes per function, each held to its function's limits (default
    `default_processes`; 0: every handler in this process). ``iam``: authorize every AWS call as the role that
    makes it on AWS (False: only to measure what that costs)."""

    def __init__(self, state: Path, spec: SourceSpec, spec_path: Path | None = None, *, processes: int | None = None,
                 iam: bool = True, batch_seconds: float | None = None, log_level: str = "CRITICAL",
                 command: str = "harvest"):
        self.state = Path(state)
        self.spec = spec
        self.spec_path = spec_path
        self.processes = default_processes(spec) if processes is None else processes
        self._options = {"batch_seconds": batch_seconds, "iam": iam, "log_level": log_level, "command": command}
        self.engine: Any = None

    def __enter__(self) -> LocalSession:
        from harvester.local.engine import LocalEngine

        self.engine = LocalEngine(self.state, processes=self.processes, **self._options).__enter__()
        try:
            if self.spec_path is not None:
                self.engine.add_source(self.spec_path, self.spec)
            else:
                self.engine.add_spec(self.spec)
        except BaseException as exc:
            self.engine.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, *exc_info) -> bool | None:
        return self.engine.__exit__(*exc_info)

    def start(self, execution_input: dict[str, Any], execution_name: str | None = None) -> str:
        """Start an execution of the harvest workflow on its `live` alias; returns its ARN."""
        return self.engine.sfn.start_execution(stateMachineArn=self.engine.alias_arn,
                                               name=execution_name or uuid.uuid4().hex,
                                               input=json.dumps(execution_input))["executionArn"]

    def stop(self, execution_arn: str, *, timed_out: bool) -> None:
        """Stop the execution and its worker fleet (--timeout ran out, or Ctrl-C/SIGTERM)."""
        error, why = ("Local.Timeout", "--timeout ran out") if timed_out else ("Local.Interrupted", "interrupted")
        self.engine.stop(execution_arn, error=error, cause=why)

    def run_item(self, run_id: str) -> dict[str, Any] | None:
        return self.engine.ledger.get_run(self.spec.name, run_id)

    def audit(self, run_id: str) -> dict[str, Any]:
        """Records, unique records and duplicates per level of the run's raw output in the state folder."""
        from harvester.local.report import audit

        return audit(self.state / "bucket", self.spec, run_id)

    def output(self, run_id: str) -> Path:
        """Where the run's raw records are in the state folder."""
        return self.state / "bucket" / storage.raw_prefix(self.spec.name, run_id)

    @property
    def failure(self) -> BaseException | None:
        """Why the state folder could not keep up (e.g. disk full): then what it holds is not this run."""
        return self.engine.state.failure
