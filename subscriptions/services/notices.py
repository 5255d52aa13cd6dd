"""Reminders before a renewal and receipts after one: webhooks to the app, each sent once per period.

Once is held by `SubscriptionNotice`'s unique constraint on (subscription, period, kind): the notice's row is
inserted in the transaction that queues its webhook, and a second insert (the engine run twice, two engines
at once) is refused, so nothing is queued twice. PlayPay sends no SMS itself: none of the carrier protocols it
speaks has an outbound SMS operation, so the app tells the player (docs/subscriptions.md).

A reminder whose window passed while the engine was stopped is sent late while the renewal is still at least
`SUBSCRIPTION_REMINDER_MIN_HOURS` ahead (and not charged); closer than that, or already due, it is not sent and
its notice row records why (`skipped_reason`), so that it is decided once.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet

from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionNotice, SubscriptionStatus
from subscriptions.periods import Period
from subscriptions.services.notify import charged_price, notify
from subscriptions.services.prices import AGREED_PRICE_CHARGEABLE

# Plans whose renewals are announced ahead (SUBSCRIPTION_REMINDER_HOURS before): a daily or weekly charge
# would be reminded of nearly as often as it is made.
REMINDED_PERIODS = (Period.MONTHLY,)
logger = logging.getLogger(__name__)


def record_notice(subscription: Subscription, *, kind: str, period_index: int, skipped: str = "") -> bool:
    """Insert the notice's row (`skipped`: why it is not sent); False when it was sent, or skipped, already (the
    caller then sends nothing)."""
    try:
        with transaction.atomic():
            SubscriptionNotice.objects.create(
                subscription=subscription, period_index=period_index, kind=kind, skipped_reason=skipped[:255]
            )
    except IntegrityError:
        return False
    return True


def send_receipt(subscription: Subscription, charge: SubscriptionCharge, *, at: datetime) -> None:
    """`subscription.receipt` for a renewal that succeeded (inside its settlement's transaction), once."""
    if not record_notice(subscription, kind=SubscriptionNotice.Kind.RECEIPT, period_index=charge.period_index):
        return
    payment = charge.payment
    assert payment is not None  # a succeeded charge has its payment
    notify(
        subscription,
        "receipt",
        at=at,
        charge=charge,
        extra={**charged_price(charge), "charged_at": at.isoformat()},
    )


def reminder_notice() -> timedelta:
    """How long before a renewal its reminder is sent."""
    return timedelta(hours=settings.SUBSCRIPTION_REMINDER_HOURS)


def reminder_minimum() -> timedelta:
    """The least notice a reminder still gives when it is sent late (the engine was stopped during its
    window): closer to the renewal than this, it is not sent but recorded as skipped. It is at most half the
    notice, so that a short notice (24 hours, say) still leaves the reminders sent on time a window."""
    return min(timedelta(hours=settings.SUBSCRIPTION_REMINDER_MIN_HOURS), reminder_notice() / 2)


def _unreminded() -> QuerySet[Subscription]:
    """Active subscriptions to a reminded plan, not cancelled at their period's end, whose renewal will be
    charged, and whose next period has no reminder (sent or skipped) yet."""
    reminded = SubscriptionNotice.objects.filter(
        subscription=OuterRef("pk"), period_index=OuterRef("period_index") + 1, kind=SubscriptionNotice.Kind.REMINDER
    )
    return (
        Subscription.objects.filter(
            status=SubscriptionStatus.ACTIVE, plan__period__in=REMINDED_PERIODS, cancel_at_period_end=False
        )
        .filter(AGREED_PRICE_CHARGEABLE)  # a renewal paused (billing switched off) is not announced
        .exclude(Exists(reminded))
        .order_by("current_period_end")
    )


def due_reminders(now: datetime) -> QuerySet[Subscription]:
    """The subscriptions whose renewal is within the reminder's notice and at least its minimum ahead (the
    partial index `subscription_active_end_idx`): on time, or late after the engine was stopped."""
    return _unreminded().filter(
        current_period_end__gt=now + reminder_minimum(), current_period_end__lte=now + reminder_notice()
    )


def late_reminders(now: datetime) -> QuerySet[Subscription]:
    """The subscriptions whose renewal is closer than the reminder's minimum notice, or already due, and whose
    reminder was never sent (its whole window passed while the engine was stopped)."""
    return _unreminded().filter(current_period_end__lte=now + reminder_minimum())


def send_reminders(*, now: datetime, batch_size: int | None = None) -> tuple[int, int]:
    """Queue `subscription.reminder` for every subscription due one at `now`, and record as skipped the
    reminders too late to send; returns how many were sent and how many skipped. Runs before the renewals
    (a renewal charged in the same run would otherwise hide its reminder's absence)."""
    if settings.SUBSCRIPTION_REMINDER_HOURS <= 0:
        return 0, 0
    size = batch_size or settings.SUBSCRIPTION_RENEWAL_BATCH
    skipped = _in_batches(late_reminders(now), size, lambda subscription: _skip_reminder(subscription, now=now))
    sent = _in_batches(due_reminders(now), size, lambda subscription: _remind(subscription, now=now))
    return sent, skipped


def _in_batches(queryset: QuerySet[Subscription], size: int, handle: Callable[[Subscription], int]) -> int:
    done = 0
    while True:
        with transaction.atomic():
            batch = list(
                queryset.select_for_update(skip_locked=True, of=("self",)).select_related("app", "plan")[:size]
            )
            for subscription in batch:
                done += handle(subscription)
        if len(batch) < size:
            return done


def _skip_reminder(subscription: Subscription, *, now: datetime) -> int:
    assert subscription.current_period_end is not None
    ahead = subscription.current_period_end - now
    if ahead <= timedelta(0):
        reason = "not sent: the renewal was due before the reminder could be sent (the engine was stopped)"
    else:
        reason = (
            f"not sent: the renewal was {ahead.total_seconds() / 3600:.1f} h away when the reminder could be sent, "
            f"under the {reminder_minimum().total_seconds() / 3600:g} h minimum notice (the engine was stopped)"
        )
    upcoming = subscription.period_index + 1
    if not record_notice(subscription, kind=SubscriptionNotice.Kind.REMINDER, period_index=upcoming, skipped=reason):
        return 0
    logger.warning(
        "subscription %s: reminder of period %d %s",
        subscription.public_id,
        upcoming,
        reason,
        extra={"subscription_id": str(subscription.public_id), "period": upcoming},
    )
    return 1


def _remind(subscription: Subscription, *, now: datetime) -> int:
    upcoming = subscription.period_index + 1
    if not record_notice(subscription, kind=SubscriptionNotice.Kind.REMINDER, period_index=upcoming):
        return 0
    assert subscription.current_period_end is not None
    notify(
        subscription,
        "reminder",
        at=now,
        extra={
            "renews_at": subscription.current_period_end.isoformat(),
            "renewal_period_index": upcoming,
            "amount_minor": subscription.amount_minor,
            "currency": subscription.currency,
        },
    )
    return 1
