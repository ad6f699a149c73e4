"""The shared rate limiter against a real HTTP counter server on 127.0.0.1 and moto DynamoDB.

Figures (utilisation, worst 1-second window, writes per call) are printed: run with ``-s``.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import aiohttp
import boto3
import pytest
from moto import mock_aws

from harvester import ratelimit
from harvester.local.moto_patches import install_dynamodb_lock
from harvester.ratelimit import LimiterConfig, compute_lease, compute_throttle, current_rate, limiter_for

# ------------------------------------------------------------------------------------------
# A tiny vendor: counts arrivals per path; optionally refuses with 429 during a "storm".


class CounterServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: dict[str, list[float]] = {}
        self.refused: dict[str, list[float]] = {}
        self.storm: tuple[float, float] | None = None  # epoch [start, end): answer 429
        # or seconds [start, end) after the first request (a loaded machine may start the fleet late)
        self.storm_after: tuple[float, float] | None = None
        self.first: float | None = None
        self.retry_after = "1"
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                now = time.time()
                path = self.path.split("?")[0]
                with server.lock:
                    if server.first is None:
                        server.first = now
                        if server.storm_after is not None:
                            server.storm = (now + server.storm_after[0], now + server.storm_after[1])
                storm = server.storm
                refuse = storm is not None and storm[0] <= now < storm[1]
                with server.lock:
                    (server.refused if refuse else server.hits).setdefault(path, []).append(now)
                body = b"{}" if not refuse else b'{"error": "slow down"}'
                self.send_response(429 if refuse else 200)
                if refuse:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def times(self, path: str | None = None, refused: bool = False) -> list[float]:
        src = self.refused if refused else self.hits
        with self.lock:
            if path is None:
                return sorted(t for v in src.values() for t in v)
            return sorted(src.get(path, []))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def worst_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window [t, t + width) (sliding, starting at an arrival)."""
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


def count_between(times: list[float], a: float, b: float) -> int:
    return bisect.bisect_left(times, b) - bisect.bisect_left(times, a)


def utilisation(times: list[float], rate: float, until: float | None = None) -> float:
    """Calls that reached the vendor / (seconds x limit), from the first call to ``until`` (the
    moment workers stop asking) or to the last call."""
    end = until if until is not None else times[-1] + 1.0 / rate
    return count_between(times, times[0], end) / ((end - times[0]) * rate)


#: send times per URL path, taken the moment ``acquire()`` returns (what the limiter controls)
SENT: dict[str, list[float]] = {}


def sent(path: str) -> list[float]:
    return sorted(SENT.get(path, []))


def assert_within_limit(path: str, rate: float, burst: int, arrivals: list[float] | None = None) -> None:
    """The limiter's promise: no 1-second window of sends above rate + burst. Arrivals at the counter server
    (same process, same GIL as 32 workers and moto) may bunch by delivery delay the limiter cannot see: they
    get an allowance of 5 % of the rate (at least 1) on top. Sends are stamped after acquire() returns: a thread
    preempted between the grant and the stamp (a loaded machine: 56 sends at 50 + 5) gets 2 % (at least 1). The
    strict bound on the limiter's own schedule is test_no_second_sends_more_than_rate_plus_burst."""
    sends = worst_window(sent(path))
    assert sends <= rate + burst + max(1, int(0.02 * rate)), f"sends: {sends} in 1 s"
    if arrivals is not None:
        assert worst_window(arrivals) <= rate + burst + max(1, int(0.05 * rate)), f"arrivals: {worst_window(arrivals)}"


# ------------------------------------------------------------------------------------------
# A fleet: threads, each with its own event loop, limiter and aiohttp session, several
# coroutines each (the shape of pipelined Lambda workers).


def run_fleet(make_limiter, url_for, threads, coros, until, start_at=None, *, hold=None):
    """Run ``threads`` workers until epoch ``until``; returns their limiters (closed)."""
    limiters: list = [None] * threads
    errors: list = []

    def worker(i: int) -> None:
        async def main() -> None:
            lim = make_limiter(i)
            limiters[i] = lim
            url = url_for(i)
            if start_at:
                await asyncio.sleep(max(0.0, start_at - time.time()))
            conn = aiohttp.TCPConnector(limit=coros)
            async with aiohttp.ClientSession(connector=conn) as session:

                async def one() -> None:
                    sends = SENT.setdefault(urlsplit(url).path, [])
                    while time.time() < until:
                        await lim.acquire()
                        sends.append(time.time())
                        async with session.get(url) as r:
                            await r.read()
                            if r.status == 429:
                                lim.on_throttle(float(r.headers.get("Retry-After", "0")))
                            else:
                                lim.on_success()

                await asyncio.gather(*(one() for _ in range(coros)))
            await lim.close()

        try:
            asyncio.run(main())
        except BaseException as e:  # surface in the test thread
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=until - time.time() + 20)
    assert not errors, errors
    return limiters


# ------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def server():
    s = CounterServer()
    yield s
    s.close()


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    install_dynamodb_lock()  # conditional writes are atomic on AWS, not in moto (harvester/local/moto_patches.py)
    with mock_aws():
        ddb = boto3.resource("dynamodb", region_name="us-east-1")
        t = ddb.create_table(
            TableName="ledger",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield t


@pytest.fixture(autouse=True)
def _fresh_registry():
    SENT.clear()
    ratelimit.reset_local_buckets()
    yield
    ratelimit.reset_local_buckets()


def bucket_item(table, source):
    return table.get_item(Key=ratelimit.bucket_key(source), ConsistentRead=True).get("Item")


def fleet_figures(name, times, rate, burst, limiters, until=None):
    st = [lim.stats() for lim in limiters]
    granted = sum(s["tokens_granted"] for s in st)
    writes = sum(s["lease_writes"] for s in st)
    fig = dict(calls=len(times), utilisation=round(utilisation(times, rate, until), 3),
               utilisation_incl_tail=round(utilisation(times, rate), 3),
               worst_window=worst_window(times), limit_plus_burst=rate + burst,
               lease_writes=writes, writes_per_call=round(writes / max(granted, 1), 3),
               expired=sum(s["tokens_expired"] for s in st),
               woke_late=sum(s.get("woke_late", 0) for s in st),
               leases=sum(s["leases"] for s in st),
               conflicts=sum(s.get("lease_conflicts", 0) for s in st),
               reads=sum(s.get("lease_reads", 0) for s in st),
               lat=max(s.get("lease_latency", 0) for s in st))
    print(f"\n[{name}] {fig}")
    return fig


# ------------------------------------------------------------------------------------------
# Fleet tests


def test_fleet_on_dynamodb_stays_under_limit_and_uses_it(server, table):
    rate, burst, path = 50, 5, "/dyn"
    start = time.time() + 0.3
    lims = run_fleet(lambda i: limiter_for("dyn", rate, burst, table=table),
                     lambda i: server.url + path, threads=8, coros=4, until=start + 3.0,
                     start_at=start)
    times = server.times(path)
    fig = fleet_figures("dynamodb 8 threads x 4 coroutines @50/s", times, rate, burst, lims,
                        until=start + 3.0)
    assert_within_limit(path, rate, burst, times)
    assert fig["utilisation"] >= 0.9
    assert fig["writes_per_call"] <= 0.35  # blocks of several tokens per DynamoDB write
    item = bucket_item(table, "dyn")
    assert item["pk"] == "RATE#dyn" and item["sk"] == "BUCKET" and "expires_at" in item
    assert int(item["tokens_leased"]) >= len(times)


def test_fleet_in_process_stays_under_limit_and_uses_it(server):
    rate, burst, path = 100, 5, "/mem"
    start = time.time() + 0.3
    lims = run_fleet(lambda i: limiter_for("mem", rate, burst), lambda i: server.url + path,
                     threads=8, coros=4, until=start + 2.5, start_at=start)
    times = server.times(path)
    fig = fleet_figures("in-process 8 threads x 4 coroutines @100/s", times, rate, burst, lims,
                        until=start + 2.5)
    assert_within_limit(path, rate, burst, times)
    assert fig["utilisation"] >= 0.9


def test_worker_dying_with_a_lease_does_not_stall_the_others(server, table):
    rate, burst, path = 20, 5, "/dead"

    async def die_holding_a_lease():
        lim = limiter_for("dead", rate, burst, table=table, block_seconds=0.5)
        lim._block = 10.0  # lease a big block: 10 tokens, 0.5 s of the fleet's rate
        await lim.acquire()  # uses one, then "dies" without close()
        return lim

    dead = asyncio.run(die_holding_a_lease())
    assert dead.stats()["tokens_leased"] == 10

    t0 = time.time()
    lims = run_fleet(lambda i: limiter_for("dead", rate, burst, table=table),
                     lambda i: server.url + path, threads=2, coros=3, until=t0 + 2.0)
    times = server.times(path)
    first = times[0] - t0
    fleet_figures("survivors after a dead lease @20/s", times, rate, burst, lims)
    print(f"  first call after the death: {first:.3f} s; calls in 2 s: {len(times)}")
    assert first <= 0.6  # at most the dead lease's span
    assert len(times) >= 0.9 * rate * (2.0 - 0.5)
    assert_within_limit(path, rate, burst, times)


def test_429_storm_pauses_the_fleet_then_it_goes_on(server, table):
    ceiling, burst, path = 40, 5, "/storm"
    start = time.time() + 0.3
    server.first, server.storm_after = None, (0.8, 1.4)  # from the fleet's first call: a loaded machine started it 1.5 s late
    server.retry_after = "1"
    samples: list[tuple[float, float]] = []
    cfg = LimiterConfig(ceiling=ceiling, burst=burst, recovery=0.5)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            it = bucket_item(table, "storm")
            if it:
                now = time.time()
                samples.append((now, current_rate(it, now, cfg)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        lims = run_fleet(lambda i: limiter_for("storm", ceiling, burst, table=table,
                                               recovery=0.5),
                         lambda i: server.url + path, threads=4, coros=3,
                         until=start + 6.0, start_at=start)  # 4.5 s after a first call up to 1.5 s late
    finally:
        stop.set()
        sampler.join()
        server.storm = server.storm_after = None
    t0 = server.first
    ok = server.times(path)
    refused = server.times(path, refused=True)
    rates = [r for _, r in samples]
    before = count_between(ok, t0 + 0.0, t0 + 0.8) / 0.8
    paused = count_between(ok, t0 + 1.4, t0 + 1.8)
    after_pause = count_between(ok, t0 + 1.8, t0 + 2.8)  # the second after the pause
    recovered = count_between(ok, t0 + 3.5, t0 + 4.5)
    hist = [count_between(ok, t0 + k / 4, t0 + (k + 1) / 4) for k in range(18)]
    print(f"\n  calls per 250 ms from the start: {hist}; 429s at "
          f"{[round(x - t0, 2) for x in refused]}")
    print(f"[429 storm @{ceiling}/s] 429s={len(refused)} ok={len(ok)} rate min={min(rates)} "
          f"final={rates[-1]} r/s before={before:.1f} during pause={paused} "
          f"just after={after_pause:.1f} last second={recovered} "
          f"throttles={sum(lim.stats()['throttles'] for lim in lims)}")
    assert len(refused) >= 1
    assert len(refused) <= 25  # the fleet stops at the first 429: only calls already in flight
    # one storm at the ceiling is one event (the 429s of calls in flight do not cut again), taken for arrival
    # jitter: a small headroom, shared by every worker; repeated 429s cut harder (test_aimd_..., simulations)
    assert min(rates) <= ceiling * cfg.headroom + 1e-6
    assert min(rates) >= ceiling * cfg.headroom - 1e-6
    assert paused == 0  # Retry-After honoured by every worker
    # the fleet sends again as soon as the pause ends (relative to what this machine's fleet sent before the storm:
    # a loaded machine's threads may not reach the ceiling at all, and their first lease after the pause took
    # 0.25 s there); that the pause is all it costs, not half the rate, is the bucket's rate above
    assert after_pause >= 0.6 * min(before, ceiling)
    assert rates[-1] == pytest.approx(ceiling)  # ... and back to the ceiling
    assert recovered >= 0.9 * ceiling
    assert_within_limit(path, ceiling, burst, sorted(ok + refused))


def test_two_sources_do_not_share_a_bucket(server, table):
    rate, burst = 20, 5
    t0 = time.time() + 0.3
    srcs = ["src-a", "src-b"]
    lims = run_fleet(lambda i: limiter_for(srcs[i % 2], rate, burst, table=table),
                     lambda i: f"{server.url}/{srcs[i % 2]}", threads=4, coros=2,
                     until=t0 + 2.0, start_at=t0)
    for s in srcs:
        times = server.times(f"/{s}")
        fleet_figures(f"source {s} @20/s", times, rate, burst, [lim for lim in lims
                                                                 if lim.source == s])
        assert len(times) >= 0.9 * rate * 2.0  # each gets its full rate ...
        assert_within_limit(f"/{s}", rate, burst, times)  # ... and only its own
        assert bucket_item(table, s)["pk"] == f"RATE#{s}"


def test_two_runs_of_one_source_share_its_limit(server, table):
    rate, burst, path = 20, 5, "/shared"
    t0 = time.time() + 0.3
    # two "runs": separate limiter objects (and bucket caches), as two executions would have
    lims = run_fleet(lambda i: limiter_for("shared", rate, burst, table=table),
                     lambda i: f"{server.url}{path}?run={i % 2}", threads=4, coros=2,
                     until=t0 + 2.5, start_at=t0)
    times = server.times(path)
    fig = fleet_figures("two runs of one source @20/s", times, rate, burst, lims,
                        until=t0 + 2.5)
    assert_within_limit(path, rate, burst, times)
    assert 0.9 <= fig["utilisation"] <= 1.1
    per_run = [sum(lim.stats()["tokens_granted"] for lim in lims[r::2]) for r in (0, 1)]
    assert min(per_run) >= 0.25 * sum(per_run)


# ------------------------------------------------------------------------------------------
# The arithmetic: clock skew, AIMD, give-back, unlimited, metrics


def test_clock_skew_creates_no_tokens():
    cfg = LimiterConfig(ceiling=10, burst=5)  # grace 50 ms, bucket_cap 3.5 tokens
    s, slots = compute_lease(None, 1000.0, 3, cfg)
    assert slots == [1000.0] * 3  # burst credit, sent at once
    # a worker whose clock is 5 s ahead: an idle bucket, so at most the cap again
    s, slots = compute_lease(s, 1005.0, 5, cfg)
    assert slots[:3] == [1005.0] * 3 and slots[3] > 1005.0
    tat = s["tat"]
    # a worker on the true clock: tat is far ahead of it, so no credit and no slot before tat;
    # past max_ahead it is told to come back later, without taking anything
    s2, slots = compute_lease(s, 1000.5, 1, cfg)
    assert slots == [] and s2["retry_at"] == pytest.approx(tat - cfg.max_ahead)
    s2, slots = compute_lease(s, tat - 0.1, 2, cfg)
    assert slots[0] > tat and s2["tat"] > tat  # tat never moves backwards
    # tokens issued = advance of tat x rate: skew never mints more than the cap once
    total = 3 + 5 + 2
    assert total <= cfg.bucket_cap + (s2["tat"] - 1000.0) * cfg.ceiling + 1


def test_aimd_cut_once_per_storm_and_recover_additively():
    cfg = LimiterConfig(ceiling=40, burst=5, recovery=0.05, cut_cooldown=1.0)
    s, _ = compute_lease(None, 0.0, 1, cfg)
    s = compute_throttle(s, 10.0, 2.0, cfg)  # a lone 429 at the ceiling: jitter, headroom only
    assert s["rate"] == pytest.approx(40 * cfg.headroom) and s["paused_until"] == 12.0
    s = compute_throttle(s, 11.5, 2.0, cfg)  # a second one soon after: the limit is lower, cut
    assert s["rate"] == pytest.approx(40 * cfg.headroom * 0.5) and s["paused_until"] == 13.5
    assert s["known"] == pytest.approx(40 * cfg.headroom * cfg.hold)
    s = compute_throttle(s, 11.7, 2.0, cfg)  # same storm: no second cut
    assert s["rate"] == pytest.approx(19.4) and s["paused_until"] == 13.7
    _, slots = compute_lease(s, 13.5, 1, cfg)
    assert slots[0] >= 13.7  # nobody sends before Retry-After elapsed
    assert current_rate(s, 12.0, cfg) == pytest.approx(19.4)  # no recovery during the pause
    assert current_rate(s, 16.7, cfg) == pytest.approx(25.4)  # 3 s after it: +3 x 5% x 40
    assert current_rate(s, 30.0, cfg) < 40 * cfg.headroom  # slow above the limit that bit
    assert current_rate(s, 1000.0, cfg) == 40  # never above the ceiling
    cfg = LimiterConfig(ceiling=40, burst=5, recovery=0.0)
    for k in range(10):  # repeated storms floor at min_fraction
        s = compute_throttle(s, 20.0 + 2 * k, 0.0, cfg)
    assert current_rate(s, s["last_cut"], cfg) == pytest.approx(cfg.floor)


def _busiest_second(times: list[float]) -> int:
    """The most send times in any window [t, t + 1 s)."""
    times = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


@pytest.mark.parametrize("rate,burst", [(10, 5), (20, 5), (50, 5), (100, 5), (200, 5), (20, 1)])
def test_no_second_sends_more_than_rate_plus_burst(rate, burst):
    """Workers leasing from one schedule as fast as it lets them, with idle gaps that refill the burst credit, and
    each send as late as its slot stays usable (grace) or on time, whichever crowds a second more: no 1-second
    window holds more than rate + burst sends."""
    import random

    cfg = LimiterConfig(ceiling=rate, burst=burst)
    rnd = random.Random(rate * 100 + burst)
    state, now, sends = None, 0.0, []
    for _ in range(400):
        state, slots = compute_lease(state, now, rnd.randint(1, cfg.max_block(rate)), cfg)
        if not slots:  # too far ahead: come back when told
            now = state["retry_at"]
            continue
        late = rnd.random() < 0.5  # a whole lease late by grace, the next perhaps on time
        sends += [slot + (cfg.grace if late else 0.0) for slot in slots]
        # the next worker asks at once, a moment later, or after an idle spell (burst credit again)
        now = max(now, rnd.choice([now, slots[-1], slots[-1] + rnd.uniform(0, 2.0)]))
    assert len(sends) > 10 * rate  # long enough to cover many seconds at the full rate
    assert _busiest_second(sends) <= rate + burst


def test_close_gives_unused_tokens_back(table):
    async def go():
        a = limiter_for("gb", 20, 5, table=table)
        a._block = 4.0
        await a.acquire()
        await a.close()
        return a.stats()

    st = asyncio.run(go())
    assert st["tokens_leased"] >= 4 and st["tokens_returned"] >= 1


def test_unlimited_returns_at_once():
    async def go():
        lim = limiter_for("free", None, 0)
        t = time.perf_counter()
        for _ in range(1000):
            await lim.acquire()
        return time.perf_counter() - t, lim.stats()

    elapsed, st = asyncio.run(go())
    assert elapsed < 0.5 and st["tokens_granted"] == 1000 and st["current_rate"] is None


def test_metrics_only_when_given():
    from aws_lambda_powertools import Metrics

    metrics = Metrics(namespace="HarvesterTest", service="ratelimit")
    # Powertools Metrics instances share one metric set per process: drop what handlers run by earlier tests
    # (the local engine's fetch workers) left in it
    metrics.clear_metrics()

    async def go():
        lim = limiter_for("met", 50, 5, metrics=metrics)
        for _ in range(5):
            await lim.acquire()
        lim.on_throttle(None)
        await lim.close()
        plain = limiter_for("met2", 50, 5)  # no metrics object: nothing emitted, no error
        await plain.acquire()
        await plain.close()

    asyncio.run(go())
    blob = metrics.serialize_metric_set()
    names = {m["Name"] for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"RateLimiterTokensGranted", "RateLimiterWaits", "RateLimiterThrottles",
            "RateLimiterCurrentRate"} <= names
    assert blob["RateLimiterTokensGranted"] in (5.0, [5.0])
    metrics.clear_metrics()


def test_in_process_429_pauses_every_thread():
    """table=None: one worker's 429 stops the other threads' workers too (shared bucket)."""
    rate, burst = 50, 5
    paused_for = 0.6
    seen: list[float] = []
    lock = threading.Lock()
    t0 = time.time()

    def worker(i: int) -> None:
        async def main() -> None:
            lim = limiter_for("pause", rate, burst)
            while time.time() < t0 + 1.5:
                await lim.acquire()
                now = time.time()
                with lock:
                    seen.append(now)
                if i == 0 and t0 + 0.5 <= now and not getattr(main, "done", False):
                    main.done = True
                    lim.on_throttle(paused_for)

        asyncio.run(main())

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    seen.sort()
    first_after = next(x for x in seen if x >= t0 + 0.5)
    # a token granted just before the pause is stamped when its thread next holds the GIL, which under load can be
    # tens of ms later: allow 0.1 s for that, then nothing until the pause ends
    assert count_between(seen, first_after + 0.1, first_after + paused_for - 0.01) == 0
    assert count_between(seen, first_after + paused_for, t0 + 1.5) >= 1


async def announced_calls(lim, n: int, hint: bool = True, after_first=None) -> dict:
    """`n` acquires by one worker that (with `hint`) announces before each how many are still to come, as the fetch
    worker does; `after_first` runs after the first. The limiter's figures, taken before close() gives any back."""
    for i in range(n):
        if hint:
            lim.expect(n - 1 - i)  # this call in hand, the rest still to come
        await lim.acquire()
        if i == 0 and after_first is not None:
            after_first()
    st = lim.stats()
    await lim.close()
    return st


def test_expect_keeps_leases_within_the_known_work(table):
    """A worker that announces how many calls it still has (lists not started) leases no further ahead: at
    the end of a batch it leaves no unused tokens in the shared schedule. Without the hint the block grows."""
    # every token leased is used (or expired because a loaded machine woke us too late): none left over
    hinted = asyncio.run(announced_calls(limiter_for("hint", 100, 5, table=table), 30))
    assert hinted["tokens_granted"] == 30
    assert hinted["tokens_leased"] - hinted["tokens_expired"] == 30
    ratelimit.reset_local_buckets()
    free = asyncio.run(announced_calls(limiter_for("nohint", 100, 5, table=table), 30, hint=False))
    assert free["tokens_granted"] == 30 and free["tokens_leased"] - free["tokens_expired"] > 30


def test_after_a_stall_the_leases_ahead_take_only_the_known_work_not_yet_held(table):
    """A stall (a slow first lease, a loaded machine) lets held slots expire; the block shrinks, then grows again
    while the next block is leased before the last runs out. With 30 calls announced, every token leased must be
    used or have expired in the stall: a lease ahead that counted the slots still held as work to cover took 40-41
    tokens for 30 calls here (and 33 in test_expect_keeps_leases_within_the_known_work on a machine whose first
    lease is slow), the rest given back or expiring unused."""
    stall = [0.0]
    lim = limiter_for("stall", 100, 5, table=table, clock=lambda: time.time() + stall[0])

    def stall_after_the_first_call() -> None:
        stall[0] += 0.3  # the slots of the first block pass while this worker does not run

    st = asyncio.run(announced_calls(lim, 30, after_first=stall_after_the_first_call))
    print(f"\n  {st}")
    assert st["tokens_granted"] == 30 and st["tokens_expired"] >= 1
    assert st["tokens_leased"] - st["tokens_expired"] == 30 and st["tokens_returned"] == 0


def test_idle_schedule_after_others_leased_is_not_a_retry_storm(table):
    """A worker that has seen others lease guesses the schedule is busy and appends; when the schedule has gone
    idle meanwhile (at 200 r/s with burst 5 there is no burst credit: idle at once) the guess fails and must not
    be repeated: it was a livelock of failed conditional writes for up to a second."""
    a = limiter_for("idle", 200, 5, table=table)
    b = limiter_for("idle", 200, 5, table=table)
    a.expect(0)  # lease exactly what is asked for
    b.expect(0)
    for lim in (a, b, a):  # a sees that b moved the schedule
        asyncio.run(lim.acquire())
    time.sleep(0.2)
    before = a.stats()
    asyncio.run(a.acquire())
    after = a.stats()
    # counted, not timed (a loaded machine took 1.5 s over this acquire with no conflict at all): the livelock
    # was one failed conditional write after another
    assert after["lease_conflicts"] - before["lease_conflicts"] <= 1
    assert after["lease_writes"] - before["lease_writes"] <= 2 and after["leases"] - before["leases"] == 1
    assert after["backlog_waits"] == before["backlog_waits"]


def simulate_vendor(cfg: LimiterConfig, real_limit: float, seconds: float, *, burst: float = 5.0,
                    dt: float = 0.01, retry_after: float = 1.0, extra_429_at: tuple[float, ...] = ()):
    """The shared rate against a vendor whose real limit is `real_limit` (a token bucket of `burst`), in simulated
    time: the fleet sends at current_rate(); when the vendor's bucket runs dry it answers 429 and the limiter's
    compute_throttle() sees it. `extra_429_at`: single 429s from arrival jitter. Returns (sent per second of
    simulated time, 429 times)."""
    s, _ = compute_lease(None, 0.0, 1, cfg)
    tokens, t, sent, throttles = burst, 0.0, [0.0] * int(seconds + 1), []
    jitter = list(extra_429_at)
    while t < seconds:
        paused = t < float(s["paused_until"])
        rate = 0.0 if paused else current_rate(s, t, cfg)
        tokens = min(burst, tokens + real_limit * dt)
        want = rate * dt
        if jitter and t >= jitter[0]:
            jitter.pop(0)
            throttles.append(t)
            s = compute_throttle(s, t, retry_after, cfg)
        elif want > tokens and not paused:
            throttles.append(t)
            s = compute_throttle(s, t, retry_after, cfg)
        else:
            tokens -= want
            sent[int(t)] += want
        t += dt
    return sent, throttles


def test_a_lone_429_at_the_ceiling_costs_its_pause_not_half_the_rate():
    """A 429 while the fleet sends at the configured ceiling is most likely arrival jitter (burst 5 is 25 ms at
    200 r/s): pause as the vendor asks, then go on at a small headroom below the ceiling. Halving the rate for it
    cost ~10 s of half rate: at 200 r/s, one jitter 429 lost ~600 calls instead of the ~200 of its pause."""
    cfg = LimiterConfig(ceiling=200, burst=5)
    sent, throttles = simulate_vendor(cfg, real_limit=200, seconds=40, extra_429_at=(10.0,))
    lost = sum(200 - x for x in sent[10:30])
    print(f"\n  one jitter 429 at 200 r/s: {lost:.0f} calls lost in the 20 s after it ({throttles})")
    assert len(throttles) == 1
    assert lost <= 1.3 * 200 * 1.0  # the 1 s pause, and little more
    assert min(sent[12:30]) >= 0.93 * 200


@pytest.mark.parametrize("real", [120, 30])
def test_a_vendor_whose_real_limit_is_lower_is_found_and_held(real):
    """Configured 200 r/s, the vendor really allows less: 429s repeat, so the rate is cut and then held just
    under the limit they revealed (slow increase above it), not sawtoothed between half and the ceiling (that
    used 0.70 of a real 120 r/s with 16 429s in two minutes)."""
    cfg = LimiterConfig(ceiling=200, burst=5)
    sent, throttles = simulate_vendor(cfg, real_limit=real, seconds=180)
    late = sent[60:180]
    utilisation = sum(late) / (real * len(late))
    late_429s = [t for t in throttles if t >= 60]
    print(f"\n  real limit {real} of 200: utilisation {utilisation:.3f} over the last 120 s, {len(late_429s)} 429s")
    assert utilisation >= 0.85
    assert len(late_429s) <= 6  # at most one 429 per 20 s once found


def test_jitter_429s_seconds_apart_each_cost_their_pause_not_half_the_rate():
    """Issue 16: on a busy machine arrival jitter draws a 429 every several seconds while the fleet sends at or
    under the ceiling. Each must cost its pause, not a halving: 429s 10 s apart were taken for a lower limit
    (a repeat within 30 s of the last cut), the rate halved and was then held at 95 % of a rate the vendor allows
    (a seed-sized run at 200 r/s went on at 130-145 r/s). A lower limit draws its next 429 within a few seconds of
    sending again (the vendor's burst drains at rate - limit), which is what tells the two apart."""
    cfg = LimiterConfig(ceiling=200, burst=5)
    jitter = (10.0, 20.0, 30.0, 40.0)
    sent, throttles = simulate_vendor(cfg, real_limit=200, seconds=60, extra_429_at=jitter)
    lost = sum(200 - x for x in sent[10:60])
    print(f"\n  four jitter 429s 10 s apart at 200 r/s: {lost:.0f} calls lost ({throttles})")
    assert len(throttles) == len(jitter)
    assert lost <= 1.3 * 200 * len(jitter)  # four 1-s pauses, and little more
    assert min(sent[42:60]) >= 0.93 * 200


@pytest.mark.parametrize("rate", [100, 200, 500, 1000, 5000])
def test_burst_bound_holds_at_every_rate(rate):
    """The documented bound: sends in any 1-s window <= rate + burst, when every slot is sent within grace plus the
    jitter reserve after its time (worst case: some on time, some that late). It held only up to ~150 r/s at
    burst 5: above it the bucket's credit was clamped at 0 while slots still went out up to grace + jitter late
    (1,016 sends in a 1-s window at 1,000 r/s)."""
    cfg = LimiterConfig(ceiling=rate, burst=5)
    s, slots = compute_lease(None, 100.0, 1, cfg)  # an idle bucket: its burst credit first
    now, all_slots = 100.0, list(slots)
    while now < 103.0:  # 3 s of back-to-back leases of 10 ms each
        s, got = compute_lease(s, now, max(1, int(rate * 0.01)), cfg)
        all_slots += got
        now += 0.01
    late = cfg.grace + cfg.jitter
    all_slots.sort()
    # the most slots whose send times (slot .. slot + late) can fall in one 1-s window
    worst = max(bisect.bisect_right(all_slots, t + 1.0 + late - 1e-9) - i for i, t in enumerate(all_slots))
    assert worst <= rate + cfg.burst, (worst, cfg)
