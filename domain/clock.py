"""UTC time helpers: every instant in the domain is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


def utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; a naive datetime is refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} refused: times must carry a timezone")
    return value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(tz=UTC)


def start_of_day(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def end_of_day(day: date) -> datetime:
    """The first instant after ``day`` (exclusive end)."""
    return start_of_day(day) + timedelta(days=1)


def quarter_start(at: datetime) -> datetime:
    at = utc(at)
    month = 3 * ((at.month - 1) // 3) + 1
    return datetime(at.year, month, 1, tzinfo=UTC)


def next_quarter_start(at: datetime) -> datetime:
    start = quarter_start(at)
    month = start.month + 3
    year = start.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def quarter_label(at: datetime) -> str:
    at = utc(at)
    return f"{at.year}-Q{(at.month - 1) // 3 + 1}"
