"""Each record once in the lake: runs overlap (a window's lookback, a re-run, a backfill over harvested days), and
compaction keeps one copy of every record in a partition, the most recently fetched.

A record's identity: its lineage (the keys of its ancestors: a key may be unique only per parent) plus its level's
primary key (`_key`); a level without a key: lineage plus its time field; without either: its content.

When a run commits a partition (`compact.compact_partition`), `plan` reads the partition's files of other runs: a
record both have is dropped from the copy fetched earlier (a tie goes to the committing run). The committing run
writes its files, then `apply` rewrites the other runs' files without the dropped rows (same keys, index items
replaced; a file left empty is removed). A retry finds nothing more to drop in the other files: idempotent.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvester import s3keys

from .schema import KEY
from .store import ObjectStore

FETCHED = "_fetched_at"
_SEP = "\x1f"


def record_ids(table: pa.Table, time_col: str | None) -> list[str]:
    """Each row's identity as text (see the module docstring)."""
    names = table.column_names
    parts = sorted(c for c in names if c.startswith("_lineage__"))
    if KEY in names and table[KEY].null_count < table.num_rows:
        parts.append(KEY)
    elif time_col and time_col in names:
        parts.append(time_col)
    else:
        content = table.select([c for c in names if not c.startswith("_")]).to_pylist()
        digests = [hashlib.sha1(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest() for r in content]
        return [_SEP.join(x) for x in zip(*([_text(table[c]) for c in parts] + [digests]))]
    if not parts:
        return [str(i) for i in range(table.num_rows)]
    return [_SEP.join(x) for x in zip(*(_text(table[c]) for c in parts))]


def _text(col: pa.ChunkedArray) -> list[str]:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())  # the same instant whatever the unit's text form
    return pc.fill_null(pc.cast(col, pa.string()), "\x00").to_pylist()


def fetched(table: pa.Table) -> list[int]:
    """`_fetched_at` as integers (microseconds); rows without one count as the oldest."""
    if FETCHED not in table.column_names:
        return [0] * table.num_rows
    col = table[FETCHED]
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
    else:
        col = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
    return [0 if v is None else v for v in col.to_pylist()]


def latest_rows(table: pa.Table, time_col: str | None) -> tuple[pa.Table, dict[str, int]]:
    """A run's own rows, each record once (the latest fetched; then the last written), and {identity: fetched}."""
    ids, when = record_ids(table, time_col), fetched(table)
    last: dict[str, int] = {}
    for i, rid in enumerate(ids):
        j = last.get(rid)
        if j is None or when[i] >= when[j]:
            last[rid] = i
    if len(last) < table.num_rows:
        table = table.take(pa.array(sorted(last.values()), pa.int64()))
    return table, {rid: when[i] for rid, i in last.items()}


@dataclass
class Plan:
    """What one commit drops: rows of other runs' files (by file) and records of its own that lost."""

    own_dropped: set[str] = field(default_factory=set)
    others: dict[str, tuple[pa.Table, int]] = field(default_factory=dict)  # key -> (rows kept, rows dropped)

    @property
    def dropped_from_others(self) -> dict[str, int]:
        return {k: n for k, (_, n) in self.others.items()}


def own_file(key: str, run_id: str) -> bool:
    return re.fullmatch(re.escape(run_id) + r"-\d{4}\.parquet", key.rsplit("/", 1)[-1]) is not None


def plan(store: ObjectStore, *, source: str, level: str, partition: str, run_id: str, own: dict[str, int],
         time_col: str | None) -> Plan:
    """Compare the committing run's records with the partition's files of other runs."""
    out = Plan()
    if not own:
        return out
    others = [k for k, _ in store.list(s3keys.processed_prefix(source, level, partition)) if not own_file(k, run_id)]
    for key in sorted(others):
        table = pq.read_table(pa.BufferReader(store.get(key)))
        ids, when = record_ids(table, time_col), fetched(table)
        keep = []
        for i, rid in enumerate(ids):
            mine = own.get(rid)
            if mine is None:
                keep.append(True)
            elif when[i] > mine:  # the other copy is newer: it stays, the committing run's copy goes
                out.own_dropped.add(rid)
                keep.append(True)
            else:
                keep.append(False)
        dropped = keep.count(False)
        if dropped:
            out.others[key] = (table.filter(pa.array(keep)), dropped)
    return out


def drop_own(table: pa.Table, time_col: str | None, lost: set[str]) -> pa.Table:
    if not lost:
        return table
    return table.filter(pa.array([rid not in lost for rid in record_ids(table, time_col)]))
