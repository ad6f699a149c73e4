"""How wide and how deep a level runs: the fetch workers at once (the Map's MaxConcurrency) and the parents per
batch (one Map item, one fetch invocation). A sizing policy over a spec, not part of the spec's schema.

The planner (`harvester/run.py`) sets each level's `max_concurrency` from `workers()`, the fetch worker sizes
its share of the rate from it, and a batch writes the next level's items `batch_size()` parents at a time.
"""

from __future__ import annotations

import math

from harvester.spec import SourceSpec

#: automatic batch size (a level without `batch_size`): seconds of calls per batch at one worker's share of the
#: rate, and its bounds; without a rate limit, a fixed size
BATCH_SECONDS = 30
AUTO_BATCH_MIN, AUTO_BATCH_MAX, AUTO_BATCH_UNLIMITED = 10, 500, 100
#: calls/s one fetch worker (one vCPU) sustains with room to spare, and the fewest workers a rate-limited level runs
RATE_PER_WORKER, MIN_WORKERS = 50, 2


def workers(spec: SourceSpec) -> int:
    """Fetch workers a level runs at once (the Map's MaxConcurrency, at most as many as it has batches):
    enough for the rate limit, no more, since a worker waiting for tokens is Lambda time paid for nothing.
    A worker keeps rate x latency calls in flight (Little's law), so latency needs lanes, not workers; what
    bounds one worker is the CPU its calls take (RATE_PER_WORKER); at least two, so that while one starts or
    ends a batch the other keeps the rate. Without a limit, or when the spec's `max_concurrency` is lower:
    `max_concurrency`."""
    if not spec.rate_limit:
        return spec.max_concurrency
    needed = max(MIN_WORKERS, math.ceil(spec.rate_limit.requests_per_second / RATE_PER_WORKER))
    return min(spec.max_concurrency, needed)


def batch_size(spec: SourceSpec, index: int) -> int:
    """Parents per Map item at level ``index``: the level's ``batch_size``, or, when it is not set, about
    BATCH_SECONDS of calls at one worker's share of the rate limit (one call per parent assumed), within
    [AUTO_BATCH_MIN, AUTO_BATCH_MAX]. Every batch has a fixed cost (an invocation, the checkpoint and ledger
    writes, a Map item) and a worker that ends a batch leaves the rate to the others for a moment, so a
    batch should last long against that; a batch's records are held in memory until written, which caps
    it. Without a rate limit: AUTO_BATCH_UNLIMITED."""
    level = spec.levels[index]
    if level.batch_size:
        return level.batch_size
    if not spec.rate_limit:
        return AUTO_BATCH_UNLIMITED
    share = spec.rate_limit.requests_per_second / workers(spec)
    return max(AUTO_BATCH_MIN, min(AUTO_BATCH_MAX, math.ceil(share * BATCH_SECONDS)))
