"""Refunds and reversals: money back to the player, atomically, never more than was captured.

Both lock the payment row (`select_for_update`) before checking what is left to
refund, and reserve the amount in `Payment.refunded_minor`, which the database keeps
at or below the captured amount; a failed refund releases its reservation. The
carrier is called on its queue after the commit; where the carrier cannot refund,
the platform pays the player back itself and the refund succeeds at once.
"""

import dataclasses
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from carriers.adapters import adapter_class, carrier_queue
from carriers.adapters.base import CarrierResult, ChargeRequest, Notification, Outcome, RefundRequest
from carriers.gateway import CarrierBusy, call_carrier
from payments.errors import IllegalTransition, RefundExceedsCaptured, ReversalNotAllowed
from payments.models import MoneyOperation, Payment, PaymentStatus, Refund, Reversal
from payments.services import ledger, outbox, outcomes
from payments.services.carrier_flow import asked_at, charge_request, dispatch, is_uuid, load_payment, locked_payment
from payments.services.idempotency import IdempotencyKey, claim_key
from payments.services.state_machine import transition

REFUNDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


def carrier_refunds(payment: Payment) -> bool:
    return payment.carrier.supports_refund and adapter_class(payment.carrier.protocol).capabilities.refund


def refund_refusal(payment: Payment) -> str | None:
    """Why `payment` cannot be refunded now (the amount aside), or None: the API, the admin and its preview."""
    if payment.status not in REFUNDABLE:
        return f"Only a succeeded payment can be refunded; this one is {payment.status!r}."
    if Reversal.objects.filter(payment=payment).exclude(status=Reversal.Status.FAILED).exists():
        return "This payment is being reversed."
    return None


def reversal_refusal(payment: Payment) -> str | None:
    """Why `payment` cannot be reversed now, or None."""
    if payment.status != PaymentStatus.SUCCEEDED or payment.refunded_minor:
        return f"Only a succeeded, unrefunded payment can be reversed; this one is {payment.status!r}."
    succeeded_at = (
        payment.history.filter(to_status=PaymentStatus.SUCCEEDED).values_list("created_at", flat=True).first()
    )
    if succeeded_at is None or timezone.now() - succeeded_at > timedelta(hours=settings.REVERSAL_WINDOW_HOURS):
        return f"Reversals are possible for {settings.REVERSAL_WINDOW_HOURS} hours after the charge."
    if Reversal.objects.filter(payment=payment).exists():
        return "This payment already has a reversal."
    return None


def request_refund(
    *,
    payment: Payment,
    amount_minor: int | None,
    reason: str,
    actor: str,
    idempotency: IdempotencyKey | None = None,
) -> Refund:
    """Refund `amount_minor` (default: all that is left) of a succeeded payment."""
    with transaction.atomic():
        locked = locked_payment(payment.pk)
        if (refusal := refund_refusal(locked)) is not None:
            raise IllegalTransition(refusal)
        refundable = locked.amount_minor - locked.refunded_minor
        amount = refundable if amount_minor is None else amount_minor
        if amount <= 0 or amount > refundable:
            raise RefundExceedsCaptured(
                f"At most {refundable} {locked.currency} (minor units) is left to refund.",
                refundable_minor=refundable,
            )
        refund = Refund(
            payment=locked,
            amount_minor=amount,
            currency=locked.currency,
            reason=reason[:255],
            requested_by=actor,
            via_carrier=carrier_refunds(locked),
        )
        if idempotency is not None:
            claim_key(idempotency, resource_id=refund.public_id)
        refund.save()
        locked.refunded_minor += amount
        locked.save(update_fields=["refunded_minor", "updated_at"])
        if refund.via_carrier:
            _queue_refund(refund, locked)
        else:
            _settle_refund(refund, locked, succeeded=True, actor=actor)
    return Refund.objects.get(pk=refund.pk)


def _queue_refund(refund: Refund, payment: Payment, *, countdown: int = 0) -> None:
    """Ask the carrier for the refund on its queue, after the current commit."""
    outbox.enqueue(
        "payments.tasks.execute_refund",
        queue=carrier_queue(payment.carrier),
        countdown=countdown,
        refund_id=refund.pk,
        public_id=str(refund.public_id),
        payment_public_id=str(payment.public_id),
    )


def _refund_request(refund: Refund, payment: Payment) -> RefundRequest:
    return RefundRequest(
        refund_id=str(refund.public_id),
        payment_id=str(payment.public_id),
        carrier_reference=payment.carrier_reference,
        msisdn=payment.msisdn,
        amount_minor=refund.amount_minor,
        currency=refund.currency,
        reason=refund.reason,
        state={
            **payment.carrier_data,
            "total": refund.amount_minor == payment.amount_minor,
            "refund_reference": refund.carrier_reference,
            **asked_at(refund.carrier_requested_at),
        },
    )


def execute_refund(*, refund_id: int) -> None:
    """Ask the carrier to refund (task on the carrier's queue); a second run while it is asked does nothing."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status != Refund.Status.PENDING or refund.carrier_requested_at:
            return
        claimed_at = refund.carrier_requested_at = timezone.now()  # claimed: a second run does not refund twice
        tracking = outcomes.mark_unknown(refund, now=claimed_at)
        refund.save(update_fields=["carrier_requested_at", *tracking])
    payment = load_payment(refund.payment_id)
    request = _refund_request(refund, payment)
    try:
        result = call_carrier(
            payment.carrier,
            lambda adapter: adapter.refund(request),
            name="refund",
            request=request,
            payment_id=request.payment_id,
        )
    except CarrierBusy as busy:
        _refund_not_sent(refund_id, retry_after=busy.retry_after, claimed_at=claimed_at)
        return
    record_refund_result(refund_id=refund_id, result=result, claimed_at=claimed_at)


def _refund_not_sent(refund_id: int, *, retry_after: float | None, claimed_at: datetime | None) -> None:
    """The carrier did not get the refund (unreachable, refused for now, or we had to wait): the resolver
    job sends it again once due, the wait growing with each try and never shorter than the carrier asked.

    Only the send claimed at `claimed_at` is released: a stale answer (a check run twice) never frees a
    newer send, which could then go out twice.
    """
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status != Refund.Status.PENDING or refund.carrier_requested_at != claimed_at:
            return
        refund.carrier_requested_at = None
        tracking = outcomes.mark_unknown(refund)
        fields = outcomes.check_again_after(refund, outcomes.next_wait(refund, retry_after))
        refund.save(update_fields=["carrier_requested_at", *tracking, *fields])


def resolve_refund(*, refund_id: int) -> None:
    """Settle a refund whose outcome is unknown (resolver job): ask the carrier, or send it again where
    it was not sent. A refund settled meanwhile (by its callback) is left alone."""
    refund = Refund.objects.get(pk=refund_id)
    if refund.status != Refund.Status.PENDING or refund.outcome_unknown_since is None:
        return
    if refund.carrier_requested_at is None:
        execute_refund(refund_id=refund_id)
        return
    claimed_at = refund.carrier_requested_at
    payment = load_payment(refund.payment_id)
    request = _refund_request(refund, payment)
    try:
        result = call_carrier(
            payment.carrier,
            lambda adapter: adapter.query_refund(request),
            name="query_refund",
            request=request,
            payment_id=request.payment_id,
        )
    except CarrierBusy as busy:
        _check_again_after(Refund, refund_id, busy.retry_after)
        return
    record_refund_result(refund_id=refund_id, result=result, claimed_at=claimed_at)
    if _never_received(result):
        execute_refund(refund_id=refund_id)  # certain the carrier never got it: send it now


def _never_received(result: CarrierResult) -> bool:
    """A status check that found no trace of the request, and no wait asked for: it can be sent at once."""
    return result.outcome == Outcome.FAILED and result.not_sent and not result.retry_after


def _check_again_after(model: type[Refund] | type[Reversal], pk: int, seconds: float) -> None:
    with transaction.atomic():
        row = model.objects.select_for_update().get(pk=pk)
        if row.status == MoneyOperation.Status.PENDING:
            row.save(update_fields=outcomes.check_again_after(row, timedelta(seconds=seconds)))


def record_refund_result(*, refund_id: int, result: CarrierResult, claimed_at: datetime | None = None) -> None:
    """Apply the carrier's answer (its reply, a callback or a status check) to a pending refund.

    An answer for a refund already settled changes nothing, so a callback racing the resolver, or a
    task run twice, settles it once. `claimed_at`: the send the answer is about (see _refund_not_sent).
    """
    if result.outcome == Outcome.FAILED and result.not_sent:
        _refund_not_sent(refund_id, retry_after=result.retry_after, claimed_at=claimed_at)
        return
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status != Refund.Status.PENDING:
            return
        if result.outcome == Outcome.PENDING:
            # Accepted, processing, or no usable answer: the callback or the resolver job settles it.
            fields = outcomes.mark_unknown(refund)
            if result.carrier_reference and result.carrier_reference != refund.carrier_reference:
                refund.carrier_reference = result.carrier_reference
                fields.append("carrier_reference")
            if fields:
                refund.save(update_fields=fields)
            return
        payment = locked_payment(refund.payment_id)
        refund.carrier_reference = result.carrier_reference or refund.carrier_reference
        if result.outcome == Outcome.FAILED:
            refund.failure_code, refund.failure_message = result.failure
        outcomes.clear_unknown(refund)
        _settle_refund(
            refund, payment, succeeded=result.outcome == Outcome.SUCCEEDED, actor=f"carrier:{payment.carrier.slug}"
        )


def _settle_refund(refund: Refund, payment: Payment, *, succeeded: bool, actor: str) -> None:
    """Finish a refund under the payment's lock: post it, or release its reservation."""
    refund.status = Refund.Status.SUCCEEDED if succeeded else Refund.Status.FAILED
    refund.completed_at = timezone.now()
    refund.save()
    if not succeeded:
        payment.refunded_minor -= refund.amount_minor
        payment.save(update_fields=["refunded_minor", "updated_at"])
        return
    settled_before = sum(
        Refund.objects.filter(payment=payment, status=Refund.Status.SUCCEEDED)
        .exclude(pk=refund.pk)
        .values_list("amount_minor", flat=True)
    )
    ledger.post_refund(refund, refunded_before=settled_before)
    fully = settled_before + refund.amount_minor == payment.amount_minor
    transition(
        payment,
        PaymentStatus.REFUNDED if fully else PaymentStatus.PARTIALLY_REFUNDED,
        actor=actor,
        reason=f"refund of {refund.amount_minor} {refund.currency}: {refund.reason}",
    )


def request_reversal(*, payment: Payment, reason: str, actor: str) -> Reversal:
    """Reverse a whole charge as a technical error: only unrefunded, within REVERSAL_WINDOW_HOURS."""
    with transaction.atomic():
        locked = locked_payment(payment.pk)
        if (refusal := reversal_refusal(locked)) is not None:
            raise ReversalNotAllowed(refusal)
        capabilities = adapter_class(locked.carrier.protocol).capabilities
        reversal = Reversal.objects.create(
            payment=locked,
            reason=reason[:255],
            requested_by=actor,
            via_carrier=locked.carrier.supports_reversal and capabilities.reversal,
        )
        # A pending reversal blocks refunds (request_refund checks it under the same row lock).
        if reversal.via_carrier:
            dispatch(locked, "execute_reversal")
        else:
            _settle_reversal(reversal, locked, succeeded=True, actor=actor)
    return Reversal.objects.get(pk=reversal.pk)


def execute_reversal(*, payment_id: int) -> None:
    """Ask the carrier to reverse (task on the carrier's queue); a second run while it is asked does nothing."""
    with transaction.atomic():
        reversal = Reversal.objects.select_for_update().filter(payment_id=payment_id).first()
        if reversal is None or reversal.status != Reversal.Status.PENDING or reversal.carrier_requested_at:
            return
        claimed_at = reversal.carrier_requested_at = timezone.now()
        tracking = outcomes.mark_unknown(reversal, now=claimed_at)
        reversal.save(update_fields=["carrier_requested_at", *tracking])
    payment = load_payment(payment_id)
    request = _reversal_request(payment, reversal)
    try:
        result = call_carrier(
            payment.carrier, lambda adapter: adapter.reverse(request), name="reverse", request=request
        )
    except CarrierBusy as busy:
        _reversal_not_sent(reversal.pk, retry_after=busy.retry_after, claimed_at=claimed_at)
        return
    record_reversal_result(reversal_id=reversal.pk, result=result, claimed_at=claimed_at)


def _reversal_request(payment: Payment, reversal: Reversal) -> ChargeRequest:
    request = charge_request(payment)
    return dataclasses.replace(
        request,
        description=reversal.reason,
        state={**request.state, **asked_at(reversal.carrier_requested_at)},
    )


def _reversal_not_sent(reversal_id: int, *, retry_after: float | None, claimed_at: datetime | None) -> None:
    """The carrier did not take the reversal (unreachable, refused for now): sent again on the resolver's
    schedule, never before the carrier asked, instead of waiting for someone to notice. Only the send
    claimed at `claimed_at` is released, as for refunds."""
    with transaction.atomic():
        reversal = Reversal.objects.select_for_update().get(pk=reversal_id)
        if reversal.status != Reversal.Status.PENDING or reversal.carrier_requested_at != claimed_at:
            return
        reversal.carrier_requested_at = None
        tracking = outcomes.mark_unknown(reversal)
        fields = outcomes.check_again_after(reversal, outcomes.next_wait(reversal, retry_after))
        reversal.save(update_fields=["carrier_requested_at", *tracking, *fields])


def resolve_reversal(*, reversal_id: int) -> None:
    """Settle a reversal whose outcome is unknown (resolver job): ask the carrier, or send it again."""
    reversal = Reversal.objects.get(pk=reversal_id)
    if reversal.status != Reversal.Status.PENDING or reversal.outcome_unknown_since is None:
        return
    if reversal.carrier_requested_at is None:
        execute_reversal(payment_id=reversal.payment_id)
        return
    claimed_at = reversal.carrier_requested_at
    payment = load_payment(reversal.payment_id)
    request = _reversal_request(payment, reversal)
    try:
        result = call_carrier(
            payment.carrier, lambda adapter: adapter.query_reversal(request), name="query_reversal", request=request
        )
    except CarrierBusy as busy:
        _check_again_after(Reversal, reversal_id, busy.retry_after)
        return
    record_reversal_result(reversal_id=reversal_id, result=result, claimed_at=claimed_at)
    if _never_received(result):
        execute_reversal(payment_id=reversal.payment_id)  # certain the carrier never got it: send it now


def record_reversal_result(*, reversal_id: int, result: CarrierResult, claimed_at: datetime | None = None) -> None:
    """Apply the carrier's answer to a pending reversal; an answer for a settled one changes nothing."""
    if result.outcome == Outcome.FAILED and result.not_sent:
        _reversal_not_sent(reversal_id, retry_after=result.retry_after, claimed_at=claimed_at)
        return
    with transaction.atomic():
        reversal = Reversal.objects.select_for_update().get(pk=reversal_id)
        if reversal.status != Reversal.Status.PENDING:
            return
        if result.outcome == Outcome.PENDING:
            if fields := outcomes.mark_unknown(reversal):
                reversal.save(update_fields=fields)
            return
        locked = locked_payment(reversal.payment_id)
        if result.outcome == Outcome.FAILED:
            reversal.failure_code, reversal.failure_message = result.failure
        outcomes.clear_unknown(reversal)
        _settle_reversal(
            reversal, locked, succeeded=result.outcome == Outcome.SUCCEEDED, actor=f"carrier:{locked.carrier.slug}"
        )


def _settle_reversal(reversal: Reversal, payment: Payment, *, succeeded: bool, actor: str) -> None:
    reversal.status = Reversal.Status.SUCCEEDED if succeeded else Reversal.Status.FAILED
    reversal.completed_at = timezone.now()
    reversal.save()
    if not succeeded:
        return
    ledger.post_reversal(reversal)
    transition(payment, PaymentStatus.REVERSED, actor=actor, reason=f"reversal: {reversal.reason}")


def apply_refund_notification(*, carrier_slug: str, notification: Notification) -> str:
    """A carrier's callback about a refund: find the refund by our id or the carrier's reference."""
    refunds = Refund.objects.filter(payment__carrier__slug=carrier_slug)
    refund = None
    if notification.refund_id:
        refund = refunds.filter(public_id=notification.refund_id).first() if is_uuid(notification.refund_id) else None
    if refund is None and notification.carrier_reference:
        refund = refunds.filter(carrier_reference=notification.carrier_reference).first()
    if refund is None:
        return "ignored: unknown refund"
    before = refund.status
    record_refund_result(refund_id=refund.pk, result=notification.result)
    after = Refund.objects.values_list("status", flat=True).get(pk=refund.pk)
    return f"refund {before} -> {after}" if after != before else f"refund: no change ({before})"
