"""Time helpers: moments are timezone-aware UTC, and the days staff pick are UTC days."""

from datetime import UTC, date, datetime, time


def start_of_utc_day(day: date) -> datetime:
    """Midnight UTC at the start of `day`: staff pick days, and days are UTC."""
    return datetime.combine(day, time.min, tzinfo=UTC)
