"""The simulated vendor: a real HTTP server on 127.0.0.1 that every test, the demo and the benchmarks use.

Why a real server (aiohttp, on its own thread and event loop) and not a mock: the harvester's HTTP
client, its retries and its rate limiter must meet real sockets, real concurrency, real 429s and real
broken connections. The vendor keeps honest books (``stats()``) so tests can check what the harvester
did to it: requests per wall-clock second, 429s, faults, records served, concurrency.

Per /v1 request, in this order:
1. outage (a fault): 503;
2. auth: a missing or wrong key is 401. A 401 never takes a rate-limit token (the limit is per key, and
   an unauthenticated request has none); it is counted under ``unauthorized``;
3. rate limit: a token bucket per API key (``rate`` tokens/s, ``burst`` capacity); empty -> 429;
4. the page itself (404 for an unknown parent, 400 for a bad page parameter);
5. fault rules (first that fires wins);
6. latency (``latency_ms``, plus a ``slow`` fault's seconds), then the response.

Stats: a request is "served" when it is answered 2xx with its real records and no fault (a ``slow``
response counts as served too, and under faults["slow"]); "refused" is the rate limiter's 429; faults
are counted by kind, never as served; every other answer (400, 401, 404) is an "error".
Per-second figures are keyed by the second the request arrived (``int(time.time())``), which is when
its rate-limit token was taken.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from .data import DataConfig, VendorData, iso, parse_time
from .faults import FaultConfig, FaultPlan, FaultRule
from .paging import STYLES, PageError, paginate

ROUTES = ("troops", "warriors", "datagroups", "points")
AUTH_SCHEMES = ("header", "bearer", "query", "none")
RETRY_AFTER_STYLES = ("int", "float", "none")
DEFAULT_PAGINATION = {"troops": "page", "warriors": "offset", "datagroups": "cursor", "points": "link"}
DEFAULT_PAGE_SIZE = {"troops": 50, "warriors": 50, "datagroups": 50, "points": 100}
DEFAULT_MAX_PAGE_SIZE = {"troops": 100, "warriors": 100, "datagroups": 100, "points": 1000}
HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>"
    "<p>The upstream server is temporarily unavailable. Please try again later.</p></body></html>"
)


@dataclass
class VendorConfig:
    """How the vendor behaves. Route-keyed dicts may be partial (missing routes keep the defaults);
    ``page_size``/``max_page_size`` may also be one int for every route."""

    data: DataConfig = field(default_factory=DataConfig)
    api_key: str = "test-key"
    api_keys: tuple[str, ...] = ()  # further accepted keys, each with its own bucket
    auth: str = "header"  # header | bearer | query | none
    auth_header: str = "X-Api-Key"
    rate: float | None = None  # requests per second per key; None = unlimited
    burst: int = 5
    retry_after: str = "int"  # int (ceil seconds) | float (seconds, 3 decimals) | none (header omitted)
    latency_ms: float = 0.0
    pagination: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PAGINATION))
    page_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PAGE_SIZE))
    max_page_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_PAGE_SIZE))

    def __post_init__(self) -> None:
        self.pagination = {**DEFAULT_PAGINATION, **self.pagination}
        self.page_size = _per_route(self.page_size, DEFAULT_PAGE_SIZE)
        self.max_page_size = _per_route(self.max_page_size, DEFAULT_MAX_PAGE_SIZE)
        self.api_keys = tuple(self.api_keys)
        for route, style in self.pagination.items():
            if route not in ROUTES or style not in STYLES:
                raise ValueError(f"pagination {route}={style}: routes are {ROUTES}, styles {STYLES}")
        if self.auth not in AUTH_SCHEMES:
            raise ValueError(f"auth must be one of {AUTH_SCHEMES}")
        if self.retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_STYLES}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0 (or None for unlimited)")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")

    @property
    def limit_per_second(self) -> float | None:
        """Most requests one key can have served in any one second: rate + burst."""
        return None if self.rate is None else self.rate + self.burst

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data"}
        out["api_key"] = out["api_keys"] = "***"
        out["data"] = {f.name: getattr(self.data, f.name) for f in fields(self.data)}
        out["data"]["start"] = self.data.start.isoformat()
        return out


def vendor_config(base: VendorConfig | None = None, **options: Any) -> VendorConfig:
    """``base`` (default ``VendorConfig()``) with ``options`` set, each a VendorConfig field or a DataConfig field
    (``troops=...``, ``seed=...``): the one place options become a config (VendorServer, `harvest vendor`,
    `harvest demo` and its resume)."""
    config = base or VendorConfig()
    data_fields = {f.name for f in fields(DataConfig)}
    data = {k: options.pop(k) for k in list(options) if k in data_fields}
    if data:
        config = replace(config, data=replace(config.data, **data))
    return replace(config, **options) if options else config


def _per_route(value: dict[str, int] | int, defaults: dict[str, int]) -> dict[str, int]:
    if isinstance(value, int):
        return {route: value for route in ROUTES}
    return {**defaults, **value}


class TokenBucket:
    """Classic token bucket: holds up to ``burst`` tokens, refills at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take a token: 0.0 if granted, else the seconds until one will be available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class VendorStats:
    """A snapshot of the vendor's books (see the module docstring for what each counter means)."""

    requests: int = 0
    served: int = 0
    refused: int = 0
    unauthorized: int = 0
    errors: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)  # records in served responses, per route
    per_second: dict[int, dict[str, int]] = field(default_factory=dict)  # second -> served/refused/faults/errors
    max_in_flight: int = 0
    in_flight: int = 0
    limit_per_second: float | None = None  # rate + burst of the vendor when the snapshot was taken

    def busiest_second(self) -> tuple[int, int] | None:
        """(second, served) of the second with the most served requests; None if none were served."""
        if not self.per_second:
            return None
        second = max(self.per_second, key=lambda s: (self.per_second[s]["served"], -s))
        return second, self.per_second[second]["served"]

    def seconds_over(self, limit: float | None = None) -> int:
        """Seconds in which more than ``limit`` (default rate + burst) requests were served."""
        limit = self.limit_per_second if limit is None else limit
        if limit is None:
            return 0
        return sum(1 for s in self.per_second.values() if s["served"] > limit)

    def total_faults(self) -> int:
        return sum(self.faults.values())

    def to_dict(self) -> dict[str, Any]:
        busiest = self.busiest_second()
        return {
            "requests": self.requests,
            "served": self.served,
            "refused": self.refused,
            "unauthorized": self.unauthorized,
            "errors": self.errors,
            "faults": dict(self.faults),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_route": dict(self.by_route),
            "records": dict(self.records),
            "per_second": {str(k): dict(v) for k, v in sorted(self.per_second.items())},
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "limit_per_second": self.limit_per_second,
            "busiest_second": None if busiest is None else {"second": busiest[0], "served": busiest[1]},
            "seconds_over_limit": self.seconds_over() if self.limit_per_second is not None else None,
        }


class _Books:
    """The live counters behind VendorStats, shared by the loop thread and the caller's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = VendorStats()

    def enter(self) -> None:
        with self._lock:
            self._stats.in_flight += 1
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)

    def leave(self) -> None:
        with self._lock:
            self._stats.in_flight -= 1

    def record(self, second: int, route: str, status: int | None, outcome: str, records: int = 0) -> None:
        """Count one answered request. ``outcome``: served, refused, unauthorized, error, or
        ``fault:<kind>`` (``fault:slow`` is also served)."""
        with self._lock:
            s = self._stats
            s.requests += 1
            s.by_route[route] = s.by_route.get(route, 0) + 1
            if status is not None:
                s.by_status[status] = s.by_status.get(status, 0) + 1
            sec = s.per_second.setdefault(second, {"served": 0, "refused": 0, "faults": 0, "errors": 0})
            if outcome.startswith("fault:"):
                kind = outcome.removeprefix("fault:")
                s.faults[kind] = s.faults.get(kind, 0) + 1
                sec["faults"] += 1
                if kind != "slow":
                    return
                outcome = "served"
            if outcome == "served":
                s.served += 1
                sec["served"] += 1
                s.records[route] = s.records.get(route, 0) + records
            elif outcome == "refused":
                s.refused += 1
                sec["refused"] += 1
            else:
                sec["errors"] += 1
                if outcome == "unauthorized":
                    s.unauthorized += 1
                else:
                    s.errors += 1

    def snapshot(self, limit_per_second: float | None) -> VendorStats:
        with self._lock:
            s = self._stats
            return replace(
                s,
                faults=dict(s.faults),
                by_status=dict(s.by_status),
                by_route=dict(s.by_route),
                records=dict(s.records),
                per_second={k: dict(v) for k, v in s.per_second.items()},
                limit_per_second=limit_per_second,
            )

    def reset(self) -> None:
        with self._lock:
            self._stats = VendorStats(in_flight=self._stats.in_flight)


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = _json_bytes({"error": {"status": status, "code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _format_retry_after(seconds: float, style: str) -> str | None:
    if style == "none":
        return None
    if style == "float":
        return f"{max(seconds, 0.001):.3f}"
    return str(max(1, math.ceil(seconds)))


class _Answer:
    """What a route computed before faults and latency: either an error response or a page."""

    def __init__(self, response: web.Response | None = None, body: Any = None, headers: dict[str, str] | None = None,
                 records: int = 0, has_more: bool = False, make_empty: Callable[[], Any] | None = None) -> None:
        self.response = response
        self.body = body
        self.headers = headers or {}
        self.records = records
        self.has_more = has_more
        self.make_empty = make_empty


class VendorApp:
    """The aiohttp application and the vendor's state (config, data, buckets, faults, books)."""

    def __init__(self, config: VendorConfig, data: VendorData | None = None) -> None:
        self.config = config
        self.data = data or VendorData(config.data)
        self.books = _Books()
        self.plan = FaultPlan()
        self._buckets: dict[str, TokenBucket] = {}
        self._bucket_lock = threading.Lock()
        self.app = self._build_app()

    # -- wiring ---------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._json_not_found])
        r = app.router
        r.add_get("/v1/troops", self._route("troops", self._troops))
        r.add_get("/v1/troops/{troop_id}/warriors", self._route("warriors", self._warriors))
        r.add_get("/v1/warriors", self._route("warriors", self._warriors))
        r.add_get("/v1/warriors/{warrior_id}/datagroups", self._route("datagroups", self._datagroups))
        r.add_get("/v1/datagroups/{datagroup_id}/points", self._route("points", self._points))
        r.add_get("/_stats", self._get_stats)
        r.add_post("/_admin/reset", self._post_reset)
        r.add_get("/_admin/faults", self._get_faults)
        r.add_post("/_admin/faults", self._post_faults)
        r.add_delete("/_admin/faults", self._delete_faults)
        r.add_get("/_admin/config", self._get_config)
        r.add_post("/_admin/config", self._post_config)
        r.add_get("/_admin/counts", self._get_counts)
        r.add_get("/_admin/clock", self._get_clock)
        r.add_post("/_admin/clock", self._post_clock)
        return app

    @web.middleware
    async def _json_not_found(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        """Unknown paths and methods answer JSON too, like every vendor route."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(404, "not_found", f"no route for {request.path}")
        except web.HTTPMethodNotAllowed:
            return _error(405, "method_not_allowed", f"{request.method} not allowed on {request.path}")

    def _route(self, name: str, lister: Callable[[web.Request], _Answer]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, name, lister)

        return handler

    # -- the request pipeline -------------------------------------------------------------------

    async def _handle(self, request: web.Request, route: str, lister: Callable[[web.Request], _Answer]) -> web.StreamResponse:
        second = int(time.time())
        self.books.enter()
        try:
            outcome, status, records, response = await self._pipeline(request, route, lister)
            self.books.record(second, route, status, outcome, records)
            return response
        finally:
            self.books.leave()

    async def _pipeline(self, request: web.Request, route: str, lister: Callable[[web.Request], _Answer]
                        ) -> tuple[str, int | None, int, web.StreamResponse]:
        """Answer one /v1 request: (outcome for the books, status sent or None, records, response)."""
        cfg = self.config
        plan = self.plan
        latency = cfg.latency_ms / 1000.0
        if plan.in_outage():
            await asyncio.sleep(latency)
            return "fault:outage", 503, 0, _error(503, "service_unavailable", "the vendor is down (outage)")
        key = self._authenticate(request)
        if key is None:
            await asyncio.sleep(latency)
            headers = {"WWW-Authenticate": "Bearer"} if cfg.auth == "bearer" else None
            return "unauthorized", 401, 0, _error(401, "unauthorized", "missing or invalid API key", headers)
        wait = self._take_token(key)
        if wait > 0:
            await asyncio.sleep(latency)
            value = _format_retry_after(wait, cfg.retry_after)
            headers = {"Retry-After": value} if value is not None else None
            return "refused", 429, 0, _error(429, "rate_limited", "too many requests", headers)

        answer = lister(request)
        rule = plan.choose(str(request.rel_url), request.path, _parent_id(request), answer.has_more)
        await asyncio.sleep(latency + (rule.seconds if rule is not None and rule.kind == "slow" else 0.0))
        if rule is None or rule.kind == "slow":
            if answer.response is not None:
                return ("fault:slow" if rule else "error"), answer.response.status, 0, answer.response
            outcome = "fault:slow" if rule else "served"
            return outcome, 200, answer.records, self._json_response(answer.body, answer.headers)
        return await self._fault_response(request, rule, answer)

    def _authenticate(self, request: web.Request) -> str | None:
        """The API key the request presents, if it is a valid one (``"anonymous"`` when auth is off)."""
        cfg = self.config
        if cfg.auth == "none":
            return "anonymous"
        if cfg.auth == "header":
            presented = request.headers.get(cfg.auth_header)
        elif cfg.auth == "bearer":
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        else:
            presented = request.query.get("api_key")
        return presented if presented and presented in (cfg.api_key, *cfg.api_keys) else None

    def _take_token(self, key: str) -> float:
        if self.config.rate is None:
            return 0.0
        with self._bucket_lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.config.rate, self.config.burst)
            return bucket.take()

    def reset_buckets(self) -> None:
        """Refill every key's bucket (forget past traffic)."""
        with self._bucket_lock:
            self._buckets.clear()

    def _json_response(self, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=200, body=_json_bytes(body), content_type="application/json", headers=headers)

    async def _fault_response(self, request: web.Request, rule: FaultRule, answer: _Answer
                              ) -> tuple[str, int | None, int, web.StreamResponse]:
        outcome = f"fault:{rule.kind}"
        body = answer.body if answer.response is None else json.loads(answer.response.body)
        if rule.kind == "rate_limit":
            headers = {} if rule.retry_after is None else {"Retry-After": _format_seconds(rule.retry_after)}
            return outcome, 429, 0, _error(429, "rate_limited", "too many requests", headers)
        if rule.kind == "server_error":
            return outcome, rule.status, 0, _error(rule.status, "server_error", "internal error, try again")
        if rule.kind == "not_found":
            return outcome, 404, 0, _error(404, "not_found", f"{_parent_id(request) or request.path} not found")
        if rule.kind == "html":
            return outcome, 200, 0, web.Response(status=200, text=HTML_ERROR_PAGE, content_type="text/html")
        if rule.kind == "wrong_content_type":
            return outcome, 200, 0, web.Response(status=200, body=_json_bytes(body), content_type="text/plain",
                                                 headers=answer.headers)
        if rule.kind == "malformed":
            raw = _json_bytes(body)
            return outcome, 200, 0, web.Response(status=200, body=raw[: max(1, len(raw) // 2)],
                                                 content_type="application/json", headers=answer.headers)
        if rule.kind == "empty_page":
            assert answer.make_empty is not None
            empty = answer.make_empty()
            return outcome, 200, 0, self._json_response(empty.body, empty.headers)
        if rule.kind == "reset":
            _reset_connection(request)
            return outcome, None, 0, web.Response(status=500)
        if rule.kind == "truncated":
            return outcome, 200, 0, await _truncated(request, _json_bytes(body))
        raise AssertionError(f"unhandled fault kind {rule.kind}")

    # -- routes -----------------------------------------------------------------------------------

    def _page(self, request: web.Request, route: str, records: list[dict[str, Any]]) -> _Answer:
        style = self.config.pagination[route]
        size, max_size = self.config.page_size[route], self.config.max_page_size[route]
        try:
            page = paginate(style, request.url, records, size, max_size)
        except PageError as exc:
            return _Answer(response=_error(400, "bad_request", str(exc)))
        return _Answer(
            body=page.body,
            headers=page.headers,
            records=page.records,
            has_more=page.has_more,
            make_empty=lambda: paginate(style, request.url, records, size, max_size, empty=True),
        )

    def _troops(self, request: web.Request) -> _Answer:
        return self._page(request, "troops", self.data.troops())

    def _warriors(self, request: web.Request) -> _Answer:
        troop_id = request.match_info.get("troop_id") or request.query.get("troopId")
        if not troop_id:
            return _Answer(response=_error(400, "bad_request", "troopId is required"))
        if self.data.troop(troop_id) is None:
            return _Answer(response=_error(404, "not_found", f"troop {troop_id} not found"))
        return self._page(request, "warriors", self.data.warriors(troop_id))

    def _datagroups(self, request: web.Request) -> _Answer:
        warrior_id = request.match_info["warrior_id"]
        if self.data.warrior(warrior_id) is None:
            return _Answer(response=_error(404, "not_found", f"warrior {warrior_id} not found"))
        return self._page(request, "datagroups", self.data.datagroups(warrior_id))

    def _points(self, request: web.Request) -> _Answer:
        group_id = request.match_info["datagroup_id"]
        if self.data.datagroup(group_id) is None:
            return _Answer(response=_error(404, "not_found", f"datagroup {group_id} not found"))
        try:  # a window's filters in any format a spec can send: ISO-8601, a date, epoch seconds or ms
            start, end, since = (parse_time(request.query[name]) if request.query.get(name) else None
                                 for name in ("from", "to", "since"))
        except ValueError as exc:
            return _Answer(response=_error(
                400, "bad_request", f"from/to/since must be ISO-8601, a date or epoch seconds/ms: {exc}"))
        return self._page(request, "points", self.data.points(group_id, start, end, since))

    # -- admin --------------------------------------------------------------------------------------

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.books.snapshot(self.config.limit_per_second).to_dict())

    async def _post_reset(self, request: web.Request) -> web.Response:
        """Reset the stats; with ``{"buckets": true}`` refill the rate-limit buckets too."""
        payload = await _json_body(request)
        self.books.reset()
        if payload.get("buckets"):
            self.reset_buckets()
        return web.json_response({"reset": True})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response({**self.plan.config.to_dict(), "fired": self.plan.fired(),
                                  "outage_remaining": self.plan.outage_remaining()})

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            config = FaultConfig.from_dict(await _json_body(request))
        except (TypeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        self.plan = FaultPlan(config)
        return web.json_response(config.to_dict())

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self.plan = FaultPlan()
        return web.json_response({"cleared": True})

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_dict())

    async def _post_config(self, request: web.Request) -> web.Response:
        """Change behaviour at run time (rate, burst, latency_ms, retry_after, pagination, ...)."""
        try:
            self.configure(**await _json_body(request))
        except (TypeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        return web.json_response(self.config.to_dict())

    async def _get_clock(self, request: web.Request) -> web.Response:
        now = self.data.now
        return web.json_response({"now": iso(now) if now else None})

    async def _post_clock(self, request: web.Request) -> web.Response:
        """``{"now": ISO}`` sets the clock, ``{"advance_seconds": n}`` moves it on, ``{"now": null}`` removes it."""
        payload = await _json_body(request)
        try:
            if "advance_seconds" in payload:
                self.data.advance_clock(timedelta(seconds=float(payload["advance_seconds"])))
            elif "now" in payload:
                self.data.set_clock(parse_time(payload["now"]) if payload["now"] else None)
        except (TypeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        return await self._get_clock(request)

    async def _get_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.data.counts())

    def configure(self, **changes: Any) -> VendorConfig:
        """Replace config fields (not ``data``); a new rate or burst refills every bucket."""
        if "data" in changes:
            raise ValueError("data cannot change on a running vendor; start a new one")
        merged = {**changes}
        for name in ("pagination", "page_size", "max_page_size"):
            if isinstance(merged.get(name), dict):
                merged[name] = {**getattr(self.config, name), **merged[name]}
        self.config = replace(self.config, **merged)
        if {"rate", "burst"} & set(changes):
            self.reset_buckets()
        return self.config


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        payload = await request.json()
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return payload


def _parent_id(request: web.Request) -> str | None:
    info = request.match_info
    return info.get("troop_id") or info.get("warrior_id") or info.get("datagroup_id") or request.query.get("troopId")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"


def _reset_connection(request: web.Request) -> None:
    """Abort the TCP connection with an RST (SO_LINGER 0), as a crashing load balancer does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Promise the full Content-Length, send about half the body, then close the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    if request.transport is not None:
        request.transport.close()
    return response


class VendorServer:
    """The vendor on a background thread with its own event loop, on ``host:port`` (0 = ephemeral).

    ``VendorServer(config, data=None, host="127.0.0.1", port=0, **options)``: ``options`` override
    VendorConfig fields, or DataConfig fields (troops=..., seed=...). Use as a context manager, or
    call ``start()`` / ``stop()``.
    """

    def __init__(self, config: VendorConfig | None = None, *, data: VendorData | None = None,
                 host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.vendor = VendorApp(vendor_config(config, **options), data)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> VendorServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"vendor-{id(self):x}", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the vendor did not start within 15 s")
        if self._startup_error is not None:
            self._thread = None
            raise RuntimeError(f"the vendor failed to start: {self._startup_error}") from self._startup_error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.vendor.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                future.result(15)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._thread = self._loop = self._runner = None
        self._ready.clear()

    def __enter__(self) -> VendorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (routes are under ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> VendorConfig:
        return self.vendor.config

    @property
    def data(self) -> VendorData:
        return self.vendor.data

    def auth_headers(self, key: str | None = None) -> dict[str, str]:
        """Headers that authenticate with ``key`` (default: the vendor's key) under its scheme."""
        key = key or self.config.api_key
        if self.config.auth == "header":
            return {self.config.auth_header: key}
        if self.config.auth == "bearer":
            return {"Authorization": f"Bearer {key}"}
        return {}

    def auth_params(self, key: str | None = None) -> dict[str, str]:
        """Query parameters that authenticate (only for the ``query`` scheme)."""
        return {"api_key": key or self.config.api_key} if self.config.auth == "query" else {}

    def stats(self) -> VendorStats:
        return self.vendor.books.snapshot(self.config.limit_per_second)

    def reset_stats(self, buckets: bool = False) -> None:
        """Zero the stats; ``buckets=True`` also refills the rate-limit buckets."""
        self.vendor.books.reset()
        if buckets:
            self.vendor.reset_buckets()

    def reset_rate_limits(self) -> None:
        self.vendor.reset_buckets()

    def set_faults(self, faults: FaultConfig | dict[str, Any] | None) -> None:
        """Put faults in force from now (an outage starts now); None clears them."""
        if isinstance(faults, dict):
            faults = FaultConfig.from_dict(faults)
        self.vendor.plan = FaultPlan(faults)

    def clear_faults(self) -> None:
        self.vendor.plan = FaultPlan()

    def faults(self) -> FaultConfig:
        return self.vendor.plan.config

    def faults_fired(self) -> list[int]:
        """How many times each fault rule in force has fired, in rule order."""
        return self.vendor.plan.fired()

    def start_outage(self, seconds: float) -> None:
        """Every /v1 request is a 503 for ``seconds`` from now (keeps the rules in force)."""
        current = self.vendor.plan.config
        self.set_faults(replace(current, outage_seconds=seconds))

    def set_clock(self, now: datetime | None) -> None:
        """Points whose time is before ``now`` exist from now on (None: every point exists)."""
        self.vendor.data.set_clock(now)

    def advance_clock(self, delta: timedelta) -> datetime:
        """The vendor's clock moves on by ``delta``: the points of that time appear."""
        return self.vendor.data.advance_clock(delta)

    def configure(self, **changes: Any) -> VendorConfig:
        """Change behaviour while running (rate, burst, latency_ms, retry_after, pagination, auth, ...)."""
        return self.vendor.configure(**changes)


__all__ = ["VendorServer", "VendorConfig", "VendorStats", "VendorApp", "TokenBucket", "ROUTES", "DEFAULT_PAGINATION"]
