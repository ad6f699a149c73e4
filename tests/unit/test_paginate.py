"""Pagination styles as pure functions: first request, next request, termination rules, Link header parsing."""

from __future__ import annotations

from typing import Any

import pytest

from harvester import dotted
from harvester import paginate as pg
from harvester import spec as s
from harvester.paginate import IncompleteListError, PageRequest, PaginationError

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

URL = "https://api.example.com/v1/items"


# ---------------------------------------------------------------------------------------------------------------
# dotted paths (harvester/dotted.py) / records_of
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, expected",
    [
        ("$", {"data": {"items": [1, 2]}, "rows": [[5, 6], [7]]}),
        ("", {"data": {"items": [1, 2]}, "rows": [[5, 6], [7]]}),
        ("data", {"items": [1, 2]}),
        ("$.data.items", [1, 2]),
        ("data.items", [1, 2]),
        ("data.items.1", 2),
        ("data.items.-1", 2),
        ("rows.0", [5, 6]),
        ("rows.1.0", 7),
    ],
)
def test_extract(path: str, expected: Any):
    body = {"data": {"items": [1, 2]}, "rows": [[5, 6], [7]]}
    assert dotted.get(body, path) == expected


@pytest.mark.parametrize("path", ["nope", "data.nope", "data.items.2", "data.items.-3", "data.items.x", "rows.0.0.0"])
def test_extract_missing_path(path: str):
    with pytest.raises(KeyError):
        dotted.get({"data": {"items": [1, 2]}, "rows": [[5, 6], [7]]}, path)


def test_records_of_bare_array_and_nested_path():
    assert pg.records_of([{"a": 1}], "$", URL) == [{"a": 1}]
    assert pg.records_of({"data": {"items": []}}, "data.items", URL) == []


def test_records_of_missing_path_names_url_path_and_keys():
    with pytest.raises(PaginationError) as info:
        pg.records_of({"error": "x", "meta": {}}, "data", URL)
    msg = str(info.value)
    assert URL in msg and "'data'" in msg and "['error', 'meta']" in msg
    assert not isinstance(info.value, IncompleteListError)  # permanent


def test_records_of_not_a_list():
    with pytest.raises(PaginationError) as info:
        pg.records_of({"data": {"id": 1}}, "data", URL)
    assert "expected a list of records at 'data', got dict" in str(info.value)
    with pytest.raises(PaginationError) as info:
        pg.records_of("<html>", "$", URL)
    assert "got str" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# none
# ---------------------------------------------------------------------------------------------------------------
def test_none_is_one_request():
    p = s.NoPagination(type="none")
    req = pg.first_request(p, URL, {"q": "1"})
    assert req == PageRequest(URL, {"q": "1"}, 0)
    assert pg.next_request(p, req, [1] * 1000, {}, 1000, 1000) is None


# ---------------------------------------------------------------------------------------------------------------
# page number
# ---------------------------------------------------------------------------------------------------------------
def test_page_number_first_and_next():
    p = s.PageNumberPagination(type="page_number", page_param="p", size_param="n", size=3, start=0)
    req = pg.first_request(p, URL, {"q": "x"})
    assert req == PageRequest(URL, {"q": "x", "p": "0", "n": "3"}, 0)
    nxt = pg.next_request(p, req, {}, {}, 3, 3)
    assert nxt == PageRequest(URL, {"q": "x", "p": "1", "n": "3"}, 1)
    assert pg.next_request(p, nxt, {}, {}, 3, 6).params["p"] == "2"


def test_page_number_without_size_param():
    p = s.PageNumberPagination(type="page_number", size_param=None, size=20)
    assert pg.first_request(p, URL, {}).params == {"page": "1"}


def test_page_number_stops_on_short_or_empty_page_without_total():
    p = s.PageNumberPagination(type="page_number", size=3)
    req = pg.first_request(p, URL, {})
    assert pg.next_request(p, req, {}, {}, 2, 2) is None  # short
    assert pg.next_request(p, req, {}, {}, 0, 0) is None  # empty
    assert pg.next_request(p, req, {}, {}, 3, 3) is not None  # full: there may be more


def test_page_number_with_total_stops_when_total_reached_even_on_a_full_page():
    p = s.PageNumberPagination(type="page_number", size=3, total_path="meta.total")
    req = pg.first_request(p, URL, {})
    assert pg.next_request(p, req, {"meta": {"total": 6}}, {}, 3, 3) is not None
    second = PageRequest(URL, {"page": "2", "per_page": "3"}, 1)
    assert pg.next_request(p, second, {"meta": {"total": 6}}, {}, 3, 6) is None


def test_page_number_with_total_continues_past_a_short_page():
    # the vendor clamps the page size below what was asked: a short page is not the end when the total says so
    p = s.PageNumberPagination(type="page_number", size=100, total_path="total")
    req = pg.first_request(p, URL, {})
    nxt = pg.next_request(p, req, {"total": 250}, {}, 50, 50)
    assert nxt is not None and nxt.params["page"] == "2"


def test_page_number_empty_page_before_total_is_incomplete():
    p = s.PageNumberPagination(type="page_number", size=3, total_path="total")
    req = PageRequest(URL, {"page": "2", "per_page": "3"}, 1)
    with pytest.raises(IncompleteListError) as info:
        pg.next_request(p, req, {"total": 10}, {}, 0, 3)
    assert "empty page 2 after 3 of 10 records" in str(info.value)


def test_page_number_total_missing_from_body_falls_back_to_short_page_rule():
    p = s.PageNumberPagination(type="page_number", size=3, total_path="total")
    req = pg.first_request(p, URL, {})
    assert pg.next_request(p, req, {}, {}, 2, 2) is None
    assert pg.next_request(p, req, {}, {}, 3, 3) is not None


def test_total_that_is_not_an_integer():
    p = s.PageNumberPagination(type="page_number", size=3, total_path="total")
    with pytest.raises(PaginationError) as info:
        pg.next_request(p, pg.first_request(p, URL, {}), {"total": "many"}, {}, 3, 3)
    assert "total at 'total' is not an integer" in str(info.value)
    assert not isinstance(info.value, IncompleteListError)


# ---------------------------------------------------------------------------------------------------------------
# offset
# ---------------------------------------------------------------------------------------------------------------
def test_offset_first_and_next_advance_by_records_received():
    p = s.OffsetPagination(type="offset", offset_param="skip", limit_param="take", limit=10, total_path="total")
    req = pg.first_request(p, URL, {"a": "b"})
    assert req.params == {"a": "b", "skip": "0", "take": "10"}
    # a clamped vendor page of 4: the next offset is 4, not 10
    nxt = pg.next_request(p, req, {"total": 9}, {}, 4, 4)
    assert nxt == PageRequest(URL, {"a": "b", "skip": "4", "take": "10"}, 1)
    nxt2 = pg.next_request(p, nxt, {"total": 9}, {}, 4, 8)
    assert nxt2.params["skip"] == "8" and nxt2.number == 2
    assert pg.next_request(p, nxt2, {"total": 9}, {}, 1, 9) is None


def test_offset_termination_without_total():
    p = s.OffsetPagination(type="offset", limit=10)
    req = pg.first_request(p, URL, {})
    assert pg.next_request(p, req, {}, {}, 9, 9) is None
    assert pg.next_request(p, req, {}, {}, 10, 10).params["offset"] == "10"


def test_offset_empty_page_before_total():
    p = s.OffsetPagination(type="offset", limit=10, total_path="total")
    req = PageRequest(URL, {"offset": "10", "limit": "10"}, 1)
    with pytest.raises(IncompleteListError):
        pg.next_request(p, req, {"total": 25}, {}, 0, 10)
    # an empty list with total 0 is simply complete
    assert pg.next_request(p, pg.first_request(p, URL, {}), {"total": 0}, {}, 0, 0) is None


# ---------------------------------------------------------------------------------------------------------------
# cursor
# ---------------------------------------------------------------------------------------------------------------
def test_cursor_first_request_sends_size_only_when_configured():
    with_size = s.CursorPagination(type="cursor", cursor_path="next", size_param="limit", size=25)
    assert pg.first_request(with_size, URL, {}).params == {"limit": "25"}
    without = s.CursorPagination(type="cursor", cursor_path="next")
    assert pg.first_request(without, URL, {}).params == {}
    half = s.CursorPagination(type="cursor", cursor_path="next", size_param="limit")
    assert pg.first_request(half, URL, {}).params == {}


def test_cursor_follows_the_body_cursor():
    p = s.CursorPagination(type="cursor", cursor_param="after", cursor_path="paging.next", size_param="limit", size=2)
    req = pg.first_request(p, URL, {})
    nxt = pg.next_request(p, req, {"paging": {"next": "abc"}}, {}, 2, 2)
    assert nxt == PageRequest(URL, {"limit": "2", "after": "abc"}, 1)
    nxt2 = pg.next_request(p, nxt, {"paging": {"next": "def"}}, {}, 2, 4)
    assert nxt2.params == {"limit": "2", "after": "def"} and nxt2.number == 2


@pytest.mark.parametrize("body", [{"paging": {"next": None}}, {"paging": {"next": ""}}, {"paging": {}}, {}])
def test_cursor_ends_when_no_next_cursor(body: dict):
    p = s.CursorPagination(type="cursor", cursor_path="paging.next")
    assert pg.next_request(p, PageRequest(URL, {"cursor": "x"}, 3), body, {}, 5, 20) is None


def test_cursor_repeated_is_an_error():
    p = s.CursorPagination(type="cursor", cursor_path="next")
    req = PageRequest(URL, {"cursor": "abc"}, 1)
    with pytest.raises(PaginationError) as info:
        pg.next_request(p, req, {"next": "abc"}, {}, 5, 10)
    assert "same cursor twice" in str(info.value) and "'abc'" in str(info.value)
    assert not isinstance(info.value, IncompleteListError)


def test_cursor_repeated_as_a_number_is_an_error():
    # a vendor with numeric cursors: the request carries "40", the body says 40
    p = s.CursorPagination(type="cursor", cursor_path="next")
    req = pg.next_request(p, PageRequest(URL, {}, 0), {"next": 40}, {}, 5, 5)
    assert req.params == {"cursor": "40"}
    with pytest.raises(PaginationError):
        pg.next_request(p, req, {"next": 40}, {}, 5, 10)


def test_cursor_repeated_on_an_empty_page_is_a_retry_not_a_failure():
    # an empty page whose cursor points at the same position: the page came back empty before the end; asking
    # again (a transient error, retried a bounded number of times) gets the records
    p = s.CursorPagination(type="cursor", cursor_path="next")
    req = PageRequest(URL, {"cursor": "abc"}, 1)
    with pytest.raises(IncompleteListError):
        pg.next_request(p, req, {"next": "abc"}, {}, 0, 10)


# ---------------------------------------------------------------------------------------------------------------
# next_url
# ---------------------------------------------------------------------------------------------------------------
def test_next_url_absolute_and_relative():
    p = s.NextUrlPagination(type="next_url", next_url_path="links.next")
    req = pg.first_request(p, URL, {"q": "1"})
    assert req.params == {"q": "1"}
    absolute = pg.next_request(p, req, {"links": {"next": "https://cdn.example.com/p2?t=9"}}, {}, 5, 5)
    assert absolute == PageRequest("https://cdn.example.com/p2?t=9", {}, 1)
    relative = pg.next_request(p, absolute, {"links": {"next": "/v1/items?page=3"}}, {}, 5, 10)
    assert relative == PageRequest("https://cdn.example.com/v1/items?page=3", {}, 2)
    sibling = pg.next_request(p, PageRequest(URL, {}, 0), {"links": {"next": "items?page=2"}}, {}, 5, 5)
    assert sibling.url == "https://api.example.com/v1/items?page=2"


@pytest.mark.parametrize("body", [{"links": {"next": None}}, {"links": {"next": ""}}, {"links": {}}, {}])
def test_next_url_ends(body: dict):
    p = s.NextUrlPagination(type="next_url", next_url_path="links.next")
    assert pg.next_request(p, PageRequest(URL, {}, 0), body, {}, 5, 5) is None


# ---------------------------------------------------------------------------------------------------------------
# Link header
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header, expected",
    [
        ('<https://x/p2>; rel="next"', "https://x/p2"),
        ("<https://x/p2>; rel=next", "https://x/p2"),
        ('<https://x/p1>; rel="prev", <https://x/p3>; rel="next", <https://x/p9>; rel="last"', "https://x/p3"),
        ('<https://x/p9>; rel="last", <https://x/p1>; rel="first"', None),
        ('<https://x/p3>; rel="next last"', "https://x/p3"),  # several rel values in one
        ('<https://x/p3>; rel="last next"', "https://x/p3"),
        ('<https://x/p3>; REL="Next"', "https://x/p3"),
        ('<https://x/p3>; rel = "next"', "https://x/p3"),
        ('<https://x/p3>;rel=next;type="application/json"', "https://x/p3"),
        ('<https://x/p1>; rel="prev"; title="back", <https://x/p3>; type="json"; rel="next"', "https://x/p3"),
        ('<https://x/?ids=1,2,3&page=2>; rel="next"', "https://x/?ids=1,2,3&page=2"),
        ('<https://x/p3>; title="next"', None),  # not a rel
        ('<https://x/p3>; rel="nextpage"', None),  # another relation that merely starts with "next"
        ('<https://x/a>; rel="next-archive", <https://x/b>; rel="next"', "https://x/b"),
        ('<https://x/a>; rel="prenext"', None),
        ("", None),
        (None, None),
    ],
)
def test_next_link(header: str | None, expected: str | None):
    assert pg.next_link(header) == expected


def test_link_header_pagination():
    p = s.LinkHeaderPagination(type="link_header", size_param="per_page", size=30)
    req = pg.first_request(p, URL, {"state": "open"})
    assert req.params == {"state": "open", "per_page": "30"}
    nxt = pg.next_request(p, req, [], {"link": '<https://api.example.com/v1/items?page=2&per_page=30>; rel="next"'}, 30, 30)
    # the next URL carries its own query: the first request's params are not sent again
    assert nxt == PageRequest("https://api.example.com/v1/items?page=2&per_page=30", {}, 1)
    rel = pg.next_request(p, nxt, [], {"link": '</v1/items?page=3>; rel="next"'}, 30, 60)
    assert rel.url == "https://api.example.com/v1/items?page=3" and rel.number == 2
    assert pg.next_request(p, rel, [], {"link": '</v1/items?page=1>; rel="first"'}, 30, 90) is None
    assert pg.next_request(p, rel, [], {}, 30, 90) is None


def test_first_request_does_not_mutate_the_params_given():
    params = {"q": "x"}
    pg.first_request(s.OffsetPagination(type="offset"), URL, params)
    assert params == {"q": "x"}
