"""The HTTP side of a worker: one parent's list, page by page, with error classes and retries.

Error classes (README, "When things fail"; a level's `status` block changes which status is which, see
`spec.StatusRules`):
- throttle (429, a 403/429 with `Retry-After` or `X-RateLimit-Remaining: 0`): waited out as told, the fleet slowed,
  up to `retries.max_throttle_seconds` per call, then a failed call naming the URL;
- transient (408, 5xx, timeouts, connection resets, a body that is not JSON, an empty page before the announced
  total, a 2xx carrying the level's `error_path`): retried here with capped exponential back-off and full jitter;
- empty (statuses a level names, e.g. GitHub's 410): the list ends, no records, no failure;
- permanent (404, 410 and other 4xx, a JSON body without the records, a pagination loop): `CallFailed` with URL,
  status, reason and an excerpt; the parent fails, its siblings go on;
- auth (401/403): `AuthFailed`, as permanent; the worker stops the batch only when its first parents all fail so.

The credential goes only to the spec's origin (`base_url`) and its `allowed_origins`: redirects are followed
here, not by httpx (which keeps custom headers across origins), and a request elsewhere carries no credential.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from harvester import paginate
from harvester.spec import Level, SourceSpec
from harvester.template import TemplateError, render


@functools.lru_cache(maxsize=1)
def ssl_context():
    """httpx's default TLS context (certifi's CAs), built once per process: building it costs ~90 ms of CPU, which
    every batch paid before its first call when each invocation made its own client."""
    return httpx.create_ssl_context()


class OutOfTime(Exception):
    """The worker's time budget ends before this call could be made or retried.

    Raised out of `fetch_list` it carries what that parent's list got so far (`records`) and the request of the
    first page not fetched (`next_request`), so the next invocation continues the list instead of restarting it.
    """

    records: list[Any] = []
    next_request: paginate.PageRequest | None = None


class CallFailed(Exception):
    """A call failed permanently (or transiently more often than the spec allows)."""

    def __init__(self, url: str, status: int | None, reason: str, excerpt: str = "", attempts: int = 1):
        super().__init__(f"{reason} ({url})")
        self.url, self.status, self.reason, self.excerpt, self.attempts = url, status, reason, excerpt, attempts

    def as_item(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "reason": self.reason, "excerpt": self.excerpt, "attempts": self.attempts}


class AuthFailed(CallFailed):
    """401/403: the credential is wrong or lacks rights for this parent (the worker stops a batch whose first
    parents all fail so)."""


class LoopDetected(CallFailed):
    """A list's pagination came back to a page already fetched (same URL and parameters, same cursor, same
    content): the list is wrong as a whole, nothing of it is kept."""


#: redirects followed per call (httpx's default is 20; a loop of them is a failed call naming the URL)
MAX_REDIRECTS = 10


class _Transient(Exception):
    def __init__(self, reason: str, status: int | None = None, excerpt: str = "", retry_after: float | None = None,
                 throttle: bool = False):
        super().__init__(reason)
        self.reason, self.status, self.excerpt, self.retry_after = reason, status, excerpt, retry_after
        self.throttle = throttle


@dataclass
class CallStats:
    calls: int = 0  # requests sent
    pages: int = 0  # good pages
    throttled: int = 0  # 429 answers
    retries: int = 0  # transient failures retried
    errors: dict[str, int] = field(default_factory=dict)
    latency_sum: float = 0.0

    def count_error(self, reason: str) -> None:
        key = reason.split(":")[0]
        self.errors[key] = self.errors.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "pages": self.pages,
            "throttled": self.throttled,
            "retries": self.retries,
            "errors": dict(self.errors),
            "mean_latency_ms": round(1000 * self.latency_sum / self.calls, 1) if self.calls else 0.0,
        }


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds (integer or, leniently, fractional) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def throttle_wait(status: int, headers: httpx.Headers) -> tuple[bool, float | None]:
    """(is it a throttle, seconds to wait) from the headers of a 403 or 429: `Retry-After`, or GitHub's
    `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` (epoch seconds). A 429 is always one."""
    wait = retry_after_seconds(headers.get("retry-after"))
    exhausted = headers.get("x-ratelimit-remaining", "").strip() == "0"
    if wait is None and exhausted:
        try:
            wait = max(0.0, float(headers.get("x-ratelimit-reset", "")) - time.time())
        except ValueError:
            wait = None
    return status == 429 or wait is not None or exhausted, wait


def origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    return u.scheme, u.host, u.port or {"http": 80, "https": 443}.get(u.scheme)


def auth_parts(spec: SourceSpec, secret: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query params) that carry the credential."""
    if spec.auth is None:
        return {}, {}
    if not secret:
        raise ValueError(f"source {spec.name}: auth is configured but no credential was provided")
    match spec.auth.type:
        case "header":
            return {spec.auth.name: secret}, {}
        case "bearer":
            return {"Authorization": f"Bearer {secret}"}, {}
        case "basic":
            return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}, {}
        case "query":
            return {}, {spec.auth.name: secret}
    raise AssertionError(spec.auth.type)


class Fetcher:
    """Walks one parent's paginated list. Shared by all coroutines of a worker (one httpx client, keep-alive)."""

    def __init__(
        self,
        spec: SourceSpec,
        http: httpx.AsyncClient,
        limiter,
        secret: str | None,
        deadline: float,
        *,
        call_deadline: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        self.spec = spec
        self.http = http
        self.limiter = limiter
        self.deadline = deadline  # time.monotonic() value: no call (or retry) starts after it
        # time.monotonic() value: no call is still in flight after it (None: a call ends by its own timeouts)
        self.call_deadline = call_deadline
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.stats = CallStats()
        self.auth_headers, self.auth_params = auth_parts(spec, secret)
        self.trusted = {origin(spec.base_url), *(origin(o) for o in spec.allowed_origins)}

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def first_url(self, level: Level, context: dict[str, dict[str, Any]]) -> paginate.PageRequest:
        try:
            path = render(level.path, context, for_path=True)
            params = {**self.spec.params, **{k: render(v, context, for_path=False) for k, v in level.params.items()}}
        except TemplateError as exc:
            raise CallFailed(level.path, None, f"template: {exc}") from None
        url = path if path.startswith(("http://", "https://")) else self.spec.base_url + "/" + path.lstrip("/")
        return paginate.first_request(level.pagination, url, params)

    async def fetch_list(
        self,
        level: Level,
        context: dict[str, dict[str, Any]],
        start: paginate.PageRequest | None = None,
        fetched_before: int = 0,
    ) -> list[Any]:
        """Every record of one parent's list for `level`, all pages, in order; from `start` when continuing a
        list an earlier invocation did not finish (`fetched_before` records of it were already stored)."""
        records: list[Any] = []
        request: paginate.PageRequest | None = start or self.first_url(level, context)
        try:
            async for page, request in self.pages(level, context, start, fetched_before):  # noqa: B007 (read below)
                records.extend(page)
        except OutOfTime as exc:
            exc.records, exc.next_request = records, exc.next_request or request
            raise
        return records

    async def pages(
        self,
        level: Level,
        context: dict[str, dict[str, Any]],
        start: paginate.PageRequest | None = None,
        fetched_before: int = 0,
    ) -> AsyncIterator[tuple[list[Any], paginate.PageRequest | None]]:
        """The pages of one parent's list as they come: (records, the request of the next page or None at the
        end). `OutOfTime` carries the request it could not make (`next_request`) so the list can continue."""
        request: paginate.PageRequest | None = start or self.first_url(level, context)
        before = fetched_before
        seen_requests: dict[str, int] = {}  # request -> page number, content -> page number (this invocation's)
        seen_pages: dict[str, int] = {}
        while request is not None:
            number = request.number + 1
            target = _request_url(request)  # parsed once per request: URL parsing is a good part of a call's CPU
            signature = _hide(target, tuple(self.auth_params))
            if signature in seen_requests:
                raise LoopDetected(signature, None, f"pagination loop: page {number} asks for page "
                                   f"{seen_requests[signature]} again (same URL and parameters)")
            seen_requests[signature] = number
            try:
                page, nxt = await self._page(level, request, before, target, signature)
            except OutOfTime as exc:
                exc.records, exc.next_request = [], request
                raise
            content = _digest(page) if page else None
            if content is not None and content in seen_pages:
                raise LoopDetected(signature, 200, f"pagination loop: page {number} has the records of page "
                                   f"{seen_pages[content]} (the vendor ignores the page parameter?)")
            if content is not None:
                seen_pages[content] = number
            before += len(page)
            request = nxt
            yield page, nxt

    async def _page(self, level: Level, request: paginate.PageRequest, before: int, target: httpx.URL | None = None,
                    shown: str | None = None):
        attempt = throttled = 0
        throttled_for = 0.0
        if target is None:
            target = _request_url(request)
            shown = _hide(target, tuple(self.auth_params))
        while True:
            try:
                return await self._try_page(level, request, before, target, shown)
            except _Transient as exc:
                attempt += 1
                self.stats.count_error(exc.reason)
                if exc.throttle:
                    # throttling is the vendor pacing us, not a fault: the limiter slows the whole fleet and we
                    # wait as told, up to max_throttle_seconds for this call (a vendor that never lets us in must
                    # end in a failed call naming the URL, not in attempts that each wait out the Lambda)
                    throttled += 1
                    wait = exc.retry_after if exc.retry_after is not None else self._backoff(throttled)
                    limit = self.spec.retries.max_throttle_seconds
                    if throttled_for + wait > limit:
                        raise CallFailed(
                            _shown_url(request, hide=tuple(self.auth_params)), exc.status,
                            f"throttled {throttled} times over {throttled_for:.0f} s (next wait {wait:.0f} s, "
                            f"retries.max_throttle_seconds {limit:g}): {exc.reason}", exc.excerpt, attempt) from None
                    throttled_for += wait
                    attempt -= 1  # a throttle is not a failed attempt
                else:
                    if attempt >= self.spec.retries.max_attempts:
                        raise CallFailed(
                            _shown_url(request, hide=tuple(self.auth_params)), exc.status,
                            f"gave up after {attempt} attempts: {exc.reason}", exc.excerpt, attempt
                        ) from None
                    wait = max(exc.retry_after or 0.0, self._backoff(attempt))
                if wait > self.time_left():
                    shown = _shown_url(request, hide=tuple(self.auth_params))
                    raise OutOfTime(f"{shown}: no time left to retry ({exc.reason})") from None
                self.stats.retries += 1
                await self.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        r = self.spec.retries
        return self.rng.uniform(0, min(r.max_delay, r.base_delay * (2 ** (attempt - 1))))

    async def _acquire(self) -> None:
        """A send slot from the limiter, waited for no longer than the call window: a 429's Retry-After pauses
        the whole fleet (up to minutes), and a lane asleep on a slot past the deadline is an invocation Lambda
        stops. The acquire is shielded, not cancelled (the limiter's lease bookkeeping stays whole); a slot it
        gets after the window is simply not used."""
        if self.call_deadline is None:
            await self.limiter.acquire()
            return
        task = asyncio.ensure_future(self.limiter.acquire())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nobody else reads its outcome
        await asyncio.wait_for(asyncio.shield(task), max(0.0, self.call_deadline - time.monotonic()))

    async def _get(self, url: httpx.URL) -> httpx.Response:
        """GET `url`, following redirects here: the credential goes only to a trusted origin (httpx strips
        `Authorization` across origins but keeps every other header, e.g. `X-Api-Key`)."""
        for _ in range(MAX_REDIRECTS + 1):
            for name in self.auth_params:  # a next link or Location may echo it: never to another origin
                url = url.copy_remove_param(name)
            trusted = origin(url) in self.trusted
            resp = await self.http.get(url.copy_merge_params(self.auth_params) if trusted and self.auth_params else url,
                                       headers=self.auth_headers if trusted else None)
            if not resp.is_redirect or resp.next_request is None:
                return resp
            url = resp.next_request.url
        raise CallFailed(_hide(url, tuple(self.auth_params)), resp.status_code,
                         f"more than {MAX_REDIRECTS} redirects (a redirect loop?)")

    def _status(self, level: Level, request: paginate.PageRequest, resp: httpx.Response, url: str, excerpt: str):
        """A non-2xx answer: ([], None) when the level takes it for "no records", else the error it is."""
        status = resp.status_code
        ruled = level.status.classify(status)
        throttle, wait = throttle_wait(status, resp.headers) if status in (403, 429) else (False, None)
        kind = ruled or ("throttle" if throttle else "retry" if status == 408 or status >= 500
                         else "auth" if status in (401, 403) else "permanent")
        if kind == "empty":
            self.stats.pages += 1
            return [], None
        if kind == "throttle":
            self.stats.throttled += 1
            if wait is None:
                wait = retry_after_seconds(resp.headers.get("retry-after"))
            self.limiter.on_throttle(wait)
            reason = f"{status} {resp.reason_phrase}" + ("" if status == 429 else " (rate limited)")
            raise _Transient(reason, status, excerpt, wait, throttle=True)
        if kind == "retry":
            wait = retry_after_seconds(resp.headers.get("retry-after"))
            raise _Transient(f"{status} {resp.reason_phrase}", status, excerpt, wait)
        if kind == "auth":
            raise AuthFailed(url, status, f"{status} {resp.reason_phrase}: check the credential and its rights", excerpt)
        if status < 400:
            raise CallFailed(url, status, f"unexpected status {status}", excerpt)
        raise CallFailed(url, status, f"{status} {resp.reason_phrase}", excerpt)

    async def _try_page(self, level: Level, request: paginate.PageRequest, before: int, target: httpx.URL,
                        shown: str):
        """One attempt at one page: `target` is the request's URL with its parameters, `shown` the same without
        credentials (both built once by the caller)."""
        if self.time_left() <= 0:
            raise OutOfTime(f"{shown}: the worker's time budget is spent")
        try:
            await self._acquire()
        except TimeoutError:
            raise OutOfTime(f"{shown}: no send slot before the worker must write its results") from None
        except Exception as exc:  # noqa: BLE001 - e.g. the shared bucket under heavy contention: retry later
            raise _Transient(f"rate limiter: {type(exc).__name__}: {exc}"[:200]) from None
        window = None if self.call_deadline is None else self.call_deadline - time.monotonic()
        if window is not None and window <= 0:
            raise OutOfTime(f"{shown}: no time left for a call before the worker must write its results")
        self.stats.calls += 1
        t0 = time.monotonic()
        try:
            # bounded by the time left, whatever the spec's read timeout: the call never runs into the time the
            # worker needs to write its results before Lambda stops it (an unbounded call there loses the whole
            # invocation, Sandbox.Timedout)
            async with asyncio.timeout(window):
                # merged into the URL's own query: httpx's `params=` would replace it (a next link's offset, a
                # `?troopId=` written in the path)
                resp = await self._get(target)
                body_bytes = resp.content
        except TimeoutError:
            raise OutOfTime(f"{shown}: cut at the worker's deadline; the next invocation asks for it again") from None
        except httpx.TimeoutException as exc:
            raise _Transient(f"timeout: {type(exc).__name__}") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Transient(f"connection: {type(exc).__name__}: {exc}"[:200]) from None
        finally:
            self.stats.latency_sum += time.monotonic() - t0
        status = resp.status_code
        url = _hide(resp.request.url, tuple(self.auth_params))
        excerpt = body_bytes[:200].decode("utf-8", "replace")
        if not 200 <= status < 300:
            return self._status(level, request, resp, url, excerpt)
        try:
            body = _loads(body_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            ctype = resp.headers.get("content-type", "?")
            raise _Transient(f"body is not JSON (content-type {ctype}, {len(body_bytes)} bytes)", status, excerpt) from None
        if level.error_path:
            error = paginate.extract_optional(body, level.error_path)
            if error not in (None, "", False, [], {}):
                raise _Transient(f"error in a {status} at {level.error_path!r}: {str(error)[:150]}", status, excerpt)
        try:
            page = paginate.records_of(body, level.records, url)
            nxt = paginate.next_request(level.pagination, request, body, dict(resp.headers), len(page), before + len(page))
        except paginate.IncompleteListError as exc:
            raise _Transient(f"incomplete list: {exc}", status, excerpt) from None
        except paginate.PaginationError as exc:
            raise CallFailed(url, status, f"unexpected body: {exc}", excerpt) from None
        self.stats.pages += 1
        self.limiter.on_success()
        return page, nxt


def _loads(body: bytes) -> Any:
    """JSON text to Python: orjson (several times faster than the standard library on a page of records); what it
    refuses and the standard library takes (NaN, integers beyond 64 bits, lone surrogates) goes the standard way,
    so the result is the same."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _digest(page: list[Any]) -> str:
    """A page's content, to tell a page repeated within one list (only compared within one invocation)."""
    try:
        text = orjson.dumps(page, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # what orjson refuses (a lone surrogate, an integer beyond 64 bits)
        text = json.dumps(page, sort_keys=True, default=str).encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).hexdigest()


def _request_url(request: paginate.PageRequest) -> httpx.URL:
    """The URL a page request asks for: its parameters merged into the URL's own query (httpx's `params=` would
    replace it: a next link's offset, a `?troopId=` written in the path)."""
    url = httpx.URL(request.url)
    return url.copy_merge_params(request.params) if request.params else url


def _shown_url(request: paginate.PageRequest, resp: httpx.Response | None = None, hide: tuple[str, ...] = ()) -> str:
    """The URL as sent, for the ledger, without credentials in the query."""
    url = resp.request.url if resp is not None else httpx.URL(request.url).copy_merge_params(request.params)
    return _hide(url, hide)


def _hide(url: httpx.URL, hide: tuple[str, ...]) -> str:
    for name in hide:
        url = url.copy_remove_param(name)
    return str(url)
