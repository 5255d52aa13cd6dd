"""Billing periods: calendar-correct, always counted from the subscription's anchor.

The end of period k is `anchor + (k + 1) * period`, never the previous end plus one period: a monthly
subscription that starts on 31 January renews on 28 (or 29) February, 31 March, 30 April, 31 May…,
where chaining would drift to the 28th for good.
"""

from datetime import datetime, timedelta

from dateutil.relativedelta import relativedelta
from django.db import models


class Period(models.TextChoices):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


def boundary(anchor: datetime, period: str, index: int) -> datetime:
    """The start of period `index` (0: the anchor itself)."""
    if period == Period.DAILY:
        return anchor + timedelta(days=index)
    if period == Period.WEEKLY:
        return anchor + timedelta(weeks=index)
    if period == Period.MONTHLY:
        return anchor + relativedelta(months=index)
    raise ValueError(f"unknown period {period!r}")


def bounds(anchor: datetime, period: str, index: int) -> tuple[datetime, datetime]:
    """(start, end) of period `index`."""
    return boundary(anchor, period, index), boundary(anchor, period, index + 1)


def index_at(anchor: datetime, period: str, at: datetime) -> int:
    """The index of the period that contains `at` (0 before the anchor's second period)."""
    if at < anchor:
        return 0
    if period == Period.DAILY:
        return (at - anchor) // timedelta(days=1)
    if period == Period.WEEKLY:
        return (at - anchor) // timedelta(weeks=1)
    if period == Period.MONTHLY:
        # Calendar months: a first guess by the calendar, then corrected by the boundaries themselves.
        index = max((at.year - anchor.year) * 12 + at.month - anchor.month, 0)
        while index > 0 and boundary(anchor, period, index) > at:
            index -= 1
        while boundary(anchor, period, index + 1) <= at:
            index += 1
        return index
    raise ValueError(f"unknown period {period!r}")
