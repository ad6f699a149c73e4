"""A rate limiter shared by every worker and every concurrent run of one source.

The vendor's limit is per API key, so the bucket is per *source*: every worker of every run of a
source draws from one bucket; two sources never share one.

How it works
------------
The shared bucket is a token bucket kept as a *debt* (GCRA): ``tokens`` at ``updated_at`` may be
negative, meaning that many send slots are already promised to workers in the near future. A worker
*leases* a block of n tokens in one conditional write and gets back n send **slots** (wall-clock
times): slot k may be used at ``now + max(0, (k + 1 - tokens) / rate)``. Consecutive leases from any
worker continue the same schedule, so the whole fleet's sends are spaced 1/rate apart in one
timeline, plus at most ``bucket_cap`` tokens of burst credit.

Locally, a slot is spent at its time (never before) and only within ``grace`` seconds after it;
a slot not used by then is dropped (the lease has expired). So a worker that dies holding a lease
merely leaves a gap of at most one block (about ``block_seconds``) in the schedule; nothing waits
for its tokens and nothing ever uses them later.

Bound: sends in any 1-second window <= rate * (1 + grace) + bucket_cap + 1, and the limiter picks
``grace`` and ``bucket_cap`` so that this is <= rate + burst (``bucket_cap = burst - 1 - rate *
grace``, ``grace = min(50 ms, burst / (2 rate))``).

Block size (tokens per DynamoDB write) adapts per worker: it starts at the number of coroutines
waiting, doubles while every leased slot gets used, halves when slots expire unused, and is capped
at ``rate * block_seconds`` (default 200 ms of the fleet's rate). In-process buckets cost nothing
to lease from, so there the block is exactly the number of waiting coroutines.

AIMD: ``on_throttle`` (a 429) halves the shared ``rate`` (at most once per ``cut_cooldown``
seconds, however many workers saw a 429; floor ``min_fraction`` x ceiling), and pushes the
bucket's debt to at least ``retry_after`` x rate, so no new slot is handed out before
``paused_until``; the worker that saw the 429 also drops the slots it holds. Additive increase is
by time: the shared rate grows by ``recovery`` x ceiling per second of 429-free time after the cut
(and after ``paused_until``), never above the ceiling (the ``rate`` given to ``limiter_for``).
``on_success`` only counts.

Time source
-----------
One time source: the **wall clock** (epoch seconds, ``clock()``, default ``time.time``) of each
worker, which on Lambda is kept in sync by the Amazon Time Sync Service (well under 10 ms). Slot
times are epoch seconds in the item's timeline. Skew cannot create tokens: ``updated_at`` never moves
backwards (a write stores ``max(updated_at, now)``), and the refill is computed from
``max(0, now - updated_at)``: a worker whose clock is behind gets no refill and waits; a worker whose
clock is ahead advances ``updated_at`` once, which at most refills the bucket to its cap (burst), and
everybody else then waits for the item's timeline. Within a second, workers skewed by d can bunch
sends by at most rate x d.

DynamoDB item (the ledger table; ``pk``/``sk`` strings, TTL attribute ``expires_at``)
--------------------------------------------------------------------------------------
``pk = RATE#{source}``, ``sk = BUCKET``; ``tokens`` (N, may be negative: promised slots),
``updated_at`` (N, epoch s, never decreases), ``rate`` (N, the current shared AIMD rate),
``rate_at`` (N, additive increase accrues from here), ``paused_until`` (N), ``last_cut`` (N),
``ceiling`` and ``burst`` (N, the last leaser's configuration, informational), ``version`` (N, the
optimistic-concurrency counter every write is conditioned on), ``leases`` and ``tokens_leased`` (N,
counters), ``throttles`` (N), ``expires_at`` (N, now + 1 day). Writes are ``UpdateItem`` with
``ConditionExpression`` ``version = :v`` (``attribute_not_exists(pk)`` for the first) and
``ReturnValuesOnConditionCheckFailure=ALL_OLD``, so a lost race returns the current item and the
retry costs no read. A worker caches the item it last wrote; the steady state is one write per lease.

``table`` is a boto3 DynamoDB ``Table`` resource (its thread-safe low-level client and name are
used) or a table name (a default boto3 client is made).

Every ``RateLimiter`` returned by :func:`limiter_for` may be used from any thread and any event
loop (no asyncio primitive is bound to a loop); the in-process buckets (``table=None``) are kept in
a process-wide registry keyed by source.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Protocol

__all__ = [
    "RateLimiter",
    "Limiter",
    "UnlimitedLimiter",
    "MemoryBucket",
    "DynamoBucket",
    "LimiterConfig",
    "limiter_for",
    "reset_local_buckets",
    "bucket_key",
]

ITEM_TTL_SECONDS = 24 * 3600
MAX_PAUSE_SECONDS = 600.0


class RateLimiter(Protocol):
    async def acquire(self) -> None: ...

    def on_throttle(self, retry_after: float | None) -> None: ...

    def on_success(self) -> None: ...

    def stats(self) -> dict: ...

    async def close(self) -> None: ...


def bucket_key(source: str) -> dict[str, str]:
    return {"pk": f"RATE#{source}", "sk": "BUCKET"}


# ---------------------------------------------------------------------------------------------
# The bucket arithmetic (pure; shared by the in-process and the DynamoDB bucket)


@dataclass(frozen=True)
class LimiterConfig:
    ceiling: float  # the configured rate, requests/s: never exceeded on purpose
    burst: int
    block_seconds: float = 0.2  # largest lease = ceiling x this
    min_fraction: float = 0.05  # floor of the AIMD rate, as a fraction of the ceiling
    cut_factor: float = 0.5  # multiplicative decrease on a 429
    recovery: float = 0.05  # additive increase: fraction of the ceiling per 429-free second
    cut_cooldown: float = 1.0  # 429s within this many seconds of a cut do not cut again
    max_ahead: float = 0.5  # no lease starts later than this after now: bounds the backlog
    grace: float = field(default=-1.0)  # seconds a slot stays usable; <0: derived
    bucket_cap: float = field(default=-1.0)  # burst credit kept in the bucket; <0: derived

    def __post_init__(self) -> None:
        if self.ceiling <= 0:
            raise ValueError("rate must be > 0 (use None for unlimited)")
        if self.burst < 0:
            raise ValueError("burst must be >= 0")
        if self.grace < 0:
            g = max(0.005, min(0.05, 0.5 * max(self.burst, 1) / self.ceiling))
            object.__setattr__(self, "grace", g)
        if self.bucket_cap < 0:
            object.__setattr__(
                self, "bucket_cap", max(0.0, self.burst - 1 - self.ceiling * self.grace)
            )

    @property
    def floor(self) -> float:
        return self.ceiling * self.min_fraction

    def max_block(self, rate: float) -> int:
        return max(1, int(rate * self.block_seconds))


def _initial_state(now: float, cfg: LimiterConfig) -> dict[str, float]:
    return {
        "tokens": cfg.bucket_cap,
        "updated_at": now,
        "rate": cfg.ceiling,
        "rate_at": now,
        "paused_until": 0.0,
        "last_cut": 0.0,
        "version": 0,
    }


def _advance(state: dict[str, float], now: float, cfg: LimiterConfig) -> tuple[dict, float]:
    """Bring the bucket to ``now`` (clamped: never before updated_at): additive increase of the
    rate, refill from elapsed time, capped at bucket_cap. Returns (new state, effective now)."""
    s = dict(state)
    t = max(now, float(s["updated_at"]))  # clock skew: time never runs backwards on the item
    rate = min(float(s["rate"]), cfg.ceiling)
    since = max(float(s["rate_at"]), float(s["paused_until"]))
    if t > since and rate < cfg.ceiling:
        rate = min(cfg.ceiling, rate + cfg.recovery * cfg.ceiling * (t - since))
    rate = max(rate, cfg.floor)
    elapsed = t - float(s["updated_at"])  # >= 0
    tokens = min(cfg.bucket_cap, float(s["tokens"]) + rate * elapsed)
    s.update(tokens=tokens, updated_at=t, rate=rate, rate_at=max(float(s["rate_at"]), t))
    return s, t


def compute_lease(
    state: dict | None, now: float, want: int, cfg: LimiterConfig
) -> tuple[dict, list[float]]:
    """Take ``want`` tokens; returns the new state and the send time of each token."""
    if state is None:
        state = _initial_state(now, cfg)
    s, t = _advance(state, now, cfg)
    rate, tokens = s["rate"], s["tokens"]
    first = t + max(0.0, (1 - tokens) / rate)
    if first > now + cfg.max_ahead:
        # the fleet has reserved more than max_ahead seconds: come back later (no write), so
        # that the slots a worker holds are never far in the future (a worker that dies or a run
        # that ends leaves at most max_ahead + one block unused)
        s["retry_at"] = first - cfg.max_ahead
        return s, []
    slots = [t + max(0.0, (k + 1 - tokens) / rate) for k in range(want)]
    s["tokens"] = tokens - want
    return s, slots


def compute_throttle(
    state: dict | None, now: float, retry_after: float, cfg: LimiterConfig
) -> dict:
    if state is None:
        state = _initial_state(now, cfg)
    s, t = _advance(state, now, cfg)
    if t - float(s["last_cut"]) >= cfg.cut_cooldown:
        s["rate"] = max(cfg.floor, s["rate"] * cfg.cut_factor)
        s["last_cut"] = t
        s["rate_at"] = t
    pause_end = t + retry_after
    if pause_end > float(s["paused_until"]):
        s["paused_until"] = pause_end
    # nobody gets a new slot before paused_until, and no burst credit right after it
    s["tokens"] = min(s["tokens"], -(float(s["paused_until"]) - t) * s["rate"], 0.0)
    return s


@dataclass
class Lease:
    slots: list[float]
    rate: float
    paused_until: float
    version: Any = None  # the bucket version this lease wrote (for give-back)
    writes: int = 1
    conflicts: int = 0
    retry_at: float = 0.0  # a refused lease (backlog too long): try again then


# ---------------------------------------------------------------------------------------------
# Buckets


class MemoryBucket:
    """The bucket of one source inside this process (shared by all its threads)."""

    cheap = True

    def __init__(self, source: str) -> None:
        self.source = source
        self._lock = threading.Lock()
        self.state: dict | None = None

    def lease(self, clock: Callable[[], float], want: int, cfg: LimiterConfig) -> Lease:
        with self._lock:
            s, slots = compute_lease(self.state, clock(), want, cfg)
            if not slots:
                return Lease([], s["rate"], s["paused_until"], None, 0, 0,
                             retry_at=s["retry_at"])
            s["version"] = int(s["version"]) + 1
            self.state = s
            return Lease(slots, s["rate"], s["paused_until"], s["version"])

    def throttle(self, now: float, retry_after: float, cfg: LimiterConfig) -> float:
        with self._lock:
            s = compute_throttle(self.state, now, retry_after, cfg)
            s["version"] = int(s["version"]) + 1
            self.state = s
            return s["rate"]

    def give_back(self, version: Any, count: int, cfg: LimiterConfig) -> bool:
        with self._lock:
            if self.state is None or self.state["version"] != version or count <= 0:
                return False
            self.state = dict(self.state, tokens=self.state["tokens"] + count)
            self.state["version"] += 1
            return True

    def peek(self) -> dict | None:
        with self._lock:
            return dict(self.state) if self.state else None


_STATE_FIELDS = ("tokens", "updated_at", "rate", "rate_at", "paused_until", "last_cut")


def _num(x: float) -> Decimal:
    return Decimal(repr(float(x))).quantize(Decimal("0.000001"))


class DynamoBucket:
    """The bucket of one source as one item of the ledger table (see the module docstring)."""

    cheap = False

    def __init__(self, table: Any, source: str, *, max_attempts: int = 100) -> None:
        if isinstance(table, str):
            import boto3

            table = boto3.resource("dynamodb").Table(table)
        # the resource's client (thread-safe, unlike the resource) with its Python<->DynamoDB
        # type transformation: values are plain str / Decimal
        self.client = table.meta.client
        self.table_name = table.name
        self.source = source
        self.key = bucket_key(source)
        self.max_attempts = max_attempts
        self._cache: dict | None = None  # the item as we last wrote or saw it
        self._contended = False  # our last lease lost a race: read before the next write
        self.reads = 0
        self._lock = threading.Lock()

    # -- low level
    @staticmethod
    def _parse(item: dict | None) -> dict | None:
        if not item or "version" not in item:
            return None
        out: dict[str, Any] = {}
        for k in _STATE_FIELDS:
            v = item.get(k)
            if v is None:
                out[k] = 0.0
            elif isinstance(v, dict):
                out[k] = float(v["N"])
            else:
                out[k] = float(v)
        v = item["version"]
        out["version"] = int(v["N"]) if isinstance(v, dict) else int(v)
        return out

    def read(self) -> dict | None:
        r = self.client.get_item(TableName=self.table_name, Key=self.key, ConsistentRead=True)
        return self._parse(r.get("Item"))

    def _write(self, old: dict | None, new: dict, cfg: LimiterConfig, adds: dict[str, int]):
        """Conditional write of ``new`` over ``old``. Returns (True, new) or (False, current)."""
        from botocore.exceptions import ClientError

        names = {f"#{k}": k for k in _STATE_FIELDS}
        names.update({"#version": "version", "#ceiling": "ceiling", "#burst": "burst",
                      "#expires_at": "expires_at"})
        values = {f":{k}": _num(new[k]) for k in _STATE_FIELDS}
        new_version = (old["version"] if old else 0) + 1
        values.update({
            ":version": new_version,
            ":ceiling": _num(cfg.ceiling),
            ":burst": int(cfg.burst),
            ":expires_at": int(new["updated_at"]) + ITEM_TTL_SECONDS,
        })
        sets = [f"#{k} = :{k}" for k in _STATE_FIELDS]
        sets += ["#version = :version", "#ceiling = :ceiling", "#burst = :burst",
                 "#expires_at = :expires_at"]
        expr = "SET " + ", ".join(sets)
        if adds:
            expr += " ADD " + ", ".join(f"#{k} :{k}" for k in adds)
            names.update({f"#{k}": k for k in adds})
            values.update({f":{k}": int(v) for k, v in adds.items()})
        if old is None:
            cond = "attribute_not_exists(pk)"
        else:
            cond = "#version = :old_version"
            values[":old_version"] = int(old["version"])
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self.key,
                UpdateExpression=expr,
                ConditionExpression=cond,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            current = self._parse(e.response.get("Item"))
            if current is None and old is None:
                current = self.read()  # created by someone else; ALL_OLD not returned
            return False, current
        written = dict(new, version=new_version)
        return True, written

    def _update(self, cfg: LimiterConfig, fn, adds) -> tuple[dict, int, int, Any]:
        with self._lock:
            old = self._cache
            contended = self._contended
        writes = conflicts = 0
        if contended:  # others wrote since our last lease: a read is 5x cheaper than a lost write
            old = self.read()
            self.reads += 1
        for attempt in range(self.max_attempts):
            new, extra = fn(old)
            if extra == []:  # a refused lease: nothing to write
                return new, writes, conflicts, extra
            ok, cur = self._write(old, new, cfg, adds(extra))
            writes += 1
            if ok:
                with self._lock:
                    self._cache = cur
                    self._contended = conflicts > 0
                return cur, writes, conflicts, extra
            conflicts += 1
            old = cur
            if conflicts > 3:  # heavy contention: back off a little, with jitter
                time.sleep(random.uniform(0, 0.002 * min(conflicts, 20)))
        raise RuntimeError(f"rate bucket {self.source}: {writes} conflicting writes in a row")

    # -- bucket API
    def lease(self, clock: Callable[[], float], want: int, cfg: LimiterConfig) -> Lease:
        def fn(old):  # the time is read right before each attempt: slots start at the write
            return compute_lease(old, clock(), want, cfg)

        cur, writes, conflicts, slots = self._update(
            cfg, fn, lambda _: {"leases": 1, "tokens_leased": want}
        )
        return Lease(slots, cur["rate"], cur["paused_until"], cur.get("version"), writes,
                     conflicts, retry_at=cur.get("retry_at", 0.0))

    def throttle(self, now: float, retry_after: float, cfg: LimiterConfig) -> float:
        def fn(old):
            return compute_throttle(old, now, retry_after, cfg), None

        cur, *_ = self._update(cfg, fn, lambda _: {"throttles": 1})
        return cur["rate"]

    def give_back(self, version: Any, count: int, cfg: LimiterConfig) -> bool:
        with self._lock:
            old = self._cache
        if old is None or old["version"] != version or count <= 0:
            return False
        new = dict(old, tokens=old["tokens"] + count)
        ok, cur = self._write(old, new, cfg, {})
        with self._lock:
            self._cache = cur
        return ok

    def peek(self) -> dict | None:
        return self.read()


# ---------------------------------------------------------------------------------------------
# The limiter a worker uses


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Limiter:
    """One worker's view of a shared bucket: leases blocks, spends them at their slot times.

    Safe to use from several threads and event loops at once (state under a threading lock; a
    coroutine waiting for another's lease waits on a future of its own loop)."""

    def __init__(
        self,
        source: str,
        cfg: LimiterConfig,
        bucket: MemoryBucket | DynamoBucket,
        *,
        clock: Callable[[], float] | None = None,
        metrics: Any = None,
    ) -> None:
        self.source = source
        self.cfg = cfg
        self.bucket = bucket
        self.clock = clock or time.time
        self.metrics = metrics
        self._lock = threading.Lock()
        self._slots: collections.deque[float] = collections.deque()
        self._slots_version: Any = None
        self._leasing = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._paused_until = 0.0
        self._rate = cfg.ceiling
        self._block = 1.0
        self._expired_since_lease = 0
        self._lease_latency = 0.0
        self._lead = 0.0
        self._last_lease_start = 0.0
        self._queue_delay = 0.0
        self._pending: set[asyncio.Future] = set()
        self._closed = False
        self._s = dict(tokens_granted=0, leases=0, lease_writes=0, lease_conflicts=0,
                       tokens_leased=0, tokens_expired=0, woke_late=0, backlog_waits=0, tokens_returned=0, waits=0,
                       wait_seconds=0.0, throttles=0, successes=0)

    # -- public API
    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        start = self.clock()
        while True:
            now = self.clock()
            slot = fut = None
            leader = prefetch = False
            with self._lock:
                self._drop_unusable(now)
                if self._slots:
                    slot = self._slots.popleft()
                    if self._low_water(now):  # lease the next block before this one runs out
                        self._leasing = prefetch = True
                        want = self._want()
                elif not self._leasing:
                    self._leasing = True
                    leader = True
                    want = self._want()
                else:
                    fut = loop.create_future()
                    self._waiters.append((loop, fut))
            if prefetch:
                task = loop.create_task(self._lease(want))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            if slot is not None:
                delay = slot - now
                if delay > 0:
                    await asyncio.sleep(delay)
                    now = self.clock()
                    if now > slot + self.cfg.grace or slot < self._paused_until:
                        with self._lock:  # woke too late (or a 429 arrived): not usable
                            self._s["tokens_expired"] += 1
                            self._s["woke_late"] += 1
                            self._expired_since_lease += 1
                        continue
                self._granted(start, now)
                return
            if leader:
                await self._lease(want)
                continue
            await fut

    def on_throttle(self, retry_after: float | None) -> None:
        now = self.clock()
        ra = 0.0 if retry_after is None else min(max(float(retry_after), 0.0), MAX_PAUSE_SECONDS)
        with self._lock:
            self._s["throttles"] += 1
            self._paused_until = max(self._paused_until, now + ra)
            self._s["tokens_expired"] += len(self._slots)
            self._slots.clear()
            self._rate = max(self.cfg.floor, self._rate * self.cfg.cut_factor)
            self._block = 1.0
        if self.bucket.cheap:
            self._rate = self.bucket.throttle(now, ra, self.cfg)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._rate = self.bucket.throttle(now, ra, self.cfg)
        else:  # do not block the event loop on a DynamoDB write
            task = loop.create_task(asyncio.to_thread(self.bucket.throttle, now, ra, self.cfg))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def on_success(self) -> None:
        with self._lock:
            self._s["successes"] += 1

    def stats(self) -> dict:
        with self._lock:
            out = dict(self._s)
        out["wait_seconds"] = round(out["wait_seconds"], 3)
        out["current_rate"] = round(self._rate, 3)
        out["lease_reads"] = getattr(self.bucket, "reads", 0)
        out["lease_latency"] = round(self._lease_latency, 4)
        out["source"] = self.source
        return out

    async def close(self) -> None:
        """Give the unused future slots back when nobody leased after us (one conditional
        write), wait for pending 429 writes, emit metrics if a Metrics object was given."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        now = self.clock()
        with self._lock:
            future = [s for s in self._slots
                      if s > now + self.cfg.grace and s >= self._last_lease_start]
            version = self._slots_version
            self._slots.clear()
        if future:
            ok = await self._call(self.bucket.give_back, version, len(future), self.cfg)
            with self._lock:
                if ok:
                    self._s["tokens_returned"] += len(future)
                else:
                    self._s["tokens_expired"] += len(future)
        if self.metrics is not None and not self._closed:
            self._emit_metrics()
        self._closed = True

    # -- internals
    def _granted(self, start: float, now: float) -> None:
        waited = max(0.0, now - start)
        with self._lock:
            self._s["tokens_granted"] += 1
            if waited > 0.001:
                self._s["waits"] += 1
                self._s["wait_seconds"] += waited

    def _drop_unusable(self, now: float) -> None:
        s = self._slots
        while s and (s[0] + self.cfg.grace < now or s[0] < self._paused_until):
            s.popleft()
            self._s["tokens_expired"] += 1
            self._expired_since_lease += 1

    def _low_water(self, now: float) -> bool:
        if self.bucket.cheap or self._leasing:
            return False
        horizon = now + 2 * self._lease_latency + 1.0 / self._rate
        return not self._slots or self._slots[-1] < horizon

    def _want(self) -> int:
        demand = len(self._waiters) + 1
        if self.bucket.cheap:
            return demand
        # adaptive block: grow while every leased slot was used, shrink when slots expired or
        # when the fleet's backlog is longer than a block (many workers: smaller shares)
        if self._s["leases"]:
            if self._expired_since_lease or self._queue_delay > self.cfg.block_seconds:
                self._block = max(1.0, self._block / 2)
            else:
                self._block = self._block * 2
        self._block = min(self._block, self.cfg.max_block(self._rate))
        return max(1, min(max(demand, int(self._block)), self.cfg.max_block(self._rate)))

    async def _call(self, fn, *args):
        if self.bucket.cheap:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _lease(self, want: int) -> None:
        lease = None
        lead = self._lead
        t0 = time.monotonic()
        writes = conflicts = 0
        try:
            while True:
                lease = await self._call(self.bucket.lease, lambda: self.clock() + lead, want,
                                         self.cfg)
                writes += lease.writes
                conflicts += lease.conflicts
                if lease.slots:
                    break
                with self._lock:
                    self._s["backlog_waits"] += 1
                await asyncio.sleep(max(0.001, min(lease.retry_at - self.clock(), 0.5)))
                t0 = time.monotonic()
        finally:
            if not self.bucket.cheap and lease is not None:
                # the slots of a lease start ``lead`` seconds after it is computed, so that
                # the write's round trip does not eat them (they would expire on arrival)
                lat = time.monotonic() - t0
                self._lease_latency = 0.8 * self._lease_latency + 0.2 * lat
                self._lead = min(self.cfg.block_seconds / 2, 1.5 * self._lease_latency)
            with self._lock:
                self._leasing = False
                if lease is not None:
                    self._s["leases"] += 1
                    self._s["lease_writes"] += writes
                    self._s["lease_conflicts"] += conflicts
                    delay = lease.slots[0] - self.clock() if lease.slots else 0.0
                    self._queue_delay = delay
                    self._s["tokens_leased"] += len(lease.slots)
                    self._rate = lease.rate
                    if lease.paused_until > self._paused_until:
                        self._paused_until = lease.paused_until
                    self._slots.extend(lease.slots)
                    self._slots_version = lease.version
                    if lease.slots:
                        self._last_lease_start = lease.slots[0]
                    self._expired_since_lease = 0
                waiters, self._waiters = self._waiters, []
            for lp, fut in waiters:
                try:
                    lp.call_soon_threadsafe(_wake, fut)
                except RuntimeError:  # that loop is closed
                    pass

    def _emit_metrics(self) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        st = self.stats()
        m = self.metrics
        m.add_metric(name="RateLimiterTokensGranted", unit=MetricUnit.Count,
                     value=st["tokens_granted"])
        m.add_metric(name="RateLimiterWaits", unit=MetricUnit.Count, value=st["waits"])
        m.add_metric(name="RateLimiterWaitSeconds", unit=MetricUnit.Seconds,
                     value=st["wait_seconds"])
        m.add_metric(name="RateLimiterThrottles", unit=MetricUnit.Count, value=st["throttles"])
        m.add_metric(name="RateLimiterLeaseWrites", unit=MetricUnit.Count,
                     value=st["lease_writes"])
        m.add_metric(name="RateLimiterCurrentRate", unit=MetricUnit.CountPerSecond,
                     value=st["current_rate"])


class UnlimitedLimiter:
    """rate=None: acquire returns at once; only counts."""

    def __init__(self, source: str, metrics: Any = None) -> None:
        self.source = source
        self.metrics = metrics
        self._lock = threading.Lock()
        self._s = dict(tokens_granted=0, leases=0, lease_writes=0, waits=0, wait_seconds=0.0,
                       throttles=0, successes=0)

    async def acquire(self) -> None:
        with self._lock:
            self._s["tokens_granted"] += 1

    def on_throttle(self, retry_after: float | None) -> None:
        with self._lock:
            self._s["throttles"] += 1

    def on_success(self) -> None:
        with self._lock:
            self._s["successes"] += 1

    def stats(self) -> dict:
        with self._lock:
            return dict(self._s, current_rate=None, source=self.source)

    async def close(self) -> None:
        if self.metrics is not None:
            from aws_lambda_powertools.metrics import MetricUnit

            self.metrics.add_metric(name="RateLimiterTokensGranted", unit=MetricUnit.Count,
                                    value=self._s["tokens_granted"])
            self.metrics.add_metric(name="RateLimiterThrottles", unit=MetricUnit.Count,
                                    value=self._s["throttles"])


# ---------------------------------------------------------------------------------------------
# Factory

_REGISTRY: dict[str, MemoryBucket] = {}
_REGISTRY_LOCK = threading.Lock()


def reset_local_buckets() -> None:
    """Forget every in-process bucket (tests)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


def _memory_bucket(source: str) -> MemoryBucket:
    with _REGISTRY_LOCK:
        b = _REGISTRY.get(source)
        if b is None:
            b = _REGISTRY[source] = MemoryBucket(source)
        return b


def limiter_for(
    source: str,
    rate: float | None,
    burst: int,
    *,
    table: Any = None,
    clock: Callable[[], float] | None = None,
    metrics: Any = None,
    **tuning: Any,
) -> RateLimiter:
    """The limiter for one worker of ``source``.

    ``rate`` (requests/s) is the ceiling, ``None`` = unlimited. ``table``: a boto3 DynamoDB Table
    resource (or table name) holding the shared bucket item; ``None``: the process-wide in-memory
    bucket of the source. ``clock``: epoch seconds (default ``time.time``). ``metrics``: an
    ``aws_lambda_powertools.Metrics``; the limiter adds its figures to it on ``close()``.
    ``tuning``: other :class:`LimiterConfig` fields (block_seconds, recovery, cut_cooldown, ...).
    Create one per worker/invocation (cheap); the bucket, not the object, is what is shared."""
    if rate is None:
        return UnlimitedLimiter(source, metrics)
    cfg = LimiterConfig(ceiling=float(rate), burst=int(burst), **tuning)
    bucket = _memory_bucket(source) if table is None else DynamoBucket(table, source)
    return Limiter(source, cfg, bucket, clock=clock, metrics=metrics)
