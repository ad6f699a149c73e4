"""One Map item: fetch every page for a batch of parents, write records and the next level's items.

Idempotent by construction: outputs go to deterministic keys (`{batch_id}-{part}`), a checkpoint lists the
parents already done, and the ledger's batch item says whether the batch is finished. A retried or resumed
batch fetches only the parents that are not done and never writes a record twice.

Nothing waits for the end of the invocation: every `FLUSH_RECORDS` records or `FLUSH_SECONDS` seconds the
worker writes a part (raw records, the next level's items) and then the checkpoint that names it, so memory is
bounded by the flush size and an invocation that Lambda kills (timeout, out of memory) loses at most the pages
since its last flush. A part is numbered by the checkpoint: one written but not yet checkpointed when the
invocation died is overwritten by the same part of the next attempt (a part is written only when it holds
records, so that next part always exists when the killed one did), never read twice.

Time: `time_plan` turns the Lambda's remaining time into the budget for starting calls and the window every
call must end in, so no call is in flight when the results are written.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from harvester import paginate, sizing, storage, timeline, window
from harvester.checkpoint import Checkpoint
from harvester.client import AuthFailed, CallFailed, Fetcher, LoopDetected, OutOfTime, ssl_context
from harvester.counters import BatchCounts
from harvester.ledger import Ledger, batch_sk
from harvester.payloads import MapItem
from harvester.spec import SourceSpec
from harvester.template import lookup

MAX_IN_FLIGHT = 64  # connections one worker keeps open at most
PROGRESS_SECONDS = 5.0  # a running batch writes its figures so far to the ledger this often
START_IN_FLIGHT = 8  # before any latency is known; calls waiting for a token cost nothing
FLUSH_RECORDS = 10_000  # a part is written once this many records are waiting (HARVESTER_FLUSH_RECORDS)
FLUSH_SECONDS = 60.0  # ... or once the oldest waiting record is this old (HARVESTER_FLUSH_SECONDS)
#: seconds kept for the last write of an invocation (a part of at most FLUSH_RECORDS records, the checkpoint,
#: the ledger's failures and batch item): a few S3 and DynamoDB requests, well under a second as a rule
WRITE_SECONDS = 5.0
#: a batch stops early only when its first parents all fail with 401/403 (the credential, not one parent's rights)
AUTH_STOP = 3

#: set when the invocation is asked to stop now (a local run's Ctrl-C, SIGTERM or --timeout: the sandbox's SIGTERM
#: handler): the lanes are cancelled, the calls in flight abandoned (their pages are asked for again next time),
#: and what was fetched is written with its checkpoint before the invocation ends as BatchIncomplete
STOP = threading.Event()
ACTIVE: list[str] = []  # the batches this process is harvesting now (what a stop request would interrupt)


def reserve_seconds(spec: SourceSpec, write_seconds: float = WRITE_SECONDS) -> float:
    """Time kept back from the Lambda deadline when starting calls: a call started just before the budget ends
    may take its whole connect + read timeout, then the results must still be written."""
    return spec.timeouts.connect + spec.timeouts.read + write_seconds


def time_plan(remaining: float, spec: SourceSpec, override: float | None = None,
              write_seconds: float = WRITE_SECONDS) -> tuple[float, float]:
    """(budget, call window) in seconds from now, for an invocation with `remaining` seconds before Lambda stops
    it (Sandbox.Timedout: the invocation's unwritten work is lost).

    Calls start within the budget (the remaining time minus `reserve_seconds`) and every call ends within the
    window (the remaining time minus the write time): a call still running at the window's end is cut and its
    page asked for again by the next invocation. When the invocation has less time than the reserve, calls
    start in the first half of the window. `override` (HARVESTER_BATCH_SECONDS, local runs) sets the budget."""
    window = max(0.0, remaining - write_seconds)
    if override is not None:
        return min(override, window), min(window, override + spec.timeouts.connect + spec.timeouts.read)
    return max(remaining - reserve_seconds(spec, write_seconds), 0.5 * window), window


def flush_settings() -> tuple[int, float]:
    """(records, seconds) between two parts; the environment may lower them (tests, small functions)."""
    return (int(os.environ.get("HARVESTER_FLUSH_RECORDS") or FLUSH_RECORDS),
            float(os.environ.get("HARVESTER_FLUSH_SECONDS") or FLUSH_SECONDS))


#: lanes per request in flight that Little's law asks for (see lanes_needed)
LANE_HEADROOM = 4


def lanes_needed(rate_share: float | None, latency: float, cap: int) -> int:
    """Little's law: to sustain `rate_share` requests/s at `latency` seconds each, keep rate x latency requests
    in flight, x LANE_HEADROOM (4), +1. The shared limiter keeps the sum under the rate, so the extra lanes wait for
    a send slot, which costs nothing; they are what spends a lease: its slots are spaced at the *fleet's* rate,
    so a worker whose lanes are all in flight lets them expire (simulated at 1,000 r/s with 4 workers: x2 left 36 %
    of the tokens unused, utilisation 0.70; x4: 3 %, 0.97; at 200 r/s 0.91 -> 1.00). It also covers latency
    jitter, and workers that finish early leave their share to the others."""
    if rate_share is None:
        return cap
    return max(1, min(cap, int(rate_share * latency * LANE_HEADROOM) + 1))


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


def child_batch_id(batch_id: str, part: int, chunk: int, slice_no: int | None = None) -> str:
    tail = "" if slice_no is None else f"/{slice_no}"
    return hashlib.sha1(f"{batch_id}/{part}/{chunk}{tail}".encode()).hexdigest()[:16]


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


def record_key(record: Any, primary_key: list[str] | None) -> str | None:
    """A record's primary key as text, or None (no key declared, or the record lacks it)."""
    if not primary_key or not isinstance(record, dict):
        return None
    try:
        return ",".join(str(lookup(record, k)) for k in primary_key)
    except KeyError:
        return None


@dataclass
class _List:
    """One parent's list in this invocation: the records fetched and not yet written, and where it goes on."""

    key: str
    parent: dict[str, dict[str, Any]]
    stored: int  # records of this list already in parts (earlier invocations, earlier flushes)
    next: paginate.PageRequest | None  # the first page not fetched
    records: list[Any] = field(default_factory=list)
    kids: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False  # its last page is fetched
    dirty: bool = False  # it fetched a page that no checkpoint knows of yet
    parts: list[int] = field(default_factory=list)  # parts holding its records (a loop takes them out again)
    discard: bool = False  # its pagination looped: nothing of it is kept
    # primary keys of its last two pages (kept in the checkpoint when the list is cut): offset drift repeats the
    # records next to a page boundary; bounded, so memory stays bounded by the flush size, not the list
    recent: list[list[str]] = field(default_factory=lambda: [[], []])

    def add(self, page: list[Any], kids: list[dict[str, Any]], nxt: paginate.PageRequest | None) -> None:
        self.records.extend(page)
        self.kids.extend(kids)
        self.next, self.done, self.dirty = nxt, nxt is None, True


def _request(req: paginate.PageRequest) -> dict[str, Any]:
    return {"url": req.url, "params": req.params, "number": req.number}


class _Batch:
    """One invocation's work on a batch: lists in progress, the checkpoint, the parts it writes."""

    def __init__(self, spec: SourceSpec, run: dict[str, Any], level_index: int, batch: MapItem, *,
                 store: storage.HarvestBucket, ledger: Ledger, limiter) -> None:
        self.spec, self.store, self.ledger, self.limiter = spec, store, ledger, limiter
        self.source, self.run_id, self.attempt = run["source"], run["run_id"], int(run.get("attempt", 1))
        self.ttl = int(run["expires_at"])
        self.level_index, self.level = level_index, spec.levels[level_index]
        self.is_leaf = level_index == len(spec.levels) - 1
        self.batch_id = batch.batch_id
        # a parent listed twice (offset drift in its parent's list) is one parent: fetched and counted once
        self.parents = list({parent_key(p, spec): p for p in batch.parents}.values())
        # {window.start}/{window.end}: the batch's slice of the run's window, or the whole window
        wl = spec.window_level
        self.window = window.context(None if wl is None else spec.levels[wl].window, batch.window or run.get("window"))
        self.slices = run.get("slices") if wl == level_index + 1 else None  # the next level's Map items per slice
        # the cursor variant: each parent's largest cursor field so far, sent back as {window.since}
        self.cursor = spec.levels[wl].window.cursor if wl == level_index and self.window else None
        self.cursors = store.get_json(run["cursor_key"], default={}) if self.cursor and run.get("cursor_key") else {}
        self.ck_key = storage.checkpoint_key(self.source, self.run_id, level_index, self.batch_id)
        self.ck = Checkpoint.load(store.get_json(self.ck_key, default=None))
        ck = self.ck
        self.base = {"calls": ck.calls_by_attempt.get(str(self.attempt), 0), "pages": ck.pages,
                     "throttled": ck.throttled, "retries": ck.retries, "invocations": ck.invocations,
                     "token_wait_seconds": ck.token_wait_seconds, "limiter_writes": ck.limiter_writes,
                     "tokens_expired": ck.tokens_expired,
                     "cpu_seconds": ck.cpu_seconds}
        self.cpu_started = time.process_time()  # the worker's CPU on this batch (on AWS: what Lambda bills)
        self.prior_calls = sum(ck.calls_by_attempt.values())
        self.timeline = timeline.Timeline(ck.timeline)  # sends, 429s, retries per second: the run report
        self.resume_at = dict(ck.partial)  # lists an earlier invocation cut: where they go on
        self.done = set(ck.done)
        # a parent that failed permanently in this attempt is not refetched by a continuation; a resume retries it
        failed_now = {k for k, f in ck.failed.items() if f.get("attempt") == self.attempt}
        self.todo = [p for p in self.parents if parent_key(p, spec) not in self.done | failed_now]
        self.order = {parent_key(p, spec): i for i, p in enumerate(self.todo)}
        self.lists: dict[str, _List] = {}
        self.failures: dict[str, dict[str, Any]] = {}  # this invocation's, not yet in the checkpoint
        self.failed_keys: set[str] = set()
        self.completed = 0  # lists this invocation finished (and wrote)
        self.buffered = 0  # records fetched and not yet in a part
        self.records_written = self.bytes_written = 0
        self.flush_records, self.flush_seconds = flush_settings()
        self.last_flush = time.monotonic()
        self.flush_lock = asyncio.Lock()
        self.out_of_time = False
        self.auth_error: AuthFailed | None = None
        self.auth_streak = 0  # parents failed with 401/403 since the last good page
        self.pages_ok = 0  # good pages of this invocation
        self.rewrites: list[tuple[dict[str, Any], list[int]]] = []  # (a discarded list's parent, its parts)
        self.bad_records = self.duplicates = 0
        self.fetcher: Fetcher | None = None
        self.lanes: list[asyncio.Task] = []

    # --- fetching -----------------------------------------------------------------------------------------------
    async def fetch(self, secret: str | None, started: float, time_budget: float, call_window: float | None,
                    transport: httpx.AsyncBaseTransport | None, workers: int | None) -> None:
        spec = self.spec
        deadline = started + time_budget
        margin = min(30.0, 0.1 * time_budget)  # stop starting parents a little before the budget ends
        # requests in flight: fixed by the spec, or sized from this worker's share of the rate and the latency seen
        cap = spec.max_in_flight or MAX_IN_FLIGHT
        workers = workers or sizing.workers(spec)  # batches of this level running at once
        rate_share = spec.rate_limit.requests_per_second / workers if spec.rate_limit else None
        in_flight = cap if spec.max_in_flight else min(cap, START_IN_FLIGHT)
        timeout = httpx.Timeout(spec.timeouts.read, connect=spec.timeouts.connect)
        limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
        headers = {"User-Agent": "harvester/0.1", "Accept": "application/json", **spec.headers}
        async with httpx.AsyncClient(
            timeout=timeout, limits=limits, headers=headers, transport=transport,
            follow_redirects=False,  # Fetcher._get follows them
            verify=ssl_context(),
        ) as http:
            self.fetcher = Fetcher(spec, http, self.limiter, secret, deadline - min(1.0, 0.05 * time_budget),
                                   call_deadline=None if call_window is None else started + call_window)
            self.fetcher.stats = self.timeline.stats()  # the counter hook (harvester/timeline.py)
            queue: asyncio.Queue = asyncio.Queue()
            for p in self.todo:
                queue.put_nowait(p)

            def grow() -> None:
                """Add lanes while Little's law says more requests in flight are needed (never more than parents)."""
                stats = self.fetcher.stats
                if spec.max_in_flight or not stats.calls:
                    return
                want = lanes_needed(rate_share, stats.latency_sum / stats.calls, cap)
                while sum(not task.done() for task in self.lanes) < min(want, queue.qsize()):
                    self.lanes.append(asyncio.create_task(lane()))

            async def lane() -> None:
                while not queue.empty() and not self.out_of_time and self.auth_error is None:
                    if deadline - time.monotonic() < margin:
                        self.out_of_time = True
                        return
                    parent = queue.get_nowait()
                    # each list not started yet needs at least one call: the limiter leases no further ahead than
                    # that, so a worker near its end leaves no unused tokens behind (others could have used them)
                    self.limiter.expect(queue.qsize(), lanes=sum(not task.done() for task in self.lanes))
                    await self.walk(parent)
                    grow()

            progress = asyncio.create_task(self.report_progress())
            stopper = asyncio.create_task(self.stop_when_asked())
            self.lanes.extend(asyncio.create_task(lane()) for _ in range(max(1, min(in_flight, len(self.todo)))))
            try:
                while self.lanes and not all(task.done() for task in self.lanes):
                    await asyncio.gather(*self.lanes)
            except asyncio.CancelledError:
                if not STOP.is_set():
                    raise
                await asyncio.gather(*self.lanes, return_exceptions=True)  # stopped: what was fetched is written
            except BaseException:
                for task in self.lanes:  # a write failed: stop fetching, the invocation fails as it is
                    task.cancel()
                await asyncio.gather(*self.lanes, return_exceptions=True)
                raise
            finally:
                for task in (progress, stopper):
                    task.cancel()
                await asyncio.gather(progress, stopper, return_exceptions=True)

    async def stop_when_asked(self) -> None:
        """Cancel the lanes when STOP is set: every list keeps the pages it has and the request of the page in flight
        as its next one, so the final flush's checkpoint continues it."""
        while not STOP.is_set():
            await asyncio.sleep(0.1)
        self.out_of_time = True
        for task in self.lanes:
            task.cancel()

    async def walk(self, parent: dict[str, dict[str, Any]]) -> None:
        """Fetch one parent's list page by page (from where an earlier invocation cut it), flushing as due."""
        key = parent_key(parent, self.spec)
        resume = self.resume_at.get(key)
        start = paginate.PageRequest(**resume["next"]) if resume else None
        st = self.lists[key] = _List(key, parent, stored=resume["fetched"] if resume else 0, next=start,
                                     parts=list(resume.get("parts", [])) if resume else [],
                                     recent=[[], list(resume.get("recent_keys", []))] if resume else [[], []])
        ctx = template_context(parent, self.spec) | ({"window": self.window} if self.window else {})
        if self.cursor:
            seen = self.ck.cursors = self.ck.cursors or {}
            seen[key] = window.newer(seen.get(key), self.cursors.get(key))
            if self.cursors.get(key) is not None:
                ctx["window"] = {**self.window, "since": str(self.cursors[key])}
        pages = self.fetcher.pages(self.level, ctx, start=start, fetched_before=st.stored)
        while True:
            try:
                page, nxt = await anext(pages)
                page, kids = self.sift(st, page, nxt)
            except StopAsyncIteration:
                return
            except OutOfTime:
                self.out_of_time = True
                return
            except LoopDetected as exc:
                st.discard = st.dirty = True
                self.fail(key, {**exc.as_item(), "reason": f"{exc.reason}; parent {key}"})
                return
            except AuthFailed as exc:
                self.fail(key, exc.as_item())
                self.auth_streak += 1
                if not self.pages_ok and self.auth_streak >= min(AUTH_STOP, len(self.todo)):
                    self.auth_error = exc  # the first parents all refused: the credential, stop the batch
                return
            except CallFailed as exc:
                self.fail(key, exc.as_item())
                return
            except Exception as exc:  # noqa: BLE001 - a bug or surprise must not lose the other parents' pages
                self.fail(key, {"url": self.level.path, "status": None, "excerpt": "", "attempts": 1,
                                "reason": f"unexpected {type(exc).__name__}: {exc}"[:300]})
                return
            st.add(page, kids, nxt)
            self.pages_ok += 1
            self.auth_streak = 0
            self.buffered += len(page)
            if self.cursor:
                self.ck.cursors[key] = window.highest(page, self.cursor.field, self.ck.cursors.get(key))
            if self.flush_due():  # outside the try: a failed write is the invocation's failure, not the parent's
                await self.flush()

    def sift(self, st: _List, page: list[Any], nxt) -> tuple[list[Any], list[dict[str, Any]]]:
        """(the page's records, the next level's parents): a record whose key this list already had (offset drift)
        is dropped; one without the fields its children need is kept and counted as bad, without children (a
        page where no record has them is the spec's mistake: the call fails, as `child_context` says)."""
        keep, kids = [], []
        seen, keys = {*st.recent[0], *st.recent[1]}, []
        for record in page:
            rk = record_key(record, self.level.primary_key)
            if rk is not None and rk in seen:
                self.duplicates += 1
                continue
            if rk is not None:
                seen.add(rk)
                keys.append(rk)
            keep.append(record)
            if self.is_leaf:
                continue
            try:
                kids.append(child_context(self.spec, self.level_index, st.parent, record, self.level.path))
            except CallFailed:
                if len(page) == 1 or not any(record_key(r, self.level.primary_key) for r in page):
                    raise
                self.bad_records += 1
        st.recent = [st.recent[1], keys]
        return keep, kids

    def fail(self, key: str, item: dict[str, Any]) -> None:
        self.failures[key] = {**item, "parent": key}
        self.failed_keys.add(key)

    async def report_progress(self) -> None:
        """The ledger shows a long batch moving (calls, records, 429s so far), not only when it ends."""
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            now = self.fetcher.stats
            fields = {"status": "RUNNING", "parents": len(self.parents),
                      "done_parents": len(self.done) + sum(st.done for st in self.lists.values()),
                      "calls": self.prior_calls + now.calls, "throttled": self.base["throttled"] + now.throttled,
                      "records": self.ck.records + self.buffered, "last_attempt": self.attempt}
            try:
                await asyncio.to_thread(self.ledger.put_progress, self.source, self.run_id, self.level_index,
                                        self.batch_id, fields, self.ttl)
            except Exception:  # noqa: BLE001 - progress is informative; the batch's own writes are what count
                pass

    # --- writing ------------------------------------------------------------------------------------------------
    def flush_due(self) -> bool:
        return self.buffered >= self.flush_records or (
            self.buffered > 0 and time.monotonic() - self.last_flush >= self.flush_seconds)

    async def flush(self, final: bool = False) -> None:
        """Write what is waiting as the next part, then the checkpoint that names it (one flush at a time; the
        lanes go on fetching meanwhile)."""
        async with self.flush_lock:
            if not final and not self.flush_due():
                return  # another lane flushed while this one waited
            part, records, kids = self.take()
            ck = self.ck.model_copy(deep=True)
            rewrites, self.rewrites = self.rewrites, []
            self.last_flush = time.monotonic()
            written = await asyncio.to_thread(self.write, part, records, kids, ck, rewrites)
            self.ck.bytes = ck.bytes
            self.records_written += len(records)
            self.bytes_written += written

    def take(self) -> tuple[int | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """Move what is waiting into the checkpoint (in memory): returns the part's number (None when there are no
        records: no part), its records and the next level's parents, in the batch's parent order."""
        fetched_at = datetime.now(UTC).isoformat(timespec="seconds")
        records: list[dict[str, Any]] = []
        kids: list[dict[str, Any]] = []
        next_part = self.ck.parts
        for st in sorted((s for s in self.lists.values() if s.dirty), key=lambda s: self.order[s.key]):
            if st.discard:  # a loop: none of its records, and the parts that hold some are rewritten without them
                if st.parts:
                    self.rewrites.append((st.parent, sorted(set(st.parts))))
                    self.ck.records -= st.stored  # counted when its parts were written
                self.ck.partial.pop(st.key, None)
                del self.lists[st.key]
                continue
            if st.records:
                st.parts.append(next_part)
            meta = {"_source": self.source, "_run_id": self.run_id, "_level": self.level.name,
                    "_lineage": lineage(st.parent, self.spec), "_fetched_at": fetched_at}
            records.extend({**r, **meta} if isinstance(r, dict) else {"value": r, **meta} for r in st.records)
            kids.extend(st.kids)
            st.stored += len(st.records)
            st.records, st.kids, st.dirty = [], [], False
            if st.done:
                self.done.add(st.key)
                self.completed += 1
                self.ck.partial.pop(st.key, None)
                self.ck.failed.pop(st.key, None)
                del self.lists[st.key]
            else:
                # a list cut by the deadline, by a flush, or by a failure after some pages: it goes on from here
                # (refetching the pages before it would write them twice)
                self.ck.partial[st.key] = {"next": _request(st.next), "fetched": st.stored,
                                           "parts": sorted(set(st.parts)), "recent_keys": st.recent[1]}
        for key, failure in self.failures.items():
            self.ck.failed[key] = {**failure, "attempt": self.attempt}
        self.failures = {}
        self.buffered = 0
        part = None
        if records:
            part = self.ck.parts
            self.ck.parts = part + 1
        self.ck.done = sorted(self.done)
        self.ck.records += len(records)
        self.ck.children += len(kids)
        self.ck.bad_records += self.bad_records
        self.ck.duplicates += self.duplicates
        self.bad_records = self.duplicates = 0
        self.count()
        return part, records, kids

    def count(self) -> None:
        """The checkpoint's counters: what earlier invocations counted plus this one's so far."""
        stats, lim, base, ck = self.fetcher.stats, self.limiter.stats(), self.base, self.ck
        ck.calls_by_attempt[str(self.attempt)] = base["calls"] + stats.calls
        ck.pages, ck.throttled = base["pages"] + stats.pages, base["throttled"] + stats.throttled
        ck.retries, ck.invocations = base["retries"] + stats.retries, base["invocations"] + 1
        ck.token_wait_seconds = round(base["token_wait_seconds"] + float(lim.get("wait_seconds", 0.0)), 3)
        ck.limiter_writes = base["limiter_writes"] + int(lim.get("lease_writes", 0))
        # tokens this worker leased from the shared bucket and never used: vendor capacity the run left unused
        ck.tokens_expired = base["tokens_expired"] + int(lim.get("tokens_expired", 0))
        ck.timeline = self.timeline.encode()
        # CPU seconds of the worker process on this batch (all its threads): calls per CPU-second bound what one
        # Lambda can carry, and GB-seconds are billed for it
        ck.cpu_seconds = round(base["cpu_seconds"] + time.process_time() - self.cpu_started, 3)

    def write(self, part: int | None, records: list[dict[str, Any]], kids: list[dict[str, Any]],
              ck: Checkpoint, rewrites: list[tuple[dict[str, Any], list[int]]] = ()) -> int:
        """The part's objects first, the checkpoint last: a checkpoint never names a part that is not written."""
        for parent, parts in rewrites:
            self.take_out(parent, parts)
        written = 0
        if part is not None:
            written = self.store.put_records(
                storage.raw_key(self.source, self.run_id, self.level.name, self.batch_id, part), records)
            if kids:
                self.store.put_json(storage.children_key(self.source, self.run_id, self.level_index + 1,
                                                         self.batch_id, part), self.child_items(part, kids))
        ck.bytes += written
        self.store.put_json(self.ck_key, ck.dump())
        return written

    def take_out(self, parent: dict[str, dict[str, Any]], parts: list[int]) -> None:
        """Rewrite `parts` without the records (and next-level parents) of `parent`'s list: its pagination looped
        after some of its pages were written. Deterministic: the same parts, the same content, whatever attempt
        does it (a part is only read once the level is done)."""
        mine = lineage(parent, self.spec)
        for part in parts:
            key = storage.raw_key(self.source, self.run_id, self.level.name, self.batch_id, part)
            self.store.put_records(key, [r for r in self.store.read_records(key) if r.get("_lineage") != mine])
            if self.is_leaf:
                continue
            ckey = storage.children_key(self.source, self.run_id, self.level_index + 1, self.batch_id, part)
            items = self.store.get_json(ckey, default=None)
            if items is None:
                continue
            for item in items:
                item["parents"] = [p for p in item["parents"]
                                   if {k: v for k, v in p.items() if k != self.level.name} != parent]
            self.store.put_json(ckey, [item for item in items if item["parents"]])

    def child_items(self, part: int, kids: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = sizing.batch_size(self.spec, self.level_index + 1)
        items = []
        for chunk, start in enumerate(range(0, len(kids), size)):
            for n, piece in enumerate(self.slices or [None]):  # a sliced window: an item per parents and slice
                cid = child_batch_id(self.batch_id, part, chunk, None if piece is None else n)
                items.append({"batch_id": cid, "sk": batch_sk(self.level_index + 1, cid),
                              "parents": kids[start:start + size], **({"window": piece} if piece else {})})
        return items

    # --- the end of the invocation ------------------------------------------------------------------------------
    def finish(self, started: float) -> dict[str, Any]:
        """The batch item and failures in the ledger; returns the summary or raises BatchIncomplete/BatchFailed."""
        ck, stats = self.ck, self.fetcher.stats
        unfinished = len(self.parents) - len(ck.done)
        left = len(self.todo) - self.completed - len(self.failed_keys)  # parents not tried: time ran out
        status = "RUNNING" if left and self.auth_error is None else ("SUCCEEDED" if unfinished == 0 else "FAILED")
        current_failures = [f for f in ck.failed.values() if f.get("attempt") == self.attempt]
        counts = BatchCounts(  # what the level's and the run's totals add up (harvester/counters.py)
            calls=sum(ck.calls_by_attempt.values()), records=ck.records, pages=ck.pages, throttled=ck.throttled,
            retries=ck.retries, failures=len(current_failures), token_wait_seconds=ck.token_wait_seconds,
            limiter_writes=ck.limiter_writes, tokens_expired=ck.tokens_expired,
        )
        summary = {
            "status": status, "parents": len(self.parents), "done_parents": len(ck.done), **counts.model_dump(),
            "bytes": ck.bytes, "children": ck.children, "calls_by_attempt": dict(ck.calls_by_attempt),
            "parts": ck.parts, "invocations": ck.invocations, "last_attempt": self.attempt,
            "current_rate": self.limiter.stats().get("current_rate"),
            "bad_records": ck.bad_records, "duplicates": ck.duplicates,
            "seconds": round(time.monotonic() - started, 3),
            **({"cursors": ck.cursors or {}} if self.cursor else {}),
        }
        # with the last part's write (after the checkpoint's count)
        summary["cpu_seconds"] = round(self.base["cpu_seconds"] + time.process_time() - self.cpu_started, 3)
        self.ledger.put_failures(self.source, self.run_id, self.level_index, self.batch_id, current_failures, self.ttl)
        if current_failures:
            first = current_failures[0]
            summary["error"] = (f"{len(current_failures)} of {len(self.parents)} parents failed, first: "
                                f"{first['reason']} ({first['url']})")
        self.ledger.put_batch(self.source, self.run_id, self.level_index, self.batch_id,
                              {**summary, "timeline": ck.timeline}, self.ttl)  # not in the result: payloads
        result = {"batch_id": self.batch_id, **summary, "call_stats": stats.as_dict(),
                  "bytes_written": self.bytes_written, "records_written": self.records_written}
        error: Exception | None = None
        if self.auth_error is not None:
            error = BatchFailed(f"{self.auth_error.reason} ({self.auth_error.url}); {unfinished} parents left for a resume")
        elif status == "RUNNING":
            error = BatchIncomplete(
                f"batch {self.batch_id}: {len(ck.done)}/{len(self.parents)} parents done when the time budget "
                "ran out; the next attempt continues from the checkpoint")
        elif status == "FAILED":
            error = BatchFailed(f"batch {self.batch_id}: " + summary.get("error", f"{unfinished} parents not done"))
        if error is not None:
            error.result = result  # type: ignore[attr-defined]  # what this invocation did, for the handler's metrics
            raise error
        return result


async def harvest_batch(
    spec: SourceSpec,
    run: dict[str, Any],
    level_index: int,
    batch: MapItem | dict[str, Any],
    *,
    store: storage.HarvestBucket,
    ledger: Ledger,
    limiter,
    secret: str | None,
    time_budget: float,
    call_window: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Harvest one batch. Returns a small summary; raises BatchIncomplete or BatchFailed after saving progress.

    `time_budget`: seconds from now in which calls may start; `call_window`: seconds from now by which every
    call has ended (see `time_plan`; None: a call ends by the spec's timeouts)."""
    started = time.monotonic()
    batch = MapItem.model_validate(batch)  # the Map item, parsed once for the batch (a MapItem passes as it is)
    existing = ledger.get_batch(run["source"], run["run_id"], level_index, batch.batch_id)
    if existing and existing.get("status") == "SUCCEEDED":
        return {"batch_id": batch.batch_id, "status": "SUCCEEDED", "skipped": True}
    job = _Batch(spec, run, level_index, batch, store=store, ledger=ledger, limiter=limiter)
    ACTIVE.append(batch.batch_id)
    try:
        await job.fetch(secret, started, time_budget, call_window, transport, workers)
    finally:
        ACTIVE.remove(batch.batch_id)
    await job.flush(final=True)
    return job.finish(started)
