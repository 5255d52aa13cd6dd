"""Time helpers: moments are timezone-aware UTC, and the days staff pick are UTC days."""

from datetime import UTC, date, datetime, time


def start_of_utc_day(day: date) -> datetime:
    """Midnight UTC at the start of `day`: staff pick days, and days are UTC."""
    return datetime.combine(day, time.min, tzinfo=UTC)


def utc_text(moment: datetime | None) -> str:
    """A moment as staff read it on every page: "2026-12-04 21:59:17 UTC" ("—" for none)."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "—"
