"""What a local run produced: counts per level, duplicates, progress lines and the closing summary."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harvester import storage
from harvester.ledger import Ledger
from harvester.spec import SourceSpec

META = ("_source", "_run_id", "_level", "_lineage", "_fetched_at")


def raw_records(bucket_dir: Path, source: str, run_id: str, level_name: str) -> Iterator[dict[str, Any]]:
    folder = bucket_dir / storage.raw_prefix(source, run_id, level_name)
    for path in sorted(folder.glob("*.jsonl.gz")):
        yield from storage.decode_ndjson_gz(path.read_bytes())


def record_key(record: dict[str, Any], primary_key: list[str] | None) -> str:
    """A record's identity: its lineage plus its primary key (or, without one, its whole content)."""
    lineage = json.dumps(record.get("_lineage", {}), sort_keys=True)
    if primary_key:
        own = json.dumps([record.get(k) for k in primary_key])
    else:
        own = hashlib.sha1(json.dumps({k: v for k, v in record.items() if k not in META}, sort_keys=True).encode()).hexdigest()
    return f"{lineage}|{own}"


def audit(bucket_dir: Path, spec: SourceSpec, run_id: str) -> dict[str, dict[str, int]]:
    """Records and duplicate keys per level, read back from the raw output."""
    out = {}
    for level in spec.levels:
        keys = Counter(record_key(r, level.primary_key) for r in raw_records(bucket_dir, spec.name, run_id, level.name))
        out[level.name] = {"records": sum(keys.values()), "unique": len(keys), "duplicates": sum(keys.values()) - len(keys)}
    return out


class Progress:
    """Prints the run's progress from the ledger: batches done per level, calls, records, 429s."""

    def __init__(self, ledger: Ledger, spec: SourceSpec, stream=sys.stderr, every: float = 2.0):
        self.ledger, self.spec, self.stream, self.every = ledger, spec, stream, every
        self.run_id: str | None = None
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every or not self.run_id:
            return
        self._last = now
        batches = self.ledger.batches(self.spec.name, self.run_id)
        per_level: dict[int, list[dict]] = {}
        for b in batches:
            # an item "Record batch failure" wrote for a batch that crashed first has no `level`: it is in the sk
            per_level.setdefault(int(b.get("level", str(b.get("sk", "BATCH#-1#")).split("#")[1])), []).append(b)
        parts = []
        for i, level in enumerate(self.spec.levels):
            seen = per_level.get(i, [])  # ended batches, and running ones with their figures so far
            if seen:
                running = sum(1 for b in seen if b.get("status") == "RUNNING")
                parts.append(f"{level.name} {sum(b.get('records', 0) for b in seen)} rec/{len(seen) - running} batches"
                             + (f" (+{running} running)" if running else ""))
        calls = sum(b.get("calls", 0) for b in batches)
        throttled = sum(b.get("throttled", 0) for b in batches)
        failed = sum(1 for b in batches if b.get("status") == "FAILED")
        print(
            f"[{now - self.started:6.1f}s] calls {calls:6d} ({calls / max(now - self.started, 1e-9):5.1f}/s)"
            f"  429s {throttled}  failed batches {failed}  |  " + ", ".join(parts),
            file=self.stream,
            flush=True,
        )


def summary_lines(run: dict[str, Any] | None, spec: SourceSpec, seconds: float, output: Path, audit_result=None,
                  execution_error: str | None = None) -> list[str]:
    if run is None:
        return ["no run item in the ledger (the run was refused before it started)"]
    status = run.get("status")
    if status == "FAILED" and execution_error == "Harvest.Incomplete":
        status = "INCOMPLETE (failed batches: resume it)"  # the run item says FAILED; the workflow ended on purpose
    lines = [
        f"run {run['run_id']} of {run['source']}: {status} in {seconds:.1f} s (attempt {run.get('attempt', 1)})",
        f"{'level':<14}{'parents':>9}{'calls':>9}{'records':>10}{'429s':>7}{'failed':>8}" + ("  dup" if audit_result else ""),
    ]
    totals = run.get("totals", {})
    for level in spec.levels:
        c = run.get("levels", {}).get(level.name)
        if not c:
            lines.append(f"{level.name:<14}{'-':>9}")
            continue
        dup = f"  {audit_result[level.name]['duplicates']}" if audit_result else ""
        lines.append(
            f"{level.name:<14}{c['parents']:>9}{c['calls']:>9}{c['records']:>10}{c['throttled']:>7}{c['failed_batches']:>8}{dup}"
        )
    calls = totals.get("calls", 0)
    lines.append(
        f"total: {calls} calls ({calls / max(seconds, 1e-9):.1f}/s), {totals.get('records', 0)} records, "
        f"{totals.get('throttled', 0)} throttled (429), {totals.get('failures', 0)} failed calls"
    )
    if run.get("reopened_batches"):
        lines.append(f"{run['reopened_batches']} finished batches had raw objects missing: fetched again")
    lines.append(f"output: {output / storage.raw_prefix(run['source'], run['run_id'])}")
    if run.get("status") != "SUCCEEDED":
        lines.append(f"to fetch what is missing: harvest resume {run['run_id']} --local --state {output.parent}")
    return lines
