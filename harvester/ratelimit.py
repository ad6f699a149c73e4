"""A rate limiter shared by every worker and every concurrent run of one source.

The vendor's limit is per API key, so the bucket is per *source*: every worker of every run of a
source draws from one bucket (``RATE#{source}``); two sources never share one.

The bucket: a token bucket kept as a schedule (GCRA)
----------------------------------------------------
The shared state is ``tat``, the time up to which send slots have been handed out (a token bucket
with capacity ``bucket_cap`` refilled at ``rate`` is exactly "slots spaced 1/rate apart, at most
``bucket_cap`` of them behind now"). A worker *leases* a block of n tokens with one conditional
``UpdateItem`` and gets back n send **slots** (epoch times), slot k at
``max(now, start + (k + 1) / rate)`` where ``start = max(tat, now - bucket_cap / rate)``:

* busy schedule (``now - cap/rate <= tat <= now + max_ahead + block``): ``SET tat = tat + :span``
  with that ``BETWEEN`` as the condition and ``ReturnValues=UPDATED_NEW``: atomic, needs no read,
  and appends by different workers never conflict with each other (no lost update: DynamoDB
  serialises the additions; the new ``tat`` tells the worker where its span ends);
* idle schedule (``tat < now - cap/rate``): ``SET tat = :lo + :span`` on condition ``tat < :lo``
  (this is the refill, capped at the bucket's capacity);
* more than ``max_ahead`` (0.5 s) already handed out: refused without a write; the worker
  comes back when the backlog has shrunk (with jitter; after a refusal it reads before writing).

A failed condition returns the current item (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), so
a retry costs no extra read. Every worker's sends therefore sit on one timeline, spaced
1/rate apart, plus at most ``bucket_cap`` tokens of burst.

Locally a slot is spent at its time (never before) and only within ``grace`` seconds after it; a
slot not used by then is dropped (the lease has expired). A worker that dies holding a lease
leaves a gap of at most its unused slots (<= ``max_ahead`` + one block); nothing waits for its
tokens and nothing can use them later. ``close()`` gives unused future slots back when nobody
leased after us (``SET tat = :back`` on condition ``tat = :ours``).

Bound: sends in any 1-second window <= s x (1 + grace + jitter) + bucket_cap + 1 <= ceiling + burst,
where s <= ``max_rate`` is the spacing rate, by the choice ``grace = min(50 ms, (burst - 1) / (2 ceiling))``,
``bucket_cap = max(0, burst - 1 - ceiling x (grace + jitter))`` (``jitter`` = 10 ms of send-path delay kept in
reserve) and ``max_rate = min(ceiling, (ceiling + burst - 1 - bucket_cap) / (1 + grace + jitter))``: above
~150 r/s at burst 5 the bucket holds no credit and slots are spaced a little under the ceiling (2 % at 1,000 r/s).

Block size (tokens per write) adapts per worker: it starts at half the largest block
(``rate x block_seconds``, 200 ms of the fleet's rate), doubles while every leased slot gets used,
halves when slots expire unused, is at least the number of coroutines waiting and at most the
worker's lanes (``expect(n, lanes=L)``: L requests in flight at latency d spend at most L slots per
d, and slots are spaced at the fleet's rate, so the rest of a larger block expired). The next block
is leased in the background before the current one runs out (lease latency is measured, and the
slots of a lease start that much later so the write's round trip does not eat them). In-process
buckets cost nothing, so there the block is exactly the number of waiting coroutines.
A worker that knows how many calls it still has (``expect(n)``: lists not started yet) caps its
leases at that, and leases nothing ahead once its slots cover it: a worker finishing a batch would
otherwise strand the slots it leased ahead (seen: ~5 per batch, a fifth of a 50 r/s limit lost
across a fleet of four).

AIMD
----
``on_throttle`` (a 429) sets the shared ``rate`` at most once per ``cut_cooldown`` (1 s) however
many workers saw a 429: a 429 more than ``repeat_window`` (5 s) after the last pause ended is arrival
jitter (burst 5 is 25 ms at 200 r/s), so the rate resumes at ``headroom`` (97 %) of itself after the
pause (see ``compute_throttle``); a 429 within ``repeat_window`` of resuming means the vendor's limit is lower: the
rate is cut by ``cut_factor`` (0.5) and ``known`` = ``hold`` (95 %) x the rate that was refused is
kept, above which recovery is slow (``hold_recovery``, 0.2 % of known per second), so a lower real
limit is found and held just under (a 429 while creeping above ``known`` steps back to 95 %, not
half); floor ``min_fraction`` (5 %) of the ceiling;
sets ``paused_until = max(paused_until, now + Retry-After)`` and ``tat >= paused_until``, so no new
slot is handed out before it; the worker drops the slots it holds. Other workers learn of the pause
within ``pause_poll`` (0.2 s: a projected, eventually consistent GetItem of ``paused_until`` while
they are sending, started one read's round trip before a slot's time, beside the wait, never between
the slot's time and its send) and drop theirs. Additive increase is a function of time, so it needs no write:
``rate(t) = min(ceiling, rate + recovery x ceiling x (t - max(rate_at, paused_until)))`` with
``recovery`` 5 % of the ceiling per 429-free second (slower above ``known``, see above). The ceiling is the ``rate`` given to
``limiter_for`` and is never exceeded. ``on_success`` only counts.

Time source
-----------
One time source: the **wall clock** (epoch seconds, ``clock()``, default ``time.time``) of each
worker; on Lambda it is disciplined by the Amazon Time Sync Service (well under 10 ms apart). Slot
times, ``tat``, ``paused_until`` and ``rate_at`` are epoch seconds. Skew cannot create tokens:
``tat`` never moves backwards (appends add, a reset or a pause only raises it), and tokens are
issued only by advancing ``tat``; a worker whose clock is behind sees ``tat`` ahead of it and
waits (or is told to come back); one whose clock is ahead can at most take the burst credit of an
idle bucket, after which everybody waits for the item's timeline. Within a second, workers skewed
by d can bunch sends by at most rate x d. Local waits use ``asyncio.sleep`` on the same clock.

DynamoDB item (the ledger table; ``pk``/``sk`` strings, TTL attribute ``expires_at``)
--------------------------------------------------------------------------------------
``pk = RATE#{source}``, ``sk = BUCKET``; ``tat`` (N, epoch s, the schedule: never decreases),
``rate`` (N, the AIMD base rate set by the last cut), ``rate_at`` (N, time of the last cut),
``last_cut`` (N), ``known`` (N, the held limit; 0 = none), ``paused_until`` (N), ``ceiling``/``burst`` (N, the
creator's configuration, informational), counters ``leases``, ``tokens_leased``, ``throttles`` (N), ``expires_at`` (N,
now + 1 day, refreshed by every lease). Numbers are stored with 6 decimals.

``table`` is a boto3 DynamoDB ``Table`` resource (its client, which is thread-safe unlike the
resource, and its name are used) or a table name (a default boto3 resource is made).

Every limiter returned by :func:`limiter_for` may be used from any thread and any event loop (no
asyncio primitive is bound to a loop: waiting coroutines wait on futures of their own loop, woken
with ``call_soon_threadsafe``). ``table=None`` uses an in-process bucket per source from a
thread-safe, process-wide registry, with the same arithmetic.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

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

    def expect(self, upcoming: int, lanes: int | None = None) -> None: ...

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
    repeat_window: float = 5.0  # a 429 this soon after the fleet resumed sending means the limit is lower
    headroom: float = 0.97  # after a lone 429 at the ceiling (arrival jitter): resume at this fraction of it
    hold: float = 0.95  # a repeated 429 at rate r: below hold x r recovery is fast; above it, slow:
    hold_recovery: float = 0.002  # this fraction of the held rate per second
    max_ahead: float = 0.5  # no lease starts later than this after now: bounds the backlog
    pause_poll: float = 0.2  # seconds between checks of the shared paused_until (0: never)
    jitter: float = 0.01  # seconds of send-path jitter the burst budget keeps in reserve
    grace: float = field(default=-1.0)  # seconds a slot stays usable; <0: derived
    bucket_cap: float = field(default=-1.0)  # burst credit kept in the bucket; <0: derived
    max_rate: float = field(default=0.0, init=False)  # derived: the fastest slot spacing that keeps the bound

    def __post_init__(self) -> None:
        if self.ceiling <= 0:
            raise ValueError("rate must be > 0 (use None for unlimited)")
        if self.burst < 0:
            raise ValueError("burst must be >= 0")
        if self.grace < 0:
            # half the vendor's burst (less the one a send may meet) in time: slots sent up to grace late bunch
            # by at most rate x grace; no floor (a 5 ms floor let 25 bunch at 5,000 r/s against a burst of 5)
            g = min(0.05, 0.5 * max(self.burst - 1, 1) / self.ceiling)
            object.__setattr__(self, "grace", g)
        if self.bucket_cap < 0:
            object.__setattr__(
                self, "bucket_cap",
                max(0.0, self.burst - 1 - self.ceiling * (self.grace + self.jitter)),
            )
        # the rate slots are spaced at, at most: where rate x (grace + jitter) > burst - 1 (above ~150 r/s at burst
        # 5), spacing them at the ceiling would let a 1-s window hold up to rate x (1 + grace + jitter) sends;
        # spaced at max_rate it holds at most ceiling + burst (0.02 below the ceiling at 1,000 r/s and more)
        room = (self.ceiling + self.burst - 1 - self.bucket_cap) / (1 + self.grace + self.jitter)
        object.__setattr__(self, "max_rate", min(self.ceiling, room))

    @property
    def floor(self) -> float:
        return self.ceiling * self.min_fraction

    def max_block(self, rate: float) -> int:
        return max(1, int(rate * self.block_seconds))


def _initial_state(now: float, cfg: LimiterConfig) -> dict[str, float]:
    return {"tat": 0.0, "rate": cfg.ceiling, "rate_at": 0.0, "paused_until": 0.0,
            "last_cut": 0.0, "known": 0.0}


def current_rate(s: dict, now: float, cfg: LimiterConfig) -> float:
    """The shared AIMD rate at ``now``: the base rate set by the last cut, plus ``recovery`` x
    ceiling per second since the cut (or the end of the pause, if later) up to ``known`` (the rate
    a repeated 429 revealed, 0 = none), then ``hold_recovery`` x known per second; within [floor,
    ceiling].
    A function of time, so recovering needs no write."""
    since = max(float(s["rate_at"]), float(s["paused_until"]))
    dt = max(0.0, now - since)
    base = float(s["rate"])
    fast = cfg.recovery * cfg.ceiling
    known = float(s.get("known") or 0.0) or cfg.ceiling
    if base < known and dt * fast <= known - base:
        rate = base + fast * dt
    else:
        t_known = max(0.0, (known - base) / fast) if fast > 0 else dt
        slow = cfg.hold_recovery * known if s.get("known") else fast
        rate = max(base, known) + slow * (dt - t_known)
    return max(cfg.floor, min(cfg.max_rate, rate))


def plan_lease(s: dict | None, now: float, want: int, cfg: LimiterConfig) -> dict:
    """What a lease of ``want`` tokens at ``now`` does to the bucket state ``s``.

    Returns ``{"kind": "append"|"reset"|"create"|"refuse", "rate", "lo", "hi", "start", "tat",
    "slots", "retry_at"}``: ``append`` when the schedule is busy (``lo <= tat <= hi``: just add
    our span to ``tat``), ``reset`` when it is idle (``tat < lo``: start at ``lo``, which is the
    burst credit), ``refuse`` when more than ``max_ahead`` is already reserved."""
    if s is None:
        s = _initial_state(now, cfg)
        kind = "create"
    else:
        kind = None
    rate = current_rate(s, now, cfg)
    lo = now - cfg.bucket_cap / rate
    # the write's condition allows one block more than the plan: a cached tat a little stale
    # (others appended since we last saw it) then still succeeds instead of costing a retry
    hi = now + cfg.max_ahead + cfg.block_seconds
    tat = float(s["tat"])
    if tat > now + cfg.max_ahead:
        return {"kind": "refuse", "rate": rate, "retry_at": tat - cfg.max_ahead, "slots": []}
    if kind is None:
        kind = "append" if tat >= lo else "reset"
    start = max(tat, lo)
    slots = [max(now, start + (k + 1) / rate) for k in range(want)]
    return {"kind": kind, "rate": rate, "lo": lo, "hi": hi, "start": start,
            "tat": start + want / rate, "span": want / rate, "slots": slots}


def compute_lease(state: dict | None, now: float, want: int, cfg: LimiterConfig):
    """(new state, slots) of a lease; slots == [] when refused (state["retry_at"] says when)."""
    p = plan_lease(state, now, want, cfg)
    s = dict(state) if state is not None else _initial_state(now, cfg)
    if p["kind"] == "refuse":
        s["retry_at"] = p["retry_at"]
        return s, []
    s["tat"] = p["tat"]  # never decreases: start >= tat
    return s, p["slots"]


def compute_throttle(state: dict | None, now: float, retry_after: float, cfg: LimiterConfig):
    """A 429 at ``now``: set the rate (once per cut_cooldown: the 429s of calls already in flight are
    the same event) and push the schedule past the pause (no burst credit right after it either).

    What tells a lower limit from arrival jitter is how soon the next 429 comes once the fleet sends
    again: sending at r above a real limit L drains the vendor's burst b in b / (r - L) seconds, so a
    lower limit answers within a few seconds of every resume, while jitter (a busy CPU, a GC pause,
    the network bunching sends) draws 429s at random, seconds apart, at or under the limit.

    * A 429 within ``repeat_window`` (5 s) after the last pause ended: the vendor's real limit is
      lower; the rate is cut by ``cut_factor`` and the rate it was refused at is remembered
      (``known`` = ``hold`` x it), so recovery slows down just below it.
    * A 429 while creeping above ``known``: step back to ``hold`` x the rate (the limit is in between).
    * Otherwise arrival jitter: pause as told and go on at ``headroom`` (97 %) of the rate, which comes
      back at ``recovery`` per second; a jitter 429 costs its pause, not a halving (a seed-sized run on
      a busy machine held 130-145 r/s of 200 when 429s 10 s apart counted as a lower limit)."""
    s = dict(state) if state is not None else _initial_state(now, cfg)
    last = float(s["last_cut"])
    if now - last >= cfg.cut_cooldown:
        rate = current_rate(s, now, cfg)
        resumed = float(s["paused_until"])  # the end of the last pause: the fleet has sent since
        repeated = last > 0 and now - resumed < cfg.repeat_window
        known = float(s.get("known") or 0.0)
        if repeated:  # the limit is lower than the ceiling (or than it was): cut, and remember where it bit
            s["rate"] = max(cfg.floor, rate * cfg.cut_factor)
            s["known"] = max(cfg.floor, rate * cfg.hold)
        elif known and rate > known:  # creeping above the limit found earlier: step back under it
            s["rate"] = s["known"] = max(cfg.floor, rate * cfg.hold)
        else:  # arrival jitter: a small headroom after the pause
            s["rate"] = max(cfg.floor, min(rate, cfg.max_rate) * cfg.headroom)
        s["rate_at"] = now
        s["last_cut"] = now
    s["paused_until"] = max(float(s["paused_until"]), now + retry_after)
    s["tat"] = max(float(s["tat"]), float(s["paused_until"]))
    return s


@dataclass
class Lease:
    slots: list[float]
    rate: float
    paused_until: float
    version: Any = None  # the tat this lease wrote: give-back is allowed while it is unchanged
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
                return Lease([], 0.0, s["paused_until"], None, 0, 0, retry_at=s["retry_at"])
            self.state = s
            return Lease(slots, current_rate(s, clock(), cfg), s["paused_until"], s["tat"], 0)

    def throttle(self, now: float, retry_after: float, cfg: LimiterConfig) -> float:
        with self._lock:
            self.state = compute_throttle(self.state, now, retry_after, cfg)
            return current_rate(self.state, now, cfg)

    def give_back(self, version: Any, count: int, rate: float) -> bool:
        with self._lock:
            if self.state is None or self.state["tat"] != version or count <= 0:
                return False
            self.state = dict(self.state, tat=self.state["tat"] - count / rate)
            return True

    def peek(self) -> dict | None:
        with self._lock:
            return dict(self.state) if self.state else None

    def paused_until(self) -> float:
        with self._lock:
            return float(self.state["paused_until"]) if self.state else 0.0


_STATE_FIELDS = ("tat", "rate", "rate_at", "paused_until", "last_cut", "known")


def _num(x: float) -> Decimal:
    return Decimal(repr(float(x))).quantize(Decimal("0.000001"))


def _q(x: float) -> float:
    """The value as stored (6 decimals), so local comparisons match the item's."""
    return float(_num(x))


class DynamoBucket:
    """The bucket of one source as one item of the ledger table (see the module docstring)."""

    cheap = False

    def __init__(self, table: Any, source: str, *, max_attempts: int = 200) -> None:
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
        self._cache: dict | None = None  # the item as we last saw it
        self._others_active = False  # someone else moved tat since we last looked
        self._refused = False  # our last lease was refused (backlog full)
        self._lock = threading.Lock()
        self.reads = 0

    @staticmethod
    def _parse(item: dict | None) -> dict | None:
        if not item or "tat" not in item:
            return None
        out: dict[str, Any] = {}
        for k in _STATE_FIELDS:
            v = item.get(k)
            if v is None:
                out[k] = 0.0
            elif isinstance(v, dict):  # ALL_OLD on a failed condition comes untyped
                out[k] = float(v["N"])
            else:
                out[k] = float(v)
        return out

    def read(self) -> dict | None:
        self.reads += 1
        r = self.client.get_item(TableName=self.table_name, Key=self.key, ConsistentRead=True)
        return self._parse(r.get("Item"))

    def _update(self, expr: str, cond: str, values: dict, names: dict | None = None):
        """One conditional UpdateItem. Returns (True, None) or (False, the current item)."""
        from botocore.exceptions import ClientError

        kw: dict[str, Any] = {}
        if names:
            kw["ExpressionAttributeNames"] = names
        try:
            r = self.client.update_item(
                TableName=self.table_name, Key=self.key, UpdateExpression=expr,
                ConditionExpression=cond, ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD", **kw)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False, self._parse(e.response.get("Item"))
        return True, r.get("Attributes", {})

    def _remember(self, s: dict | None) -> None:
        with self._lock:
            self._cache = s

    def lease(self, clock: Callable[[], float], want: int, cfg: LimiterConfig) -> Lease:
        with self._lock:
            s = self._cache
        if self._refused:
            # we were told to wait for a full backlog: others have been appending meanwhile, so
            # look (a consistent read is 1/5 the price of a failed conditional write)
            s = self.read()
        writes = conflicts = 0
        for _ in range(self.max_attempts):
            now = clock()  # read right before each attempt: the slots start at the write
            p = plan_lease(s, now, want, cfg)
            self._refused = p["kind"] == "refuse"
            if p["kind"] == "refuse":
                self._remember(s)
                return Lease([], p["rate"], s["paused_until"], None, writes, conflicts,
                             retry_at=p["retry_at"])
            if p["kind"] == "reset" and self._others_active and s["tat"] >= now - 1.0:
                # our view is old and others are leasing: the schedule is most likely busy by
                # now, so try to append (a failed condition costs as much as a write)
                p = dict(p, kind="append")
            tat = _q(p["tat"])
            exp = int(now) + ITEM_TTL_SECONDS
            common = {":n": want, ":one": 1, ":exp": exp}
            adds = "ADD leases :one, tokens_leased :n"
            if p["kind"] == "append":
                # busy schedule: add our span to tat, atomically; no read, no lost update, and
                # appends never conflict with each other
                ok, cur = self._update(
                    f"SET tat = tat + :span, expires_at = :exp {adds}",
                    "tat BETWEEN :lo AND :hi AND rate_at = :rate_at",
                    {":span": _num(p["span"]), ":lo": _num(p["lo"]), ":hi": _num(p["hi"]),
                     ":rate_at": _num(s["rate_at"]), **common})
            elif p["kind"] == "reset":
                ok, cur = self._update(
                    f"SET tat = :tat, expires_at = :exp {adds}",
                    "tat < :lo AND rate_at = :rate_at",
                    {":tat": _num(tat), ":lo": _num(p["lo"]), ":rate_at": _num(s["rate_at"]),
                     **common})
            else:  # create
                ok, cur = self._update(
                    f"SET tat = :tat, #rate = :rate, rate_at = :z, paused_until = :z, "
                    f"last_cut = :z, ceiling = :rate, burst = :burst, expires_at = :exp {adds}",
                    "attribute_not_exists(pk)",
                    {":tat": _num(tat), ":rate": _num(cfg.ceiling), ":z": _num(0.0),
                     ":burst": cfg.burst, **common}, {"#rate": "rate"})
            writes += 1
            if ok:
                new_tat = float(cur["tat"])  # UPDATED_NEW: where our span ends
                start = new_tat - p["span"]
                if s is not None:
                    self._others_active = abs(start - float(s["tat"])) > 1e-5
                slots = [max(now, start + (k + 1) / p["rate"]) for k in range(want)]
                base = s or _initial_state(now, cfg)
                self._remember(dict(base, tat=new_tat))
                return Lease(slots, p["rate"], base["paused_until"], new_tat, writes, conflicts)
            conflicts += 1
            if s is not None and cur is not None and cur["tat"] != s["tat"]:
                self._others_active = True
            elif p["kind"] == "append":
                # the guess "busy" was wrong: nobody moved tat, the schedule is idle; guessing again would fail
                # again (until tat is a second old): a livelock of failed writes, seen at 200 r/s with burst 5
                self._others_active = False
            s = cur if cur is not None else self.read()
            if conflicts > 5:  # heavy contention: back off a little, with jitter
                time.sleep(random.uniform(0, 0.001 * min(conflicts, 20)))
        raise RuntimeError(f"rate bucket {self.source}: {writes} conflicting writes in a row")

    def throttle(self, now: float, retry_after: float, cfg: LimiterConfig) -> float:
        with self._lock:
            s = self._cache
        if s is None:
            s = self.read()
        for _ in range(self.max_attempts):
            if s is None:  # nobody leased yet: create the item, then retry
                self._update(
                    "SET tat = :z, #rate = :rate, rate_at = :z, paused_until = :z, "
                    "last_cut = :z, ceiling = :rate, burst = :burst, expires_at = :exp",
                    "attribute_not_exists(pk)",
                    {":z": _num(0.0), ":rate": _num(cfg.ceiling), ":burst": cfg.burst,
                     ":exp": int(now) + ITEM_TTL_SECONDS}, {"#rate": "rate"})
                s = self.read()
                continue
            new = compute_throttle(s, now, retry_after, cfg)
            if new["rate_at"] != s["rate_at"]:  # cut the rate (at most once per cooldown)
                ok, cur = self._update(
                    "SET #rate = :rate, rate_at = :now, last_cut = :now, known = :known ADD throttles :one",
                    "rate_at = :old",
                    {":rate": _num(new["rate"]), ":now": _num(now), ":old": _num(s["rate_at"]),
                     ":known": _num(new.get("known") or 0.0), ":one": 1}, {"#rate": "rate"})
                if not ok:
                    s = cur if cur is not None else self.read()
                    continue
            p = _num(new["paused_until"])
            # pause: paused_until and tat both become at least now + retry_after (two atomic
            # "max" writes; each is a no-op if someone already went further)
            self._update("SET paused_until = :p", "paused_until < :p", {":p": p})
            self._update("SET tat = :p", "tat < :p", {":p": p})
            new = dict(new, tat=max(s["tat"], float(p)), paused_until=float(p))
            self._remember(new)
            return current_rate(new, now, cfg)
        raise RuntimeError(f"rate bucket {self.source}: throttle did not converge")

    def give_back(self, version: Any, count: int, rate: float) -> bool:
        if version is None or count <= 0:
            return False
        ok, _ = self._update("SET tat = :back", "tat = :mine",
                             {":back": _num(float(version) - count / rate),
                              ":mine": _num(float(version))})
        return ok

    def peek(self) -> dict | None:
        return self.read()

    def paused_until(self) -> float:
        """The shared pause (an eventually consistent read: half a read unit)."""
        self.reads += 1
        r = self.client.get_item(TableName=self.table_name, Key=self.key,
                                 ProjectionExpression="paused_until")
        v = r.get("Item", {}).get("paused_until")
        return float(v) if v is not None else 0.0


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
        # tokens per lease: starts at half the largest block, then adapts (see _want)
        self._block = 1.0 if bucket.cheap else max(1.0, cfg.max_block(cfg.ceiling) / 2)
        self._expired_since_lease = 0
        self._lease_latency = 0.0
        self._lead = 0.0
        self._last_lease_start = 0.0
        self._queue_delay = 0.0
        self._lease_rate = cfg.ceiling
        self._last_pause_check = 0.0
        self._last_error: str | None = None
        self._pending: set[asyncio.Future] = set()
        self._closed = False
        self._upcoming: int | None = None  # acquires the worker says are still to come (None: unknown)
        self._lanes: int | None = None  # requests the worker can have in flight (None: unknown)
        self._s = dict(tokens_granted=0, leases=0, lease_writes=0, lease_conflicts=0,
                       tokens_leased=0, tokens_expired=0, woke_late=0, backlog_waits=0,
                       pause_checks=0, errors=0, tokens_returned=0, waits=0,
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
                        want = self._want(prefetch=True)
                elif not self._leasing:
                    self._leasing = True
                    leader = True
                    want = self._want()
                else:
                    fut = loop.create_future()
                    self._waiters.append((loop, fut))
            if prefetch:
                self._spawn(loop, self._lease(want))
            if slot is not None:
                delay = slot - now
                if not self.bucket.cheap:
                    # has another worker seen a 429 meanwhile? Asked one read's round trip before the slot's
                    # time, beside the wait: awaited between the slot's time and the send, the read (5-12 ms)
                    # outlasted the grace above 500 r/s and the slot expired
                    early = delay - max(0.02, 3 * self._lease_latency)
                    if early > 0:
                        await asyncio.sleep(early)
                        now = self.clock()
                    if self._pause_check_due(now):
                        self._spawn(loop, self._check_pause())
                    delay = slot - now
                if delay > 0:
                    await asyncio.sleep(delay)
                    now = self.clock()
                if self.bucket.cheap and self._pause_check_due(now):
                    await self._check_pause()
                if delay > 0 or slot < self._paused_until:
                    if now > slot + self.cfg.grace or slot < self._paused_until:
                        with self._lock:  # woke too late (or a 429 arrived): not usable
                            self._s["tokens_expired"] += 1
                            if slot >= self._paused_until:
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

    def expect(self, upcoming: int, lanes: int | None = None) -> None:
        """Tell the limiter how many more acquires the worker knows are coming (e.g. lists not started yet;
        pages beyond the first are unknown). Leases then stay within that: slots leased ahead by a worker that
        is about to stop would expire unused, capacity the rest of the fleet can no longer have. Without a
        hint, the block adapts as described in the module docstring.

        ``lanes``: requests the worker can have in flight. No lease is larger: its slots are spaced at the
        fleet's rate, so L lanes at latency d spend at most L of them per d, and the rest of a larger block
        expired unused (simulated at 1,000 r/s with 4 workers: 46 % of the tokens, utilisation 0.44)."""
        with self._lock:
            self._upcoming = max(0, int(upcoming))
            if lanes is not None:
                self._lanes = max(1, int(lanes))

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
            self._s["tokens_expired"] += len(self._slots) - len(future)  # leased, never used
            version = self._slots_version
            self._slots.clear()
        if future:
            ok = await self._call(self.bucket.give_back, version, len(future), self._lease_rate)
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

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro) -> None:
        task = loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            with self._lock:  # a failed prefetch: the next acquire leases (and raises) itself
                self._s["errors"] += 1
                self._last_error = repr(task.exception())

    def _pause_check_due(self, now: float) -> bool:
        """Slots are leased up to max_ahead ahead, so a 429 seen by another worker must reach
        us sooner than our next lease: look at the item's paused_until every pause_poll s."""
        if self.bucket.cheap:
            return True  # in memory: free, look every time
        poll = self.cfg.pause_poll
        if poll <= 0 or now - self._last_pause_check < poll:
            return False
        with self._lock:
            if now - self._last_pause_check < poll:
                return False
            self._last_pause_check = now
            return True

    async def _check_pause(self) -> None:
        paused_until = await self._call(self.bucket.paused_until)
        with self._lock:
            self._s["pause_checks"] += 1
            if paused_until > self._paused_until:
                self._paused_until = paused_until
                self._drop_unusable(self.clock())

    def _low_water(self, now: float) -> bool:
        if self.bucket.cheap or self._leasing:
            return False
        if self._upcoming is not None and len(self._slots) >= self._upcoming:
            return False  # the slots held cover the work the worker knows of
        horizon = now + 2 * self._lease_latency + 1.0 / self._rate
        return not self._slots or self._slots[-1] < horizon

    def _want(self, prefetch: bool = False) -> int:
        """Tokens to lease now. ``prefetch``: the calling acquire already has its slot (the next block is
        leased before this one runs out), so only the coroutines waiting count as demand."""
        demand = len(self._waiters) + (0 if prefetch else 1)
        if self.bucket.cheap:
            return max(1, demand)
        # adaptive block: grow while every leased slot was used, shrink when slots expired
        if self._s["leases"]:
            if self._expired_since_lease:
                self._block = max(1.0, self._block / 2)
            else:
                self._block = self._block * 2
        self._block = min(self._block, self.cfg.max_block(self._rate))
        if self._lanes is not None:  # no block larger than the lanes can spend (see expect)
            self._block = min(self._block, float(self._lanes))
        want = max(demand, int(self._block))
        if self._upcoming is not None:
            # no more than the known work (those waiting, and what is to come) less the slots already held:
            # a worker holding 3 slots with 9 calls to come leases 6, not 9 (the 3 would expire unused)
            want = min(want, demand + max(0, self._upcoming - len(self._slots)))
        if self._lanes is not None:
            want = min(want, max(demand, self._lanes))
        return max(1, min(want, self.cfg.max_block(self._rate)))

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
                # come back when the backlog is below max_ahead, spread so that the workers that
                # were refused together do not collide again
                jitter = random.uniform(0, want / max(lease.rate, self.cfg.floor))
                await asyncio.sleep(max(0.001, min(lease.retry_at - self.clock(), 0.5)) + jitter)
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
                    self._lease_rate = lease.rate
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

    def expect(self, upcoming: int, lanes: int | None = None) -> None:
        pass

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
