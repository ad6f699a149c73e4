"""The per-second counts a batch keeps for the run report (harvester/timeline.py): what the fetcher counts lands
in its second, survives the checkpoint from one invocation to the next, and stays bounded on the ledger item."""

from __future__ import annotations

import json

from harvester.client import CallStats
from harvester.timeline import MAX_CHARS, MAX_SPANS, Timeline, decode_rle, encode_rle, per_second


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_run_length_code_round_trips():
    values = [0, 0, 5, 5, 5, 7, 0, 0, 0, 0, 1]
    assert encode_rle(values) == "0*2 5*3 7 0*4 1"
    assert decode_rle(encode_rle(values)) == values
    assert decode_rle("") == []


def test_the_fetchers_increments_land_in_their_second_and_survive_the_checkpoint():
    clock = Clock(1000.2)
    tl = Timeline(clock=clock)
    stats = tl.stats()
    assert isinstance(stats, CallStats) and stats.calls == 0
    for _ in range(3):
        stats.calls += 1
    clock.now = 1002.9
    stats.calls += 1
    stats.throttled += 1
    stats.retries += 1
    stats.pages += 1  # not a series
    stored = json.loads(json.dumps(tl.encode()))  # as the checkpoint and the ledger keep it
    assert stored["t0"] == 1000 and stored["step"] == 1
    assert stored["sent"] == "3 0 1" and stored["throttled"] == "0*2 1" and stored["retries"] == "0*2 1"
    assert stats.calls == 4 and stats.as_dict()["calls"] == 4

    clock.now = 5000.0  # the next invocation, an hour later: the pause costs one token
    again = Timeline(stored, clock=clock)
    again.stats().calls += 2
    out = again.encode()
    assert out["sent"] == "3 0 1 0*3997 2"
    assert per_second(out, "sent") == {1000: 3, 1002: 1, 5000: 2}
    assert out["spans"] == [[1000, 1002], [5000, 5000]]


def test_a_long_busy_batch_stays_bounded_and_keeps_its_total():
    """Two 15-minute invocations at 1,000 requests/s with ragged counts (the worst case for run-length coding),
    then a day of them: the stored item stays far under DynamoDB's 400 KB and no request is lost."""
    clock = Clock(0.0)
    tl = Timeline(clock=clock)
    stats = tl.stats()
    total = 0
    for second in range(2 * 900):
        clock.now = float(second)
        n = 990 + (second * 7919) % 21  # never two equal neighbours for long
        stats.calls += n
        total += n
    out = tl.encode()
    assert out["step"] == 1, "two Lambda-long invocations are kept at one second"
    assert len(json.dumps(out)) < 3 * MAX_CHARS + 2_000
    for second in range(2 * 900, 24 * 3600, 3):
        clock.now = float(second)
        stats.calls += 999 + second % 3
        total += 999 + second % 3
    for _ in range(2 * MAX_SPANS):
        tl = Timeline(tl.encode(), clock=clock)
    out = tl.encode()
    assert out["step"] > 1 and all(len(out[s]) <= MAX_CHARS for s in ("sent", "throttled", "retries"))
    assert len(out["spans"]) == MAX_SPANS
    assert len(json.dumps(out)) < 40_000
    assert sum(decode_rle(out["sent"])) == total == round(sum(per_second(out, "sent").values()))
