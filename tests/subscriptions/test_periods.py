"""Billing periods are calendar-correct and counted from the anchor, never chained."""

from datetime import datetime, timedelta

import pytest

from subscriptions.periods import Period, boundary, bounds, index_at

ANCHOR = datetime.fromisoformat("2028-01-31T09:30:00+00:00")


def test_a_month_from_the_31st_ends_on_the_last_day_of_a_shorter_month() -> None:
    assert bounds(ANCHOR, Period.MONTHLY, 0) == (ANCHOR, datetime.fromisoformat("2028-02-29T09:30:00+00:00"))


def test_months_come_back_to_the_anchors_day_where_the_month_has_it() -> None:
    ends = [boundary(ANCHOR, Period.MONTHLY, n).date().isoformat() for n in range(1, 5)]
    assert ends == ["2028-02-29", "2028-03-31", "2028-04-30", "2028-05-31"]


@pytest.mark.parametrize(("period", "days"), [(Period.DAILY, 1), (Period.WEEKLY, 7)])
def test_days_and_weeks_are_fixed_lengths(period: str, days: int) -> None:
    start, end = bounds(ANCHOR, period, 3)
    assert (end - start).days == days
    assert (start - ANCHOR).days == 3 * days


def test_an_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown period"):
        boundary(ANCHOR, "hourly", 1)


@pytest.mark.parametrize("period", [Period.DAILY, Period.WEEKLY, Period.MONTHLY])
def test_the_period_containing_a_moment_is_the_one_whose_bounds_hold_it(period: str) -> None:
    for index in (0, 1, 2, 11, 13, 40):
        start, end = bounds(ANCHOR, period, index)
        for at in (start, start + (end - start) / 2, end - timedelta(microseconds=1)):
            assert index_at(ANCHOR, period, at) == index, (period, index, at)
    assert index_at(ANCHOR, period, ANCHOR - timedelta(days=1)) == 0
