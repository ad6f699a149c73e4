"""A GitHub-shaped API that misbehaves on demand: a real HTTP server on 127.0.0.1 beside the simulated vendor.

The simulated vendor (`server.py`) is a well-behaved API with transient faults; real APIs fail in other ways
too. This one serves orgs -> repos -> issues the way GitHub does (bare JSON arrays, RFC 8288 `Link` pagination,
`Authorization: token ...`, 403 with `X-RateLimit-Remaining: 0` / `X-RateLimit-Reset` when rate limited, 410 Gone
for a repo with issues disabled) and, per repo or org, the misbehaviours of issue 11: pagination loops (a next
link to itself, a cursor cycle, a `page` parameter ignored), endless 429s, an error inside a 200, a page that
fails for good, a lone surrogate escape in a record, a record without its key, a parent listed twice (offset
drift), a redirect to another origin. `Rogue` is plain data: a test changes it while the server runs (the
vendor "is fixed") and the next request sees the change. `requests` logs what arrived (path, query, headers).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "ghp-rogue-token"


@dataclass
class Rogue:
    """The API's books (orgs, repos, issues per repo) and its misbehaviours, keyed by org or `org/repo`."""

    repos: dict[str, list[str]] = field(default_factory=lambda: {
        "acme": [f"r{i:02d}" for i in range(6)], "globex": [f"g{i:02d}" for i in range(4)]})
    issues_per_repo: int = 7
    per_page: int = 3  # the default page size (a `per_page` query parameter overrides it)
    issue_style: str = "link"  # link (bare array + Link header) | cursor ({"data", "next"}) | page ({"data"}, no total)
    token: str = TOKEN
    gone: set[str] = field(default_factory=set)  # 410 Gone on the issues (issues disabled)
    forbidden: set[str] = field(default_factory=set)  # 403 without rate-limit headers (no access)
    throttle_every: int = 0  # every n-th authenticated request: 403 with X-RateLimit-Remaining: 0 (GitHub)
    throttle_reset: float = 0.3  # seconds until X-RateLimit-Reset
    always_429: set[str] = field(default_factory=set)
    loops: dict[str, str] = field(default_factory=dict)  # repo -> self_link | cursor_cycle | ignore_page
    error_page: dict[str, int] = field(default_factory=dict)  # repo -> page (1-based) answered 200 {"data": [], "error"}
    fail_page: dict[str, tuple[int, int]] = field(default_factory=dict)  # repo -> (page, status) answered for good
    surrogate: set[str] = field(default_factory=set)  # repos whose first issue's title is a lone "\ud83d"
    keyless: set[str] = field(default_factory=set)  # orgs whose repo list has one record without "name"
    drift: set[str] = field(default_factory=set)  # orgs whose repo list repeats a repo across pages
    redirect: dict[str, str] = field(default_factory=dict)  # repo -> base URL of another origin for its issues
    repos_latency: float = 0.0  # seconds each answer of a repo list takes (to cut a list between invocations)
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)  # repo -> issues served

    def issues(self, full: str) -> list[dict[str, Any]]:
        org, repo = full.split("/")
        base = 1000 * (sorted(self.repos).index(org) + 1) + 10 * self.repos[org].index(repo)
        out = [{"id": base * 100 + n, "number": n, "title": f"issue {n} of {full}"}
               for n in range(1, self.issues_per_repo + 1)]
        if full in self.surrogate and out:
            out[0]["title"] = "\ud83d"
        return out

    def books(self) -> dict[str, set]:
        """What a correct harvest holds: repo full names and issue ids (410 repos have none)."""
        repos = {f"{o}/{r}" for o, names in self.repos.items() for r in names}
        issues = {i["id"] for full in repos if full not in self.gone for i in self.issues(full)}
        return {"orgs": set(self.repos), "repos": repos, "issues": issues}


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate goes out as the escape "\ud83d" (valid JSON)


class RogueApp:
    def __init__(self, rogue: Rogue) -> None:
        self.rogue = rogue
        self.count = 0
        self.app = web.Application()
        self.app.router.add_get("/orgs", self._orgs)
        self.app.router.add_get("/orgs/{org}/repos", self._repos)
        self.app.router.add_get("/repos/{org}/{repo}/issues", self._issues)

    def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(body=_dump(body), status=status, headers=headers, content_type="application/json")

    def _gate(self, request: web.Request) -> web.Response | None:
        r = self.rogue
        r.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                           "host": request.host})
        token = request.headers.get("Authorization", "").removeprefix("token ").removeprefix("Bearer ")
        if token != r.token and request.query.get("api_key") != r.token:
            return self._json({"message": "Bad credentials"}, 401)
        self.count += 1
        if r.throttle_every and self.count % r.throttle_every == 0:
            reset = int(time.time() + r.throttle_reset) + 1
            return self._json({"message": "API rate limit exceeded"}, 403, {
                "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
        return None

    def _link_page(self, request: web.Request, items: list[Any]) -> web.Response:
        per_page = int(request.query.get("per_page", self.rogue.per_page))
        page = int(request.query.get("page", 1))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            nxt = request.url.update_query({"page": str(page + 1), "per_page": str(per_page)})
            headers["Link"] = f'<{nxt}>; rel="next"'
        return self._json(chunk, headers=headers)

    async def _orgs(self, request: web.Request) -> web.Response:
        return self._gate(request) or self._link_page(request, [{"login": o} for o in sorted(self.rogue.repos)])

    async def _repos(self, request: web.Request) -> web.Response:
        org = request.match_info["org"]
        await asyncio.sleep(self.rogue.repos_latency)
        denied = self._gate(request)
        if denied or org not in self.rogue.repos:
            return denied or self._json({"message": "Not Found"}, 404)
        repos: list[dict[str, Any]] = [{"name": n, "full_name": f"{org}/{n}"} for n in self.rogue.repos[org]]
        if org in self.rogue.keyless:
            repos.insert(1, {"full_name": f"{org}/(no name)", "archived": True})
        if org in self.rogue.drift:  # a repo created meanwhile shifts the offsets: page 2 repeats page 1's last
            per_page = int(request.query.get("per_page", self.rogue.per_page))
            repos.insert(per_page, repos[per_page - 1])
        return self._link_page(request, repos)

    async def _issues(self, request: web.Request) -> web.StreamResponse:
        r = self.rogue
        full = f"{request.match_info['org']}/{request.match_info['repo']}"
        denied = self._gate(request)
        if denied:
            return denied
        if full in r.redirect:
            raise web.HTTPFound(r.redirect[full] + request.path_qs)
        if full in r.gone:
            return self._json({"message": "Issues are disabled for this repo"}, 410)
        if full in r.forbidden:
            return self._json({"message": "Resource not accessible by integration"}, 403)
        if full in r.always_429:
            return self._json({"message": "slow down"}, 429, {"Retry-After": "1"})
        items = r.issues(full)
        per_page = int(request.query.get("per_page", r.per_page))
        loop = r.loops.get(full)
        if r.issue_style == "cursor":
            pos = int(request.query.get("cursor", 0) or 0)
            page = pos // per_page + 1
        else:
            page = 1 if loop == "ignore_page" else int(request.query.get("page", 1))
            pos = (page - 1) * per_page
        if full in r.fail_page and r.fail_page[full][0] == page:
            return self._json({"message": "broken page"}, r.fail_page[full][1])
        chunk = items[pos: pos + per_page]
        more = pos + per_page < len(items)
        if r.error_page.get(full) == page:
            return self._json({"data": [], "error": "backend timeout"})
        r.served[full] = r.served.get(full, 0) + len(chunk)
        if r.issue_style == "cursor":
            nxt = str(pos + per_page) if more else None
            if loop == "cursor_cycle" and page == 2:
                nxt = "0"  # A -> B -> A
            return self._json({"data": chunk, "next": nxt})
        if r.issue_style == "page":
            return self._json({"data": chunk})
        headers = {}
        if more:
            nxt_url = request.url if loop == "self_link" else request.url.update_query(
                {"page": str(page + 1), "per_page": str(per_page)})
            headers["Link"] = f'<{nxt_url}>; rel="next"'
        return self._json(chunk, headers=headers)


class Recorder:
    """Another origin: answers every GET with `[]` and logs the headers and query it got (a leak detector)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self._any)

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers)})
        return web.Response(body=b"[]", content_type="application/json")


class Serving:
    """An aiohttp app on its own thread and loop, on 127.0.0.1 (a context manager)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1") -> None:
        self.app, self.host, self.port = app, host, 0
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Serving:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(15)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def rogue_server(rogue: Rogue | None = None) -> tuple[Rogue, Serving]:
    rogue = rogue or Rogue()
    return rogue, Serving(RogueApp(rogue).app)
