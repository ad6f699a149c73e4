"""The simulated vendor's data: a deterministic monitoring hierarchy generated from a seed.

troops (accounts) -> warriors (devices) -> datagroups (metrics of a device) -> points (time series).

Why this shape: it is the hierarchy of seed story 003 (a monitoring vendor harvested level by level).
Tests compare a harvest with the truth held here, so every level can be listed and looked up, and
``counts()`` gives exact totals. Troops, warriors and datagroups are small and built eagerly; points
(the bulk) are generated per datagroup on demand from a per-datagroup seed, so a 200k-point vendor
costs almost nothing until a client asks for its points.
"""

from __future__ import annotations

import random
import re
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

Record = dict[str, Any]

FIRMWARES = ("1.2.0", "1.3.1", "2.0.0")
KINDS = ("cpu", "memory", "disk", "network", "ping")
UNITS = {"cpu": "percent", "memory": "percent", "disk": "percent", "network": "mbps", "ping": "ms"}
REGIONS = ("us-east", "us-west", "eu-central", "ap-south")
MODELS = ("amazon-x1", "amazon-x2", "themyscira-9")
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DataConfig:
    """Sizes and shape of the generated hierarchy.

    ``variation`` is the fraction by which a parent's child count may differ from the nominal
    ``*_per_*`` size (deterministic from the seed); 0 makes every parent have exactly the nominal
    count. Exact totals are always available from ``VendorData.counts()``.
    """

    troops: int = 4
    warriors_per_troop: int = 10
    datagroups_per_warrior: int = 4
    points_per_datagroup: int = 48
    seed: int = 42
    start: datetime = DEFAULT_START
    interval_seconds: int = 300
    down_probability: float = 0.05
    variation: float = 0.2

    def __post_init__(self) -> None:
        for name in ("troops", "warriors_per_troop", "datagroups_per_warrior", "points_per_datagroup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0")
        if not 0 <= self.variation < 1:
            raise ValueError("variation must be in [0, 1)")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")


def iso(ts: datetime) -> str:
    """Format a datetime as the vendor does: ISO-8601 UTC with a trailing Z, second precision."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """Parse an ISO-8601 timestamp (Z or offset; a naive one is taken as UTC). Raises ValueError."""
    text = text.strip()
    # A "+hh:mm" offset sent unencoded in a query string arrives as " hh:mm": put the plus back.
    text = text[:11] + text[11:].replace(" ", "+")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_time(text: str) -> datetime:
    """A time as a window filter may send it: ISO-8601 (offset, `Z` or none = UTC), a date (`2026-01-02`, midnight
    UTC), or a number of seconds (below 1e11) or milliseconds since the epoch. Raises ValueError."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        number = float(text)
        return datetime.fromtimestamp(number if abs(number) < 1e11 else number / 1000, UTC)
    return parse_iso(text)


def _vary(rng: random.Random, nominal: int, variation: float) -> int:
    """A child count near ``nominal``: within +/- variation, never below 0 (or 1 if nominal > 0)."""
    spread = int(round(nominal * variation))
    if spread == 0:
        return nominal
    return max(1 if nominal > 0 else 0, nominal + rng.randint(-spread, spread))


class VendorData:
    """The vendor's whole dataset, built from a :class:`DataConfig` (or keyword overrides of it).

    Listing methods return fresh dicts (callers may mutate them). Lookups of unknown ids return None.
    """

    def __init__(self, config: DataConfig | None = None, **options: Any) -> None:
        self.config = replace(config or DataConfig(), **options)
        self._troops: list[Record] = []
        self._warriors: list[Record] = []
        self._datagroups: list[Record] = []
        self._by_id: dict[str, Record] = {}
        self._children: dict[str, list[str]] = {}
        self._point_counts: dict[str, int] = {}
        self._build()
        self._timestamps = [
            iso(self.config.start + timedelta(seconds=k * self.config.interval_seconds))
            for k in range(max(self._point_counts.values(), default=0))
        ]
        self._points_cached = lru_cache(maxsize=256)(self._generate_points)
        self._clock: datetime | None = None
        self._clock_lock = threading.Lock()

    # -- the clock ------------------------------------------------------------------------------

    @property
    def now(self) -> datetime | None:
        """The vendor's clock: only points whose time is before it exist (None: no clock, every point exists)."""
        return self._clock

    def set_clock(self, now: datetime | None) -> None:
        if now is not None and now.tzinfo is None:
            raise ValueError("the clock must be timezone-aware (UTC)")
        with self._clock_lock:
            self._clock = now

    def advance_clock(self, delta: timedelta) -> datetime:
        """Move the clock on (from the data's start when it was not set); returns the new time."""
        with self._clock_lock:
            self._clock = (self._clock or self.config.start) + delta
            return self._clock

    def _visible(self, datagroup_id: str) -> int:
        """How many of a datagroup's points exist at the clock's time (they appear in time order)."""
        n = self._point_counts.get(datagroup_id, 0)
        clock = self._clock
        return n if clock is None else bisect_left(self._timestamps, iso(clock), 0, n)

    # -- construction ---------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.config
        warrior_seq = 0
        group_seq = 0
        for t in range(1, cfg.troops + 1):
            trng = random.Random(f"{cfg.seed}:troop:{t}")
            troop = {
                "id": f"t{t:04d}",
                "name": f"Troop {t}",
                "region": trng.choice(REGIONS),
                "created_at": iso(cfg.start - timedelta(days=trng.randint(30, 900))),
            }
            self._add(troop, None)
            for _ in range(_vary(trng, cfg.warriors_per_troop, cfg.variation)):
                warrior_seq += 1
                wrng = random.Random(f"{cfg.seed}:warrior:{warrior_seq}")
                warrior = {
                    "id": f"w{warrior_seq:06d}",
                    "troop_id": troop["id"],
                    "name": f"warrior-{warrior_seq}",
                    "model": wrng.choice(MODELS),
                    "firmware": wrng.choice(FIRMWARES),
                }
                self._add(warrior, troop["id"])
                for _ in range(_vary(wrng, cfg.datagroups_per_warrior, cfg.variation)):
                    group_seq += 1
                    grng = random.Random(f"{cfg.seed}:datagroup:{group_seq}")
                    kind = grng.choice(KINDS)
                    group = {
                        "id": f"g{group_seq:06d}",
                        "warrior_id": warrior["id"],
                        "kind": kind,
                        "unit": UNITS[kind],
                    }
                    self._add(group, warrior["id"])
                    self._point_counts[group["id"]] = _vary(grng, cfg.points_per_datagroup, cfg.variation)

    def _add(self, record: Record, parent_id: str | None) -> None:
        level = {"t": self._troops, "w": self._warriors, "g": self._datagroups}[record["id"][0]]
        level.append(record)
        self._by_id[record["id"]] = record
        self._children[record["id"]] = []
        if parent_id is not None:
            self._children[parent_id].append(record["id"])

    def _generate_points(self, datagroup_id: str) -> tuple[Record, ...]:
        """All points of one datagroup, from its own seed: the same every time, in ts order."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:points:{datagroup_id}")
        kind = self._by_id[datagroup_id]["kind"]
        base = {"cpu": 35.0, "memory": 55.0, "disk": 60.0, "network": 120.0, "ping": 40.0}[kind]
        p_down = cfg.down_probability
        out = []
        for k in range(self._point_counts[datagroup_id]):
            down = rng.random() < p_down
            value = 0.0 if down else round(base * (0.5 + rng.random()), 3)
            out.append({"ts": self._timestamps[k], "value": value, "status": "down" if down else "up"})
        return tuple(out)

    # -- totals ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Exact number of records per level."""
        return {
            "troops": len(self._troops),
            "warriors": len(self._warriors),
            "datagroups": len(self._datagroups),
            "points": sum(self._visible(g) for g in self._point_counts),
        }

    def point_count(self, datagroup_id: str) -> int:
        """Number of points of one datagroup at the clock's time (without generating them); 0 for an unknown id."""
        return self._visible(datagroup_id)

    # -- lookups --------------------------------------------------------------------------------

    def troop(self, troop_id: str) -> Record | None:
        return self._lookup(troop_id, "t")

    def warrior(self, warrior_id: str) -> Record | None:
        return self._lookup(warrior_id, "w")

    def datagroup(self, datagroup_id: str) -> Record | None:
        return self._lookup(datagroup_id, "g")

    def _lookup(self, record_id: str, prefix: str) -> Record | None:
        record = self._by_id.get(record_id)
        return dict(record) if record is not None and record_id.startswith(prefix) else None

    # -- listings -------------------------------------------------------------------------------

    def troops(self) -> list[Record]:
        return [dict(r) for r in self._troops]

    def warriors(self, troop_id: str | None = None) -> list[Record]:
        """Every warrior, or those of one troop (empty list for an unknown troop)."""
        if troop_id is None:
            return [dict(r) for r in self._warriors]
        return [dict(self._by_id[i]) for i in self._children.get(troop_id, [])] if self.troop(troop_id) else []

    def datagroups(self, warrior_id: str | None = None) -> list[Record]:
        """Every datagroup, or those of one warrior (empty list for an unknown warrior)."""
        if warrior_id is None:
            return [dict(r) for r in self._datagroups]
        return [dict(self._by_id[i]) for i in self._children.get(warrior_id, [])] if self.warrior(warrior_id) else []

    def points(self, datagroup_id: str, start: datetime | None = None, end: datetime | None = None,
               since: datetime | None = None) -> list[Record]:
        """Points of one datagroup that exist at the clock's time, optionally only ``start <= ts < end`` and
        ``ts > since`` (empty for an unknown id)."""
        if datagroup_id not in self._point_counts:
            return []
        points = self._points_cached(datagroup_id)[: self._visible(datagroup_id)]
        n = len(points)
        lo = bisect_left(self._timestamps, iso(start), 0, n) if start else 0
        if since:
            lo = max(lo, bisect_right(self._timestamps, iso(since), 0, n))
        hi = bisect_left(self._timestamps, iso(end), 0, n) if end else n
        return [dict(p) for p in points[lo:hi]]

    def iter_points(self) -> Iterator[tuple[str, Record]]:
        """Every point of every datagroup as ``(datagroup_id, point)``, generated lazily."""
        for group in self._datagroups:
            for point in self._generate_points(group["id"])[: self._visible(group["id"])]:
                yield group["id"], dict(point)

    def point_keys(self) -> set[tuple[str, str]]:
        """The set of every point's key ``(datagroup_id, ts)``: what a harvest must contain."""
        return {(gid, self._timestamps[k]) for gid in self._point_counts for k in range(self._visible(gid))}

    def ids(self, level: str) -> list[str]:
        """Ids of one level ("troops", "warriors" or "datagroups"), in order."""
        source = {"troops": self._troops, "warriors": self._warriors, "datagroups": self._datagroups}[level]
        return [r["id"] for r in source]


__all__ = ["DataConfig", "VendorData", "Record", "iso", "parse_iso", "parse_time", "FIRMWARES", "KINDS"]
