"""One Map item: fetch every page for a batch of parents, write records and the next level's items.

Idempotent by construction: outputs go to deterministic keys (`{batch_id}-{part}`), a checkpoint lists the
parents already done, and the ledger's batch item says whether the batch is finished. A retried or resumed
batch fetches only the parents that are not done and never writes a record twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from harvester import paginate, storage
from harvester.client import AuthFailed, CallFailed, Fetcher, OutOfTime, ssl_context
from harvester.ledger import Ledger, batch_sk
from harvester.spec import SourceSpec
from harvester.template import lookup

MAX_IN_FLIGHT = 64  # connections one worker keeps open at most
PROGRESS_SECONDS = 5.0  # a running batch writes its figures so far to the ledger this often
START_IN_FLIGHT = 8  # before any latency is known; calls waiting for a token cost nothing


def lanes_needed(rate_share: float | None, latency: float, cap: int) -> int:
    """Little's law: to sustain `rate_share` requests/s at `latency` seconds each, keep rate x latency requests
    in flight (x2 headroom: latency jitter, and workers that finish early leave their share to the others;
    +1 so a lane waiting on a token does not idle the pipe). The shared limiter keeps the sum under the rate."""
    if rate_share is None:
        return cap
    return max(1, min(cap, int(rate_share * latency * 2) + 1))


class BatchIncomplete(Exception):
    """The worker ran out of time; progress is checkpointed and the next attempt continues (Step Functions Retry)."""


class BatchFailed(Exception):
    """Some calls failed permanently; they are in the ledger and a resume retries only them."""


def parent_key(parent: dict[str, dict[str, Any]], spec: SourceSpec) -> str:
    """A parent's identity within the run: the primary keys of its lineage, e.g. `t0001/w000012`."""
    parts = []
    for level_name, fields in parent.items():
        level = spec.levels[spec.level_index(level_name)]
        parts.append(",".join(str(fields.get(k)) for k in level.primary_key or []))
    return "/".join(parts) or "root"


def lineage(parent: dict[str, dict[str, Any]], spec: SourceSpec) -> dict[str, Any]:
    out = {}
    for level_name, fields in parent.items():
        pk = spec.levels[spec.level_index(level_name)].primary_key or []
        out[level_name] = fields.get(pk[0]) if len(pk) == 1 else ",".join(str(fields.get(k)) for k in pk)
    return out


def child_batch_id(batch_id: str, part: int, chunk: int) -> str:
    return hashlib.sha1(f"{batch_id}/{part}/{chunk}".encode()).hexdigest()[:16]


def template_context(parent: dict[str, dict[str, Any]], spec: SourceSpec) -> dict[str, dict[str, Any]]:
    """The parent's lineage under every name a template may use (level name and alias)."""
    ctx = {}
    for level_name, fields in parent.items():
        for name in spec.levels[spec.level_index(level_name)].names:
            ctx[name] = fields
    return ctx


def child_context(spec: SourceSpec, level_index: int, parent: dict, record: Any, url: str) -> dict:
    level = spec.levels[level_index]
    if not isinstance(record, dict):
        raise CallFailed(url, 200, f"a {level.name} record is not an object: {str(record)[:80]}")
    fields = {}
    for name in spec.context_fields(level_index):
        try:
            fields[name] = lookup(record, name)
        except KeyError:
            raise CallFailed(url, 200, f"a {level.name} record has no field {name!r} (needed by child levels)") from None
    return {**parent, level.name: fields}


async def harvest_batch(
    spec: SourceSpec,
    run: dict[str, Any],
    level_index: int,
    batch: dict[str, Any],
    *,
    store: storage.Store,
    ledger: Ledger,
    limiter,
    secret: str | None,
    time_budget: float,
    transport: httpx.AsyncBaseTransport | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Harvest one batch. Returns a small summary; raises BatchIncomplete or BatchFailed after saving progress."""
    started = time.monotonic()
    deadline = started + time_budget
    source, run_id, attempt = run["source"], run["run_id"], int(run.get("attempt", 1))
    batch_id, parents = batch["batch_id"], batch["parents"]
    level = spec.levels[level_index]
    is_leaf = level_index == len(spec.levels) - 1
    ttl = int(run["expires_at"])

    existing = ledger.get_batch(source, run_id, level_index, batch_id)
    if existing and existing.get("status") == "SUCCEEDED":
        return {"batch_id": batch_id, "status": "SUCCEEDED", "skipped": True}

    ck_key = storage.checkpoint_key(source, run_id, level_index, batch_id)
    ck = store.get_json(ck_key, default=None) or {
        "done": [], "parts": 0, "records": 0, "children": 0, "calls_by_attempt": {}, "pages": 0,
        "throttled": 0, "retries": 0, "invocations": 0,
    }
    ck.setdefault("failed", {})
    ck.setdefault("partial", {})  # parent -> {"next": page request, "fetched": records stored so far}
    done = set(ck["done"])
    # a parent that failed permanently in this attempt is not refetched by a continuation; a resume retries it
    failed_now = {k for k, f in ck["failed"].items() if f.get("attempt") == attempt}
    todo = [p for p in parents if parent_key(p, spec) not in done and parent_key(p, spec) not in failed_now]

    # stop starting parents a little before the deadline so that writing the results fits in
    margin = min(30.0, 0.1 * time_budget)
    # requests in flight: fixed by the spec, or sized from this worker's share of the rate and the latency seen
    cap = spec.max_in_flight or MAX_IN_FLIGHT
    workers = workers or spec.workers()  # batches of this level running at once
    rate_share = spec.rate_limit.requests_per_second / workers if spec.rate_limit else None
    in_flight = cap if spec.max_in_flight else min(cap, START_IN_FLIGHT)
    fetched: dict[str, list[Any]] = {}
    partial: dict[str, tuple[list[Any], paginate.PageRequest | None]] = {}  # lists cut by the deadline
    failures: dict[str, dict[str, Any]] = {}
    out_of_time = False
    auth_error: AuthFailed | None = None

    timeout = httpx.Timeout(spec.timeouts.read, connect=spec.timeouts.connect)
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
    headers = {"User-Agent": "harvester/0.1", "Accept": "application/json", **spec.headers}
    async with httpx.AsyncClient(
        timeout=timeout, limits=limits, headers=headers, transport=transport, follow_redirects=True,
        verify=ssl_context(),
    ) as http:
        # calls may start until shortly before the deadline (a call in flight is bounded by the read timeout)
        fetcher = Fetcher(spec, http, limiter, secret, deadline - min(1.0, 0.05 * time_budget))
        queue: asyncio.Queue = asyncio.Queue()
        for p in todo:
            queue.put_nowait(p)

        lanes: list[asyncio.Task] = []

        async def lane() -> None:
            nonlocal out_of_time, auth_error
            while not queue.empty() and not out_of_time and auth_error is None:
                if deadline - time.monotonic() < margin:
                    out_of_time = True
                    return
                parent = queue.get_nowait()
                # each list not started yet needs at least one call: the limiter leases no further ahead than
                # that, so a worker near its end leaves no unused tokens behind (others could have used them)
                limiter.expect(queue.qsize())
                key = parent_key(parent, spec)
                resume = ck["partial"].get(key)
                try:
                    fetched[key] = await fetcher.fetch_list(
                        level,
                        template_context(parent, spec),
                        start=paginate.PageRequest(**resume["next"]) if resume else None,
                        fetched_before=resume["fetched"] if resume else 0,
                    )
                except OutOfTime as exc:
                    out_of_time = True
                    if exc.records or exc.next_request is not None:
                        partial[key] = (exc.records, exc.next_request)
                except AuthFailed as exc:
                    auth_error = exc
                    failures[key] = {**exc.as_item(), "parent": key}
                except CallFailed as exc:
                    failures[key] = {**exc.as_item(), "parent": key}
                except Exception as exc:  # noqa: BLE001 - a bug or surprise must not lose the other parents' pages
                    failures[key] = {"url": level.path, "status": None, "reason": f"unexpected {type(exc).__name__}: {exc}"[:300],
                                     "excerpt": "", "attempts": 1, "parent": key}
                grow()

        def grow() -> None:
            """Add lanes while Little's law says more requests in flight are needed (never more than parents)."""
            stats = fetcher.stats
            if spec.max_in_flight or not stats.calls:
                return
            want = lanes_needed(rate_share, stats.latency_sum / stats.calls, cap)
            while sum(not task.done() for task in lanes) < min(want, queue.qsize()):
                lanes.append(asyncio.create_task(lane()))

        async def report_progress() -> None:
            """The ledger shows a long batch moving (calls, records, 429s so far), not only when it ends."""
            prior_calls = sum(ck["calls_by_attempt"].values())
            while True:
                await asyncio.sleep(PROGRESS_SECONDS)
                now = fetcher.stats
                fields = {"status": "RUNNING", "parents": len(parents), "done_parents": len(done) + len(fetched),
                          "calls": prior_calls + now.calls, "throttled": ck["throttled"] + now.throttled,
                          "records": ck["records"] + sum(len(v) for v in fetched.values()), "last_attempt": attempt}
                try:
                    await asyncio.to_thread(ledger.put_progress, source, run_id, level_index, batch_id, fields, ttl)
                except Exception:  # noqa: BLE001 - progress is informative; the batch's own writes are what count
                    pass

        progress = asyncio.create_task(report_progress())
        lanes.extend(asyncio.create_task(lane()) for _ in range(max(1, min(in_flight, len(todo)))))
        try:
            while lanes and not all(task.done() for task in lanes):
                await asyncio.gather(*lanes)
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
        stats = fetcher.stats

    # --- turn pages into records and child items -------------------------------------------------------------
    by_key = {parent_key(p, spec): p for p in todo}
    fetched_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records: list[dict[str, Any]] = []
    children: list[dict[str, Any]] = []
    completed: list[str] = []
    cut: dict[str, dict[str, Any]] = {}  # parents continued by the next invocation
    # in the batch's parent order, not the order lanes finished: the same input always writes the same objects
    got = {**fetched, **{k: recs for k, (recs, _) in partial.items()}}
    for key, page_records in ((k, got[k]) for k in by_key if k in got):
        parent = by_key[key]
        try:
            kids = [] if is_leaf else [child_context(spec, level_index, parent, r, level.path) for r in page_records]
        except CallFailed as exc:
            failures[key] = {**exc.as_item(), "parent": key}
            continue
        meta = {"_source": source, "_run_id": run_id, "_level": level.name, "_lineage": lineage(parent, spec),
                "_fetched_at": fetched_at}
        records.extend({**r, **meta} if isinstance(r, dict) else {"value": r, **meta} for r in page_records)
        children.extend(kids)
        before = ck["partial"].get(key, {}).get("fetched", 0)
        if key in partial:
            nxt = partial[key][1]
            cut[key] = {"next": {"url": nxt.url, "params": nxt.params, "number": nxt.number},
                        "fetched": before + len(page_records)}
        else:
            completed.append(key)

    part = ck["parts"]
    written = 0
    if completed or cut:
        if records:
            written = store.put_records(storage.raw_key(source, run_id, level.name, batch_id, part), records)
        if children:
            size = spec.batch_size(level_index + 1)
            items = []
            for chunk, start in enumerate(range(0, len(children), size)):
                cid = child_batch_id(batch_id, part, chunk)
                items.append({"batch_id": cid, "sk": batch_sk(level_index + 1, cid), "parents": children[start : start + size]})
            store.put_json(storage.children_key(source, run_id, level_index + 1, batch_id, part), items)
        ck["parts"] = part + 1
    ck["done"] = sorted(done | set(completed))
    for key in completed:
        ck["failed"].pop(key, None)
        ck["partial"].pop(key, None)
    # a list that failed after an earlier cut keeps its cut: a resume continues it from there, since the pages
    # before it are already stored (refetching them would write them twice)
    ck["partial"].update(cut)
    for key, failure in failures.items():
        ck["failed"][key] = {**failure, "attempt": attempt}
    current_failures = [f for f in ck["failed"].values() if f.get("attempt") == attempt]
    ck["records"] += len(records)
    ck["bytes"] = ck.get("bytes", 0) + written
    ck["children"] += len(children)
    ck["pages"] += stats.pages
    ck["throttled"] += stats.throttled
    ck["retries"] += stats.retries
    ck["invocations"] += 1
    limiter_stats = limiter.stats()
    ck["token_wait_seconds"] = round(ck.get("token_wait_seconds", 0.0) + float(limiter_stats.get("wait_seconds", 0.0)), 3)
    ck["limiter_writes"] = ck.get("limiter_writes", 0) + int(limiter_stats.get("lease_writes", 0))
    # tokens this worker leased from the shared bucket and never used: vendor capacity the run left unused
    ck["tokens_expired"] = ck.get("tokens_expired", 0) + int(limiter_stats.get("tokens_expired", 0))
    ck["calls_by_attempt"][str(attempt)] = ck["calls_by_attempt"].get(str(attempt), 0) + stats.calls
    store.put_json(ck_key, ck)

    unfinished = len(parents) - len(ck["done"])
    left = len(todo) - len(completed) - len(failures)  # parents not tried because time ran out
    status = "RUNNING" if left and auth_error is None else ("SUCCEEDED" if unfinished == 0 else "FAILED")
    summary = {
        "status": status,
        "parents": len(parents),
        "done_parents": len(ck["done"]),
        "records": ck["records"],
        "bytes": ck["bytes"],
        "children": ck["children"],
        "calls": sum(ck["calls_by_attempt"].values()),
        "calls_by_attempt": ck["calls_by_attempt"],
        "pages": ck["pages"],
        "throttled": ck["throttled"],
        "retries": ck["retries"],
        "parts": ck["parts"],
        "invocations": ck["invocations"],
        "last_attempt": attempt,
        "failures": len(current_failures),
        "token_wait_seconds": ck["token_wait_seconds"],
        "limiter_writes": ck["limiter_writes"],
        "tokens_expired": ck["tokens_expired"],
        "current_rate": limiter_stats.get("current_rate"),
        "seconds": round(time.monotonic() - started, 3),
    }
    ledger.put_failures(source, run_id, level_index, batch_id, current_failures, ttl)
    if current_failures:
        first = current_failures[0]
        summary["error"] = f"{len(current_failures)} of {len(parents)} parents failed, first: {first['reason']} ({first['url']})"
    ledger.put_batch(source, run_id, level_index, batch_id, summary, ttl)
    result = {"batch_id": batch_id, **summary, "call_stats": stats.as_dict(), "bytes_written": written,
              "records_written": len(records)}
    error: Exception | None = None
    if auth_error is not None:
        error = BatchFailed(f"{auth_error.reason} ({auth_error.url}); {unfinished} parents left for a resume")
    elif status == "RUNNING":
        error = BatchIncomplete(
            f"batch {batch_id}: {len(ck['done'])}/{len(parents)} parents done when the time budget ran out; "
            "the next attempt continues from the checkpoint"
        )
    elif status == "FAILED":
        error = BatchFailed(f"batch {batch_id}: {summary['error']}")
    if error is not None:
        error.result = result  # type: ignore[attr-defined]  # what this invocation did, for the handler's metrics
        raise error
    return result
