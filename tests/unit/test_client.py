"""The fetcher against the simulated vendor over real HTTP on 127.0.0.1: every pagination style walked to exactly
the vendor's records, every auth scheme, and each error class (permanent, auth, transient with retries, throttled,
out of time). Back-off waits are recorded by an injected `sleep` instead of slept."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from harvester.client import AuthFailed, CallFailed, Fetcher, OutOfTime, auth_parts, retry_after_seconds
from harvester.simulator.faults import FaultConfig, FaultRule
from harvester.simulator.server import VendorServer
from harvester.spec import SourceSpec, parse_spec

KEY = "k-s3cret-7f1e"
TROOPS = 11  # with pages of 3: four pages, the last one short


class NoLimiter:
    """A limiter that never waits; it records what the fetcher tells it."""

    def __init__(self) -> None:
        self.acquired = 0
        self.throttles: list[float | None] = []
        self.successes = 0

    async def acquire(self) -> None:
        self.acquired += 1

    def on_throttle(self, retry_after: float | None) -> None:
        self.throttles.append(retry_after)

    def on_success(self) -> None:
        self.successes += 1

    def stats(self) -> dict:
        return {"acquired": self.acquired, "throttles": len(self.throttles)}

    async def close(self) -> None:
        pass


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# pagination of the /troops route: vendor style -> the spec level that reads it
LEVELS: dict[str, dict[str, Any]] = {
    "page": {"records": "data",
             "pagination": {"type": "page_number", "page_param": "page", "size_param": "per_page", "size": 3,
                            "total_path": "total"}},
    "page_no_total": {"records": "data",
                      "pagination": {"type": "page_number", "page_param": "page", "size_param": "per_page", "size": 3}},
    "offset": {"records": "items",
               "pagination": {"type": "offset", "offset_param": "offset", "limit_param": "limit", "limit": 3,
                              "total_path": "total"}},
    "cursor": {"records": "results",
               "pagination": {"type": "cursor", "cursor_param": "cursor", "cursor_path": "next_cursor",
                              "size_param": "limit", "size": 3}},
    "next_url": {"records": "data", "pagination": {"type": "next_url", "next_url_path": "links.next"}},
    "link": {"records": "$", "pagination": {"type": "link_header", "size_param": "limit", "size": 3}},
    "none": {"records": "$", "pagination": {"type": "none"}},
}
VENDOR_STYLE = {"page_no_total": "page"}


def make_spec(base_url: str, level: dict[str, Any] | None = None, *, auth: dict | None = None,
              max_attempts: int = 5, extra_levels: list[dict] | None = None) -> SourceSpec:
    troops = {"name": "troops", "alias": "troop", "path": "/troops", "primary_key": "id", **(level or LEVELS["page"])}
    return parse_spec({
        "name": "test",
        "base_url": base_url,
        "auth": auth if auth is not None else {"type": "header", "name": "X-Api-Key", "env": "TEST_KEY"},
        "retries": {"max_attempts": max_attempts, "base_delay": 0.05, "max_delay": 1.0},
        "timeouts": {"connect": 2.0, "read": 5.0},
        "levels": [troops, *(extra_levels or [])],
    })


def vendor_for(style: str = "page", **options: Any) -> VendorServer:
    options = {"troops": TROOPS, "warriors_per_troop": 4, "variation": 0, "page_size": 3, "api_key": KEY,
               "pagination": {"troops": VENDOR_STYLE.get(style, style)}, **options}
    return VendorServer(**options)


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    with vendor_for("page") as server:
        yield server


def fetch(spec: SourceSpec, level_index: int = 0, context: dict | None = None, *, secret: str | None = KEY,
          budget: float = 60.0, limiter: NoLimiter | None = None, sleep: Sleeps | None = None,
          seed: int = 1) -> tuple[list[Any], Fetcher]:
    """Run one `fetch_list`; returns (records, fetcher). Exceptions propagate; the fetcher is on them as
    `exc.fetcher` for inspection."""
    limiter = limiter or NoLimiter()
    sleep = sleep or Sleeps()

    async def go() -> tuple[list[Any], Fetcher]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0)) as http:
            fetcher = Fetcher(spec, http, limiter, secret, time.monotonic() + budget, sleep=sleep,
                              rng=random.Random(seed))
            try:
                return await fetcher.fetch_list(spec.levels[level_index], context or {}), fetcher
            except Exception as exc:
                exc.fetcher = fetcher  # type: ignore[attr-defined]
                raise

    return asyncio.run(go())


def truth(server: VendorServer) -> list[dict]:
    return server.data.troops()


# ---------------------------------------------------------------------------------------------------------------
# every pagination style, walked to exactly the vendor's records
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "style, pages",
    [("page", 4), ("page_no_total", 4), ("offset", 4), ("cursor", 4), ("next_url", 4), ("link", 4), ("none", 1)],
)
def test_each_pagination_style_fetches_exactly_the_vendors_records(style: str, pages: int):
    with vendor_for(style) as server:
        spec = make_spec(server.url + "/v1", LEVELS[style])
        limiter = NoLimiter()
        records, fetcher = fetch(spec, limiter=limiter)
        assert records == truth(server)  # same records, same order, no duplicates
        assert fetcher.stats.calls == fetcher.stats.pages == pages == server.stats().served
        assert limiter.acquired == pages and limiter.successes == pages
        assert fetcher.stats.retries == 0 and fetcher.stats.errors == {}


def test_page_number_with_total_stops_on_an_exactly_full_last_page():
    # 12 troops in pages of 3: the last page is full; the total says it is the last, no extra empty call
    with vendor_for("page", troops=12) as server:
        records, fetcher = fetch(make_spec(server.url + "/v1", LEVELS["page"]))
        assert records == truth(server) and fetcher.stats.calls == 4


def test_page_number_without_total_needs_one_more_call_on_a_full_last_page():
    with vendor_for("page", troops=12) as server:
        records, fetcher = fetch(make_spec(server.url + "/v1", LEVELS["page_no_total"]))
        assert records == truth(server) and fetcher.stats.calls == 5  # the fifth page is empty: the end


def test_child_level_path_template_with_parent_context():
    with vendor_for("page", pagination={"warriors": "offset"}) as server:
        warriors = {"name": "warriors", "path": "/troops/{troop.id}/warriors", "records": "items",
                    "pagination": {"type": "offset", "limit": 3, "total_path": "total"}}
        spec = make_spec(server.url + "/v1", extra_levels=[warriors])
        records, fetcher = fetch(spec, 1, {"troop": {"id": "t0003"}, "troops": {"id": "t0003"}})
        assert records == server.data.warriors("t0003") and len(records) == 4
        assert fetcher.stats.calls == 2


def test_query_template_with_parent_context():
    # /warriors?troopId={troop.id}: the template goes into a query parameter
    with vendor_for("page", pagination={"warriors": "offset"}) as server:
        warriors = {"name": "warriors", "path": "/warriors", "params": {"troopId": "{troop.id}"}, "records": "items",
                    "pagination": {"type": "offset", "limit": 3, "total_path": "total"}}
        spec = make_spec(server.url + "/v1", extra_levels=[warriors])
        records, _ = fetch(spec, 1, {"troop": {"id": "t0002"}})
        assert records == server.data.warriors("t0002")


def test_query_in_the_path_template_is_kept_alongside_pagination_params():
    # `/warriors?troopId={troop.id}` written in the path, as a data engineer might
    with vendor_for("page", pagination={"warriors": "offset"}) as server:
        warriors = {"name": "warriors", "path": "/warriors?troopId={troop.id}", "records": "items",
                    "pagination": {"type": "offset", "limit": 3, "total_path": "total"}}
        spec = make_spec(server.url + "/v1", extra_levels=[warriors])
        records, _ = fetch(spec, 1, {"troop": {"id": "t0002"}}, budget=8.0)
        assert records == server.data.warriors("t0002")


def test_missing_template_field_fails_without_a_call(vendor: VendorServer):
    warriors = {"name": "warriors", "path": "/troops/{troop.id}/warriors", "records": "items"}
    spec = make_spec(vendor.url + "/v1", extra_levels=[warriors])
    with pytest.raises(CallFailed) as info:
        fetch(spec, 1, {"troop": {"name": "x"}})
    assert info.value.reason.startswith("template:") and "no field 'id'" in info.value.reason
    assert vendor.stats().requests == 0


# ---------------------------------------------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------------------------------------------
AUTHS = {
    "header": {"type": "header", "name": "X-Api-Key", "env": "TEST_KEY"},
    "bearer": {"type": "bearer", "env": "TEST_KEY"},
    "query": {"type": "query", "name": "api_key", "env": "TEST_KEY"},
}


@pytest.mark.parametrize("scheme", ["header", "bearer", "query"])
def test_each_auth_scheme(scheme: str):
    with vendor_for("page", auth=scheme) as server:
        spec = make_spec(server.url + "/v1", auth=AUTHS[scheme])
        records, _ = fetch(spec)
        assert records == truth(server)
        assert server.stats().unauthorized == 0


@pytest.mark.parametrize("scheme", ["header", "bearer", "query"])
def test_wrong_credential_is_auth_failed_without_retry(scheme: str):
    with vendor_for("page", auth=scheme) as server:
        spec = make_spec(server.url + "/v1", auth=AUTHS[scheme])
        sleep = Sleeps()
        with pytest.raises(AuthFailed) as info:
            fetch(spec, secret="wrong-key", sleep=sleep)
        exc = info.value
        assert exc.status == 401 and "check the credential" in exc.reason
        assert server.stats().unauthorized == 1 and server.stats().requests == 1 and sleep.waits == []
        assert "wrong-key" not in exc.url and "wrong-key" not in str(exc)


@pytest.mark.parametrize("style", ["next_url", "link"])
def test_query_auth_with_next_links_keeps_the_links_query(style: str):
    # the next URL carries offset/limit in its query; adding the credential must not replace them
    with vendor_for(style, auth="query") as server:
        records, fetcher = fetch(make_spec(server.url + "/v1", LEVELS[style], auth=AUTHS["query"]), budget=8.0)
        assert records == truth(server) and fetcher.stats.calls == 4


def test_the_scheme_must_match_the_vendors():
    with vendor_for("page", auth="bearer") as server:
        with pytest.raises(AuthFailed):
            fetch(make_spec(server.url + "/v1", auth=AUTHS["header"]))


def test_query_credential_never_appears_in_a_recorded_failure():
    with vendor_for("page", auth="query") as server:
        spec = make_spec(server.url + "/v1", auth=AUTHS["query"], max_attempts=2)
        # a permanent failure: the URL recorded is the one sent, minus the key
        server.set_faults(FaultConfig.of(FaultRule("not_found", paths=["/v1/troops"])))
        with pytest.raises(CallFailed) as info:
            fetch(spec)
        exc = info.value
        assert exc.status == 404 and "/v1/troops?page=1&per_page=3" in exc.url
        assert KEY not in exc.url and KEY not in str(exc) and KEY not in str(exc.as_item())
        # giving up on a transient failure (no response at all)
        server.set_faults(FaultConfig.of(FaultRule("reset", paths=["/v1/troops"])))
        with pytest.raises(CallFailed) as info:
            fetch(spec)
        exc = info.value
        assert "gave up after 2 attempts" in exc.reason and "/v1/troops" in exc.url
        assert KEY not in str(exc.as_item()) and KEY not in str(exc)
        # running out of time
        server.set_faults(FaultConfig.of(FaultRule("rate_limit", paths=["/v1/troops"], retry_after=30)))
        with pytest.raises(OutOfTime) as info:
            fetch(spec, budget=5.0)
        assert KEY not in str(info.value) and "/v1/troops" in str(info.value)


def test_auth_parts():
    spec = make_spec("http://h", auth={"type": "basic", "env": "X"})
    headers, params = auth_parts(spec, "user:pw")
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"user:pw").decode()} and params == {}
    assert auth_parts(make_spec("http://h", auth=AUTHS["query"]), "k") == ({}, {"api_key": "k"})
    assert auth_parts(make_spec("http://h", auth=AUTHS["bearer"]), "k") == ({"Authorization": "Bearer k"}, {})
    with pytest.raises(ValueError, match="no credential was provided"):
        auth_parts(spec, None)
    no_auth = parse_spec({"name": "x", "base_url": "http://h", "levels": [{"name": "a", "path": "/a"}]})
    assert auth_parts(no_auth, None) == ({}, {})


# ---------------------------------------------------------------------------------------------------------------
# permanent errors: one call, no retry
# ---------------------------------------------------------------------------------------------------------------
def test_404_is_call_failed_after_exactly_one_call(vendor: VendorServer):
    warriors = {"name": "warriors", "path": "/troops/{troop.id}/warriors", "records": "items"}
    spec = make_spec(vendor.url + "/v1", extra_levels=[warriors])
    sleep = Sleeps()
    with pytest.raises(CallFailed) as info:
        fetch(spec, 1, {"troop": {"id": "t9999"}}, sleep=sleep)
    exc = info.value
    assert type(exc) is CallFailed
    assert exc.status == 404 and exc.reason == "404 Not Found" and exc.attempts == 1
    assert exc.url == vendor.url + "/v1/troops/t9999/warriors"
    assert "troop t9999 not found" in exc.excerpt
    assert vendor.stats().requests == 1 and sleep.waits == []
    assert exc.fetcher.stats.calls == 1 and exc.fetcher.stats.retries == 0


def test_400_is_permanent():
    with vendor_for("cursor") as server:
        # a cursor the vendor cannot decode
        spec = make_spec(server.url + "/v1", {**LEVELS["cursor"], "params": {"cursor": "!!not-a-cursor"}})
        with pytest.raises(CallFailed) as info:
            fetch(spec)
        assert info.value.status == 400 and "invalid cursor" in info.value.excerpt
        assert server.stats().requests == 1


def test_json_without_the_records_is_permanent(vendor: VendorServer):
    spec = make_spec(vendor.url + "/v1", {"records": "rows", "pagination": {"type": "none"}})
    with pytest.raises(CallFailed) as info:
        fetch(spec)
    exc = info.value
    assert exc.status == 200 and exc.reason.startswith("unexpected body:") and "'rows'" in exc.reason
    assert vendor.stats().requests == 1


# ---------------------------------------------------------------------------------------------------------------
# transient errors: retried, and the result is exactly the fault-free one
# ---------------------------------------------------------------------------------------------------------------
TRANSIENT = {
    "503": (FaultRule("server_error", status=503, paths=["/v1/troops"], times=2), "503 Service Unavailable"),
    "500": (FaultRule("server_error", status=500, paths=["/v1/troops"], times=2), "500 Internal Server Error"),
    "502": (FaultRule("server_error", status=502, paths=["/v1/troops"], times=2), "502 Bad Gateway"),
    "reset": (FaultRule("reset", paths=["/v1/troops"], times=2), "connection"),
    "truncated": (FaultRule("truncated", paths=["/v1/troops"], times=2), "connection"),
    "malformed": (FaultRule("malformed", paths=["/v1/troops"], times=2), "body is not JSON"),
    "html": (FaultRule("html", paths=["/v1/troops"], times=2), "body is not JSON"),
}


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_transient_fault_is_retried_and_records_are_exact(vendor: VendorServer, fault: str):
    rule, reason = TRANSIENT[fault]
    vendor.set_faults(FaultConfig.of(rule))
    sleep = Sleeps()
    records, fetcher = fetch(make_spec(vendor.url + "/v1"), sleep=sleep)
    assert vendor.faults_fired() == [2]
    assert records == truth(vendor)
    assert fetcher.stats.retries == 2 and fetcher.stats.calls == 4 + 2 and fetcher.stats.pages == 4
    assert sum(fetcher.stats.errors.values()) == 2
    assert any(k.startswith(reason.split(":")[0].split(" (")[0]) for k in fetcher.stats.errors), fetcher.stats.errors
    # capped exponential back-off with full jitter: attempt n waits in [0, base * 2**(n-1)]
    assert len(sleep.waits) == 2
    assert 0 <= sleep.waits[0] <= 0.05 and 0 <= sleep.waits[1] <= 0.1


def test_faults_in_the_middle_of_a_list_are_retried():
    # faults on about half of the pages (deterministic per URL), not just the first
    with vendor_for("offset", troops=30) as server:
        server.set_faults(FaultConfig.of(
            FaultRule("server_error", status=502, paths=["/v1/troops"], probability=0.4),
            FaultRule("reset", paths=["/v1/troops"], probability=0.2),
            seed=7,
        ))
        records, fetcher = fetch(make_spec(server.url + "/v1", LEVELS["offset"], max_attempts=8))
        assert sum(server.faults_fired()) >= 3
        assert records == truth(server)
        assert fetcher.stats.pages == 10 and fetcher.stats.retries == sum(server.faults_fired())


def test_wrong_content_type_is_still_json(vendor: VendorServer):
    vendor.set_faults(FaultConfig.of(FaultRule("wrong_content_type", paths=["/v1/troops"])))
    records, fetcher = fetch(make_spec(vendor.url + "/v1"))
    assert records == truth(vendor) and fetcher.stats.retries == 0 and vendor.faults_fired() == [4]


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "next_url", "link"])
def test_empty_page_in_the_middle_is_not_the_end(style: str):
    with vendor_for(style) as server:
        # fires on the first two pages that have a next one
        server.set_faults(FaultConfig.of(FaultRule("empty_page", paths=["/v1/troops"], times=2)))
        records, fetcher = fetch(make_spec(server.url + "/v1", LEVELS[style]))
        assert server.faults_fired() == [2]
        assert records == truth(server)


def test_gives_up_after_max_attempts_naming_url_and_reason(vendor: VendorServer):
    vendor.set_faults(FaultConfig.of(FaultRule("server_error", status=503, paths=["/v1/troops"])))
    sleep = Sleeps()
    with pytest.raises(CallFailed) as info:
        fetch(make_spec(vendor.url + "/v1", max_attempts=3), sleep=sleep)
    exc = info.value
    assert exc.status == 503 and exc.attempts == 3
    assert exc.reason == "gave up after 3 attempts: 503 Service Unavailable"
    assert exc.url == vendor.url + "/v1/troops?page=1&per_page=3"
    assert exc.url in str(exc) and "server_error" in exc.excerpt
    assert vendor.stats().requests == 3 and len(sleep.waits) == 2


def test_no_retry_when_max_attempts_is_one(vendor: VendorServer):
    vendor.set_faults(FaultConfig.of(FaultRule("reset", paths=["/v1/troops"], times=1)))
    with pytest.raises(CallFailed) as info:
        fetch(make_spec(vendor.url + "/v1", max_attempts=1))
    assert info.value.reason.startswith("gave up after 1 attempts: connection")
    assert info.value.status is None


# ---------------------------------------------------------------------------------------------------------------
# throttling and time
# ---------------------------------------------------------------------------------------------------------------
def test_429_waits_as_told_by_retry_after_and_slows_the_limiter(vendor: VendorServer):
    vendor.set_faults(FaultConfig.of(FaultRule("rate_limit", paths=["/v1/troops"], times=3, retry_after=1.5)))
    sleep, limiter = Sleeps(), NoLimiter()
    # throttling is not a fault: it does not use up max_attempts (here 1)
    records, fetcher = fetch(make_spec(vendor.url + "/v1", max_attempts=1), sleep=sleep, limiter=limiter)
    assert records == truth(vendor)
    assert sleep.waits == [1.5, 1.5, 1.5]
    assert limiter.throttles == [1.5, 1.5, 1.5]
    assert fetcher.stats.throttled == 3 and fetcher.stats.calls == 7 and limiter.acquired == 7


def test_429_without_retry_after_backs_off(vendor: VendorServer):
    vendor.set_faults(FaultConfig.of(FaultRule("rate_limit", paths=["/v1/troops"], times=2, retry_after=None)))
    sleep, limiter = Sleeps(), NoLimiter()
    records, _ = fetch(make_spec(vendor.url + "/v1"), sleep=sleep, limiter=limiter)
    assert records == truth(vendor)
    assert limiter.throttles == [None, None]
    assert len(sleep.waits) == 2 and all(0 <= w <= 0.1 for w in sleep.waits)


def test_the_vendors_own_rate_limit_is_honoured():
    # a real 429 from the vendor's token bucket, Retry-After in fractional seconds; the injected sleep really sleeps
    with vendor_for("page", rate=20.0, burst=1, retry_after="float") as server:
        waits: list[float] = []

        async def real_sleep(seconds: float) -> None:
            waits.append(seconds)
            await asyncio.sleep(seconds)

        limiter = NoLimiter()
        records, fetcher = fetch(make_spec(server.url + "/v1"), sleep=real_sleep, limiter=limiter)  # type: ignore[arg-type]
        assert records == truth(server)
        assert fetcher.stats.throttled == server.stats().refused == len(waits) == len(limiter.throttles)
        assert all(0 < w <= 0.06 for w in waits)


def test_out_of_time_before_the_first_call(vendor: VendorServer):
    with pytest.raises(OutOfTime) as info:
        fetch(make_spec(vendor.url + "/v1"), budget=0.0)
    assert "time budget is spent" in str(info.value)
    assert vendor.stats().requests == 0


def test_out_of_time_when_the_wait_would_pass_the_deadline(vendor: VendorServer):
    vendor.set_faults(FaultConfig.of(FaultRule("rate_limit", paths=["/v1/troops"], retry_after=30)))
    sleep = Sleeps()
    with pytest.raises(OutOfTime) as info:
        fetch(make_spec(vendor.url + "/v1"), budget=5.0, sleep=sleep)
    assert "no time left to retry (429 Too Many Requests)" in str(info.value)
    assert vendor.stats().requests == 1 and sleep.waits == []


def test_retry_after_seconds():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 27 <= retry_after_seconds(when) <= 30.5
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(past) == 0.0


class FlakyLimiter(NoLimiter):
    """The shared bucket fails now and then (e.g. DynamoDB conflicts under heavy contention)."""

    def __init__(self, fail_every: int) -> None:
        super().__init__()
        self.fail_every, self.calls = fail_every, 0

    async def acquire(self) -> None:
        self.calls += 1
        if self.calls % self.fail_every == 0:
            raise RuntimeError("rate bucket test: 100 conflicting writes in a row")
        await super().acquire()


def test_a_failing_limiter_is_a_transient_error_not_a_lost_batch(vendor: VendorServer):
    limiter, sleep = FlakyLimiter(fail_every=2), Sleeps()
    records, fetcher = fetch(make_spec(vendor.url + "/v1"), limiter=limiter, sleep=sleep)
    assert records == truth(vendor)
    assert fetcher.stats.errors.get("rate limiter") == len(sleep.waits) > 0
