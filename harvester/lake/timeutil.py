"""Instants as ISO-8601 text with a fixed width (sortable as strings) and as Arrow integers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def parse_instant(text: str | datetime | None) -> datetime | None:
    """ISO-8601 -> aware UTC datetime (a naive text or a bare date is UTC)."""
    if text is None:
        return None
    dt = text if isinstance(text, datetime) else datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    """Fixed-width UTC text: ``2026-11-20T00:05:00.000000Z``."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_units(value: int, unit: str) -> datetime:
    per = _PER_SECOND[unit]
    return EPOCH + timedelta(microseconds=value * 1_000_000 // per if per >= 1_000_000 else value * (1_000_000 // per))


def to_units(dt: datetime, unit: str) -> int:
    """Epoch count in ``unit`` (exact for s/ms/us, us precision for ns)."""
    delta = dt - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    per = _PER_SECOND[unit]
    return micros * (per // 1_000_000) if per >= 1_000_000 else -((-micros) // (1_000_000 // per))
