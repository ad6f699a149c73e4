"""The simulated vendor, tested over real HTTP on 127.0.0.1 with httpx.

Each test starts its own small vendor (a few milliseconds) so configs and books never leak between tests.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from harvester.simulator import STYLES, FaultConfig, FaultRule, VendorData, VendorServer
from harvester.simulator.data import FIRMWARES, KINDS, iso, parse_iso
from harvester.simulator.paging import decode_cursor, encode_cursor

SMALL = {"troops": 2, "warriors_per_troop": 3, "datagroups_per_warrior": 2, "points_per_datagroup": 10}


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    with VendorServer(**SMALL, page_size=3) as server:
        yield server


class QueryKey(httpx.Auth):
    """Adds ``api_key`` to each request's query, keeping the query it has (httpx's client-level
    ``params`` would replace the query of a URL such as a next link)."""

    def __init__(self, params: dict[str, str]) -> None:
        self.params = params

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.url = request.url.copy_merge_params(self.params)
        yield request


def client_for(server: VendorServer, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.auth_headers(), auth=QueryKey(server.auth_params()),
                        timeout=timeout)


def get(client: httpx.Client, path: str, **params: Any) -> httpx.Response:
    """GET ``path`` with ``params`` added to the query it already has (httpx would replace it)."""
    return client.get(str(httpx.URL(path).copy_merge_params({k: v for k, v in params.items() if v is not None})))


class _Capped:
    """A client wrapper that fails after MAX_CALLS requests."""

    MAX_CALLS = 500

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.calls = 0

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        self.calls += 1
        assert self.calls <= self.MAX_CALLS, f"walk did not end after {self.MAX_CALLS} requests (last {url})"
        return self.client.get(url, **kwargs)


def walk(client: httpx.Client, path: str, style: str) -> tuple[list[dict[str, Any]], int]:
    """Every record of a list route, following ``style``'s protocol the way a client would.
    Returns (records, requests made)."""
    records: list[dict[str, Any]] = []
    calls = 0
    client = _Capped(client)  # a pagination bug must fail the test, never loop forever
    if style == "page":
        page, total, size = 1, None, 0
        while total is None or (page - 1) * size < total:
            r = get(client, path, page=page)
            calls += 1
            body = r.raise_for_status().json()
            records += body["data"]
            total, size, page = body["total"], body["per_page"], page + 1
    elif style == "offset":
        offset, total = 0, None
        while total is None or offset < total:
            body = get(client, path, offset=offset).raise_for_status().json()
            calls += 1
            records += body["items"]
            total, offset = body["total"], offset + len(body["items"])
    elif style == "cursor":
        cursor = None
        while True:
            body = get(client, path, cursor=cursor).raise_for_status().json()
            calls += 1
            records += body["results"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
    elif style in ("next_url", "link"):
        url: str | None = path
        while url:
            r = client.get(url).raise_for_status()
            calls += 1
            if style == "next_url":
                records += r.json()["data"]
                url = r.json()["links"]["next"]
            else:
                assert isinstance(r.json(), list)
                records += r.json()
                url = r.links.get("next", {}).get("url")
    else:
        records = client.get(path).raise_for_status().json()
        calls = 1
    return records, calls


# -- data -------------------------------------------------------------------------------------------


def test_same_seed_same_data_and_another_seed_differs() -> None:
    a, b, c = VendorData(**SMALL, seed=7), VendorData(**SMALL, seed=7), VendorData(**SMALL, seed=8)
    assert a.troops() == b.troops() and a.warriors() == b.warriors() and a.datagroups() == b.datagroups()
    assert list(a.iter_points()) == list(b.iter_points())
    assert list(a.iter_points()) != list(c.iter_points())


def test_counts_match_the_listings() -> None:
    data = VendorData(troops=3, warriors_per_troop=5, datagroups_per_warrior=3, points_per_datagroup=20, seed=3)
    counts = data.counts()
    assert counts["troops"] == len(data.troops()) == 3
    assert counts["warriors"] == len(data.warriors()) == sum(len(data.warriors(t["id"])) for t in data.troops())
    assert counts["datagroups"] == len(data.datagroups()) == sum(len(data.datagroups(w)) for w in data.ids("warriors"))
    assert counts["points"] == sum(1 for _ in data.iter_points()) == len(data.point_keys())
    assert counts["points"] == sum(len(data.points(g)) for g in data.ids("datagroups"))


def test_no_variation_gives_exact_products() -> None:
    data = VendorData(troops=2, warriors_per_troop=4, datagroups_per_warrior=3, points_per_datagroup=5, variation=0)
    assert data.counts() == {"troops": 2, "warriors": 8, "datagroups": 24, "points": 120}


def test_record_shapes() -> None:
    data = VendorData(troops=2, warriors_per_troop=20, points_per_datagroup=200, down_probability=0.2, seed=1)
    assert [t["id"] for t in data.troops()] == ["t0001", "t0002"]
    warriors = data.warriors()
    assert warriors[0]["id"] == "w000001" and {w["firmware"] for w in warriors} <= set(FIRMWARES)
    assert len({w["firmware"] for w in warriors}) > 1
    assert all(w["troop_id"] in ("t0001", "t0002") for w in warriors)
    group = data.datagroups()[0]
    assert group["id"] == "g000001" and group["kind"] in KINDS and group["warrior_id"] == "w000001"
    points = data.points(group["id"])
    step = timedelta(seconds=data.config.interval_seconds)
    assert [p["ts"] for p in points] == [iso(data.config.start + k * step) for k in range(len(points))]
    assert {p["status"] for p in points} == {"up", "down"}
    assert all(isinstance(p["value"], float) for p in points)
    assert 0.1 < sum(p["status"] == "down" for p in points) / len(points) < 0.3
    assert data.troop("nope") is None and data.warrior("t0001") is None and data.points("g999999") == []


def test_point_time_filter() -> None:
    data = VendorData(**SMALL)
    start = data.config.start
    points = data.points("g000001", start + timedelta(minutes=10), start + timedelta(minutes=25))
    assert [p["ts"] for p in points] == [iso(start + timedelta(minutes=m)) for m in (10, 15, 20)]
    assert parse_iso("2026-01-01T00:00:00 00:00") == parse_iso("2026-01-01T00:00:00Z")


def test_200k_points_are_cheap() -> None:
    started = time.perf_counter()
    data = VendorData(troops=10, warriors_per_troop=50, datagroups_per_warrior=4, points_per_datagroup=100)
    assert sum(1 for _ in data.iter_points()) == data.counts()["points"] > 190_000
    assert time.perf_counter() - started < 3.0


# -- pagination -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_every_style_walks_the_whole_hierarchy_exactly(style: str) -> None:
    with VendorServer(**SMALL, page_size=3, pagination={r: style for r in ("troops", "warriors", "datagroups", "points")}) as v, \
            client_for(v) as client:
        data = v.data
        troops, calls = walk(client, "/v1/troops", style)
        assert troops == data.troops()
        for n, troop in enumerate(troops):
            # both spellings of the warriors route
            path = f"/v1/troops/{troop['id']}/warriors" if n % 2 == 0 else f"/v1/warriors?troopId={troop['id']}"
            warriors, _ = walk(client, path, style)
            assert warriors == data.warriors(troop["id"])
            for warrior in warriors:
                groups, _ = walk(client, f"/v1/warriors/{warrior['id']}/datagroups", style)
                assert groups == data.datagroups(warrior["id"])
                for group in groups:
                    points, calls = walk(client, f"/v1/datagroups/{group['id']}/points", style)
                    assert points == data.points(group["id"])
                    expected_calls = 1 if style == "none" else max(1, math.ceil(len(points) / 3))
                    assert calls in (expected_calls, expected_calls + 1)  # page/offset may ask one past the end
        assert len({(t["id"]) for t in troops}) == len(troops)
        stats = v.stats()
        assert stats.records["points"] == data.counts()["points"]
        assert stats.records["datagroups"] == data.counts()["datagroups"]
        assert stats.served == stats.requests and stats.faults == {}


def test_mixed_styles_default_assignment(vendor: VendorServer) -> None:
    with client_for(vendor) as client:
        assert set(client.get("/v1/troops").json()) == {"data", "page", "per_page", "total"}
        assert set(client.get("/v1/troops/t0001/warriors").json()) == {"items", "total"}
        assert set(client.get("/v1/warriors/w000001/datagroups").json()) == {"results", "next_cursor"}
        r = client.get("/v1/datagroups/g000001/points")
        assert isinstance(r.json(), list) and 'rel="next"' in r.headers["link"]


def test_page_size_is_clamped_and_bad_parameters_are_400() -> None:
    with VendorServer(**SMALL, page_size=2, max_page_size=4) as v, client_for(v) as client:
        assert client.get("/v1/troops/t0001/warriors", params={"limit": 50}).json()["items"].__len__() <= 4
        assert len(client.get("/v1/datagroups/g000001/points", params={"limit": 50}).json()) == 4
        assert client.get("/v1/troops", params={"page": 0}).status_code == 400
        assert client.get("/v1/troops", params={"per_page": "x"}).status_code == 400
        assert client.get("/v1/warriors/w000001/datagroups", params={"cursor": "!!"}).status_code == 400
        assert client.get("/v1/warriors").status_code == 400  # troopId missing


def test_points_from_to_filter_and_pagination_together() -> None:
    with VendorServer(**SMALL, page_size=2, pagination={"points": "next_url"}) as v, client_for(v) as client:
        start = v.data.config.start
        q = f"?from={iso(start + timedelta(minutes=5))}&to={iso(start + timedelta(minutes=30))}"
        points, calls = walk(client, "/v1/datagroups/g000002/points" + q, "next_url")
        assert points == v.data.points("g000002", start + timedelta(minutes=5), start + timedelta(minutes=30))
        assert len(points) == 5 and calls == 3
        assert client.get("/v1/datagroups/g000002/points?from=yesterday").status_code == 400


def test_unknown_parents_are_json_404(vendor: VendorServer) -> None:
    with client_for(vendor) as client:
        for path in ("/v1/troops/t9999/warriors", "/v1/warriors?troopId=t9999", "/v1/warriors/w999999/datagroups",
                     "/v1/datagroups/g999999/points", "/v1/nothing"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(1234)) == 1234


# -- auth -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["header", "bearer", "query"])
def test_auth_schemes(scheme: str) -> None:
    with VendorServer(**SMALL, auth=scheme, api_key="s3cret") as v:
        url = f"{v.url}/v1/troops"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=v.auth_headers("wrong"), params=v.auth_params("wrong")).status_code == 401
        ok = httpx.get(url, headers=v.auth_headers(), params=v.auth_params())
        assert ok.status_code == 200 and ok.json()["total"] == 2
        other = {"header": {"Authorization": "Bearer s3cret"}, "bearer": {"X-Api-Key": "s3cret"},
                 "query": {"X-Api-Key": "s3cret"}}
        assert httpx.get(url, headers=other[scheme]).status_code == 401
        assert httpx.get(url).json()["error"]["code"] == "unauthorized"
        stats = v.stats()
        assert stats.unauthorized == 4 and stats.served == 1


def test_query_auth_key_survives_next_links() -> None:
    with VendorServer(**SMALL, auth="query", page_size=3, pagination={"points": "link"}) as v, client_for(v) as c:
        points, _ = walk(c, "/v1/datagroups/g000001/points", "link")
        assert points == v.data.points("g000001")


def test_rejected_auth_does_not_take_rate_limit_tokens() -> None:
    with VendorServer(**SMALL, rate=1, burst=1) as v:
        for _ in range(5):
            assert httpx.get(f"{v.url}/v1/troops").status_code == 401
        assert httpx.get(f"{v.url}/v1/troops", headers=v.auth_headers()).status_code == 200


# -- rate limit, stats, latency ---------------------------------------------------------------------


def blast(server: VendorServer, seconds: float, path: str = "/v1/troops") -> list[httpx.Response]:
    """Sequential requests as fast as possible for ``seconds``."""
    responses = []
    with client_for(server) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            responses.append(client.get(path))
    return responses


def test_rate_limit_429_retry_after_and_per_second_stats() -> None:
    with VendorServer(**SMALL, rate=10, burst=5) as v:
        started = time.monotonic()
        responses = blast(v, 1.3)
        elapsed = time.monotonic() - started
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) + len(refused) == len(responses) and refused
        # more than the burst (the bucket refills), never more than burst + rate x time; the lower bound is loose
        # because a loaded machine may not send fast enough to keep the bucket empty the whole time
        assert 5 + 5 <= len(ok) <= 5 + 10 * elapsed + 1
        assert all(r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert refused[0].json()["error"]["code"] == "rate_limited"
        stats = v.stats()
        assert stats.served == len(ok) and stats.refused == len(refused)
        assert sum(s["served"] for s in stats.per_second.values()) == len(ok)
        assert sum(s["refused"] for s in stats.per_second.values()) == len(refused)
        assert stats.by_status == {200: len(ok), 429: len(refused)}
        assert all(s["served"] <= 15 for s in stats.per_second.values())
        assert stats.seconds_over() == 0 and stats.limit_per_second == 15
        second, served = stats.busiest_second()
        assert served == max(s["served"] for s in stats.per_second.values())
        assert abs(second - time.time()) < 5
        report = httpx.get(f"{v.url}/_stats").json()  # no auth, not rate limited
        assert report["served"] == len(ok) and report["seconds_over_limit"] == 0
        assert report["busiest_second"] == {"second": second, "served": served}


@pytest.mark.parametrize("style", ["float", "none"])
def test_retry_after_styles(style: str) -> None:
    with VendorServer(**SMALL, rate=20, burst=1, retry_after=style) as v, client_for(v) as client:
        responses = [client.get("/v1/troops") for _ in range(5)]
        refused = [r for r in responses if r.status_code == 429]
        assert refused
        for r in refused:
            if style == "none":
                assert "Retry-After" not in r.headers
            else:
                assert "." in r.headers["Retry-After"] and 0 < float(r.headers["Retry-After"]) <= 1 / 20 + 1e-3


def test_unlimited_vendor_and_seconds_over_a_given_limit() -> None:
    with VendorServer(**SMALL) as v:
        responses = blast(v, 0.4)
        assert all(r.status_code == 200 for r in responses) and len(responses) > 20
        stats = v.stats()
        assert stats.seconds_over() == 0  # no rate configured: nothing to exceed
        assert stats.seconds_over(limit=5) >= 1
        v.reset_stats()
        assert v.stats().requests == 0 and v.stats().per_second == {}
        httpx.get(f"{v.url}/v1/troops", headers=v.auth_headers())
        assert httpx.post(f"{v.url}/_admin/reset").json() == {"reset": True}
        assert v.stats().requests == 0


def test_each_key_has_its_own_bucket_and_reset_refills() -> None:
    with VendorServer(**SMALL, rate=1, burst=2, api_keys=("second-key",)) as v:
        url = f"{v.url}/v1/troops"
        assert [httpx.get(url, headers=v.auth_headers()).status_code for _ in range(3)] == [200, 200, 429]
        assert httpx.get(url, headers=v.auth_headers("second-key")).status_code == 200
        v.reset_rate_limits()
        assert httpx.get(url, headers=v.auth_headers()).status_code == 200


def test_latency_is_applied_and_requests_run_concurrently() -> None:
    with VendorServer(**SMALL, latency_ms=200) as v, client_for(v) as client:
        barrier = threading.Barrier(5)
        durations: list[float] = []

        def one() -> None:
            barrier.wait()
            started = time.monotonic()
            assert client.get("/v1/troops").status_code == 200
            durations.append(time.monotonic() - started)

        started = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(durations) == 5 and min(durations) >= 0.2
        assert time.monotonic() - started < 0.8  # 5 x 200 ms in parallel, not in series
        assert v.stats().max_in_flight == 5


def test_configure_at_run_time() -> None:
    with VendorServer(**SMALL) as v, client_for(v) as client:
        v.configure(pagination={"troops": "cursor"}, latency_ms=0)
        assert set(client.get("/v1/troops").json()) == {"results", "next_cursor"}
        r = httpx.post(f"{v.url}/_admin/config", json={"pagination": {"troops": "offset"}, "rate": 5})
        assert r.status_code == 200 and v.config.rate == 5 and v.config.pagination["warriors"] == "offset"
        assert set(client.get("/v1/troops").json()) == {"items", "total"}
        assert httpx.post(f"{v.url}/_admin/config", json={"pagination": {"troops": "pages"}}).status_code == 400
        assert httpx.get(f"{v.url}/_admin/counts").json() == v.data.counts()


# -- faults -----------------------------------------------------------------------------------------


def wait_idle(server: VendorServer, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while server.stats().in_flight and time.monotonic() < deadline:
        time.sleep(0.02)


def with_fault(server: VendorServer, **rule: Any) -> None:
    server.set_faults(FaultConfig.of(FaultRule(**rule)))


@pytest.mark.parametrize("retry_after", [2, 0.5, None])
def test_fault_rate_limit_storm(vendor: VendorServer, retry_after: float | None) -> None:
    with_fault(vendor, kind="rate_limit", retry_after=retry_after, paths=["/v1/troops"])
    with client_for(vendor) as client:
        responses = [client.get("/v1/troops") for _ in range(3)]
        assert all(r.status_code == 429 for r in responses)
        expected = None if retry_after is None else {2: "2", 0.5: "0.500"}[retry_after]
        assert responses[0].headers.get("Retry-After") == expected
        assert client.get("/v1/troops/t0001/warriors").status_code == 200  # other paths untouched
    stats = vendor.stats()
    assert stats.faults == {"rate_limit": 3} and stats.refused == 0 and stats.served == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fault_server_errors(vendor: VendorServer, status: int) -> None:
    with_fault(vendor, kind="server_error", status=status, times=2)
    with client_for(vendor) as client:
        assert [client.get("/v1/troops").status_code for _ in range(3)] == [status, status, 200]
    assert vendor.stats().faults == {"server_error": 2} and vendor.stats().served == 1
    assert vendor.faults_fired() == [2]


def test_fault_slow_response(vendor: VendorServer) -> None:
    with_fault(vendor, kind="slow", seconds=0.4, times=1)
    with client_for(vendor) as client:
        started = time.monotonic()
        r = client.get("/v1/troops")
        assert time.monotonic() - started >= 0.4 and r.json()["total"] == 2
        with pytest.raises(httpx.ReadTimeout):
            with_fault(vendor, kind="slow", seconds=0.6, times=1)
            client.get("/v1/troops", timeout=0.2)
    wait_idle(vendor)  # the server finishes (and books) the abandoned slow response later
    assert vendor.stats().faults == {"slow": 2}


def test_fault_connection_reset(vendor: VendorServer) -> None:
    with_fault(vendor, kind="reset", times=1)
    with client_for(vendor) as client:
        with pytest.raises(httpx.TransportError):
            client.get("/v1/troops")
        assert client.get("/v1/troops").status_code == 200  # the client reconnects
    assert vendor.stats().faults == {"reset": 1} and vendor.stats().served == 1


def test_fault_truncated_body(vendor: VendorServer) -> None:
    with_fault(vendor, kind="truncated", times=1)
    with client_for(vendor) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete|complete message body"):
            client.get("/v1/troops")
        assert client.get("/v1/troops").status_code == 200
    assert vendor.stats().faults == {"truncated": 1}


def test_fault_malformed_json(vendor: VendorServer) -> None:
    with_fault(vendor, kind="malformed", times=1)
    with client_for(vendor) as client:
        r = client.get("/v1/troops")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            r.json()


def test_fault_wrong_content_type(vendor: VendorServer) -> None:
    with_fault(vendor, kind="wrong_content_type", times=1)
    with client_for(vendor) as client:
        r = client.get("/v1/troops")
        assert r.headers["content-type"].startswith("text/plain") and json.loads(r.text)["total"] == 2


def test_fault_html_error_page_with_200(vendor: VendorServer) -> None:
    with_fault(vendor, kind="html", times=1)
    with client_for(vendor) as client:
        r = client.get("/v1/troops")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text.startswith("<!DOCTYPE html>")
    assert vendor.stats().served == 0 and vendor.stats().faults == {"html": 1}


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "next_url", "link"])
def test_fault_empty_page_in_the_middle(style: str) -> None:
    with VendorServer(**SMALL, page_size=3, pagination={"points": style}) as v, client_for(v) as client:
        truth = v.data.points("g000001")
        v.set_faults(FaultConfig.of(FaultRule("empty_page", paths=["/v1/datagroups/*/points"], times=1)))
        first = client.get("/v1/datagroups/g000001/points")
        body = first.json()
        items = body if isinstance(body, list) else body.get("data", body.get("items", body.get("results")))
        assert items == []
        if style in ("cursor", "next_url", "link"):
            # the next pointer aims at the same position: following it loses nothing
            v.set_faults(FaultConfig.of(FaultRule("empty_page", probability=0.0)))
            points, _ = walk(client, "/v1/datagroups/g000001/points", style)
            assert points == truth
        else:
            assert body["total"] == len(truth)
        assert v.stats().faults == {"empty_page": 1}


def test_fault_empty_page_never_hides_the_last_page(vendor: VendorServer) -> None:
    vendor.set_faults(FaultConfig.of(FaultRule("empty_page")))
    with client_for(vendor) as client:
        assert len(client.get("/v1/troops").json()["data"]) == 2  # single page: nothing after it
    assert vendor.stats().faults == {}


def test_fault_not_found_for_named_parents(vendor: VendorServer) -> None:
    with_fault(vendor, kind="not_found", ids=["w000002", "t0002"])
    with client_for(vendor) as client:
        assert client.get("/v1/warriors/w000002/datagroups").status_code == 404
        assert client.get("/v1/warriors?troopId=t0002").status_code == 404
        assert client.get("/v1/warriors/w000001/datagroups").status_code == 200
        assert client.get("/v1/troops/t0001/warriors").status_code == 200


def test_fault_outage(vendor: VendorServer) -> None:
    vendor.start_outage(0.4)
    with client_for(vendor) as client:
        assert client.get("/v1/troops").status_code == 503
        assert httpx.get(f"{vendor.url}/v1/troops").status_code == 503  # before auth: the vendor is down
        time.sleep(0.45)
        assert client.get("/v1/troops").status_code == 200
    assert vendor.stats().faults == {"outage": 2}


def test_fault_probability_is_deterministic_per_url() -> None:
    def statuses() -> list[int]:
        with VendorServer(**{**SMALL, "points_per_datagroup": 1}) as v, client_for(v) as client:
            v.set_faults(FaultConfig.of(FaultRule("server_error", probability=0.3, status=500), seed=11))
            paths = [f"/v1/datagroups/{g}/points" for g in v.data.ids("datagroups")] * 5
            paths += [f"/v1/troops?page=1&per_page={n}" for n in range(1, 60)]
            return [client.get(p).status_code for p in paths]

    first, second = statuses(), statuses()
    assert first == second
    assert 0.15 < first.count(500) / len(first) < 0.45


def test_faults_over_http_admin(vendor: VendorServer) -> None:
    payload = {"seed": 3, "rules": [{"kind": "server_error", "status": 502, "paths": ["/v1/troops"], "times": 1}]}
    assert httpx.post(f"{vendor.url}/_admin/faults", json=payload).status_code == 200
    assert vendor.faults().rules[0].status == 502
    with client_for(vendor) as client:
        assert client.get("/v1/troops").status_code == 502
        assert httpx.get(f"{vendor.url}/_admin/faults").json()["fired"] == [1]
        assert httpx.post(f"{vendor.url}/_admin/faults", json={"rules": [{"kind": "gremlins"}]}).status_code == 400
        assert httpx.post(f"{vendor.url}/_admin/faults", json={"outage_seconds": 5}).status_code == 200
        assert client.get("/v1/troops").status_code == 503
        assert httpx.delete(f"{vendor.url}/_admin/faults").status_code == 200
        assert client.get("/v1/troops").status_code == 200
    stats = httpx.get(f"{vendor.url}/_stats").json()
    assert stats["faults"] == {"server_error": 1, "outage": 1} and stats["served"] == 1


def test_the_clock_makes_points_appear_over_days_and_windows_filter_them_in_every_format() -> None:
    """Item 7 of issue 12: points spread over days, new ones appear as the clock advances, and the points
    endpoint honours from/to (ISO with an offset, a date, epoch seconds, epoch ms) and since."""
    opts = dict(SMALL, points_per_datagroup=96, interval_seconds=3600, variation=0)
    with VendorServer(**opts, page_size=200, max_page_size=500) as v, client_for(v) as client:
        start = v.data.config.start  # 2026-01-01T00:00Z; 96 hourly points = four days
        v.set_clock(start + timedelta(days=1))
        day1 = client.get("/v1/datagroups/g000001/points").json()
        assert len(day1) == 24 and day1[-1]["ts"] == "2026-01-01T23:00:00Z"
        assert v.data.counts()["points"] == 24 * 12 == len(v.data.point_keys())
        v.advance_clock(timedelta(hours=12))
        assert len(client.get("/v1/datagroups/g000001/points").json()) == 36
        assert client.get("/_admin/clock").json() == {"now": "2026-01-02T12:00:00Z"}
        assert client.post("/_admin/clock", json={"advance_seconds": 43200}).json() == {"now": "2026-01-03T00:00:00Z"}

        def ts(**params):
            return [p["ts"] for p in client.get("/v1/datagroups/g000001/points", params=params).json()]

        window = [f"2026-01-01T{h:02d}:00:00Z" for h in range(6, 24)] + ["2026-01-02T00:00:00Z", "2026-01-02T01:00:00Z"]
        assert ts(**{"from": "2026-01-01T08:00:00+02:00", "to": "2026-01-02T02:00:00Z"}) == window
        assert ts(**{"from": "2026-01-01T06:00:00Z", "to": "1767319200"}) == window  # epoch seconds
        assert ts(**{"from": "1767247200000", "to": "1767319200000"}) == window  # epoch ms
        assert len(ts(**{"from": "2026-01-02", "to": "2026-01-03"})) == 24  # dates
        assert ts(since="2026-01-02T22:00:00Z") == ["2026-01-02T23:00:00Z"]  # exclusive
        assert ts(**{"from": "2026-01-03"}) == []  # the clock's time: nothing yet
        v.set_clock(None)
        assert len(ts()) == 96
        assert client.get("/v1/datagroups/g000001/points", params={"since": "soon"}).status_code == 400
