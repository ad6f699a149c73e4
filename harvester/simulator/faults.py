"""Fault injection for the simulated vendor: the ways a real vendor misbehaves, on demand.

Why rules rather than one switch per fault: tests need "503 on 10% of requests", "reset the connection
for warrior w000003's datagroups, twice" and "an empty page somewhere in the points" at the same time,
and the same JSON shape has to work from Python and from ``POST /_admin/faults``.

Determinism: whether a rule fires is a pure function of (seed, rule index, request URL, how many times
that URL has been requested since the faults were set). So a run is reproducible even when a harvester
sends requests concurrently in a different order, and a retried request gets a fresh roll.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FAULT_KINDS = (
    "rate_limit",  # 429 (a storm if probability is high), with or without Retry-After
    "server_error",  # 500, 502 or 503 with a JSON error body
    "slow",  # the correct response, `seconds` late
    "reset",  # TCP connection reset (RST) before any response byte
    "truncated",  # headers with the full Content-Length, part of the body, then the connection closes
    "malformed",  # a complete HTTP 200 whose body is cut-off (invalid) JSON
    "wrong_content_type",  # the correct JSON body labelled text/plain
    "html",  # an HTML error page with status 200
    "empty_page",  # an empty page although more records exist (only on a page that has a next one)
    "not_found",  # 404, as for an unknown parent (use `ids` to name the parents)
)


@dataclass
class FaultRule:
    """One kind of fault and where and how often it happens.

    A rule applies to a request when its path matches one of ``paths`` (fnmatch patterns on the path
    without query, e.g. ``/v1/warriors/*/datagroups``; empty = every /v1 path) and, if ``ids`` is set,
    the request's parent id (troop, warrior or datagroup id in the path or ``troopId``) is one of them.
    It then fires with ``probability``, at most ``times`` times (None = unlimited).
    """

    kind: str
    probability: float = 1.0
    paths: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    times: int | None = None
    status: int = 503  # server_error
    seconds: float = 2.0  # slow
    retry_after: float | None = 1.0  # rate_limit; None omits the header

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        if self.kind == "server_error" and self.status not in (500, 502, 503):
            raise ValueError("server_error status must be 500, 502 or 503")
        self.paths = list(self.paths)
        self.ids = list(self.ids)

    def matches(self, path: str, parent_id: str | None) -> bool:
        """Whether this rule applies to a request (before the probability roll)."""
        if self.paths and not any(fnmatch.fnmatchcase(path, p) for p in self.paths):
            return False
        return not self.ids or parent_id in self.ids


@dataclass
class FaultConfig:
    """Every fault in force. ``outage_seconds`` > 0 makes every /v1 request a 503 for that many
    seconds from when the config is set (then the vendor is back); rules apply outside the outage."""

    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    outage_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.rules = [r if isinstance(r, FaultRule) else FaultRule(**r) for r in self.rules]

    @classmethod
    def of(cls, *rules: FaultRule, seed: int = 0, outage_seconds: float = 0.0) -> FaultConfig:
        """Shorthand: ``FaultConfig.of(FaultRule("reset", paths=["/v1/troops"]))``."""
        return cls(rules=list(rules), seed=seed, outage_seconds=outage_seconds)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FaultConfig:
        """Build from the JSON body of ``POST /_admin/faults``; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(payload) - known
        if unknown:
            raise ValueError(f"unknown fault config keys: {sorted(unknown)}")
        return cls(**payload)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _roll(seed: int, rule_index: int, url: str, attempt: int) -> float:
    """A uniform number in [0, 1) that depends only on its arguments."""
    digest = hashlib.blake2b(f"{seed}|{rule_index}|{url}|{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class FaultPlan:
    """A FaultConfig in force: remembers when it was set, how often each rule fired, and how often
    each URL was asked (for the rolls). Thread-safe: the server's loop and the tests' thread share it."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self.set_at = time.monotonic()
        self._fired = [0] * len(self.config.rules)
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def in_outage(self) -> bool:
        return self.config.outage_seconds > 0 and time.monotonic() - self.set_at < self.config.outage_seconds

    def outage_remaining(self) -> float:
        return max(0.0, self.config.outage_seconds - (time.monotonic() - self.set_at))

    def choose(self, url: str, path: str, parent_id: str | None, has_more: bool) -> FaultRule | None:
        """The first rule that fires for this request, or None. ``has_more`` says whether the page
        being answered has a next one (``empty_page`` only fires then, so it never loses the end)."""
        if not self.config.rules:
            return None
        with self._lock:
            attempt = self._attempts.get(url, 0)
            self._attempts[url] = attempt + 1
            for index, rule in enumerate(self.config.rules):
                if rule.kind == "empty_page" and not has_more:
                    continue
                if rule.times is not None and self._fired[index] >= rule.times:
                    continue
                if not rule.matches(path, parent_id):
                    continue
                if rule.probability < 1.0 and _roll(self.config.seed, index, url, attempt) >= rule.probability:
                    continue
                self._fired[index] += 1
                return rule
        return None

    def fired(self) -> list[int]:
        """How many times each rule has fired, in rule order."""
        with self._lock:
            return list(self._fired)


__all__ = ["FAULT_KINDS", "FaultRule", "FaultConfig", "FaultPlan"]
