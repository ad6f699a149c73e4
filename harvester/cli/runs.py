"""The run commands, one implementation for both modes (a `Backend` is the local engine or the deployed stack):
start or resume a run and follow it, show runs, one run's status, its failed calls."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from harvester import storage
from harvester.cli import view
from harvester.cli.backend import Backend
from harvester.cli.codes import EXIT_OK, BadInput, exit_code, shown_status
from harvester.spec import SourceSpec, parse_spec


def new_run_input(source: str, run_id: str | None) -> tuple[dict[str, Any], str, str]:
    """(execution input, execution name, run id): the CLI names the run before it starts, so the id it prints at
    the start is the run id (the workflow's default, harvester/run.py `default_run_id`, from the same parts)."""
    from harvester.run import default_run_id

    name = uuid.uuid4().hex
    run_id = run_id or default_run_id(datetime.now(UTC).isoformat(), name)
    return {"source": source, "run_id": run_id}, name, run_id


def stored_spec(backend: Backend, source: str, run_id: str) -> SourceSpec | None:
    """The spec a run was planned with (runs/{source}/{run_id}/spec.json in the bucket), or None."""
    key = storage.spec_key(source, run_id)
    try:
        body = backend.s3.get_object(Bucket=backend.bucket, Key=key)["Body"].read()
    except Exception:  # noqa: BLE001 - a run refused before planning has none; progress works without it
        return None
    return parse_spec(json.loads(body), key)


def snapshot(backend: Backend, source: str, run_id: str):
    def take() -> tuple[dict, list[dict]]:
        run = backend.ledger.get_run(source, run_id) or {"run_id": run_id, "source": source, "status": "STARTING"}
        return run, backend.ledger.batches(source, run_id)

    return take


def follow(backend: Backend, source: str, run_id: str, arn: str | None, spec: SourceSpec | None, *, timeout: float,
           started: float | None = None, take=None, ended=None) -> dict[str, Any]:
    """Wait for a run to end, showing its progress live; returns the execution's description (or, with `ended`,
    what it returns: a description-like dict once the run is over, None while it runs). TimeoutError when
    `timeout` runs out (the caller decides whether that stops it: locally yes, on AWS the run goes on)."""
    take = take or snapshot(backend, source, run_id)
    ended = ended or (lambda: (lambda d: None if d["status"] == "RUNNING" else d)(backend.describe(arn)))
    deadline = time.monotonic() + timeout
    live = view.LiveProgress(take, [], None, started=started)
    with live:
        while True:
            if spec is None:  # on AWS the plan step stores it a moment after the start
                spec = stored_spec(backend, source, run_id)
            if spec is not None:
                live.level_names = [lv.name for lv in spec.levels]
                live.rate_limit = spec.rate_limit.requests_per_second if spec.rate_limit else None
            desc = ended()
            if desc is not None:
                return desc
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run did not end within {timeout:g} s")
            live.update()
            time.sleep(backend.poll)


def summary(run: dict[str, Any], spec: SourceSpec | None, seconds: float | None, *, duplicates=None):
    """The closing table of a run: per level parents, calls, records, 429s, failed calls, failed batches."""
    names = [lv.name for lv in spec.levels] if spec else list(run.get("levels", {}))
    cols = ["level", "parents", "calls", "records", "429s", "failed calls", "failed batches"]
    cols += ["duplicates"] if duplicates else []
    rows = []
    for name in names:
        c = run.get("levels", {}).get(name)
        row = [name, *(("-",) * 6)] if not c else [name, c.get("parents"), c.get("calls"), c.get("records"),
                                                   c.get("throttled"), c.get("failures"), c.get("failed_batches")]
        rows.append(row + ([duplicates.get(name, {}).get("duplicates", "-")] if duplicates else []))
    t = run.get("totals", {})
    rows.append(["total", "", t.get("calls", 0), t.get("records", 0), t.get("throttled", 0), t.get("failures", 0),
                 t.get("failed_batches", 0)] + ([""] if duplicates else []))
    took = f" in {seconds:,.1f} s" if seconds is not None else ""
    title = f"run {run['run_id']} of {run['source']}: {view.status_text(run)}{took} (attempt {run.get('attempt', 1)})"
    return view.table(title, cols, rows, numeric=set(cols[1:]))


def report_end(backend: Backend, run: dict[str, Any] | None, desc: dict[str, Any], spec: SourceSpec | None,
               seconds: float | None, *, as_json: bool, duplicates=None, output: str | None = None,
               sink: Callable[[dict[str, Any]], Any] | None = None) -> int:
    """Print how a run ended (table or JSON) and return its exit code. With `sink`, the JSON document goes to it
    and nothing is printed (a command that prints one document of its own: `harvest demo --json`)."""
    code = exit_code(desc)
    names = [lv.name for lv in spec.levels] if spec else []
    failures = []
    if run is not None and code != EXIT_OK:
        failures = view.failure_rows(backend.ledger.failures(run["source"], run["run_id"]),
                                     backend.ledger.batches(run["source"], run["run_id"]), names)
    from harvester.cli.costs import cost_table, run_cost

    spent = run_cost(backend, run, region=backend.region) if run is not None else None
    if as_json or sink is not None:
        doc = {"run": run, "status": shown_status(run) if run else desc["status"], "exit_code": code, "cost": spent,
               "execution": {k: desc.get(k) for k in ("executionArn", "status", "error", "cause")},
               "failures": failures, "seconds": seconds, "duplicates": duplicates, "output": output}
        (sink or view.emit_json)(doc)
        return code
    out = view.console()
    if run is None:
        out.print("no run item in the ledger (the run was refused before it started)")
    else:
        out.print(summary(run, spec, seconds, duplicates=duplicates))
        if run.get("reopened_batches"):
            out.print(f"{run['reopened_batches']} finished batches had raw objects missing: fetched again")
        if output:
            out.print(f"output: {output}")
        if spent:
            out.print(cost_table(spent, f"cost of run {run['run_id']}"))
    if failures:
        out.print(view.failures_table(failures[:50], f"failed calls and batches ({len(failures)})"))
    if code != EXIT_OK:
        err = view.console(stderr=True)
        cause = desc.get("cause", "")
        try:  # a Lambda error's cause is JSON: its message is what people need
            cause = json.loads(cause).get("errorMessage", cause)
        except (ValueError, AttributeError):
            pass
        err.print(f"execution {desc['status']}: {desc.get('error', '')}: {cause}"[:2000], markup=False)
        if run is not None:
            err.print(f"to fetch what is missing: harvest resume {run['run_id']} {backend.resume_flags}".rstrip(),
                      markup=False)
    return code


# --- commands that only read ---------------------------------------------------------------------------------
def show_runs(backend: Backend, source: str | None, limit: int, as_json: bool) -> int:
    if source is None:
        sources = backend.ledger.sources()
        if as_json:
            view.emit_json({"sources": sources})
        else:
            view.console().print(view.table(f"sources with runs in {backend.where}", ["source"], [[s] for s in sources]))
        return EXIT_OK
    from harvester.cli.costs import run_cost

    runs = backend.ledger.list_runs(source, limit=limit)
    costs = {r["run_id"]: run_cost(backend, r, region=backend.region) for r in runs}
    if as_json:
        view.emit_json({"source": source, "runs": [{**r, "shown_status": shown_status(r)} for r in runs]})
        return EXIT_OK
    rows = [[r["run_id"], view.status_text(r), r.get("attempt", 1), r.get("totals", {}).get("calls", 0),
             r.get("totals", {}).get("records", 0), r.get("totals", {}).get("failures", 0), (r.get("started_at") or "")[:19],
             (r.get("finished_at") or "")[:19],
             f"${costs[r['run_id']]['total_usd']:.4f}" if costs.get(r["run_id"]) else ""] for r in runs]
    cols = ["run", "status", "attempt", "calls", "records", "failed calls", "started", "finished", "cost"]
    view.console().print(view.table(f"runs of {source} in {backend.where} (newest first)", cols, rows,
                                    numeric={"attempt", "calls", "records", "failed calls", "cost"}))
    return EXIT_OK


def show_status(backend: Backend, run_id: str, source: str | None, as_json: bool) -> int:
    run = backend.run_item(run_id, source)
    spec = stored_spec(backend, run["source"], run_id)
    batches = backend.ledger.batches(run["source"], run_id)
    levels = view.level_progress(run, batches, [lv.name for lv in spec.levels] if spec else [])
    if as_json:
        view.emit_json({"run": run, "status": shown_status(run), "levels": [vars(p) for p in levels]})
    else:
        elapsed = _elapsed(run)
        limit = spec.rate_limit.requests_per_second if spec and spec.rate_limit else None
        view.console().print(view.progress_table(run, levels, elapsed, limit))
        if run.get("error"):
            view.console().print(f"error: {run.get('error')}: {run.get('cause', '')}"[:2000], markup=False)
    return EXIT_OK if run.get("status") in ("SUCCEEDED", "RUNNING") else exit_code(run)


def show_failures(backend: Backend, run_id: str, source: str | None, as_json: bool) -> int:
    run = backend.run_item(run_id, source)
    spec = stored_spec(backend, run["source"], run_id)
    rows = view.failure_rows(backend.ledger.failures(run["source"], run_id), backend.ledger.batches(run["source"], run_id),
                             [lv.name for lv in spec.levels] if spec else [])
    if as_json:
        view.emit_json({"run_id": run_id, "source": run["source"], "failures": rows})
    elif rows:
        view.console().print(view.failures_table(rows, f"failures of run {run_id} of {run['source']} ({len(rows)})"))
    else:
        view.console().print(f"run {run_id} of {run['source']} has no failed calls or batches")
    return EXIT_OK


def _elapsed(run: dict[str, Any]) -> float:
    def at(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    start = at(run.get("resumed_at") or run.get("started_at"))
    end = at(run.get("finished_at")) or datetime.now(UTC)
    return max((end - start).total_seconds(), 0.0) if start else 0.0


def run_started_line(run_id: str, source: str, where: str, arn: str) -> None:
    print(f"run {run_id} of {source} started on {where} (execution {arn.rsplit(':', 1)[-1]})", file=sys.stderr,
          flush=True)


def check_source(backend: Backend, source: str) -> None:
    deployed = backend.outputs.get("Sources")
    if deployed and source not in deployed.split(","):
        raise BadInput(f"source {source!r} is not deployed on {backend.where} (deployed: {deployed}); add its spec "
                       "under sources/ and deploy")
