"""Pagination styles: given the request just made and its response, what is the next request (or none)?

Each style is a small pure function over (spec, request, response), so unit tests drive them without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

from harvester import dotted
from harvester import spec as s


class PaginationError(ValueError):
    """The response does not fit the pagination the spec describes (a permanent error for that call)."""


class IncompleteListError(PaginationError):
    """An empty page arrived before the total the vendor announced: transient, retry the page."""


@dataclass(frozen=True)
class PageRequest:
    url: str
    params: dict[str, str] = field(default_factory=dict)
    number: int = 0  # 0-based page index within one parent's list


def records_of(body: Any, path: str, url: str) -> list[Any]:
    try:
        records = dotted.get(body, path)
    except KeyError:
        keys = list(body)[:8] if isinstance(body, dict) else type(body).__name__
        raise PaginationError(f"{url}: no records at {path!r} in the response (top-level: {keys})") from None
    if not isinstance(records, list):
        raise PaginationError(f"{url}: expected a list of records at {path!r}, got {type(records).__name__}")
    return records


#: a body's value at a spec's path, or None (the paths of harvester/dotted.py)
extract_optional = dotted.get_optional


_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')
_REL = re.compile(r';\s*rel\s*=\s*(?:"([^"]*)"|([^\s;"]+))', re.IGNORECASE)


def next_link(header: str | None) -> str | None:
    """The `rel="next"` target of an RFC 8288 Link header."""
    if not header:
        return None
    for m in _LINK.finditer(header):
        params = m.group(2)
        rel = _REL.search(params)
        if rel and "next" in (rel.group(1) if rel.group(1) is not None else rel.group(2)).lower().split():
            return m.group(1)
    return None


def _next_url(request: PageRequest, url: str, n_records: int) -> PageRequest:
    """The next page by URL. An empty page pointing at itself is not the end: ask again (transient). A full page
    pointing at itself is a loop the fetcher reports when it would ask for that URL a second time."""
    if n_records == 0 and _same_url(url, request):
        raise IncompleteListError(f"{request.url}: empty page pointing at itself")
    return PageRequest(url=url, params={}, number=request.number + 1)


def _same_url(url: str, request: PageRequest) -> bool:
    asked = urlsplit(request.url)
    query = sorted(parse_qsl(asked.query) + list(request.params.items()))
    nxt = urlsplit(url)
    return (nxt.scheme, nxt.netloc, nxt.path, sorted(parse_qsl(nxt.query))) == (asked.scheme, asked.netloc, asked.path, query)


def first_request(pagination: s.Pagination, url: str, params: dict[str, str]) -> PageRequest:
    p = dict(params)
    match pagination:
        case s.PageNumberPagination():
            p[pagination.page_param] = str(pagination.start)
            if pagination.size_param:
                p[pagination.size_param] = str(pagination.size)
        case s.OffsetPagination():
            p[pagination.offset_param] = "0"
            p[pagination.limit_param] = str(pagination.limit)
        case s.CursorPagination() | s.LinkHeaderPagination() if pagination.size_param and pagination.size:
            p[pagination.size_param] = str(pagination.size)
    return PageRequest(url=url, params=p, number=0)


def next_request(
    pagination: s.Pagination,
    request: PageRequest,
    body: Any,
    headers: dict[str, str],
    n_records: int,
    fetched_so_far: int,
) -> PageRequest | None:
    """The request for the page after `request`, or None when the list is complete.

    `fetched_so_far` counts records of this parent including this page (used with `total_path`).
    """
    nxt = request.number + 1
    match pagination:
        case s.NoPagination():
            return None
        case s.PageNumberPagination() | s.OffsetPagination():
            size = pagination.size if isinstance(pagination, s.PageNumberPagination) else pagination.limit
            total = dotted.get_optional(body, pagination.total_path)
            if total is not None:
                if not isinstance(total, int):
                    raise PaginationError(f"{request.url}: total at {pagination.total_path!r} is not an integer")
                if fetched_so_far >= total:
                    return None
                if n_records == 0:
                    raise IncompleteListError(
                        f"{request.url}: empty page {request.number + 1} after {fetched_so_far} of {total} records"
                    )
            elif n_records == 0 or (n_records < size and pagination.stop_on == "short_page"):
                return None
            p = dict(request.params)
            if isinstance(pagination, s.PageNumberPagination):
                p[pagination.page_param] = str(int(p[pagination.page_param]) + 1)
            else:
                p[pagination.offset_param] = str(int(p[pagination.offset_param]) + n_records)
            return PageRequest(url=request.url, params=p, number=nxt)
        case s.CursorPagination():
            cursor = dotted.get_optional(body, pagination.cursor_path)
            if cursor in (None, "", False):
                return None
            if str(cursor) == request.params.get(pagination.cursor_param):
                if n_records == 0:  # an empty page pointing at itself: not the end, ask again
                    raise IncompleteListError(f"{request.url}: empty page with the cursor it was asked with")
                raise PaginationError(f"{request.url}: the vendor returned the same cursor twice ({cursor!r})")
            return PageRequest(url=request.url, params={**request.params, pagination.cursor_param: str(cursor)}, number=nxt)
        case s.NextUrlPagination():
            url = dotted.get_optional(body, pagination.next_url_path)
            if not url:
                return None
            return _next_url(request, urljoin(request.url, str(url)), n_records)
        case s.LinkHeaderPagination():
            url = next_link(headers.get("link"))
            if not url:
                return None
            return _next_url(request, urljoin(request.url, url), n_records)
    raise AssertionError(f"unknown pagination {pagination!r}")
