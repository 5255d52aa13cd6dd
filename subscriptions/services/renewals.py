"""The renewal engine of platform-managed carriers: each due period charged once, by a one-click payment.

`run_renewals` finds the subscriptions whose `next_charge_at` has come (the partial index
`subscription_due_idx`), locks a batch with `FOR UPDATE SKIP LOCKED` (a second engine running at the same
time takes other rows, and re-checks a row another run changed), and for each one either ends it (a
cancellation at the period's end, a retry window run out) or opens the period's charge: a one-click payment
queued for the carrier's own queue through the outbox, and its `SubscriptionCharge` row, whose partial
unique index refuses a second live charge of the period. The payment's outcome comes back through
`services.charges`.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from payments.models import PaymentFlow
from payments.services.payments import open_payment
from subscriptions.models import PAYMENT_METADATA_KEY, Subscription, SubscriptionCharge, SubscriptionStatus
from subscriptions.services.charges import expire, grace_end, period_bounds
from subscriptions.services.notify import notify
from subscriptions.services.state_machine import BILLED_STATUSES, transition
from subscriptions.services.subscriptions import next_attempt_number, opt_in_text

logger = logging.getLogger(__name__)
ACTOR = "system"


# How long a renewal whose carrier or price point is switched off waits before it is looked at again.
PAUSED_RECHECK = timedelta(hours=1)


@dataclass
class RenewalRun:
    charged: int = 0
    cancelled: int = 0
    suspended: int = 0
    expired: int = 0
    skipped: int = 0
    paused: int = 0
    batches: int = 0


def due_subscriptions(now: datetime) -> QuerySet[Subscription]:
    return Subscription.objects.filter(next_charge_at__lte=now, status__in=BILLED_STATUSES).order_by("next_charge_at")


def run_renewals(*, now: datetime, batch_size: int | None = None) -> RenewalRun:
    """Charge, in batches of `batch_size`, every subscription due at `now`; returns what was done."""
    size = batch_size or settings.SUBSCRIPTION_RENEWAL_BATCH
    run = RenewalRun()
    while True:
        with transaction.atomic():
            batch = list(
                due_subscriptions(now)
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("app", "carrier", "plan", "offer__price_point", "offer__first_period_price_point")[
                    :size
                ]
            )
            for subscription in batch:
                renew(subscription, now=now, run=run)
        run.batches += 1
        if len(batch) < size:
            return run


def renew(subscription: Subscription, *, now: datetime, run: RenewalRun) -> None:
    """What a due, locked subscription needs now (inside the batch's transaction)."""
    index = subscription.period_index + 1
    start, end = period_bounds(subscription, index)
    if subscription.status == SubscriptionStatus.ACTIVE and subscription.cancel_at_period_end:
        subscription.next_charge_at = None
        subscription.cancelled_at = now
        transition(
            subscription,
            SubscriptionStatus.CANCELLED,
            actor=ACTOR,
            reason=f"cancelled at the period's end: {subscription.cancel_reason}",
            at=now,
            update_fields=("next_charge_at", "cancelled_at"),
        )
        notify(subscription, "cancelled", at=now)
        run.cancelled += 1
        return
    if subscription.status != SubscriptionStatus.ACTIVE and now >= start + timedelta(
        days=settings.SUBSCRIPTION_RETRY_DAYS
    ):
        expire(subscription, actor=ACTOR, reason="renewal not charged within the retry window", at=now)
        run.expired += 1
        return
    if subscription.status == SubscriptionStatus.PAST_DUE and now >= grace_end(start):
        transition(
            subscription, SubscriptionStatus.SUSPENDED, actor=ACTOR, reason="grace period over, renewal unpaid", at=now
        )
        notify(subscription, "suspended", at=now)
        run.suspended += 1
    if not (subscription.carrier.is_active and subscription.offer.price_point.is_active):
        # Billing through this carrier or at this price is switched off: nothing is charged, and the renewal
        # is looked at again later (within the retry window, after which it expires as unpaid).
        subscription.next_charge_at = now + PAUSED_RECHECK
        subscription.save(update_fields=["next_charge_at", "updated_at"])
        run.paused += 1
        return
    if _open_charge(subscription, index=index, start=start, end=end):
        run.charged += 1
    else:
        run.skipped += 1
    subscription.next_charge_at = None  # until the charge's outcome sets the next date
    subscription.save(update_fields=["next_charge_at", "updated_at"])


def _open_charge(subscription: Subscription, *, index: int, start: datetime, end: datetime) -> bool:
    """Create the period's renewal payment and its charge row; False when the period has a live charge."""
    offer = subscription.offer
    try:
        with transaction.atomic():
            payment = open_payment(
                app=subscription.app,
                user_ref=subscription.user_ref,
                msisdn=subscription.msisdn,
                carrier=subscription.carrier,
                price_point=offer.price_point,
                flow=PaymentFlow.ONE_CLICK,
                actor=ACTOR,
                metadata={PAYMENT_METADATA_KEY: str(subscription.public_id), "period": index},
                description=opt_in_text(
                    subscription.plan, first=offer.price_point, regular=offer.price_point, app=subscription.app
                ),
            )
            SubscriptionCharge.objects.create(
                subscription=subscription,
                kind=SubscriptionCharge.Kind.RENEWAL,
                period_index=index,
                period_start=start,
                period_end=end,
                attempt=next_attempt_number(subscription, index),
                payment=payment,
            )
    except IntegrityError:
        # A live (pending or succeeded) charge of this period exists: its outcome settles the subscription.
        logger.warning(
            "subscription %s: period %d already has a live charge; none opened",
            subscription.public_id,
            index,
            extra={"subscription_id": str(subscription.public_id), "period": index},
        )
        return False
    return True
