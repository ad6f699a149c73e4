"""The declarative source spec: what a data engineer writes instead of code.

A spec is a YAML file (see `sources/`). It is validated with pydantic and every problem is reported as
`SpecError` naming the file, the field and what was expected, before any request or write happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harvester.template import TemplateError, references
from harvester.window import WindowSpec


class SpecError(ValueError):
    """A source spec is invalid. The message names the file, the field and the problem."""

    def one_line(self, limit: int = 500) -> str:
        """The message on one line for a terminal: the problems joined, cut at `limit` characters."""
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        text = "; ".join(lines)
        if len(text) > limit:
            text = text[: limit - 40].rstrip() + f"... ({len(lines)} problem{'s' if len(lines) > 1 else ''})"
        return text


#: resource caps on a spec file: its size, YAML nesting and aliases (a "billion laughs" expands a few hundred bytes
#: into gigabytes), the problems listed and how much of a wrong value an error shows
MAX_SPEC_BYTES = 1 << 20
MAX_YAML_DEPTH = 50
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000
MAX_PROBLEMS = 10
MAX_SHOWN = 120


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf/.nan anywhere


# ---------------------------------------------------------------------------------------------------------------
# pagination styles
# ---------------------------------------------------------------------------------------------------------------
class NoPagination(_Model):
    type: Literal["none"]


class PageNumberPagination(_Model):
    """`?page=1&per_page=100`; stops on a short or empty page, or when `total_path` says all are fetched."""

    type: Literal["page_number"]
    page_param: str = "page"
    size_param: str | None = "per_page"
    size: int = Field(100, gt=0)
    start: int = Field(1, ge=0)
    total_path: str | None = None
    # without a total: `short_page` ends a list on a page shorter than `size` (one call fewer per list);
    # `empty_page` only on an empty page (safe when the vendor may cap the page size below `size`)
    stop_on: Literal["short_page", "empty_page"] = "short_page"

    @model_validator(mode="after")
    def _distinct_params(self) -> PageNumberPagination:
        if self.size_param and self.size_param == self.page_param:
            raise ValueError(f"page_param and size_param are both {self.page_param!r}")
        return self


class OffsetPagination(_Model):
    """`?offset=0&limit=100`; stops on a short or empty page, or when `total_path` says all are fetched."""

    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(100, gt=0)
    total_path: str | None = None
    stop_on: Literal["short_page", "empty_page"] = "short_page"  # as for page_number

    @model_validator(mode="after")
    def _distinct_params(self) -> OffsetPagination:
        if self.offset_param == self.limit_param:
            raise ValueError(f"offset_param and limit_param are both {self.offset_param!r}")
        return self


class CursorPagination(_Model):
    """The body names the cursor of the next page (`cursor_path`); it is sent back as `cursor_param`."""

    type: Literal["cursor"]
    cursor_param: str = "cursor"
    cursor_path: str
    size_param: str | None = None
    size: int | None = Field(None, gt=0)


class NextUrlPagination(_Model):
    """The body holds the absolute (or relative) URL of the next page."""

    type: Literal["next_url"]
    next_url_path: str


class LinkHeaderPagination(_Model):
    """RFC 8288 `Link: <url>; rel="next"` header (GitHub style)."""

    type: Literal["link_header"]
    size_param: str | None = None
    size: int | None = Field(None, gt=0)


Pagination = Annotated[
    NoPagination | PageNumberPagination | OffsetPagination | CursorPagination | NextUrlPagination | LinkHeaderPagination,
    Field(discriminator="type"),
]

#: more levels than any API has: a spec with thousands is a mistake (each level is a Map run and a ledger item)
MAX_LEVELS = 20

COLUMN_TYPES = re.compile(r"^(string|int64|float64|bool|timestamp\[(s|ms|us|ns)\]|decimal\(\d+,\s*\d+\))$")


# ---------------------------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------------------------
class Auth(_Model):
    """Where the credential goes. Its value never lives in the spec: locally it is read from the environment
    variable `env`; on AWS from the Secrets Manager secret `secret` (default `harvester/{source name}`)."""

    type: Literal["header", "bearer", "query", "basic"] = "header"
    name: str = "X-Api-Key"  # header name (header), query parameter name (query); ignored for bearer/basic
    env: str
    secret: str | None = None


class RateLimit(_Model):
    # finite and at most MAX_RATE: `.inf` or 1e308 would reach DynamoDB's number limits later, mid-run
    requests_per_second: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)
    burst: int = Field(5, ge=1)


class Timeouts(_Model):
    connect: float = Field(5.0, gt=0)
    read: float = Field(30.0, gt=0)


class Retries(_Model):
    """Retries of transient errors (429, 5xx, timeouts, resets) inside the worker."""

    max_attempts: int = Field(8, ge=1, le=100)
    base_delay: float = Field(0.2, ge=0, le=3600, allow_inf_nan=False)
    max_delay: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False)
    # one call throttled (429, a rate-limit 403) for longer than this in total, or told to wait longer: the call
    # fails, naming its URL, instead of waiting out the Lambda's time, attempt after attempt
    max_throttle_seconds: float = Field(300.0, gt=0, le=86_400, allow_inf_nan=False)


#: status classes a level's `status` block may set; the defaults fit a GitHub-shaped API (see StatusRules)
STATUS_CLASSES = ("empty", "throttle", "retry", "permanent", "auth")


class StatusRules(_Model):
    """What a non-2xx status means for a level's call, when the defaults do not fit the API:

    - `empty`: the list has no (more) records; the call succeeded (e.g. GitHub's 410 for disabled issues);
    - `throttle`: the vendor pacing us: wait (Retry-After, X-RateLimit-Reset), slow the fleet, up to
      `retries.max_throttle_seconds`;
    - `retry`: transient, retried up to `retries.max_attempts`;
    - `permanent`: that parent's call fails (a FAIL item naming URL and status), its siblings go on;
    - `auth`: as permanent, and when the first parents of a batch all fail so, the batch stops (the credential).

    Defaults: throttle 429 (and a 403 or 429 that carries `Retry-After` or `X-RateLimit-Remaining: 0`), retry
    408 and 5xx, auth 401 and 403, permanent every other 4xx (404 and 410 included), empty none. A status named
    here wins over the defaults."""

    empty: list[int] = Field(default_factory=list)
    throttle: list[int] = Field(default_factory=list)
    retry: list[int] = Field(default_factory=list)
    permanent: list[int] = Field(default_factory=list)
    auth: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_class_per_status(self) -> StatusRules:
        seen: dict[int, str] = {}
        for cls in STATUS_CLASSES:
            for status in getattr(self, cls):
                if not 300 <= status <= 599:
                    raise ValueError(f"{cls}: {status} is not an error status (300-599)")
                if status in seen:
                    raise ValueError(f"{status} is in both {seen[status]} and {cls}")
                seen[status] = cls
        return self

    def classify(self, status: int) -> str | None:
        """The class the level gives `status`, or None (the defaults apply)."""
        for cls in STATUS_CLASSES:
            if status in getattr(self, cls):
                return cls
        return None


class Schedule(_Model):
    """When the deployed stack starts a run (an EventBridge Scheduler schedule, stacks/schedules.py)."""

    cron: str  # EventBridge Scheduler's cron, "0 3 * * ? *", written bare or as "cron(0 3 * * ? *)"
    timezone: str = "UTC"
    enabled: bool = True

    @property
    def expression(self) -> str:
        body = self.cron.strip()
        return body if body.startswith("cron(") else f"cron({body})"

    @field_validator("cron")
    @classmethod
    def _six_fields(cls, v: str) -> str:
        """Scheduler's cron has six fields, one of day-of-month and day-of-week '?'
        ("Cron-based schedules", https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html)."""
        body = v.strip()
        body = body[5:-1] if body.startswith("cron(") and body.endswith(")") else body
        fields = body.split()
        if len(fields) != 6:
            raise ValueError(f"expected six fields 'minutes hours day-of-month month day-of-week year', e.g. "
                             f"'0 3 * * ? *', got {v!r}")
        if "?" not in (fields[2], fields[4]):
            raise ValueError(f"one of day-of-month and day-of-week must be '?', got {v!r}")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        """An IANA zone. Where the machine has no zone database at all (a minimal Lambda image may not), the zone
        is not checked here: `cdk synth` parsed the same spec and checked it before the deploy."""
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            if available_timezones():
                raise ValueError(f"unknown time zone {v!r}") from None
        return v


class Level(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    alias: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$")
    path: str
    params: dict[str, str] = Field(default_factory=dict)
    records: str = "$"
    primary_key: list[str] | None = None
    pagination: Pagination = Field(default_factory=lambda: NoPagination(type="none"))
    # parents per Map item (one fetch invocation); None: sized from the rate limit, see harvester/sizing.py
    batch_size: int | None = Field(None, gt=0, le=1000)
    time_field: str | None = None
    types: dict[str, str] = Field(default_factory=dict)
    status: StatusRules = Field(default_factory=StatusRules)
    # a field whose presence (not null, not empty) in a 2xx body means the call failed (`{"data": [], "error": ..}`):
    # retried as transient, then a failed call naming the URL and the field's value
    error_path: str | None = None
    window: WindowSpec | None = None  # an incremental window (harvester/window.py)

    @model_validator(mode="before")
    @classmethod
    def _window_params(cls, data: Any) -> Any:
        """`window.start_param`/`end_param` become query parameters templated with `{window.start}`/`{window.end}`."""
        if isinstance(data, dict) and isinstance(data.get("window"), dict):
            window = data["window"]
            added = {window[k]: f"{{window.{k[:-6]}}}" for k in ("start_param", "end_param") if window.get(k)}
            cursor = window.get("cursor")
            if isinstance(cursor, dict) and cursor.get("param"):
                added[cursor["param"]] = "{window.since}"
            data = {**data, "params": {**(data.get("params") or {}), **added}}
        return data

    @field_validator("primary_key", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        for column, typ in v.items():
            if not COLUMN_TYPES.match(typ):
                raise ValueError(
                    f"type {typ!r} of column {column!r} is not one of string, int64, float64, bool, "
                    "timestamp[s|ms|us|ns], decimal(p,s)"
                )
        return v

    @property
    def names(self) -> tuple[str, ...]:
        """Names a template may use for this level's records."""
        return (self.name, self.alias) if self.alias else (self.name,)


class SourceSpec(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    description: str = ""
    base_url: str
    auth: Auth | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    rate_limit: RateLimit | None = None
    max_concurrency: int = Field(4, ge=1, le=1000)
    max_in_flight: int | None = Field(None, ge=1, le=256)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: Retries = Field(default_factory=Retries)
    ttl_days: int = Field(90, ge=1)
    schedule: Schedule | None = None
    # origins (scheme://host[:port]) besides base_url's that may receive the credential (a redirect or a next
    # link elsewhere gets no credential unless its origin is listed)
    allowed_origins: list[str] = Field(default_factory=list, max_length=50)
    levels: list[Level] = Field(min_length=1, max_length=MAX_LEVELS)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not re.match(r"^https?://[^/\s]+/?$", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return [o.rstrip("/") for o in v]

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"base_url must start with http:// or https:// and a host, got {v!r}")
        return v.rstrip("/")

    @property
    def window_level(self) -> int | None:
        """The index of the level that declares `window:` (at most one does), else None."""
        return next((i for i, level in enumerate(self.levels) if level.window is not None), None)

    @model_validator(mode="after")
    def _templates_refer_to_ancestors(self) -> SourceSpec:
        windowed = [i for i, level in enumerate(self.levels) if level.window is not None]
        for i in windowed:
            if self.levels[i].window.cursor and i != len(self.levels) - 1:
                raise ValueError(f"levels[{i}].window.cursor: a cursor window is for the last level")
        if len(windowed) > 1:
            raise ValueError(f"levels[{windowed[1]}].window: only one level may declare a window "
                             f"(levels[{windowed[0]}] does)")
        seen: dict[str, int] = {"window": -1} if windowed else {}
        for i, level in enumerate(self.levels):
            for n in level.names:
                if n == "window":
                    raise ValueError(f"levels[{i}]: the name 'window' is reserved for {{window.start}}/{{window.end}}")
                if n in seen:
                    raise ValueError(f"levels[{i}]: name {n!r} is already used by levels[{seen[n]}]")
            for where, text in [("path", level.path), *[(f"params.{k}", v) for k, v in level.params.items()]]:
                try:
                    refs = references(text)
                except TemplateError as exc:
                    raise ValueError(f"levels[{i}].{where}: {exc}") from None
                for ref_level, _field in refs:
                    has_cursor = any(self.levels[w].window.cursor for w in windowed)
                    if ref_level == "window" and windowed and _field not in ("start", "end") + ("since",) * has_cursor:
                        raise ValueError(f"levels[{i}].{where}: {{window.{_field}}}: a window has start, end "
                                         "(and since, with a cursor)")
                    if ref_level not in seen:
                        ancestors = [n for lv in self.levels[:i] for n in lv.names]
                        raise ValueError(
                            f"levels[{i}].{where}: {{{ref_level}.{_field}}} does not name an ancestor level "
                            f"(ancestors: {ancestors or 'none, this is the first level'}"
                            + ("; the window: {window.start}, {window.end})" if windowed else ")")
                        )
            if i < len(self.levels) - 1 and not level.primary_key:
                raise ValueError(
                    f"levels[{i}].primary_key: required on every level that has children "
                    f"({level.name} has {self.levels[i + 1].name})"
                )
            for n in level.names:
                seen[n] = i
        return self

    # --- derived --------------------------------------------------------------------------------------------
    def level_index(self, name: str) -> int:
        for i, level in enumerate(self.levels):
            if name in level.names:
                return i
        raise KeyError(name)

    def context_fields(self, index: int) -> list[str]:
        """Fields of level `index`'s records that descendants need: its primary key and every templated field."""
        level = self.levels[index]
        fields = list(level.primary_key or [])
        for child in self.levels[index + 1 :]:
            for text in [child.path, *child.params.values()]:
                for ref_level, field in references(text):
                    if ref_level in level.names and field not in fields:
                        fields.append(field)
        return fields

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def secret_name(self) -> str:
        """The spec's `auth.secret`, else `{HARVESTER_SECRET_PREFIX}{name}`: the deployed stack sets the prefix to its
        own name and creation id (a fixed name would collide between stacks of one account), `harvester/` otherwise."""
        if self.auth and self.auth.secret:
            return self.auth.secret
        return f"{os.environ.get('HARVESTER_SECRET_PREFIX') or 'harvester/'}{self.name}"


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------
_ENV = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(text: str, where: str) -> str:
    """`${VAR}` / `${VAR:-default}` in base_url lets one spec point at a local vendor or the real one."""

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1), m.group(2))
        if value is None:
            raise SpecError(f"{where}: environment variable {m.group(1)} is not set and has no default")
        return value

    return _ENV.sub(sub, text)


def _format_errors(origin: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part in {"none", "page_number", "offset", "cursor", "next_url", "link_header"} and loc.endswith(
                "pagination"
            ):
                continue  # pydantic adds the union member's tag to the location
            else:
                loc += f".{part}" if loc else str(part)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if err["type"] in {"missing", "value_error"} or isinstance(got, dict) else f" (got {_short(got)})"
        if not loc and re.match(r"^levels\[\d+\]", msg):
            loc, msg = msg.split(": ", 1) if ": " in msg else (msg, "")  # a spec-wide check names its own field
        lines.append(f"{origin}: {loc or '(top level)'}: {msg}{shown}")
    if len(lines) > MAX_PROBLEMS:
        lines[MAX_PROBLEMS:] = [f"{origin}: ... and {len(lines) - MAX_PROBLEMS} more problems"]
    return "\n".join(lines)


_REPR = reprlib.Repr()  # Python 3.11: limits are attributes, not arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 4, 6, 60, 60


def _short(value: Any) -> str:
    """A wrong value for an error message, bounded however large it is (reprlib never walks all of it)."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _too_big(data: Any, budget: int = MAX_YAML_NODES) -> bool:
    """Whether the loaded document has more than `budget` values, aliases expanded (stops counting there)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with caps on nesting depth and aliases (it has none: deep nesting is a RecursionError,
    an alias bomb a memory blow-up and a huge error message)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = self._aliases = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name): refused (an alias bomb?)")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels: refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_spec(data: Any, origin: str = "<spec>") -> SourceSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    if isinstance(data.get("base_url"), str):
        data["base_url"] = _expand_env(data["base_url"], f"{origin}: base_url")
    try:
        return SourceSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(origin, exc)) from None


def load_spec(path: str | Path) -> SourceSpec:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES >> 20} MiB; a spec is a short YAML file")
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader with caps
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {_short_text(str(exc))}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid YAML: nested too deeply") from None
    if _too_big(data):
        raise SpecError(f"{path}: more than {MAX_YAML_NODES} values once its aliases are expanded: refused")
    return parse_spec(data, str(path))


def _short_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_spec(sources_dir: str | Path, source: str) -> SourceSpec:
    """The spec of `source` in a folder of specs (`{source}.yaml` or `.yml`), checked to carry that name."""
    if not re.match(r"^[a-z][a-z0-9-]{0,40}$", source or ""):
        raise SpecError(f"source {source!r} is not a valid source name (lowercase letters, digits, '-')")
    folder = Path(sources_dir)
    for suffix in (".yaml", ".yml"):
        path = folder / f"{source}{suffix}"
        if path.exists():
            spec = load_spec(path)
            if spec.name != source:
                raise SpecError(f"{path}: name is {spec.name!r} but the file is for source {source!r}")
            return spec
    known = sorted(p.stem for p in folder.glob("*.y*ml"))
    raise SpecError(f"unknown source {source!r}: no {source}.yaml in {folder} (known sources: {known})")
