"""Time index of Parquet files in the ledger table (pk/sk strings, TTL attribute ``expires_at``).

Two kinds of item per committed file, same attributes on both:

| item | pk | sk |
| --- | --- | --- |
| file-day (one per UTC day the file's rows cover) | `FILES#{source}#{level}` | `{YYYY-MM-DD}#{key}` |
| file-run | `FILES#{source}#{level}#RUNS` | `{run_id}#{key}` |

Attributes: key, source, level, partition, run_id, time_column, min_time, max_time (fixed-width ISO UTC, or
absent when the file's rows have no time), rows, bytes, committed_at, expires_at (optional).

``lookup(start, end)`` queries the file-day items of the days [day(start), day(end)] (one Query, no S3
listing) and keeps the files with ``min_time < end and max_time >= start``; a file that starts before
``start`` is found through its item on a later day. The file-run items list a run's files (ancestor tables of
a query, stale files of a retried compaction).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from .timeutil import iso, parse_instant

_ser = TypeSerializer()
_de = TypeDeserializer()
_FIELDS = ("key", "source", "level", "partition", "run_id", "time_column", "min_time", "max_time", "rows", "bytes",
           "committed_at", "expires_at")


def _days(min_time: str, max_time: str) -> list[str]:
    a = parse_instant(min_time).date()
    b = parse_instant(max_time).date()
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


class FileIndex:
    def __init__(self, dynamodb, table_name: str):
        """``dynamodb``: a boto3 DynamoDB *client*."""
        self.ddb = dynamodb
        self.table = table_name

    # ------------------------------------------------------------ write

    @staticmethod
    def _pk(source: str, level: str) -> str:
        return f"FILES#{source}#{level}"

    def items_for(self, entry: dict) -> list[dict]:
        attrs = {k: entry[k] for k in _FIELDS if entry.get(k) is not None}
        attrs.setdefault("committed_at", iso(datetime.now().astimezone()))
        pk = self._pk(entry["source"], entry["level"])
        items = [{"pk": f"{pk}#RUNS", "sk": f"{entry['run_id']}#{entry['key']}", **attrs}]
        if entry.get("min_time") and entry.get("max_time"):
            items += [{"pk": pk, "sk": f"{d}#{entry['key']}", **attrs} for d in _days(entry["min_time"], entry["max_time"])]
        return items

    def put_files(self, entries: list[dict]) -> None:
        """Commit the index items of files (already in S3)."""
        self._batch([{"PutRequest": {"Item": self._ser(i)}} for e in entries for i in self.items_for(e)])

    def remove_files(self, entries: list[dict]) -> None:
        reqs = [{"DeleteRequest": {"Key": {"pk": {"S": i["pk"]}, "sk": {"S": i["sk"]}}}}
                for e in entries for i in self.items_for(e)]
        self._batch(reqs)

    def replace_file(self, old: list[dict], new: dict | None) -> None:
        """A rewritten file's index items: the new ones put first, then the old ones it no longer has deleted
        (never a moment without an item for a day the file still covers). `new` None: the file is gone."""
        fresh = self.items_for(new) if new else []
        keep = {(i["pk"], i["sk"]) for i in fresh}
        self._batch([{"PutRequest": {"Item": self._ser(i)}} for i in fresh])
        self._batch([{"DeleteRequest": {"Key": {"pk": {"S": i["pk"]}, "sk": {"S": i["sk"]}}}}
                     for e in old for i in self.items_for(e) if (i["pk"], i["sk"]) not in keep])

    def _batch(self, requests: list[dict]) -> None:
        for i in range(0, len(requests), 25):
            pending = {self.table: requests[i : i + 25]}
            for attempt in range(8):
                resp = self.ddb.batch_write_item(RequestItems=pending)
                pending = resp.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 2))
            else:
                raise RuntimeError("DynamoDB kept items unprocessed")

    @staticmethod
    def _ser(item: dict) -> dict:
        return {k: _ser.serialize(v) for k, v in item.items()}

    # ------------------------------------------------------------ read

    def _query(self, **kw) -> list[dict]:
        out, start = [], None
        while True:
            if start:
                kw["ExclusiveStartKey"] = start
            resp = self.ddb.query(TableName=self.table, **kw)
            out += [{k: _de.deserialize(v) for k, v in it.items()} for it in resp.get("Items", [])]
            start = resp.get("LastEvaluatedKey")
            if not start:
                return [_plain(i) for i in out]

    def lookup(self, source: str, level: str, start=None, end=None) -> list[dict]:
        """Files of ``level`` with rows in [start, end) (ISO text or datetime; None = unbounded), by key."""
        s = parse_instant(start)
        e = parse_instant(end)
        lo = f"{s.date().isoformat()}#" if s else "0"
        hi = f"{(e - timedelta(microseconds=1)).date().isoformat()}#\uffff" if e else "9\uffff"
        if lo > hi:
            return []
        items = self._query(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues={":pk": {"S": self._pk(source, level)}, ":lo": {"S": lo}, ":hi": {"S": hi}},
        )
        si, ei = iso(s), iso(e)
        files = {}
        for it in items:
            if si and it["max_time"] < si:
                continue
            if ei and it["min_time"] >= ei:
                continue
            files[it["key"]] = it
        return [files[k] for k in sorted(files)]

    def files_for_run(self, source: str, level: str, run_id: str | None = None) -> list[dict]:
        """Every file of ``level`` committed by ``run_id`` (every run when None), with or without event times."""
        cond = "pk = :pk" + (" AND begins_with(sk, :run)" if run_id else "")
        vals = {":pk": {"S": f"{self._pk(source, level)}#RUNS"}}
        if run_id:
            vals[":run"] = {"S": f"{run_id}#"}
        return self._query(KeyConditionExpression=cond, ExpressionAttributeValues=vals)


def _plain(item: dict) -> dict:
    out = {}
    for k, v in item.items():
        if k in ("pk", "sk"):
            continue
        if isinstance(v, Decimal):
            v = int(v) if v == v.to_integral_value() else float(v)
        out[k] = v
    return out
