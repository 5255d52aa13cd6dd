"""Reminders before a renewal and receipts after one: webhooks to the app, each sent once per period.

Once is held by `SubscriptionNotice`'s unique constraint on (subscription, period, kind): the notice's row is
inserted in the transaction that queues its webhook, and a second insert (the engine run twice, two engines
at once) is refused, so nothing is queued twice. PlayPay sends no SMS itself: none of the carrier protocols it
speaks has an outbound SMS operation, so the app tells the player (docs/subscriptions.md).
"""

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


def record_notice(subscription: Subscription, *, kind: str, period_index: int) -> bool:
    """Insert the notice's row; False when it was sent already (the caller then sends nothing)."""
    try:
        with transaction.atomic():
            SubscriptionNotice.objects.create(subscription=subscription, period_index=period_index, kind=kind)
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


def due_reminders(now: datetime) -> QuerySet[Subscription]:
    """Active subscriptions to a reminded plan whose paid period ends within the notice, not cancelled at its
    end, and not reminded of the next period yet (the partial index `subscription_active_end_idx`)."""
    notice = timedelta(hours=settings.SUBSCRIPTION_REMINDER_HOURS)
    reminded = SubscriptionNotice.objects.filter(
        subscription=OuterRef("pk"), period_index=OuterRef("period_index") + 1, kind=SubscriptionNotice.Kind.REMINDER
    )
    return (
        Subscription.objects.filter(
            status=SubscriptionStatus.ACTIVE,
            current_period_end__gt=now,
            current_period_end__lte=now + notice,
            plan__period__in=REMINDED_PERIODS,
            cancel_at_period_end=False,
        )
        .filter(AGREED_PRICE_CHARGEABLE)  # a renewal paused (billing switched off) is not announced
        .exclude(Exists(reminded))
        .order_by("current_period_end")
    )


def send_reminders(*, now: datetime, batch_size: int | None = None) -> int:
    """Queue `subscription.reminder` for every subscription due one at `now`; returns how many were sent."""
    if settings.SUBSCRIPTION_REMINDER_HOURS <= 0:
        return 0
    size = batch_size or settings.SUBSCRIPTION_RENEWAL_BATCH
    sent = 0
    while True:
        with transaction.atomic():
            batch = list(
                due_reminders(now)
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("app", "plan")[:size]
            )
            for subscription in batch:
                sent += _remind(subscription, now=now)
        if len(batch) < size:
            return sent


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
