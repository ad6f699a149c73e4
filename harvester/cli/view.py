"""What people and scripts see: tables (rich) for people, `--json` for scripts, and the live progress of a run
(a local run, or `harvest status RUN_ID --follow`), all computed from the ledger, so both modes show the same."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harvester.cli.codes import shown_status

STATUS_STYLE = {"SUCCEEDED": "green", "RUNNING": "cyan", "INCOMPLETE": "yellow", "FAILED": "red"}


def console(stderr: bool = False):
    """A rich console; not on a terminal (a pipe, a log file) tables are not squeezed into 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=None if stream.isatty() else 240)


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=1, sort_keys=True, default=str), flush=True)


def table(title: str | None, columns: list[str], rows: list[list[Any]], numeric: set[str] = frozenset()):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(show_edge=False, header_style="bold")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if c in numeric else "left", overflow="fold", no_wrap=i == 0 or c in numeric)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return Group(Text.from_markup(title), t) if title else t


def status_text(run: dict[str, Any]) -> str:
    s = shown_status(run)
    return f"[{STATUS_STYLE.get(s, 'white')}]{s}[/]"


# --- progress of one run, from its batch items ---------------------------------------------------------------
@dataclass
class LevelProgress:
    name: str
    batches: int = 0
    running: int = 0
    failed_batches: int = 0
    calls: int = 0
    records: int = 0
    throttled: int = 0
    failures: int = 0  # failed calls


def level_of(item: dict[str, Any]) -> int:
    """A batch or failure item's level; an item "Record batch failure" wrote for a batch that crashed first has
    no `level`: it is in the sk (BATCH#03#...)."""
    if item.get("level") is not None:
        return int(item["level"])
    return int(str(item.get("sk", "BATCH#00#")).split("#")[1])


def level_progress(run: dict[str, Any], batches: list[dict[str, Any]], level_names: list[str]) -> list[LevelProgress]:
    """Per level: batches ended and running, calls, records, 429s, failed calls and failed batches (both counted
    as what they are: the failed-calls column counts calls, as the calls column does)."""
    names = list(level_names) or list(run.get("levels", {}))
    out = [LevelProgress(n) for n in names]
    for b in batches:
        i = level_of(b)
        while i >= len(out):
            out.append(LevelProgress(f"level {len(out)}"))
        p = out[i]
        running = b.get("status") == "RUNNING"
        p.running += running
        p.batches += not running
        p.failed_batches += b.get("status") == "FAILED"
        for k in ("calls", "records", "throttled", "failures"):
            setattr(p, k, getattr(p, k) + int(b.get(k, 0) or 0))
    return out


def progress_table(run: dict[str, Any], levels: list[LevelProgress], elapsed: float, rate_limit: float | None):
    calls = sum(p.calls for p in levels)
    rate = calls / elapsed if elapsed > 0 else 0.0
    limit = f" (limit {rate_limit:g}/s)" if rate_limit else ""
    title = (f"run {run.get('run_id')} of {run.get('source')}: {status_text(run)}  {elapsed:,.0f} s  "
             f"{calls:,} calls, {rate:,.1f}/s{limit}")
    rows = [[p.name, p.batches, p.running or "", p.calls, p.records, p.throttled, p.failures, p.failed_batches]
            for p in levels]
    cols = ["level", "batches", "running", "calls", "records", "429s", "failed calls", "failed batches"]
    return table(title, cols, rows, numeric=set(cols[1:]))


class LiveProgress:
    """A live table on stderr, redrawn from the ledger every `every` seconds; a plain line per redraw when stderr is
    not a terminal (logs, CI), so nothing is lost there."""

    def __init__(self, snapshot: Callable[[], tuple[dict, list[dict]] | None], level_names: list[str],
                 rate_limit: float | None, started: float | None = None, every: float = 2.0):
        self.snapshot, self.level_names, self.rate_limit, self.every = snapshot, level_names, rate_limit, every
        self.started = started or time.time()
        self._last = 0.0
        self._live = None
        self.tty = sys.stderr.isatty()

    def __enter__(self):
        if self.tty:
            from rich.live import Live

            self._live = Live(console=console(stderr=True), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self.update(force=True)
            self._live.__exit__(*exc)

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        snap = self.snapshot()
        if snap is None:
            return
        run, batches = snap
        levels = level_progress(run, batches, self.level_names)
        elapsed = time.time() - self.started
        if self._live is not None:
            self._live.update(progress_table(run, levels, elapsed, self.rate_limit))
            return
        calls = sum(p.calls for p in levels)
        parts = ", ".join(f"{p.name} {p.records} rec/{p.batches} batches" + (f" (+{p.running} running)" if p.running else "")
                          for p in levels if p.batches or p.running)
        print(f"[{elapsed:6.1f}s] calls {calls:6d} ({calls / max(elapsed, 1e-9):5.1f}/s)  "
              f"429s {sum(p.throttled for p in levels)}  failed calls {sum(p.failures for p in levels)}  "
              f"failed batches {sum(p.failed_batches for p in levels)}  |  {parts}", file=sys.stderr, flush=True)


# --- failures ------------------------------------------------------------------------------------------------
def failure_rows(failures: list[dict[str, Any]], batches: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The failed calls (URL, HTTP status, reason), then the failed batches that have no failed call of their own
    (a crash, a timeout: their error is the cause)."""
    def level(item):
        i = level_of(item)
        return names[i] if i < len(names) else str(i)

    rows = [{"level": level(f), "batch": f.get("batch_id"), "status": f.get("status"), "url": f.get("url"),
             "reason": f.get("reason"), "excerpt": (f.get("excerpt") or "")[:200]} for f in failures]
    with_calls = {(f.get("level"), f.get("batch_id")) for f in failures}
    for b in batches:
        if b.get("status") == "FAILED" and (b.get("level"), b.get("batch_id")) not in with_calls:
            rows.append({"level": level(b), "batch": b.get("batch_id"), "status": None, "url": None,
                         "reason": f"{b.get('error', 'batch failed')}: {b.get('cause', '')}"[:500], "excerpt": ""})
    return rows


def failures_table(rows: list[dict[str, Any]], title: str | None = None):
    return table(title, ["level", "batch", "status", "url", "reason"],
                 [[r["level"], r["batch"], r["status"], r["url"], r["reason"]] for r in rows])
