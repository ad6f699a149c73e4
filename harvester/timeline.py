"""Per-second counts of one batch's requests sent, 429s and retries, kept on its ledger item (`timeline`) so the run
report (`harvest report RUN_ID`, harvester/cli/report.py) draws the same charts for a local run and an AWS run.

The worker's only part is a hook: its fetcher counts into `CountingStats`, which notes each increment of `calls`,
`throttled` and `retries` in the wall-clock second it happens (epoch seconds: every worker, process and Lambda
shares the clock, so the batches add up to the fleet's rate). The checkpoint carries the timeline from one
invocation to the next, so a batch's item holds all its invocations.

Stored form, compact and bounded (a DynamoDB item is at most 400 KB, attribute names included:
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html; a string counts its UTF-8
bytes: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html):

    {"t0": 1764577133, "step": 1, "sent": "12 13*4 0*3600 12", "throttled": "0*8 1", "retries": "0*8 1",
     "spans": [[1764577133, 1764578033], ...]}

Each series is run-length encoded from `t0`, one bucket of `step` seconds per token (`v` or `v*n`: n buckets of v),
so a pause between invocations (Step Functions' retry wait, a resume days later) costs a few characters. A series
longer than `MAX_CHARS` doubles `step` (adjacent buckets summed) until it fits: a 15-minute invocation (900 s, the
Lambda maximum) at 1,000 requests/s from one worker is about 4.5 KB a series at 1 s; two of them are still at 1 s
(at a worker's usual share, 10-99 requests/s, at most 2.7 KB an invocation: four of them). `spans` are
the invocations' [start, end] epoch seconds (at most `MAX_SPANS`, the latest kept). At most ~3 x 12 KB + 2 KB per
item whatever the batch does: far under the item limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harvester.client import CallStats

SERIES = ("sent", "throttled", "retries")
MAX_CHARS = 12_000  # per series string
MAX_SPANS = 64  # invocations kept per batch


def encode_rle(values: list[int]) -> str:
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        n = j - i + 1
        out.append(str(values[i]) if n == 1 else f"{values[i]}*{n}")
        i = j + 1
    return " ".join(out)


def decode_rle(text: str) -> list[int]:
    values: list[int] = []
    for token in (text or "").split():
        v, _, n = token.partition("*")
        values.extend([int(v)] * (int(n) if n else 1))
    return values


class Timeline:
    """One batch's counts per bucket, continued from its stored form (an earlier invocation's checkpoint)."""

    def __init__(self, stored: dict[str, Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.step = int(stored.get("step", 1)) if stored else 1
        self.t0: int | None = int(stored["t0"]) if stored and stored.get("t0") is not None else None
        self.counts: dict[str, dict[int, int]] = {s: {} for s in SERIES}  # bucket start (epoch s) -> count
        for s in SERIES:
            for k, v in enumerate(decode_rle((stored or {}).get(s, ""))):
                if v:
                    self.counts[s][self.t0 + k * self.step] = v
        self.spans: list[list[int]] = [list(x) for x in (stored or {}).get("spans", [])]
        now = int(clock())
        self.spans.append([now, now])  # this invocation

    def add(self, series: str, n: int) -> None:
        now = int(self.clock())
        if self.t0 is None:
            self.t0 = now
        bucket = self.t0 + ((now - self.t0) // self.step) * self.step  # floor: also before t0
        counts = self.counts[series]
        counts[bucket] = counts.get(bucket, 0) + n

    def stats(self) -> CountingStats:
        """A fetcher's CallStats that counts into this timeline."""
        return CountingStats(_timeline=self)

    def _dense(self, series: str, start: int, buckets: int) -> list[int]:
        values = [0] * buckets
        for at, v in self.counts[series].items():
            values[(at - start) // self.step] += v
        return values

    def _coarsen(self, start: int) -> None:
        self.step *= 2
        for s in SERIES:
            merged: dict[int, int] = {}
            for at, v in self.counts[s].items():
                b = start + ((at - start) // self.step) * self.step
                merged[b] = merged.get(b, 0) + v
            self.counts[s] = merged
        self.t0 = start

    def encode(self) -> dict[str, Any]:
        """The stored form, bounded (see the module's docstring); the current invocation's span ends now."""
        self.spans[-1][1] = int(self.clock())
        out: dict[str, Any] = {"t0": None, "step": self.step, **{s: "" for s in SERIES},
                               "spans": self.spans[-MAX_SPANS:]}
        keys = [at for s in SERIES for at in self.counts[s]]
        if not keys:
            return out
        start = min(keys)
        while True:
            buckets = (max(keys) - start) // self.step + 1
            text = {s: encode_rle(self._dense(s, start, buckets)) for s in SERIES}
            if all(len(t) <= MAX_CHARS for t in text.values()):
                return {**out, "t0": start, "step": self.step, **text}
            self._coarsen(start)
            keys = [at for s in SERIES for at in self.counts[s]]


def _counted(name: str, series: str) -> property:
    """A CallStats field whose increments are also noted in the timeline (only these three: the fetcher's other
    fields stay plain attributes)."""
    slot = "_" + name

    def get(self) -> int:
        return self.__dict__.get(slot, 0)

    def put(self, value: int) -> None:
        grown = value - self.__dict__.get(slot, 0)
        if grown > 0:
            self._timeline.add(series, grown)
        self.__dict__[slot] = value

    return property(get, put)


class CountingStats(CallStats):
    """CallStats that also notes each increment of calls, 429s and retries in its second (the worker's hook: the
    fetcher keeps doing `stats.calls += 1`)."""

    calls = _counted("calls", "sent")
    throttled = _counted("throttled", "throttled")
    retries = _counted("retries", "retries")

    def __init__(self, *args: Any, _timeline: Timeline, **kwargs: Any) -> None:
        self._timeline = _timeline
        super().__init__(*args, **kwargs)


def per_second(stored: dict[str, Any] | None, series: str) -> dict[int, float]:
    """A stored timeline's series as {epoch second: count}; a coarse bucket is spread evenly over its seconds."""
    if not stored or stored.get("t0") is None:
        return {}
    t0, step = int(stored["t0"]), int(stored.get("step", 1))
    out: dict[int, float] = {}
    for k, v in enumerate(decode_rle(stored.get(series, ""))):
        if v:
            for s in range(step):
                out[t0 + k * step + s] = out.get(t0 + k * step + s, 0.0) + v / step
    return out
