"""The sizing policy (harvester/sizing.py): fetch workers per level and parents per batch, from the rate limit."""

from __future__ import annotations

import re
from pathlib import Path

from harvester import sizing
from harvester.sizing import AUTO_BATCH_MAX, AUTO_BATCH_MIN, AUTO_BATCH_UNLIMITED, BATCH_SECONDS, batch_size, workers
from harvester.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def spec(**top):
    return parse_spec({"name": "b", "base_url": "http://127.0.0.1:1", "max_concurrency": top.pop("max_concurrency", 4),
                       "levels": [{"name": "a", "path": "/a", "primary_key": "id"},
                                  {"name": "b", "path": "/a/{a.id}/b", "batch_size": 7}], **top}, "b.yaml")


def limited(rps: float, **top):
    return spec(rate_limit={"requests_per_second": rps, "burst": 5}, **top)


def test_batch_size_explicit_or_sized_from_the_rate(tmp_path):
    assert batch_size(spec(), 1) == 7  # given: used as is
    assert batch_size(spec(), 0) == AUTO_BATCH_UNLIMITED
    # 10 r/s: two workers (the fewest), 5 calls/s each, BATCH_SECONDS of them
    assert workers(limited(10)) == 2
    assert batch_size(limited(10), 0) == 5 * BATCH_SECONDS
    # workers: as many as the rate needs, at most max_concurrency; unlimited: max_concurrency
    assert workers(limited(350)) == 4
    assert workers(limited(350, max_concurrency=3)) == 3
    assert workers(spec()) == 4
    assert batch_size(limited(0.5), 0) == AUTO_BATCH_MIN
    assert batch_size(limited(5000), 0) == AUTO_BATCH_MAX


def test_one_worker_per_50_requests_per_second():
    """A worker per 50 r/s (not 100, as the README once said): 150 r/s takes 3 workers (100 would give 2),
    250 r/s 5 (not 3), 101 r/s 3 (not 2); the planner gives a level that many (its Map's MaxConcurrency)."""
    from harvester.run import _level_state

    assert sizing.RATE_PER_WORKER == 50
    assert [workers(limited(rps, max_concurrency=20)) for rps in (50, 100, 101, 150, 250, 1000)] == [2, 2, 3, 3, 5, 20]
    assert _level_state(limited(150, max_concurrency=20), 0, "k", batches=10, parents=10)["max_concurrency"] == 3


def test_the_readme_states_the_rate_per_worker_the_code_uses():
    stated = re.findall(r"one per (\d+) r/s", (ROOT / "README.md").read_text())
    assert stated and {int(n) for n in stated} == {sizing.RATE_PER_WORKER}
