"""The outcome of a subscription's charge, applied to the subscription in the payment's own transaction.

A charge's payment publishes its status changes (`payments.events`); when it becomes final, its charge row
and its subscription are settled here: the opt-in activates the subscription (or lets it expire), a
renewal advances its period (or starts the retry schedule: past_due, then suspended, then expired).
Lock order: the payment (held by the payment's transition), then the subscription; never the reverse.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from carriers.adapters import carrier_queue
from carriers.errors import ErrorCode
from payments.errors import IllegalTransition, RefundExceedsCaptured
from payments.events import PaymentStatusChanged
from payments.models import PaymentStatus, Refund
from payments.services import outbox
from payments.services.carrier_flow import load_payment
from payments.services.refunds import refunds_of, request_refund
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionStatus
from subscriptions.periods import bounds
from subscriptions.services.notices import send_receipt
from subscriptions.services.notify import charged_price, notify
from subscriptions.services.state_machine import FINAL_STATUSES, end, transition
from subscriptions.services.subscriptions import tell_carrier_of_cancellation

SETTLED_BY = {
    PaymentStatus.SUCCEEDED: SubscriptionCharge.Outcome.SUCCEEDED,
    PaymentStatus.FAILED: SubscriptionCharge.Outcome.FAILED,
    PaymentStatus.EXPIRED: SubscriptionCharge.Outcome.FAILED,
}
logger = logging.getLogger(__name__)

# Declines that a later day may cure; any other failure of a renewal ends the subscription.
RETRYABLE = frozenset({ErrorCode.INSUFFICIENT_FUNDS, ErrorCode.SPENDING_LIMIT})
# Declines that say the number can no longer be charged on this carrier: the subscription ends at once, whatever
# the attempt (retrying would only repeat them), with the reason staff and the app read.
ENDING_REASONS: dict[str, str] = {
    ErrorCode.UNKNOWN_SUBSCRIBER: "the carrier no longer knows the number (ported out or disconnected)",
    ErrorCode.USER_BARRED: "the number is barred from carrier billing",
}


def on_payment_status_changed(event: PaymentStatusChanged) -> None:
    outcome = SETTLED_BY.get(event.to_status)  # type: ignore[call-overload]
    if outcome is None:
        return
    payment = event.payment
    charge_id = (
        SubscriptionCharge.objects.filter(
            payment_id=payment.pk, payment_created_at=payment.created_at, outcome=SubscriptionCharge.Outcome.PENDING
        )
        .values_list("pk", flat=True)
        .first()
    )
    if charge_id is None:
        return
    failure_code = "" if outcome == SubscriptionCharge.Outcome.SUCCEEDED else payment.failure_code or event.to_status
    settle_charge(charge_id=charge_id, outcome=outcome, failure_code=failure_code, change=event)


def settle_charge(*, charge_id: int, outcome: str, failure_code: str, change: PaymentStatusChanged) -> None:
    """Record the final outcome of a charge, told by its payment's status `change`, and apply it to its
    subscription (inside the payment's transaction)."""
    payment, actor, at = change.payment, change.actor, change.occurred_at
    with transaction.atomic():
        subscription_id = SubscriptionCharge.objects.values_list("subscription_id", flat=True).get(pk=charge_id)
        subscription = (
            Subscription.objects.select_for_update(of=("self",)).select_related("plan").get(pk=subscription_id)
        )
        charge = SubscriptionCharge.objects.select_for_update().get(pk=charge_id)
        if charge.outcome != SubscriptionCharge.Outcome.PENDING:
            return
        charge.payment = payment  # in hand: no read of the payments' months
        charge.outcome, charge.failure_code, charge.settled_at = outcome, failure_code[:64], at
        succeeded = outcome == SubscriptionCharge.Outcome.SUCCEEDED
        if succeeded and charge.kind == SubscriptionCharge.Kind.OPT_IN:
            _activate(subscription, charge, actor=actor, at=at)
        elif succeeded:
            _renewed(subscription, charge, actor=actor, at=at)
        elif charge.kind == SubscriptionCharge.Kind.OPT_IN:
            charge.save()
            if subscription.status == SubscriptionStatus.PENDING_OPT_IN:
                transition(
                    subscription,
                    SubscriptionStatus.EXPIRED,
                    actor=actor,
                    reason=f"opt-in not completed: {failure_code}",
                    at=at,
                    failure_code=failure_code,
                )
                notify(subscription, "expired", at=at, charge=charge)
        else:
            renewal_failed(subscription, charge, actor=actor, at=at)


def _activate(subscription: Subscription, charge: SubscriptionCharge, *, actor: str, at: datetime) -> None:
    start, end = bounds(at, subscription.plan.period, 0)
    charge.period_start, charge.period_end = start, end
    charge.save()
    if subscription.status != SubscriptionStatus.PENDING_OPT_IN:
        refund_unwanted(subscription, charge)  # cancelled meanwhile
        return
    subscription.anchor_at = start
    _enter_period(subscription, charge)
    transition(
        subscription,
        SubscriptionStatus.ACTIVE,
        actor=actor,
        reason="opt-in confirmed, first period charged",
        at=at,
        update_fields=(*PERIOD_FIELDS, "anchor_at"),
    )
    notify(subscription, "activated", at=at, charge=charge)
    if subscription.carrier_managed:
        # The carrier takes the renewals from here (`services.carrier_managed.register_at_carrier`).
        outbox.enqueue(REGISTER_TASK, queue=carrier_queue(subscription.carrier), subscription_id=subscription.pk)


REGISTER_TASK = "subscriptions.tasks.register_at_carrier"


def overdue_interval() -> timedelta:
    """How long after a carrier-managed period's end PlayPay waits for its news before asking the carrier."""
    return timedelta(minutes=settings.SUBSCRIPTION_CARRIER_OVERDUE_MINUTES)


PERIOD_FIELDS = ("period_index", "current_period_start", "current_period_end", "entitled_until", "next_charge_at")


def _enter_period(subscription: Subscription, charge: SubscriptionCharge) -> None:
    subscription.period_index = charge.period_index
    subscription.current_period_start, subscription.current_period_end = charge.period_start, charge.period_end
    subscription.entitled_until = subscription.next_charge_at = charge.period_end
    if subscription.carrier_managed and charge.period_end is not None:
        # The carrier charges the next period; PlayPay only asks about it if it has not heard by then.
        subscription.next_charge_at = charge.period_end + overdue_interval()


def _renewed(subscription: Subscription, charge: SubscriptionCharge, *, actor: str, at: datetime) -> None:
    charge.save()
    if subscription.status in FINAL_STATUSES:
        # A carrier-managed renewal told after the cancellation was charged before it, by the carrier's own
        # schedule: it is recorded as it is and the subscription stays as it is.
        if not subscription.carrier_managed:
            refund_unwanted(subscription, charge)
        return
    if charge.period_index <= subscription.period_index:
        return
    _enter_period(subscription, charge)
    if subscription.status == SubscriptionStatus.ACTIVE:
        subscription.save(update_fields=[*PERIOD_FIELDS, "updated_at"])
    else:
        reason = f"period {charge.period_index} charged on attempt {charge.attempt}"
        transition(
            subscription, SubscriptionStatus.ACTIVE, actor=actor, reason=reason, at=at, update_fields=PERIOD_FIELDS
        )
    notify(subscription, "renewed", at=at, charge=charge, extra=charged_price(charge))
    send_receipt(subscription, charge, at=at)


def refund_unwanted(subscription: Subscription, charge: SubscriptionCharge) -> None:
    """A charge that succeeded after its subscription ended (cancelled while the charge was at the carrier):
    it grants nothing, and its payment is refunded in full, by the refund service, after this commit."""
    if subscription.status not in FINAL_STATUSES:
        return
    logger.warning(
        "subscription %s: period %d charged after the subscription was %s; the payment is refunded",
        subscription.public_id,
        charge.period_index,
        subscription.status,
        extra={"subscription_id": str(subscription.public_id), "period": charge.period_index},
    )
    outbox.enqueue(REFUND_TASK, queue=settings.CELERY_TASK_DEFAULT_QUEUE, charge_id=charge.pk)


REFUND_TASK = "subscriptions.tasks.refund_unwanted_charge"
UNWANTED_REASON = "subscription ended before this charge succeeded"


# The automatic refund of an unwanted charge looks again after each of these waits (seconds, one per check): it
# asks for the refund again when the last one failed (UNWANTED_REFUND_ATTEMPTS at most), waits while one is at
# the carrier, and stops when the payment is refunded. After the last check, or the last attempt failed, it
# logs an error for staff to refund by hand. About 20 hours in all.
UNWANTED_REFUND_CHECKS = (60, 300, 1800, 7200, 21600, 43200)
UNWANTED_REFUND_ATTEMPTS = 3


def refund_unwanted_charge(*, charge_id: int, check: int = 0) -> None:
    """Refund what is left of the payment of a charge that succeeded after its subscription ended
    (`refund_unwanted`), and look again later (`UNWANTED_REFUND_CHECKS`) until it is refunded: a refund the
    carrier refused is asked for again, `UNWANTED_REFUND_ATTEMPTS` times at most. Safe to run twice: the refund
    service, under the payment's lock, refuses a refund when nothing is left (a refund under way or made holds
    its amount), and gives back what a failed one held."""
    charge = SubscriptionCharge.objects.select_related("subscription").get(pk=charge_id)
    if charge.outcome != SubscriptionCharge.Outcome.SUCCEEDED or charge.payment_id is None:
        return
    if charge.subscription.status not in FINAL_STATUSES:
        return
    payment = load_payment(charge.payment_id)
    log = {"subscription_id": str(charge.subscription.public_id), "period": charge.period_index}
    refunds = list(refunds_of(payment).values_list("reason", "status"))
    automatic = [status for reason, status in refunds if reason == UNWANTED_REASON]
    # While any refund is at the carrier (this one's, or one by staff, which holds the amount), the next check
    # sees how it ended.
    if all(status != Refund.Status.PENDING for _, status in refunds):
        if payment.refunded_minor >= payment.amount_minor:
            return  # refunded
        if automatic.count(Refund.Status.FAILED) >= UNWANTED_REFUND_ATTEMPTS:
            logger.error(
                "subscription charge %s: the automatic refund failed %d times; refund the payment by hand",
                charge_id,
                UNWANTED_REFUND_ATTEMPTS,
                extra=log,
            )
            return
        try:
            request_refund(payment=payment, amount_minor=None, reason=UNWANTED_REASON, actor="system")
        except IllegalTransition as refused:
            # No longer refundable (being reversed, or reversed): nothing more to do here.
            logger.warning("subscription charge %s: automatic refund not made: %s", charge_id, refused, extra=log)
            return
        except RefundExceedsCaptured as held:
            # Another refund (by staff, say) holds the amount: the next check sees whether it went through, and
            # asks again if it failed.
            logger.warning("subscription charge %s: automatic refund put off: %s", charge_id, held, extra=log)
    if check >= len(UNWANTED_REFUND_CHECKS):
        logger.error(
            "subscription charge %s: the automatic refund is not confirmed after %d checks; see the payment's refunds",
            charge_id,
            check,
            extra=log,
        )
        return
    with transaction.atomic():
        outbox.enqueue(
            REFUND_TASK,
            queue=settings.CELERY_TASK_DEFAULT_QUEUE,
            countdown=UNWANTED_REFUND_CHECKS[check],
            charge_id=charge_id,
            check=check + 1,
        )


def renewal_failed(subscription: Subscription, charge: SubscriptionCharge, *, actor: str, at: datetime) -> None:
    """A renewal attempt failed: retry on the next day of the period's schedule, or end the subscription."""
    charge.save()
    if subscription.status in FINAL_STATUSES:
        return
    if subscription.carrier_managed:
        _carrier_renewal_failed(subscription, charge, actor=actor, at=at)
        return
    notify(subscription, "renewal_failed", at=at, charge=charge, extra=charged_price(charge))
    assert charge.period_start is not None
    code = charge.failure_code
    # A decline of a fallback-price attempt that is not about the number (the carrier refused that price, say) is
    # retried at the agreed price, as a decline for insufficient funds would have been: the downgrade never
    # costs the player the subscription.
    retryable = code in RETRYABLE or (charge.fallback_price and code not in ENDING_REASONS)
    if not retryable or charge.attempt >= settings.SUBSCRIPTION_RETRY_DAYS:
        why = ENDING_REASONS.get(code, "not retried") if not retryable else f"{charge.attempt} attempts"
        expire(subscription, actor=actor, reason=f"renewal failed: {code} ({why})", at=at, charge=charge)
        return
    # Retry k of a period is due k days after its start, never earlier than now.
    subscription.next_charge_at = max(charge.period_start + timedelta(days=charge.attempt), at)
    if subscription.status == SubscriptionStatus.ACTIVE:
        subscription.entitled_until = grace_end(charge.period_start)
        transition(
            subscription,
            SubscriptionStatus.PAST_DUE,
            actor=actor,
            reason=f"renewal failed: {charge.failure_code}; retried daily",
            at=at,
            update_fields=("next_charge_at", "entitled_until"),
        )
        notify(subscription, "past_due", at=at, charge=charge)
    else:
        subscription.save(update_fields=["next_charge_at", "updated_at"])


def _carrier_renewal_failed(
    subscription: Subscription, charge: SubscriptionCharge, *, actor: str, at: datetime
) -> None:
    """A carrier told of a declined renewal: past_due with the same grace as the platform's, but the carrier
    retries (or cancels), never PlayPay; a decline that says the number cannot be charged any more (ported out,
    barred) ends it, and the carrier is told to stop. A decline of a period already paid for changes nothing."""
    if charge.period_index <= subscription.period_index:
        return
    notify(subscription, "renewal_failed", at=at, charge=charge)
    code = charge.failure_code
    if code in ENDING_REASONS:
        # The number cannot be charged on this carrier any more (ported out, barred): it ends here as on the
        # platform's renewals, and the carrier is told to charge (retry) nothing more of it.
        expire(
            subscription, actor=actor, reason=f"renewal failed: {code} ({ENDING_REASONS[code]})", at=at, charge=charge
        )
        tell_carrier_of_cancellation(subscription)
        return
    if subscription.status != SubscriptionStatus.ACTIVE:
        return
    assert charge.period_start is not None
    subscription.entitled_until = grace_end(charge.period_start)
    transition(
        subscription,
        SubscriptionStatus.PAST_DUE,
        actor=actor,
        reason=f"renewal declined at the carrier: {charge.failure_code}; the carrier retries",
        at=at,
        update_fields=("entitled_until",),
    )
    notify(subscription, "past_due", at=at, charge=charge)


def grace_end(period_start: datetime) -> datetime:
    return period_start + timedelta(days=settings.SUBSCRIPTION_GRACE_DAYS)


def expire(
    subscription: Subscription, *, actor: str, reason: str, at: datetime, charge: SubscriptionCharge | None = None
) -> None:
    """End the subscription as expired; `charge`, the declined renewal that ended it, is named in the webhook
    (its period, payment and failure code)."""
    end(subscription, SubscriptionStatus.EXPIRED, actor=actor, reason=reason, at=at)
    notify(subscription, "expired", at=at, charge=charge)


def period_bounds(subscription: Subscription, index: int) -> tuple[datetime, datetime]:
    assert subscription.anchor_at is not None
    return bounds(subscription.anchor_at, subscription.plan.period, index)
