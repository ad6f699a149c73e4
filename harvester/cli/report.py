"""`harvest report RUN_ID`: one self-contained HTML file (inline SVG charts, no network) and a PNG of each chart,
built from the ledger alone, so a local run and an AWS run get the same report (only the Backend's clients differ).

What it reads: the run item (counts per level, cost), the batch items (each one's per-second sends, 429s and
retries and its invocations' spans: harvester/timeline.py), the failure items, the run before it (records per
level) and the spec the run was planned with (the rate limit). The page itself: harvester/cli/report_page.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester import timeline
from harvester.cli import view
from harvester.cli.backend import Backend
from harvester.cli.codes import EXIT_OK, shown_status
from harvester.cli.runs import stored_spec

#: a run's series are drawn at one point per second up to this many points, then per 2, 4, ... seconds
MAX_POINTS = 20_000


def _series(batches: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The fleet's sends, 429s and retries per second over the run, and each level's sends per second."""
    fleet: dict[str, dict[int, float]] = {s: {} for s in timeline.SERIES}
    by_level: dict[str, dict[int, float]] = {n: {} for n in names}
    edges: list[int] = []
    for b in batches:
        tl = b.get("timeline")
        if not tl:
            continue
        edges += [t for span in tl.get("spans", []) for t in span]
        name = names[view.level_of(b)] if view.level_of(b) < len(names) else str(view.level_of(b))
        for s in timeline.SERIES:
            for sec, v in timeline.per_second(tl, s).items():
                fleet[s][sec] = fleet[s].get(sec, 0.0) + v
                edges.append(sec)
                if s == "sent":
                    mine = by_level.setdefault(name, {})
                    mine[sec] = mine.get(sec, 0.0) + v
    if not edges:
        return {"t0": None, "step": 1, **{s: [] for s in timeline.SERIES}, "levels": {n: [] for n in by_level}}
    t0, end = min(edges), max(edges)
    step = 1
    while (end - t0) // step + 1 > MAX_POINTS:
        step *= 2
    size = (end - t0) // step + 1

    def dense(counts: dict[int, float]) -> list[float]:
        out = [0.0] * size
        for sec, v in counts.items():
            out[(sec - t0) // step] += v / step  # per second, also in a coarse bucket
        return [round(v, 3) for v in out]

    return {"t0": t0, "step": step, **{s: dense(fleet[s]) for s in timeline.SERIES},
            "levels": {n: dense(c) for n, c in by_level.items()}}


def _batch_rows(batches: list[dict[str, Any]], names: list[str], t0: int | None) -> list[dict[str, Any]]:
    rows = []
    for b in batches:
        i = view.level_of(b)
        spans = (b.get("timeline") or {}).get("spans") or []
        rows.append({"level": names[i] if i < len(names) else str(i), "level_index": i, "batch_id": b.get("batch_id"),
                     "status": b.get("status"), "calls": int(b.get("calls", 0) or 0),
                     "records": int(b.get("records", 0) or 0), "throttled": int(b.get("throttled", 0) or 0),
                     "invocations": int(b.get("invocations", 0) or 0), "seconds": b.get("seconds"),
                     "spans": [[s - t0, e - t0 + 1] for s, e in spans] if t0 is not None else []})
    return sorted(rows, key=lambda r: (r["level_index"], r["spans"][0][0] if r["spans"] else 0))


def _previous(backend: Backend, run: dict[str, Any]) -> dict[str, Any] | None:
    """The source's run that started last before this one."""
    started = run.get("started_at") or ""
    earlier = [r for r in backend.ledger.list_runs(run["source"], limit=100)
               if r["run_id"] != run["run_id"] and (r.get("started_at") or "") < started]
    return max(earlier, key=lambda r: r.get("started_at") or "", default=None)


def _rate_figures(series: dict[str, Any], limit: float | None, burst: int) -> dict[str, Any]:
    sent = series["sent"]
    active = [i for i, v in enumerate(sent) if v > 0]
    seconds = (active[-1] - active[0] + 1) * series["step"] if active else 0
    total = sum(sent) * series["step"]
    out = {"requests": round(total), "active_seconds": seconds, "peak_per_second": max(sent, default=0.0),
           "mean_per_second": round(total / seconds, 2) if seconds else 0.0,
           "throttled": round(sum(series["throttled"]) * series["step"]),
           "retries": round(sum(series["retries"]) * series["step"])}
    if limit:
        out |= {"limit": limit, "burst": burst, "utilisation": round(total / (limit * seconds), 3) if seconds else 0.0,
                "seconds_over_limit": sum(1 for v in sent if v > limit + burst) * series["step"]}
    return out


def report_data(backend: Backend, run_id: str, source: str | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (`harvest report --json` prints it)."""
    from harvester.cli.costs import run_cost

    run = backend.run_item(run_id, source)
    src = run["source"]
    spec = stored_spec(backend, src, run_id)
    names = [lv.name for lv in spec.levels] if spec else list(run.get("levels", {}))
    batches = backend.ledger.batches(src, run_id)
    series = _series(batches, names)
    limit = spec.rate_limit.requests_per_second if spec and spec.rate_limit else None
    burst = spec.rate_limit.burst if spec and spec.rate_limit else 0
    prev = _previous(backend, run)
    levels = view.level_progress(run, batches, names)
    return {
        "run_id": run_id, "source": src, "status": shown_status(run), "attempt": run.get("attempt", 1),
        "started_at": run.get("started_at"), "finished_at": run.get("finished_at"), "where": backend.where,
        "t0_utc": datetime.fromtimestamp(series["t0"], UTC).isoformat() if series["t0"] else None,
        "rate": _rate_figures(series, limit, burst), "series": series,
        "levels": [vars(p) for p in levels],
        "batches": _batch_rows(batches, names, series["t0"]),
        "failures": view.failure_rows(backend.ledger.failures(src, run_id), batches, names),
        "previous": None if prev is None else {
            "run_id": prev["run_id"], "status": shown_status(prev), "started_at": prev.get("started_at")},
        "records": [{"level": n, "this": (run.get("levels", {}).get(n) or {}).get("records"),
                     "previous": None if prev is None else (prev.get("levels", {}).get(n) or {}).get("records")}
                    for n in names],
        "cost": run_cost(backend, run, region=backend.region),
    }


def default_out(run_id: str) -> Path:
    return Path(f"harvest-report-{run_id}")


def show_report(backend: Backend, run_id: str, source: str | None, out: Path | None, as_json: bool) -> int:
    from harvester.cli.report_page import write_report

    data = report_data(backend, run_id, source)
    files = write_report(data, out or default_out(run_id))
    if as_json:
        view.emit_json({**data, "files": {k: str(v) for k, v in files.items()}})
        return EXIT_OK
    rate = data["rate"]
    limit = f" against a limit of {rate['limit']:g}/s (utilisation {rate['utilisation']:.2f})" if rate.get("limit") else ""
    print(f"report of run {run_id} of {data['source']} ({data['status']}): {files['html']}")
    print(f"  {rate['requests']:,} requests over {rate['active_seconds']:,} s, busiest second "
          f"{rate['peak_per_second']:g}{limit}; {rate['throttled']} 429s, {rate['retries']} retries")
    print(f"  charts: {', '.join(str(p) for k, p in files.items() if k != 'html')}")
    return EXIT_OK
