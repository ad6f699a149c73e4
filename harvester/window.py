"""Incremental windows: what a daily run (or a backfill) asks the vendor for.

A level declares `window:` in the spec: the query parameters that carry the window's start and end, their format,
the first run's start, a lookback (re-fetch a margin for late data), a settle lag (do not ask for the minutes the
vendor is still writing) and an optional step that slices a long window into Map items. Templates use
`{window.start}` / `{window.end}` anywhere a parent field can go.

The run's window travels in the run state as UTC ISO text (`{"kind", "start", "end", "new_start", "step"}`);
`kind` is `daily` (taken from the source's bookmark in the ledger), `backfill` (given in the execution input; it
never moves the bookmark) or `none`. Pure functions here; the ledger keeps the bookmark (`Ledger.claim_window`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

#: at most this many slices in one run: every slice is a Map item per batch of parents, and the slice list rides
#: in the run state (Step Functions' 256 KiB payload limit)
MAX_SLICES = 1000
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_OFFSET = re.compile(r"^(Z|[+-]\d{2}:\d{2})$")
NONE = {"kind": "none", "start": "", "end": "", "new_start": "", "step": ""}


class WindowError(ValueError):
    """A window or a duration is malformed."""


def parse_duration(value: str | int | float) -> timedelta:
    """`P1D`, `PT6H`, `PT15M`, `P1DT12H` (ISO-8601 days, hours, minutes, seconds) or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    m = _DURATION.match(str(value).strip())
    if not m or str(value).strip() in ("P", "PT") or str(value).endswith("T"):
        raise WindowError(f"{value!r} is not a duration like P1D, PT6H, PT15M or a number of seconds")
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return timedelta(days=d, hours=h, minutes=mi, seconds=s)


def parse_time(text: str) -> datetime:
    """ISO-8601 with an offset or `Z` (none: UTC), or a date (midnight UTC), as a UTC datetime."""
    try:
        value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise WindowError(f"{text!r} is not an ISO-8601 time (2026-01-01T00:00:00Z) or date (2026-01-01)") from None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CursorSpec(BaseModel):
    """The cursor variant: the largest `field` seen per parent in the last successful run, sent back as `param`
    (`since`-style: the vendor returns what is newer). A parent seen for the first time gets `initial_start`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    param: str | None = None  # query parameter set to {window.since}


class WindowSpec(BaseModel):
    """A level's incremental window (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cursor: CursorSpec | None = None
    start_param: str | None = None  # query parameter set to {window.start} (none: use the template yourself)
    end_param: str | None = None
    format: Literal["iso", "epoch_s", "epoch_ms", "date"] = "iso"
    offset: str = "Z"  # for format iso: the offset the vendor wants the times in (`Z`, `+02:00`)
    initial_start: str  # the first run's start
    lookback: str = "PT0S"  # each run starts this much before the previous window's end (late data)
    settle: str = "PT0S"  # each run ends this much before now (data still being written)
    step: str | None = None  # slices a longer window into Map items of this length

    @field_validator("initial_start")
    @classmethod
    def _time(cls, v: str) -> str:
        return iso(parse_time(v))

    @field_validator("lookback", "settle")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("step")
    @classmethod
    def _positive(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= timedelta(0):
            raise WindowError(f"step {v!r} must be longer than 0")
        return v

    @field_validator("offset")
    @classmethod
    def _offset(cls, v: str) -> str:
        if not _OFFSET.match(v):
            raise WindowError(f"offset {v!r} is not Z or +HH:MM / -HH:MM")
        return v

    def params(self) -> dict[str, str]:
        out = {self.cursor.param: "{window.since}"} if self.cursor and self.cursor.param else {}
        if self.start_param:
            out[self.start_param] = "{window.start}"
        if self.end_param:
            out[self.end_param] = "{window.end}"
        return out

    def render(self, value: str) -> str:
        """A window time (UTC ISO text) in the vendor's format."""
        t = parse_time(value)
        if self.format == "epoch_s":
            return str(int(t.timestamp()))
        if self.format == "epoch_ms":
            return str(int(t.timestamp() * 1000))
        if self.format == "date":
            return t.strftime("%Y-%m-%d")
        if self.offset == "Z":
            return iso(t)
        sign = 1 if self.offset[0] == "+" else -1
        hours, minutes = int(self.offset[1:3]), int(self.offset[4:6])
        return t.astimezone(timezone(sign * timedelta(hours=hours, minutes=minutes))).isoformat()


def daily_window(spec: WindowSpec, claimed_end: str | None, now: datetime) -> dict[str, Any]:
    """The next daily window: new data from where the last window handed out ended (the spec's `initial_start` on
    the first run) up to `now` minus the settle lag; it starts `lookback` earlier, never before `initial_start`.
    An empty window (nothing settled since) has start = end."""
    first = parse_time(spec.initial_start)
    new_start = parse_time(claimed_end) if claimed_end else first
    end = max(new_start, (now - parse_duration(spec.settle)).replace(microsecond=0))
    start = max(first, new_start - parse_duration(spec.lookback)) if claimed_end else new_start
    return {"kind": "daily", "start": iso(start), "end": iso(end), "new_start": iso(new_start), "step": spec.step or ""}


def backfill_window(start: str, end: str, step: str | None) -> dict[str, Any]:
    s, e = parse_time(start), parse_time(end)
    if e <= s:
        raise WindowError(f"window end {end!r} is not after its start {start!r}")
    if step:
        parse_duration(step)
    return {"kind": "backfill", "start": iso(s), "end": iso(e), "new_start": iso(s), "step": step or ""}


def slices(window: dict[str, Any]) -> list[dict[str, str]]:
    """The window cut into `step`-long slices (the last one shorter); one slice when there is no step."""
    if window.get("kind", "none") == "none":
        return []
    start, end = parse_time(window["start"]), parse_time(window["end"])
    if not window.get("step") or end <= start:
        return [{"start": window["start"], "end": window["end"]}]
    step = parse_duration(window["step"])
    out, t = [], start
    while t < end:
        out.append({"start": iso(t), "end": iso(min(end, t + step))})
        t += step
        if len(out) > MAX_SLICES:
            raise WindowError(f"the window {window['start']} .. {window['end']} has more than {MAX_SLICES} slices "
                              f"of {window['step']}: use a longer step or several backfills")
    return out


def context(spec: WindowSpec | None, window: dict[str, Any] | None) -> dict[str, str] | None:
    """What `{window.start}` / `{window.end}` render to for a batch (its slice, or the run's window)."""
    if spec is None or not window or not window.get("start"):
        return None
    out = {"start": spec.render(window["start"]), "end": spec.render(window["end"])}
    if spec.cursor:
        out["since"] = spec.render(spec.initial_start)  # a parent without a cursor yet
    return out


def cursor_window(spec: WindowSpec, now: datetime) -> dict[str, Any]:
    """The cursor variant's run window: from the initial start to now (each parent's cursor narrows it)."""
    end = max(parse_time(spec.initial_start), (now - parse_duration(spec.settle)).replace(microsecond=0))
    return {"kind": "cursor", "start": spec.initial_start, "end": iso(end), "new_start": "", "step": ""}


def newer(a: Any, b: Any) -> Any:
    """The larger of two cursor values (None: absent); values of different types compare as text."""
    if a is None:
        return b
    if b is None:
        return a
    try:
        return a if a >= b else b
    except TypeError:
        return a if str(a) >= str(b) else b


def highest(records: list[Any], field: str, current: Any) -> Any:
    """The largest value of `field` (a dotted path) in a page of records, or `current` when larger."""
    from harvester.template import lookup

    for record in records:
        if isinstance(record, dict):
            try:
                current = newer(current, lookup(record, field))
            except KeyError:
                continue
    return current
