"""Carrier-managed renewals (the aggregator's protocol): the carrier holds the schedule, charges each period
itself and tells of it by signed callback; PlayPay charges nothing and records what it is told.

- `register_at_carrier`: once the opt-in's first period is paid, the subscription is handed to the carrier,
  its schedule counted from the same anchor; the carrier's id of it is kept (`carrier_reference`).
- `apply_event`: a verified event (a callback, recorded once by its id on payments' callback endpoint, or one
  the status query lists): a renewal becomes a `SubscriptionCharge` and its payment (opened and settled by
  payments' services, so a success posts its ledger entries as any payment's does), settled by
  `services.charges` like the platform's own renewals but never retried by PlayPay; a cancellation (the
  player's STOP) cancels the subscription. An old period's notice never moves it back, a renewal told after
  the cancellation is recorded and the subscription stays cancelled.
- `check_overdue`: a subscription whose period ended `SUBSCRIPTION_CARRIER_OVERDUE_MINUTES` ago without news
  (its `next_charge_at`) is asked about, and what the carrier lists is recorded as if told by callback.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from carriers.adapters import carrier_queue
from carriers.adapters.base import (
    CarrierAdapter,
    CarrierResult,
    CarrierSubscription,
    Notification,
    Outcome,
    SubscriptionCreateRequest,
    SubscriptionEvent,
    SubscriptionEventKind,
)
from carriers.errors import ErrorCode
from carriers.gateway import CarrierBusy, call_carrier
from carriers.models import Carrier
from payments.models import CarrierNotification
from payments.services import outbox
from payments.services.carrier_flow import carrier_actor
from payments.services.payments import open_carrier_charge, settle_carrier_charge
from subscriptions.models import PAYMENT_METADATA_KEY, Subscription, SubscriptionStatus
from subscriptions.services.charges import overdue_interval, period_bounds
from subscriptions.services.notify import notify
from subscriptions.services.state_machine import BILLED_STATUSES, FINAL_STATUSES, transition
from subscriptions.services.subscriptions import (
    CANCEL_AT_CARRIER_TASK,
    cancel_locked,
    create_renewal_charge,
    end_cancelled_period,
    load_subscription,
    renewal_text,
    tell_carrier_of_cancellation,
)

logger = logging.getLogger(__name__)


def _call(
    subscription: Subscription, operation: Callable[[CarrierAdapter], CarrierResult], *, name: str, request: Any = None
) -> CarrierResult:
    """The carrier's answer through the gateway (its timeouts, breaker and rate limit); pending when the gateway
    puts the call off, for the caller's later try."""
    try:
        return call_carrier(subscription.carrier, operation, name=name, request=request)
    except CarrierBusy:
        return CarrierResult.pending("BUSY", "the carrier is not called now")


def register_at_carrier(*, subscription_id: int) -> bool:
    """Create the subscription at its carrier, which takes its renewals from the second period on; whether it
    was registered now. Safe to run twice: the carrier answers a repeat of our reference with the same id, and
    one already registered (or ended) is left alone. Not registered (the carrier busy or refusing): the overdue
    check tries again."""
    subscription = load_subscription(subscription_id)
    if subscription.carrier_reference or subscription.status in FINAL_STATUSES or subscription.anchor_at is None:
        return False
    request = SubscriptionCreateRequest(
        subscription_id=str(subscription.public_id),
        msisdn=subscription.msisdn,
        amount_minor=subscription.amount_minor,
        currency=subscription.currency,
        period=subscription.plan.period,
        anchor=subscription.anchor_at.isoformat(),
        description=renewal_text(subscription),
    )
    result = _call(
        subscription, lambda adapter: adapter.create_subscription(request), name="create_subscription", request=request
    )
    if result.outcome != Outcome.SUCCEEDED or not result.carrier_reference:
        logger.warning(
            "subscription %s: not registered at the carrier (%s %s); the overdue check tries again",
            subscription.public_id,
            result.raw_code,
            result.raw_message,
            extra={"subscription_id": str(subscription.public_id), "carrier": subscription.carrier.slug},
        )
        return False
    with transaction.atomic():
        registered = Subscription.objects.filter(pk=subscription.pk, carrier_reference="").update(
            carrier_reference=result.carrier_reference[:64], updated_at=timezone.now()
        )
        locked = Subscription.objects.select_for_update(of=("self",)).select_related("carrier").get(pk=subscription.pk)
        if registered and (locked.status in FINAL_STATUSES or locked.cancel_at_period_end):
            # Cancelled while it was being handed over (nothing was booked then: the carrier had no id for it).
            tell_carrier_of_cancellation(locked)
    return bool(registered)


# A cancellation its carrier has not confirmed (unreachable, busy, an error) is told again after each of these
# waits (seconds), from the periodic overdue check; after the last, an error is logged for staff to cancel it at
# the carrier by hand. About 20 hours in all.
CANCEL_RETRY_WAITS = (60, 300, 1800, 7200, 21600, 43200)


def cancel_at_carrier(*, subscription_id: int, now: datetime | None = None) -> bool:
    """Tell the carrier to charge no more periods of a subscription cancelled in PlayPay (by the app or staff,
    now or at its period's end, or ended by a decline); whether the carrier confirmed. Only when it is due
    (`tell_carrier_of_cancellation` booked it, or the last try failed): the next try is booked before the call,
    so a worker lost mid-call is covered and two callers never both call. Safe to run twice: the carrier
    confirms a repeat the same."""
    now = now or timezone.now()
    subscription = load_subscription(subscription_id)
    due_at, attempts = subscription.carrier_cancel_due_at, subscription.carrier_cancel_attempts
    if due_at is None or due_at > now:
        return False
    if not subscription.carrier_reference:
        # Never handed over: the carrier charges nothing (registration tells it of a cancellation first).
        Subscription.objects.filter(pk=subscription.pk, carrier_cancel_due_at=due_at).update(carrier_cancel_due_at=None)
        return False
    wait = CANCEL_RETRY_WAITS[attempts] if attempts < len(CANCEL_RETRY_WAITS) else None
    claimed = Subscription.objects.filter(
        pk=subscription.pk, carrier_cancel_due_at=due_at, carrier_cancel_attempts=attempts
    ).update(
        carrier_cancel_attempts=attempts + 1,
        carrier_cancel_due_at=None if wait is None else now + timedelta(seconds=wait),
        updated_at=timezone.now(),
    )
    if not claimed:
        return False
    reference = subscription.carrier_reference
    result = _call(subscription, lambda adapter: adapter.cancel_subscription(reference), name="cancel_subscription")
    log = {"subscription_id": str(subscription.public_id), "carrier": subscription.carrier.slug}
    if result.outcome == Outcome.SUCCEEDED:
        # Confirmed: no try left booked, and no count (a count with nothing booked means the tries ran out).
        Subscription.objects.filter(pk=subscription.pk, carrier_cancel_attempts=attempts + 1).update(
            carrier_cancel_due_at=None, carrier_cancel_attempts=0
        )
        return True
    if wait is None:
        logger.error(
            "subscription %s: the carrier did not confirm its cancellation after %d tries (%s %s); cancel it at the "
            "carrier by hand",
            subscription.public_id,
            attempts + 1,
            result.raw_code,
            result.raw_message,
            extra=log,
        )
    else:
        logger.warning(
            "subscription %s: the carrier did not confirm its cancellation (%s %s); told again in %d s",
            subscription.public_id,
            result.raw_code,
            result.raw_message,
            wait,
            extra=log,
        )
    return False


def cancellations_due(now: datetime) -> QuerySet[Subscription]:
    return Subscription.objects.filter(carrier_cancel_due_at__lte=now).order_by("carrier_cancel_due_at")


def resend_cancellations(*, now: datetime, limit: int | None = None) -> int:
    """Queue again, each on its carrier's queue, the cancellations the carriers have not confirmed whose next try
    is due; how many were queued. A try queued twice (by two runs) calls once: each claims its try first."""
    due = cancellations_due(now).select_related("carrier")[: limit or settings.SUBSCRIPTION_RENEWAL_BATCH]
    queued = 0
    with transaction.atomic():
        for subscription in due:
            outbox.enqueue(
                CANCEL_AT_CARRIER_TASK, queue=carrier_queue(subscription.carrier), subscription_id=subscription.pk
            )
            queued += 1
    return queued


def handle_notification(carrier: Carrier, notification: Notification) -> str:
    """payments' callback endpoint hands over a subscription event here, its id recorded once already."""
    if notification.subscription_event is None:
        return "ignored: no subscription event"
    return apply_event(carrier, notification.subscription_event)


def apply_event(carrier: Carrier, event: SubscriptionEvent) -> str:
    """Record one verified event of a carrier-managed subscription; returns what was done, for the record."""
    subscription_id = (
        Subscription.objects.filter(carrier=carrier, carrier_reference=event.subscription_reference)
        .values_list("pk", flat=True)
        .first()
    )
    if subscription_id is None:
        return "ignored: unknown subscription"
    at = event.occurred_at or timezone.now()
    with transaction.atomic():
        # The subscription first: the payment opened here is new (no one else can hold it), and settling it
        # locks the payment, then this subscription again, as every payment's settlement does.
        locked = Subscription.objects.select_for_update(of=("self",)).select_related(
            "app", "carrier", "plan", "price_point"
        )
        subscription = locked.get(pk=subscription_id)
        if event.kind == SubscriptionEventKind.CANCELLED:
            return _cancelled(subscription, event, at=at)
        return _charged(subscription, event)


def _cancelled(subscription: Subscription, event: SubscriptionEvent, *, at: datetime) -> str:
    # The carrier says it is cancelled there: a cancellation PlayPay was still telling it of is confirmed.
    Subscription.objects.filter(pk=subscription.pk, carrier_cancel_due_at__isnull=False).update(
        carrier_cancel_due_at=None, carrier_cancel_attempts=0
    )
    if subscription.status in FINAL_STATUSES:
        return f"ignored: already {subscription.status}"
    if subscription.status == SubscriptionStatus.ACTIVE and subscription.cancel_at_period_end:
        return "noted: cancelled at the carrier as asked; it ends with its period"
    reason = f"{event.raw_code or 'cancelled'} at the carrier"
    cancel_locked(subscription, at_period_end=False, reason=reason, actor=carrier_actor(subscription.carrier), now=at)
    return f"cancelled ({reason})"


def _charged(subscription: Subscription, event: SubscriptionEvent) -> str:
    index = event.period_index
    if index is None or index < 1 or subscription.anchor_at is None:
        return "ignored: no period of this subscription"
    agreed = (subscription.amount_minor, subscription.currency)
    if event.amount_minor is not None and (event.amount_minor, event.currency or subscription.currency) != agreed:
        logger.error(
            "subscription %s: the carrier told of period %d at %s %s, not the agreed price; not recorded",
            subscription.public_id,
            index,
            event.amount_minor,
            event.currency,
            extra={"subscription_id": str(subscription.public_id), "period": index},
        )
        return "ignored: not the agreed price"
    start, end = period_bounds(subscription, index)
    try:
        with transaction.atomic():
            payment = open_carrier_charge(
                app=subscription.app,
                user_ref=subscription.user_ref,
                msisdn=subscription.msisdn,
                carrier=subscription.carrier,
                price_point=subscription.price_point,
                carrier_reference=(event.charge_reference or event.event_id)[:128],
                metadata={PAYMENT_METADATA_KEY: str(subscription.public_id), "period": index},
                description=renewal_text(subscription),
            )
            charge = create_renewal_charge(subscription, index=index, start=start, end=end, payment=payment)
    except IntegrityError:
        return f"ignored: period {index} is already recorded as paid"
    if event.kind == SubscriptionEventKind.RENEWED:
        result = CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=event.charge_reference)
    else:
        result = CarrierResult.failed(event.error_code or ErrorCode.REJECTED, event.raw_code, event.raw_message)
    settle_carrier_charge(payment_id=payment.pk, result=result)
    charge.refresh_from_db(fields=["outcome"])
    subscription.refresh_from_db(fields=["status", "period_index"])
    return f"period {index} {charge.outcome}; subscription {subscription.status}"


def overdue_subscriptions(now: datetime) -> QuerySet[Subscription]:
    return Subscription.objects.filter(
        carrier_managed=True, next_charge_at__lte=now, status__in=BILLED_STATUSES
    ).order_by("next_charge_at")


def check_overdue(*, now: datetime, limit: int | None = None) -> int:
    """Ask the carrier about each carrier-managed subscription whose news is overdue; how many were asked."""
    ids = list(overdue_subscriptions(now).values_list("pk", flat=True)[: limit or settings.SUBSCRIPTION_RENEWAL_BATCH])
    return sum(check_subscription(subscription_id=pk, now=now) for pk in ids)


def check_subscription(*, subscription_id: int, now: datetime) -> bool:
    """Ask the carrier about one overdue subscription and record what it lists; whether it was asked (another
    run may have taken it). Asked again an overdue interval later unless what it told moved it on."""
    claimed = Subscription.objects.filter(
        pk=subscription_id, carrier_managed=True, next_charge_at__lte=now, status__in=BILLED_STATUSES
    ).update(next_charge_at=now + overdue_interval(), updated_at=timezone.now())
    if not claimed:
        return False
    if _end_cancelled_period(subscription_id, now=now):
        return True
    subscription = load_subscription(subscription_id)
    if not subscription.carrier_reference:
        register_at_carrier(subscription_id=subscription_id)
        return True
    reference = subscription.carrier_reference
    answers: list[CarrierSubscription] = []

    def query(adapter: CarrierAdapter) -> CarrierResult:
        answer = adapter.query_subscription(reference)
        answers.append(answer)
        return answer.result

    try:
        call_carrier(subscription.carrier, query, name="query_subscription", request=None)
    except CarrierBusy:
        return True
    if not answers or answers[0].result.outcome != Outcome.SUCCEEDED:
        logger.warning(
            "subscription %s: the carrier did not answer the status query; asked again later",
            subscription.public_id,
            extra={"subscription_id": str(subscription.public_id)},
        )
        return True
    for event in answers[0].events:
        record_listed_event(subscription.carrier, event)
    _suspend_after_grace(subscription_id, now=now)
    return True


def record_listed_event(carrier: Carrier, event: SubscriptionEvent) -> str:
    """An event the status query listed, recorded once by its id, as its callback would have been."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = CarrierNotification.objects.create(
                    carrier=carrier,
                    notification_id=event.event_id[:200],
                    kind="subscription",
                    outcome=Outcome.FAILED if event.kind == SubscriptionEventKind.RENEWAL_FAILED else Outcome.SUCCEEDED,
                    carrier_reference=event.subscription_reference[:128],
                    raw_code=(event.raw_code or event.kind)[:100],
                )
        except IntegrityError:
            return "duplicate: already applied"
        record.result = f"from the status query: {apply_event(carrier, event)}"[:200]
        record.save(update_fields=["result"])
    return record.result


def _end_cancelled_period(subscription_id: int, *, now: datetime) -> bool:
    """A subscription cancelled at its period's end, that end come: cancelled (the carrier was told already)."""
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(of=("self",)).select_related("plan").get(pk=subscription_id)
        )
        ended = subscription.current_period_end is not None and subscription.current_period_end <= now
        if not (subscription.status == SubscriptionStatus.ACTIVE and subscription.cancel_at_period_end and ended):
            return False
        end_cancelled_period(subscription, actor="system", now=now)
    return True


def _suspend_after_grace(subscription_id: int, *, now: datetime) -> None:
    """A declined subscription whose grace has run out without a renewal is suspended, as the platform's are;
    the carrier goes on retrying (or cancels it)."""
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(of=("self",)).select_related("plan").get(pk=subscription_id)
        )
        ended = subscription.entitled_until is not None and subscription.entitled_until <= now
        if subscription.status == SubscriptionStatus.PAST_DUE and ended:
            transition(
                subscription,
                SubscriptionStatus.SUSPENDED,
                actor="system",
                reason="grace period over, the carrier told of no renewal",
                at=now,
            )
            notify(subscription, "suspended", at=now)
