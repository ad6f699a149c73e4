"""Incremental windows (issue 12): the spec's `window:`, the window arithmetic, the formats a vendor is sent, the
bookmark's claims in the ledger (moto) and plan_run's checks of a backfill or `as_of` input."""

from __future__ import annotations

from datetime import datetime, timedelta

import boto3
import pytest
import yaml
from moto import mock_aws

from harvester import storage
from harvester.ledger import Ledger, create_table_kwargs
from harvester.run import InputError, plan_run
from harvester.spec import SpecError, find_spec, parse_spec
from harvester.template import render
from harvester.window import WindowError, WindowSpec, backfill_window, context, daily_window, parse_duration, slices
from tests.unit.test_run import BUCKET, KEY, START, write_source

W = {"initial_start": "2026-01-01T00:00:00Z"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_durations():
    assert parse_duration("P1D") == timedelta(days=1)
    assert parse_duration("PT6H") == timedelta(hours=6)
    assert parse_duration("P1DT12H30M5S") == timedelta(days=1, hours=12, minutes=30, seconds=5)
    assert parse_duration(90) == timedelta(seconds=90)
    for bad in ("1D", "P", "PT", "P1DT", "-P1D", "one day"):
        with pytest.raises(WindowError):
            parse_duration(bad)


@pytest.mark.parametrize("fmt, offset, start, end", [
    ("iso", "Z", "2026-01-01T22:00:00Z", "2026-01-02T00:00:00Z"),
    ("iso", "+02:00", "2026-01-02T00:00:00+02:00", "2026-01-02T02:00:00+02:00"),
    ("iso", "-05:30", "2026-01-01T16:30:00-05:30", "2026-01-01T18:30:00-05:30"),
    ("epoch_s", "Z", "1767304800", "1767312000"),
    ("epoch_ms", "Z", "1767304800000", "1767312000000"),
    ("date", "Z", "2026-01-01", "2026-01-02"),
])
def test_a_window_is_sent_in_the_vendors_format(fmt, offset, start, end):
    spec = WindowSpec(**W, format=fmt, offset=offset)
    assert context(spec, {"start": "2026-01-01T22:00:00Z", "end": "2026-01-02T00:00:00Z"}) == {"start": start, "end": end}


def test_daily_windows_first_run_lookback_settle_and_an_empty_window():
    spec = WindowSpec(**W, lookback="PT2H", settle="PT15M")
    now = at("2026-01-03T00:10:30.5Z")
    first = daily_window(spec, None, now)  # no lookback before the initial start
    assert (first["start"], first["end"], first["new_start"]) == (
        "2026-01-01T00:00:00Z", "2026-01-02T23:55:30Z", "2026-01-01T00:00:00Z")
    nxt = daily_window(spec, first["end"], now + timedelta(days=1))
    assert (nxt["start"], nxt["new_start"], nxt["end"]) == (
        "2026-01-02T21:55:30Z", "2026-01-02T23:55:30Z", "2026-01-03T23:55:30Z")
    empty = daily_window(spec, nxt["end"], at("2026-01-03T23:59:00Z"))  # nothing settled since
    assert empty["new_start"] == empty["end"] == "2026-01-03T23:55:30Z"


def test_slices_cut_a_long_window_and_refuse_too_many():
    w = backfill_window("2026-01-01", "2026-01-03T12:00:00Z", "P1D")
    assert slices(w) == [{"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"},
                         {"start": "2026-01-02T00:00:00Z", "end": "2026-01-03T00:00:00Z"},
                         {"start": "2026-01-03T00:00:00Z", "end": "2026-01-03T12:00:00Z"}]
    assert slices(backfill_window("2026-01-01", "2026-02-01", None)) == [
        {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}]
    with pytest.raises(WindowError, match="more than 1000 slices"):
        slices(backfill_window("2020-01-01", "2026-01-01", "P1D"))
    with pytest.raises(WindowError, match="not after its start"):
        backfill_window("2026-01-02", "2026-01-01", None)


def spec_with(window: dict | None, **points) -> dict:
    return {"name": "w", "base_url": "http://127.0.0.1:1/v1", "levels": [
        {"name": "groups", "alias": "group", "path": "/groups", "primary_key": "id"},
        {"name": "points", "path": "/groups/{group.id}/points", **({"window": window} if window else {}), **points}]}


def test_a_cursor_window_sends_since_and_belongs_to_the_last_level():
    spec = parse_spec(spec_with({**W, "cursor": {"field": "meta.ts", "param": "since"}}))
    assert spec.levels[1].params == {"since": "{window.since}"}
    data = spec_with(None)
    data["levels"][0]["window"] = {**W, "cursor": {"field": "ts"}}
    with pytest.raises(SpecError, match="a cursor window is for the last level"):
        parse_spec(data)


def test_the_spec_turns_window_params_into_templates_usable_anywhere():
    spec = parse_spec(spec_with({**W, "start_param": "from", "end_param": "to", "format": "epoch_ms"}))
    assert spec.window_level == 1 and spec.levels[1].params == {"from": "{window.start}", "to": "{window.end}"}
    # a template can also use the window itself, in the path or another parameter
    spec = parse_spec(spec_with({**W}, path="/groups/{group.id}/points/{window.start}", params={"until": "{window.end}"}))
    ctx = {"group": {"id": "g1"}, "window": context(spec.levels[1].window, {"start": "2026-01-01T00:00:00Z",
                                                                            "end": "2026-01-02T00:00:00Z"})}
    assert render(spec.levels[1].path, ctx, for_path=True) == "/groups/g1/points/2026-01-01T00%3A00%3A00Z"


@pytest.mark.parametrize("data, words", [
    (spec_with(None, params={"from": "{window.start}"}), "{window.start} does not name an ancestor level"),
    (spec_with({**W}, params={"from": "{troop.id}"}), "(ancestors: ['groups', 'group']; the window: {window.start}"),
    (spec_with({**W}, params={"from": "{window.middle}"}), "a window has start, end"),
    (spec_with({**W}, params={"from": "{window.since}"}), "(and since, with a cursor)"),
    (spec_with({**W, "lookback": "two hours"}), "not a duration"),
    (spec_with({**W, "offset": "CET"}), "not Z or +HH:MM"),
    (spec_with({**W, "step": "PT0S"}), "must be longer than 0"),
    (spec_with({"initial_start": "yesterday"}), "not an ISO-8601 time"),
    (spec_with({**W, "format": "rfc822"}), "format"),
])
def test_a_bad_window_is_refused_naming_the_field(data, words):
    with pytest.raises(SpecError) as info:
        parse_spec(data, "w.yaml")
    assert words in str(info.value) and "levels[1]" in str(info.value)


@pytest.fixture
def ledger():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        table = boto3.resource("dynamodb", region_name="us-east-1").create_table(**create_table_kwargs("ledger"))
        yield Ledger(table), storage.HarvestBucket(s3, BUCKET)


def test_two_runs_taking_a_window_at_once_never_overlap(ledger):
    """The second run takes its window while the first is between reading the bookmark and writing its claim:
    the first's conditional update fails, it reads again and takes what is left."""
    led, _ = ledger
    spec = WindowSpec(**W)
    now = at("2026-01-05T00:00:00Z")
    taken = {}

    def first_take(claimed):
        if "b" not in taken:
            taken["b"] = led.claim_window("s", "b", lambda c: daily_window(spec, c, now - timedelta(days=1)))
        return daily_window(spec, claimed, now)

    a = led.claim_window("s", "a", first_take)
    b = taken["b"]
    assert (b["new_start"], b["end"]) == ("2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z")
    assert (a["new_start"], a["end"]) == ("2026-01-04T00:00:00Z", "2026-01-05T00:00:00Z")
    mark = led.get_bookmark("s")
    assert mark["claimed_end"] == "2026-01-05T00:00:00Z" and mark["claimed_by"] == "a" and "end" not in mark


@pytest.mark.parametrize("raw, words", [
    ({"source": "mini", "window": {"start": "2026-01-01", "end": "2026-01-02"}}, "declares no window"),
    ({"source": "mini", "as_of": "2026-01-01T00:00:00Z"}, "declares no window"),
    ({"source": "win", "as_of": "2027-01-01T00:00:00Z"}, "cannot end in the future"),
    ({"source": "win", "window": {"start": "2026-01-02", "end": "2026-01-01"}}, "not after its start"),
    ({"source": "win", "window": {"start": "2020-01-01", "end": "2026-01-01", "step": "PT1H"}}, "slices"),
    ({"source": "win", "resume": "r1", "as_of": "2026-01-01T00:00:00Z"}, "keeps its run's window"),
])
def test_plan_refuses_a_bad_window_input_before_writing_or_claiming_anything(ledger, tmp_path, monkeypatch, raw, words):
    led, store = ledger
    monkeypatch.setenv("MINI_API_KEY", KEY)
    write_source(tmp_path, "http://127.0.0.1:9/v1")
    path = write_source(tmp_path, "http://127.0.0.1:9/v1", name="win")
    data = yaml.safe_load(path.read_text())
    data["levels"][-1]["window"] = {"initial_start": "2026-01-01"}
    path.write_text(yaml.safe_dump(data))
    assert find_spec(tmp_path, "win").window_level == 2
    with pytest.raises(InputError) as info:
        plan_run(raw, "exec-1", START, load_spec=lambda s: find_spec(tmp_path, s), resolve_secret=lambda s: KEY,
                 store=store, ledger=led, check_url=lambda url: None)
    assert words in str(info.value)
    assert store.list_keys("") == [] and led.get_bookmark("win") is None


def test_the_highest_cursor_value_of_a_page():
    from harvester.window import highest

    page = [{"meta": {"ts": 5}}, {"meta": {"ts": 9}}, {"other": 1}, "not a record", {"meta": {"ts": None}}]
    assert highest(page, "meta.ts", None) == 9 and highest(page, "meta.ts", 12) == 12
    assert highest([{"ts": "2026-01-02T00:00:00Z"}, {"ts": "2026-01-01T23:00:00Z"}], "ts", None) == "2026-01-02T00:00:00Z"
    assert highest([], "ts", "x") == "x"
