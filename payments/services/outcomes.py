"""Tracking an unknown carrier outcome on a payment, refund or reversal: when it became unknown, how
often the carrier was asked since, when it is asked next (a doubling wait, capped), and the alert.

The rows are `OutcomeTracking` models; these helpers change them in memory and return the fields to
save, so that the caller saves them in its own transaction with whatever else it changes.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from payments.models import OutcomeTracking

# `resolve_attempts` is a plain smallint (no CHECK constraint to add on the payments table): kept in its range here.
MAX_ATTEMPTS = 32767

TRACKING_FIELDS = ["outcome_unknown_since", "resolve_attempts", "next_resolve_at", "outcome_alerted_at"]


def resolve_after() -> timedelta:
    """How long an unknown outcome is left to the carrier's callback before the first check."""
    return timedelta(seconds=settings.OUTCOME_RESOLVE_AFTER_SECONDS)


def alert_after() -> timedelta:
    return timedelta(minutes=settings.OUTCOME_ALERT_AFTER_MINUTES)


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th check: the first wait doubled each time, capped."""
    first = settings.OUTCOME_RESOLVE_AFTER_SECONDS
    cap = settings.OUTCOME_RESOLVE_MAX_INTERVAL_SECONDS
    return timedelta(seconds=min(first * 2 ** min(max(attempts, 0), 30), cap))


def mark_unknown(row: OutcomeTracking, *, now: datetime | None = None) -> list[str]:
    """The outcome of a call about to be made is unknown until the carrier states it.

    A row already unknown keeps its start, attempts and alert: sending the same request again (the
    carrier never got it, or asked us to wait) does not restart the clock of the alert.
    """
    if row.outcome_unknown_since is not None:
        return []
    row.outcome_unknown_since = now or timezone.now()
    row.resolve_attempts = 0
    row.next_resolve_at = None  # first check: resolve_after() after the start
    row.outcome_alerted_at = None
    return list(TRACKING_FIELDS)


def clear_unknown(row: OutcomeTracking) -> list[str]:
    """The carrier stated the outcome (or nothing is left to ask it): no check is due, none was made.

    The only way an unknown outcome is cleared, so that a settled row never shows a next check, checks
    made or an alert of an outcome no longer unknown.
    """
    row.outcome_unknown_since = None
    row.resolve_attempts = 0
    row.next_resolve_at = None
    row.outcome_alerted_at = None
    return list(TRACKING_FIELDS)


def count_check(row: OutcomeTracking, *, now: datetime) -> list[str]:
    """A check is being made now: count it, and set the next one after the growing wait."""
    row.resolve_attempts = min(max(row.resolve_attempts, 0) + 1, MAX_ATTEMPTS)
    row.next_resolve_at = now + backoff(row.resolve_attempts)
    return ["resolve_attempts", "next_resolve_at"]


def check_again_after(row: OutcomeTracking, wait: timedelta) -> list[str]:
    """Not before `now + wait` (the carrier's Retry-After, a busy gateway), nor before the check now due."""
    later = timezone.now() + wait
    if row.next_resolve_at is None or row.next_resolve_at < later:
        row.next_resolve_at = later
    return ["next_resolve_at"]


def next_wait(row: OutcomeTracking, retry_after: float | None) -> timedelta:
    """The wait before sending again a request the carrier refused for now: the backoff of the checks
    made so far, or longer when the carrier asked for longer."""
    return max(backoff(row.resolve_attempts), timedelta(seconds=retry_after or 0))
