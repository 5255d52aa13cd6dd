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
