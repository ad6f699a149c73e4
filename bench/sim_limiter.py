"""Discrete-event simulation of the shared rate limiter at scale (issue 16, item 4).

    python bench/sim_limiter.py [--quick] [--seed 1] [--json out.json]

No sleeping, no threads, no network: every worker, the vendor and the DynamoDB bucket item run as coroutines
on one asyncio event loop whose clock is virtual (``VirtualLoop``: when nothing is ready, the clock jumps to
the next timer). The same seed gives the same figures.

What is the real code, what is a model
--------------------------------------
* **Real** (imported from harvester/ratelimit.py, unchanged): ``Limiter`` itself (the worker side: adaptive
  block size, lease-ahead with the measured lease latency, slot grace/expiry, ``expect()``, pause polling,
  ``on_throttle``, give-back in ``close()``), ``LimiterConfig``, ``plan_lease``, ``compute_throttle``,
  ``current_rate``, ``Lease``, the 6-decimal quantisation. The module's ``time``, ``random`` and
  ``asyncio.to_thread`` are pointed at the virtual clock, a seeded RNG and the simulated DynamoDB while a
  simulation runs (``_patched``), and restored after.
  From harvester/worker.py and harvester/sizing.py: ``lanes_needed`` (Little's law), ``START_IN_FLIGHT``,
  ``MAX_IN_FLIGHT``, and the spec's workers/batch-size rule (``RATE_PER_WORKER``, ``MIN_WORKERS``,
  ``BATCH_SECONDS``, ``AUTO_BATCH_MIN/MAX``).
* **Modelled** (re-written here because the real one is synchronous boto3 code): ``SimDynamoBucket`` follows
  ``DynamoBucket.lease/throttle/give_back/paused_until`` step by step (same plans, same conditions, same
  retry-on-condition-failure with the returned item, the same "others active" guess) but each request is an
  awaited round trip to ``SimItem``, which evaluates the conditions at the moment the request reaches the
  partition. The partition admits ``write_ceiling`` writes/s (a token bucket holding 0.1 s of them; failed
  conditional writes consume capacity too); a write beyond it is answered ProvisionedThroughputExceeded and
  retried by the SDK as botocore's legacy DynamoDB policy does (50 ms x 2^n, 10 attempts). Eventually
  consistent reads (the pause poll) return the current value. The vendor is a token bucket (rate, burst 5,
  the arithmetic of harvester/simulator/server.py ``TokenBucket``) answering 429 with ``Retry-After`` = ceil of
  the wait (at least 1 s), as the simulated vendor does by default. A fetch worker (one Lambda invocation =
  one batch of parents) follows harvester/worker.py: START_IN_FLIGHT lanes, more by ``lanes_needed`` after
  each call, ``expect(queue size)`` before each list, a 429 sleeps ``Retry-After`` and retries. Every list is
  one page (one call), as in bench/bench_ratelimit.py.
* **Simulated only** (``Scenario.shards``, default 1): K sharded bucket items (rate/K and burst/K each; Map slot
  i uses item i mod K). The changes the simulation found first (a lease no larger than the worker's lanes, the
  pause poll beside the send, a grace without the 5 ms floor, slot spacing that keeps the burst bound) are now
  in harvester/ratelimit.py, so they are simulated as the real code.

Assumptions (AWS profile; stated, not measured)
-----------------------------------------------
* DynamoDB conditional write / read round trip: 5 ms + Gamma(2, 1.5 ms) (mean 8 ms, ~5-12 ms), half each way.
* One partition per bucket item: 1,000 writes/s, 3,000 read units/s (an item lives on one partition:
  https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html).
* Lambda cold start: 10% of invocations, 0.3-0.8 s (Python with boto3 and httpx imported).
* Distributed Map: a child workflow (batch) starts 0.1-0.3 s after a slot frees (Express child + Lambda
  invoke); a level change (MapRun finishing, ``Advance level``, the next Map starting) costs 5-8 s: a community
  report measured 6+ s between the children finishing and the parent continuing, and no AWS page gives a
  figure (https://repost.aws/questions/QUn5oKgcnjRTemt39V9hdtyw/why-is-step-function-s-distributed-map-slow).
* Vendor: 50 ms service latency, network one way 1 ms + Exp(0.5 ms) jitter; a batch's end (results to S3,
  ledger) 0.1-0.2 s.

What the figures say (where the utilisation goes at 200, 1,000 and 5,000 r/s, the sharded design, demand-sized
leases tried and not taken): README.md, "Toward 5,000 requests/s (simulation)".

Local profile (bench/bench_ratelimit.py on this 2-core machine): the hierarchy 1 -> 10 -> 105 -> 1,925 calls,
the spec's workers and batch sizes, level changes measured 0.4-0.9 s; the genuinely unknown parameters are
calibrated (see ``LOCAL``): the moto lease round trip, the CPU a call costs its worker process (the four
workers, moto and the vendor share 2 cores; a call's send waits while its worker's CPU is busy), and the
local batch start.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import random
import selectors
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harvester.ratelimit as rl  # noqa: E402
from harvester.ratelimit import (  # noqa: E402
    Lease,
    Limiter,
    LimiterConfig,
    _initial_state,
    _q,
    compute_throttle,
    current_rate,
    plan_lease,
)
from harvester.sizing import AUTO_BATCH_MAX, AUTO_BATCH_MIN, BATCH_SECONDS, MIN_WORKERS, RATE_PER_WORKER  # noqa: E402
from harvester.worker import MAX_IN_FLIGHT, START_IN_FLIGHT, lanes_needed  # noqa: E402

EPOCH = 1_800_000_000.0  # the virtual wall clock starts here (epoch seconds, like time.time())


# ---------------------------------------------------------------------------------------------
# Virtual time


class _VirtualSelector(selectors.SelectSelector):
    """Nothing ever becomes readable: 'waiting' for a timeout moves the virtual clock instead."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.now = start

    def select(self, timeout: float | None = None):
        if timeout is None:
            raise RuntimeError("simulation deadlock: nothing scheduled and nothing ready")
        self.now += max(0.0, timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = EPOCH) -> None:
        super().__init__(_VirtualSelector(start))
        # timers within 1 us are due: at epoch ~1.8e9 a float step is 0.24 us, so a smaller resolution could
        # leave a timer forever a rounding error in the future
        self._clock_resolution = 1e-6

    def time(self) -> float:
        return self._selector.now


async def _sleep_until(t: float) -> None:
    d = t - asyncio.get_running_loop().time()
    if d > 0:
        await asyncio.sleep(d)


class _AsyncioShim:
    """harvester.ratelimit's view of asyncio during a simulation: ``to_thread`` runs the bucket call
    on the simulated DynamoDB (an awaited round trip) instead of a thread; everything else is asyncio."""

    @staticmethod
    async def to_thread(fn, *args, **kw):
        r = fn(*args, **kw)
        if asyncio.iscoroutine(r):
            r = await r
        return r

    def __getattr__(self, name: str):
        return getattr(asyncio, name)


@contextmanager
def _patched(loop: VirtualLoop, rng: random.Random):
    saved = rl.time, rl.random, rl.asyncio

    def no_sleep(_s: float) -> None:
        raise RuntimeError("time.sleep in a simulation")

    rl.time = types.SimpleNamespace(monotonic=loop.time, time=loop.time, sleep=no_sleep)
    rl.random = rng
    rl.asyncio = _AsyncioShim()
    try:
        yield
    finally:
        rl.time, rl.random, rl.asyncio = saved


# ---------------------------------------------------------------------------------------------
# Scenario


@dataclass(frozen=True)
class Scenario:
    rate: float  # the vendor's limit and the spec's rate_limit, requests/s
    workers: int | None = None  # batches of a level running at once (None: the spec's rule)
    levels: tuple[int, ...] = (1, 10, 105, 1925)  # calls per level (one page per list)
    burst: int = 5
    shards: int = 1  # K bucket items, each with rate/K; a worker (Map slot) uses slot % K
    seed: int = 1
    vendor_latency: float = 0.050  # s, service time at the vendor
    owd: float = 0.001  # one-way network delay to/from the vendor
    owd_jitter: float = 0.0005  # mean of an exponential added to each one-way delay
    ddb_base: float = 0.005  # DynamoDB round trip: base + Gamma(2, ddb_scale)
    ddb_scale: float = 0.0015
    write_ceiling: float = 1000.0  # writes/s one partition admits
    read_ceiling: float = 3000.0  # read units/s (an eventually consistent read is half a unit)
    cold_fraction: float = 0.10
    cold_start: tuple[float, float] = (0.3, 0.8)
    child_start: tuple[float, float] = (0.1, 0.3)  # a Map child (batch) starting after a slot frees
    level_gap: tuple[float, float] = (5.0, 8.0)  # MapRun end + Advance + next Map start
    batch_end: tuple[float, float] = (0.1, 0.2)  # writing a batch's results
    cpu_per_call: float = 0.0  # s of its worker's CPU a call takes (0: a Lambda's own vCPU is not the bound)
    rate_per_worker: float = RATE_PER_WORKER
    max_concurrency: int = 1000  # the spec's max_concurrency (bench/bench_ratelimit.py: 4)
    headroom: float = 1.0  # the limiter's ceiling as a fraction of the vendor's limit (1: the spec says the limit)
    label: str = ""

    def n_workers(self) -> int:
        if self.workers:
            return self.workers
        return min(self.max_concurrency, max(MIN_WORKERS, math.ceil(self.rate / self.rate_per_worker)))

    def batch_size(self) -> int:
        share = self.rate / self.n_workers()
        return max(AUTO_BATCH_MIN, min(AUTO_BATCH_MAX, math.ceil(share * BATCH_SECONDS)))


# ---------------------------------------------------------------------------------------------
# The vendor


class Vendor:
    """Token bucket per API key (harvester/simulator/server.py ``TokenBucket`` arithmetic, on the virtual clock)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = float(burst), None
        self.arrivals: list[float] = []
        self.refused = 0

    def take(self, now: float) -> float:
        self.arrivals.append(now)
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        self.refused += 1
        return (1.0 - self.tokens) / self.rate


# ---------------------------------------------------------------------------------------------
# DynamoDB: one partition, one item per shard


class Throttled(Exception):
    """ProvisionedThroughputExceeded after the SDK's retries."""


class Partition:
    """Admits ``ceiling`` units/s (a token bucket holding 0.1 s of them)."""

    def __init__(self, ceiling: float) -> None:
        self.ceiling, self.cap = ceiling, max(1.0, ceiling * 0.1)
        self.tokens, self.updated = self.cap, 0.0

    def admit(self, now: float, units: float) -> bool:
        self.tokens = min(self.cap, self.tokens + (now - self.updated) * self.ceiling)
        self.updated = now
        if self.tokens >= units:
            self.tokens -= units
            return True
        return False


class SimItem:
    """The bucket item ``RATE#{source}`` on its partition: conditions are evaluated when a request arrives."""

    FIELDS = ("tat", "rate", "rate_at", "paused_until", "last_cut", "known")

    def __init__(self, sc: Scenario, rng: random.Random) -> None:
        self.sc, self.rng = sc, rng
        self.item: dict[str, float] | None = None
        self.writes = Partition(sc.write_ceiling)
        self.reads = Partition(sc.read_ceiling)
        self.write_times: list[float] = []
        self.throttled = 0
        self.round_trips = 0
        self.rt_sum = 0.0

    def _latency(self) -> float:
        return self.sc.ddb_base + self.rng.gammavariate(2.0, self.sc.ddb_scale)

    async def call(self, fn, *, write: bool, units: float = 1.0):
        """One request with the SDK's retries of a throttled request (legacy policy: 50 ms x 2^n, 10 tries)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for attempt in range(10):
            lat = self._latency()
            await asyncio.sleep(lat / 2)
            now = loop.time()
            part = self.writes if write else self.reads
            if part.admit(now, units):
                result = fn(now)
                if write:
                    self.write_times.append(now)
                await asyncio.sleep(lat / 2)
                self.round_trips += 1
                self.rt_sum += loop.time() - t0
                return result
            self.throttled += 1
            await asyncio.sleep(lat / 2 + 0.05 * 2 ** attempt)
        raise Throttled("ProvisionedThroughputExceededException")

    # -- the item's operations (each a function of the arrival time; return (ok, item) like the client)
    def _snapshot(self) -> dict | None:
        return dict(self.item) if self.item is not None else None

    def cond_update(self, cond, changes):
        """A conditional UpdateItem: ``changes(item)`` gives the fields to set; (True, new) or (False, ALL_OLD)."""
        def run(_now: float):
            if not cond(self.item):
                return False, self._snapshot()
            self.item = {**(self.item or dict.fromkeys(self.FIELDS, 0.0)), **changes(self.item)}
            return True, self._snapshot()
        return run


def _created(tat: float, ceiling: float):
    """The item's first write (``attribute_not_exists(pk)``): the creator's state."""
    return lambda _it: {"tat": tat, "rate": _q(ceiling), "rate_at": 0.0, "paused_until": 0.0,
                        "last_cut": 0.0, "known": 0.0}


class SimDynamoBucket:
    """``DynamoBucket`` step by step, each request an awaited round trip to ``SimItem`` (see the docstring)."""

    cheap = False

    def __init__(self, item: SimItem, source: str, max_attempts: int = 200) -> None:
        self.item, self.source, self.max_attempts = item, source, max_attempts
        self._cache: dict | None = None
        self._others_active = False
        self._refused = False
        self.reads = 0

    async def read(self) -> dict | None:
        self.reads += 1
        return await self.item.call(lambda _n: self.item._snapshot(), write=False, units=1.0)

    async def _update(self, cond, changes):
        return await self.item.call(self.item.cond_update(cond, changes), write=True)

    async def lease(self, clock, want: int, cfg: LimiterConfig) -> Lease:
        s = self._cache
        if self._refused:
            s = await self.read()
        writes = conflicts = 0
        for _ in range(self.max_attempts):
            now = clock()
            p = plan_lease(s, now, want, cfg)
            self._refused = p["kind"] == "refuse"
            if self._refused:
                self._cache = s
                return Lease([], p["rate"], s["paused_until"], None, writes, conflicts, retry_at=p["retry_at"])
            if p["kind"] == "reset" and self._others_active and s["tat"] >= now - 1.0:
                p = dict(p, kind="append")
            ok, cur = await self._update(*self._lease_write(p, s, cfg))
            writes += 1
            if ok:
                new_tat = float(cur["tat"])
                start = new_tat - p["span"]
                if s is not None:
                    self._others_active = abs(start - float(s["tat"])) > 1e-5
                slots = [max(now, start + (k + 1) / p["rate"]) for k in range(want)]
                base = s or _initial_state(now, cfg)
                self._cache = dict(base, tat=new_tat)
                return Lease(slots, p["rate"], base["paused_until"], new_tat, writes, conflicts)
            conflicts += 1
            if s is not None and cur is not None and cur["tat"] != s["tat"]:
                self._others_active = True
            elif p["kind"] == "append":
                self._others_active = False
            s = cur if cur is not None else await self.read()
            if conflicts > 5:
                await asyncio.sleep(self.item.rng.uniform(0, 0.001 * min(conflicts, 20)))
        raise RuntimeError(f"rate bucket {self.source}: {writes} conflicting writes in a row")

    @staticmethod
    def _lease_write(p: dict, s: dict | None, cfg: LimiterConfig):
        """(condition, changes) of DynamoBucket.lease's three UpdateItem forms, values as stored."""
        if p["kind"] == "append":
            lo, hi, ra, span = _q(p["lo"]), _q(p["hi"]), _q(s["rate_at"]), _q(p["span"])
            return (lambda it: it is not None and lo <= it["tat"] <= hi and it["rate_at"] == ra,
                    lambda it: {"tat": _q(it["tat"] + span)})
        tat = _q(p["tat"])
        if p["kind"] == "reset":
            lo, ra = _q(p["lo"]), _q(s["rate_at"])
            return (lambda it: it is not None and it["tat"] < lo and it["rate_at"] == ra,
                    lambda it: {"tat": tat})
        return (lambda it: it is None), _created(tat, cfg.ceiling)

    async def throttle(self, now: float, retry_after: float, cfg: LimiterConfig) -> float:
        s = self._cache
        if s is None:
            s = await self.read()
        for _ in range(self.max_attempts):
            if s is None:
                await self._update(lambda it: it is None, _created(0.0, cfg.ceiling))
                s = await self.read()
                continue
            new = compute_throttle(s, now, retry_after, cfg)
            if new["rate_at"] != s["rate_at"]:
                old = _q(s["rate_at"])
                vals = {"rate": _q(new["rate"]), "rate_at": _q(now), "last_cut": _q(now),
                        "known": _q(new.get("known") or 0.0)}
                ok, cur = await self._update(lambda it, old=old: it["rate_at"] == old, lambda it, vals=vals: vals)
                if not ok:
                    s = cur if cur is not None else await self.read()
                    continue
            p = _q(new["paused_until"])
            await self._update(lambda it, p=p: it["paused_until"] < p, lambda it, p=p: {"paused_until": p})
            await self._update(lambda it, p=p: it["tat"] < p, lambda it, p=p: {"tat": p})
            new = dict(new, tat=max(s["tat"], p), paused_until=p)
            self._cache = new
            return current_rate(new, now, cfg)
        raise RuntimeError(f"rate bucket {self.source}: throttle did not converge")

    async def give_back(self, version: Any, count: int, rate: float) -> bool:
        if version is None or count <= 0:
            return False
        mine, back = _q(float(version)), _q(float(version) - count / rate)
        ok, _ = await self._update(lambda it: it is not None and it["tat"] == mine, lambda it: {"tat": back})
        return ok

    async def paused_until(self) -> float:
        self.reads += 1
        it = await self.item.call(lambda _n: self.item._snapshot(), write=False, units=0.5)
        return float(it["paused_until"]) if it else 0.0


# ---------------------------------------------------------------------------------------------
# The fleet: levels (Distributed Maps) of batches (Lambda invocations) of calls


class Fleet:
    def __init__(self, sc: Scenario, cfg: LimiterConfig | None = None) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.vendor = Vendor(sc.rate, sc.burst)
        k = max(1, sc.shards)
        self.items = [SimItem(sc, self.rng) for _ in range(k)]
        base = cfg or LimiterConfig(ceiling=sc.rate * sc.headroom, burst=sc.burst)
        self.cfgs = [self._shard_cfg(base, k)] * k
        self.limiter_stats: list[dict] = []
        self.cpu_free: dict[int, float] = collections.defaultdict(float)
        self.level_spans: list[tuple[float, float]] = []
        self.limiter_errors = 0
        self.cold_starts = 0
        self.batches = 0

    @staticmethod
    def _shard_cfg(base: LimiterConfig, k: int) -> LimiterConfig:
        """K shards: each its own item with ceiling/K; the vendor's burst is split too (at least 1 each)."""
        if k == 1:
            return base
        return replace(base, ceiling=base.ceiling / k, burst=max(1, base.burst // k), grace=-1.0, bucket_cap=-1.0)

    def _u(self, lo_hi: tuple[float, float]) -> float:
        return self.rng.uniform(*lo_hi)

    async def call(self, slot: int, limiter: Limiter, lat: dict) -> None:
        """One list (one page), as harvester/client.py does it: acquire, send, 429 -> pause, retry."""
        loop = asyncio.get_running_loop()
        sc = self.sc
        while True:
            try:
                await limiter.acquire()
            except Exception:  # noqa: BLE001 - the client retries a limiter failure as a transient error
                self.limiter_errors += 1
                await asyncio.sleep(self.rng.uniform(0, 1.0))
                continue
            if sc.cpu_per_call:  # the send waits while the worker's CPU is busy (one process, one GIL)
                await _sleep_until(self.cpu_free[slot])
            t0 = loop.time()
            await asyncio.sleep(sc.owd + self.rng.expovariate(1 / sc.owd_jitter) if sc.owd_jitter else sc.owd)
            wait = self.vendor.take(loop.time())
            back = sc.owd + (self.rng.expovariate(1 / sc.owd_jitter) if sc.owd_jitter else 0.0)
            await asyncio.sleep(sc.vendor_latency + back)
            lat["sum"] += loop.time() - t0
            lat["n"] += 1
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                limiter.on_throttle(retry_after)
                await asyncio.sleep(retry_after)
                continue
            limiter.on_success()
            if sc.cpu_per_call:
                self.cpu_free[slot] = max(loop.time(), self.cpu_free[slot]) + sc.cpu_per_call
                await _sleep_until(self.cpu_free[slot])
            return

    async def batch(self, slot: int, parents: int) -> None:
        """One fetch invocation: lanes by Little's law over a queue of parents (harvester/worker.py)."""
        sc = self.sc
        self.batches += 1
        if self.rng.random() < sc.cold_fraction:
            self.cold_starts += 1
            await asyncio.sleep(self._u(sc.cold_start))
        k = slot % len(self.items)
        limiter = Limiter("sim", self.cfgs[k], SimDynamoBucket(self.items[k], "sim"),
                          clock=asyncio.get_running_loop().time)
        rate_share = sc.rate * sc.headroom / sc.n_workers()
        lat = {"sum": 0.0, "n": 0}
        todo = [parents]
        lanes: list[asyncio.Task] = []

        async def lane() -> None:
            while todo[0] > 0:
                todo[0] -= 1
                limiter.expect(todo[0], lanes=sum(not t.done() for t in lanes))
                await self.call(slot, limiter, lat)
                grow()

        def grow() -> None:
            want = lanes_needed(rate_share, lat["sum"] / lat["n"], MAX_IN_FLIGHT)
            while sum(not t.done() for t in lanes) < min(want, todo[0]):
                lanes.append(asyncio.create_task(lane()))

        lanes.extend(asyncio.create_task(lane()) for _ in range(max(1, min(START_IN_FLIGHT, parents))))
        while lanes and not all(t.done() for t in lanes):
            await asyncio.gather(*lanes)
        await limiter.close()
        self.limiter_stats.append(limiter.stats())
        await asyncio.sleep(self._u(sc.batch_end))

    async def level(self, calls: int) -> None:
        """A Distributed Map: batches of ``batch_size`` parents, ``workers`` children at once."""
        size = self.sc.batch_size()
        batches = collections.deque(min(size, calls - i) for i in range(0, calls, size))
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def map_slot(slot: int) -> None:
            while batches:
                n = batches.popleft()
                await asyncio.sleep(self._u(self.sc.child_start))
                await self.batch(slot, n)

        await asyncio.gather(*(map_slot(i) for i in range(min(self.sc.n_workers(), len(batches)))))
        self.level_spans.append((t0, loop.time()))

    async def run(self) -> None:
        for i, calls in enumerate(self.sc.levels):
            if i:
                await asyncio.sleep(self._u(self.sc.level_gap))
            await self.level(calls)


# ---------------------------------------------------------------------------------------------
# Figures


def busiest_window(times: list[float], width: float = 1.0) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def calendar_over(times: list[float], limit: float) -> int:
    counts = collections.Counter(int(t) for t in times)
    return sum(1 for n in counts.values() if n > limit)


def figures(fleet: Fleet) -> dict[str, Any]:
    sc, v = fleet.sc, fleet.vendor
    times = sorted(v.arrivals)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    served = len(times) - v.refused
    writes = sorted(t for it in fleet.items for t in it.write_times)
    per_item_peak = max(busiest_window(sorted(it.write_times)) for it in fleet.items)
    big = fleet.level_spans[-1]
    in_big = [t for t in times if big[0] <= t <= big[1]]
    st = fleet.limiter_stats
    rts = sum(it.round_trips for it in fleet.items)
    return {
        "label": sc.label, "rate": sc.rate, "workers": sc.n_workers(), "shards": sc.shards,
        "batch": sc.batch_size(), "calls": len(times), "served": served, "seconds": round(span, 2),
        "utilisation": round(served / (sc.rate * span), 3) if span else None,
        "util_last_level": round(len(in_big) / (sc.rate * (in_big[-1] - in_big[0])), 3) if len(in_big) > 1 else None,
        "r429": v.refused, "r429_share": round(100 * v.refused / len(times), 2) if times else 0.0,
        "busiest": busiest_window(times), "limit_plus_burst": sc.rate + sc.burst,
        "secs_over": calendar_over(times, sc.rate + sc.burst),
        "writes_per_s": round(len(writes) / span, 1) if span else 0.0,
        "peak_item_writes_1s": per_item_peak,
        "ddb_throttled": sum(it.throttled for it in fleet.items),
        "ddb_rt_ms": round(1000 * sum(it.rt_sum for it in fleet.items) / rts, 1) if rts else 0.0,
        "leases": sum(s["leases"] for s in st), "tokens_expired": sum(s["tokens_expired"] for s in st),
        "backlog_waits": sum(s["backlog_waits"] for s in st), "batches": fleet.batches,
        "woke_late": sum(s["woke_late"] for s in st), "pause_checks": sum(s["pause_checks"] for s in st),
        "cold_starts": fleet.cold_starts, "limiter_errors": fleet.limiter_errors,
    }


def simulate(sc: Scenario, cfg: LimiterConfig | None = None) -> dict[str, Any]:
    """Run one scenario to completion on a virtual clock; deterministic for a given ``sc.seed``."""
    loop = VirtualLoop()
    fleet = Fleet(sc, cfg)
    try:
        with _patched(loop, random.Random(sc.seed + 1)):
            loop.run_until_complete(fleet.run())
    finally:
        loop.close()
    return figures(fleet)


# ---------------------------------------------------------------------------------------------
# Profiles, tables

#: bench/bench_ratelimit.py on this 2-core machine. Known: the hierarchy, max_concurrency 4 (so 2, 2, 4 workers
#: at 10, 50, 200 r/s), burst 5, Retry-After 1 s, no cold starts (the worker processes are started once).
#: Calibrated (genuinely unknown; chosen on a grid by the squared error over the six measured figures):
#: cpu_per_call 5 ms (a call's share of its worker's CPU while four workers, moto and the vendor share 2 cores;
#: grid 4-7 ms) and the moto lease round trip 3 ms + Gamma(2, 1 ms) (grid 3 / 6 ms base). Set from the
#: measurement, not fitted: the level change (0.3-0.6 s of Advance + Map start, plus the simulated tail of the
#: level's last batches = the 0.4-0.9 s measured), local loopback 0.5 ms + Exp(0.5 ms) each way.
LOCAL = dict(max_concurrency=4, owd=0.0005, owd_jitter=0.0005, ddb_base=0.003, ddb_scale=0.001,
             cold_fraction=0.0, child_start=(0.05, 0.1), level_gap=(0.3, 0.6), batch_end=(0.05, 0.1),
             cpu_per_call=0.005)

#: README "Benchmarks", rate-limit table (2,041 calls, burst 5): (limit, latency s) -> utilisation, 429s
#: bench_ratelimit.py --only limits --no-dlt, 2026-12-01 22:54-23:05 UTC, this 2-core machine, vendor at niceness -10
MEASURED = {(10, 0.0): (0.997, 0), (10, 0.05): (0.996, 0), (50, 0.0): (0.961, 0), (50, 0.05): (0.965, 0),
            (200, 0.0): (0.797, 0), (200, 0.05): (0.729, 4)}
#: stated tolerance of the simulated mean utilisation against the measured figure: 0.02 at 10 and 50 r/s; 0.1 at
#: 200 r/s, where a run holds 1-5 429s and each costs a 1-s Retry-After (~7% of a 15-s run): seeds differ by more
TOLERANCE = {10: 0.02, 50: 0.02, 200: 0.10}


def calibration(seeds: range) -> list[dict]:
    rows = []
    for (rate, lat), (m_util, m_429) in MEASURED.items():
        runs = [simulate(Scenario(rate=rate, vendor_latency=lat, seed=sd, **LOCAL)) for sd in seeds]
        us = [r["utilisation"] for r in runs]
        mean = sum(us) / len(us)
        rows.append({"limit": rate, "latency_ms": int(lat * 1000), "measured_util": m_util,
                     "sim_util": round(mean, 3), "sim_range": f"{min(us):.2f}-{max(us):.2f}",
                     "tolerance": TOLERANCE[rate], "within": abs(mean - m_util) <= TOLERANCE[rate],
                     "measured_429": m_429, "sim_429": "-".join(sorted({str(r["r429"]) for r in runs}, key=int)),
                     "sim_busiest": max(r["busiest"] for r in runs), "limit_plus_burst": rate + 5})
    return rows


def scale_scenario(rate: float, workers: int, seconds: float = 10.0, **kw) -> Scenario:
    """The AWS profile: 4 levels (1, 20, 3 s and ``seconds`` of calls at the limit), 50 ms vendor latency."""
    levels = (1, 20, int(rate * 3), int(rate * seconds))
    return Scenario(rate=rate, workers=workers, levels=levels, **kw)


SCALE_COLUMNS = [("label", "case"), ("rate", "limit r/s"), ("workers", "workers"), ("batch", "batch"),
                 ("shards", "K"),
                 ("utilisation", "util run"), ("util_last_level", "util level"), ("r429_share", "429 %"),
                 ("busiest", "busiest 1 s"), ("limit_plus_burst", "limit+burst"), ("writes_per_s", "writes/s"),
                 ("peak_item_writes_1s", "peak item writes 1 s"), ("ddb_throttled", "ddb throttled"),
                 ("tokens_expired", "tokens expired"), ("calls", "calls")]
CAL_COLUMNS = [("limit", "limit r/s"), ("latency_ms", "latency ms"), ("measured_util", "measured util"),
               ("sim_util", "sim util (mean)"), ("sim_range", "sim range"), ("tolerance", "tolerance"),
               ("within", "within"), ("measured_429", "measured 429s"), ("sim_429", "sim 429s"),
               ("sim_busiest", "sim busiest 1 s"), ("limit_plus_burst", "limit+burst")]


def table(rows: list[dict], columns) -> str:
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


#: (label, shards): the Limiter of harvester/ratelimit.py with one bucket item, and with K=4 sharded items
VARIANTS = (("1 item", 1), ("K=4 items", 4))


def scale(rates, workers, variants, seconds: float, seed: int) -> list[dict]:
    rows = []
    for rate in rates:
        for w in workers:
            for label, k in variants:
                sc = scale_scenario(rate, w, seconds, shards=k, seed=seed, label=label)
                rows.append(simulate(sc))
                print(table(rows[-1:], SCALE_COLUMNS).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


#: what is left at 5,000 r/s: (label, rate, workers, changes to the scenario)
WHAT_IF = (("no network jitter", 5000, 200, dict(owd_jitter=0.0)),
           ("vendor burst 50", 5000, 200, dict(burst=50)),
           ("K=4, vendor burst 50", 5000, 200, dict(burst=50, shards=4)))


def what_if(seconds: float, seed: int) -> list[dict]:
    rows = []
    for label, rate, workers, changes in WHAT_IF:
        sc = scale_scenario(rate, workers, seconds, seed=seed, label=label)
        rows.append(simulate(replace(sc, **changes)))
        print(table(rows[-1:], SCALE_COLUMNS).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one seed, 5 s levels")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rates", default="200,1000,5000")
    p.add_argument("--workers", default="4,20,50,200")
    p.add_argument("--seconds", type=float, default=10.0, help="the last level's length at the limit")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    seeds = range(args.seed, args.seed + (1 if args.quick else 4))
    cal = calibration(seeds)
    print(f"## Local benchmark: measured vs simulated (seeds {seeds[0]}-{seeds[-1]})\n")
    print(table(cal, CAL_COLUMNS), flush=True)
    rows = scale([float(x) for x in args.rates.split(",")], [int(x) for x in args.workers.split(",")],
                 VARIANTS, 5.0 if args.quick else args.seconds, args.seed)
    print("\n## AWS profile (see the module docstring for the assumptions)\n")
    print(table(rows, SCALE_COLUMNS))
    extra = what_if(5.0 if args.quick else args.seconds, args.seed)
    print("\n## What is left at 5,000 r/s\n")
    print(table(extra, SCALE_COLUMNS))
    if args.json:
        args.json.write_text(json.dumps({"calibration": cal, "scale": rows, "what_if": extra}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
