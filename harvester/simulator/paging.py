"""Pagination styles of the simulated vendor: six ways real vendors hand out a list.

Why several: the harvester's spec declares a paginator per level, and it must be tested against each.
A style turns (the request's query, the full record list) into one page: a JSON body, extra headers,
the number of records in it, and whether another page exists.

| style      | request query                 | body                                                        |
| ---------- | ----------------------------- | ----------------------------------------------------------- |
| `page`     | `page` (1-based), `per_page`  | `{"data": [...], "page": p, "per_page": n, "total": T}`       |
| `offset`   | `offset` (0-based), `limit`   | `{"items": [...], "total": T}`                                |
| `cursor`   | `cursor` (opaque), `limit`    | `{"results": [...], "next_cursor": "..." or null}`            |
| `next_url` | `offset`, `limit`             | `{"data": [...], "links": {"next": "<absolute url>" or null}}` |
| `link`     | `offset`, `limit`             | bare array; header `Link: <absolute url>; rel="next"` if more  |
| `none`     | (none)                        | bare array of every record                                  |

A page size above the maximum is clamped to the maximum (as many vendors do); a page size below 1, a
non-integer or an undecodable cursor is a 400. An "empty page" (a fault) has no records, but its
total/next pointer are those of the page it replaces, with the next pointer aimed at the same position:
a client that follows `next` (or retries the page) loses nothing; one that stops at an empty page does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

STYLES = ("page", "offset", "cursor", "next_url", "link", "none")


class PageError(ValueError):
    """A bad pagination parameter (answered with 400)."""


@dataclass
class Page:
    body: Any
    records: int
    has_more: bool
    headers: dict[str, str] = field(default_factory=dict)


def encode_cursor(offset: int) -> str:
    """An opaque cursor (base64url JSON) for a position in the list."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = json.loads(raw)["o"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise PageError(f"invalid cursor {cursor!r}") from exc
    if not isinstance(offset, int) or offset < 0:
        raise PageError(f"invalid cursor {cursor!r}")
    return offset


def _int_param(query: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise PageError(f"{name} must be an integer, got {text!r}") from exc
    if value < minimum:
        raise PageError(f"{name} must be >= {minimum}, got {value}")
    return value


def paginate(
    style: str,
    url: URL,
    records: Sequence[Any],
    default_size: int,
    max_size: int,
    empty: bool = False,
) -> Page:
    """One page of ``records`` for a request to ``url`` (absolute, with its query) in ``style``.
    ``empty`` answers the page as an empty page (see the module docstring)."""
    query = url.query
    total = len(records)
    if style == "none":
        return Page(body=[] if empty else list(records), records=0 if empty else total, has_more=False)
    size_name = "per_page" if style == "page" else "limit"
    size = min(_int_param(query, size_name, default_size, 1), max_size)
    if style == "page":
        page = _int_param(query, "page", 1, 1)
        offset = (page - 1) * size
    elif style == "cursor":
        cursor = query.get("cursor")
        offset = decode_cursor(cursor) if cursor else 0
    else:
        offset = _int_param(query, "offset", 0, 0)
    end = min(offset + size, total)
    items = [] if empty else list(records[offset:end])
    has_more = end < total
    next_offset = offset if empty else end

    if style == "page":
        body: Any = {"data": items, "page": page, "per_page": size, "total": total}
        return Page(body, len(items), has_more)
    if style == "offset":
        return Page({"items": items, "total": total}, len(items), has_more)
    if style == "cursor":
        next_cursor = encode_cursor(next_offset) if has_more else None
        return Page({"results": items, "next_cursor": next_cursor}, len(items), has_more)
    next_url = str(url.update_query(offset=next_offset, limit=size)) if has_more else None
    if style == "next_url":
        return Page({"data": items, "links": {"next": next_url}}, len(items), has_more)
    if style == "link":
        headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
        return Page(items, len(items), has_more, headers)
    raise ValueError(f"unknown pagination style {style!r}")


__all__ = ["STYLES", "Page", "PageError", "paginate", "encode_cursor", "decode_cursor"]
