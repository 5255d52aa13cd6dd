"""Refunds and reversals: money back to the player, atomically, never more than was captured.

Both lock the payment row (`select_for_update`) before checking what is left to
refund, and reserve the amount in `Payment.refunded_minor`, which the database keeps
at or below the captured amount; a failed refund releases its reservation. The
carrier is called on its queue after the commit; where the carrier cannot refund,
the platform pays the player back itself and the refund succeeds at once.
"""

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from carriers.adapters import adapter_class, carrier_queue
from carriers.adapters.base import CarrierAdapter, CarrierResult, ChargeRequest, Notification, Outcome, RefundRequest
from carriers.gateway import CarrierBusy, call_carrier
from payments.errors import IllegalTransition, RefundExceedsCaptured, ReversalNotAllowed
from payments.models import MoneyOperation, Payment, PaymentStatus, Refund, Reversal
from payments.partitions import REFUND_MONTHS, REVERSAL_MONTHS
from payments.services import ledger, outbox, outcomes
from payments.services.carrier_flow import (
    asked_at,
    carrier_actor,
    charge_request,
    dispatch,
    is_uuid,
    load_payment,
    locked_payment,
)
from payments.services.idempotency import IdempotencyKey, claim_key
from payments.services.state_machine import transition
from playpay.money import format_money

REFUNDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


def carrier_refunds(payment: Payment) -> bool:
    return payment.carrier.supports_refund and adapter_class(payment.carrier.protocol).capabilities.refund


def refunds_of(payment: Payment) -> QuerySet[Refund]:
    """The payment's refunds; with its month, so that on PostgreSQL only its month's partition is read."""
    return Refund.objects.filter(payment=payment, payment_created_at=payment.created_at)


def reversals_of(payment: Payment) -> QuerySet[Reversal]:
    return Reversal.objects.filter(payment=payment, payment_created_at=payment.created_at)


def refund_refusal(payment: Payment) -> str | None:
    """Why `payment` cannot be refunded now (the amount aside), or None: the API, the admin and its preview."""
    if payment.status not in REFUNDABLE:
        return f"Only a succeeded payment can be refunded; this one is {payment.status!r}."
    if (archived := ledger.charge_refusal(payment)) is not None:
        return archived
    if reversals_of(payment).exclude(status=Reversal.Status.FAILED).exists():
        return "This payment is being reversed."
    return None


def may_be_refunded(payment: Payment) -> bool:
    """Whether a refund of `payment` can be asked for now: nothing refuses it and some of it is left."""
    return payment.amount_minor - payment.refunded_minor > 0 and refund_refusal(payment) is None


def reversal_refusal(payment: Payment) -> str | None:
    """Why `payment` cannot be reversed now, or None."""
    if payment.status != PaymentStatus.SUCCEEDED or payment.refunded_minor:
        return f"Only a succeeded, unrefunded payment can be reversed; this one is {payment.status!r}."
    if (archived := ledger.charge_refusal(payment)) is not None:
        return archived
    succeeded_at = (
        # With the payment's month: on PostgreSQL only its partition is read.
        payment.history.filter(payment_created_at=payment.created_at, to_status=PaymentStatus.SUCCEEDED)
        .values_list("created_at", flat=True)
        .first()
    )
    if succeeded_at is None or timezone.now() - succeeded_at > timedelta(hours=settings.REVERSAL_WINDOW_HOURS):
        return f"Reversals are possible for {settings.REVERSAL_WINDOW_HOURS} hours after the charge."
    if reversals_of(payment).exists():
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
                f"At most {format_money(refundable, locked.currency)} is left to refund.",
                refundable_minor=refundable,
            )
        refund = Refund(
            payment=locked,
            payment_created_at=locked.created_at,
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
            _settle(refund, locked, succeeded=True, actor=actor)
    return Refund.objects.get(pk=refund.pk, payment_created_at=refund.payment_created_at)


def request_reversal(*, payment: Payment, reason: str, actor: str) -> Reversal:
    """Reverse a whole charge as a technical error: only unrefunded, within REVERSAL_WINDOW_HOURS."""
    with transaction.atomic():
        locked = locked_payment(payment.pk)
        if (refusal := reversal_refusal(locked)) is not None:
            raise ReversalNotAllowed(refusal)
        capabilities = adapter_class(locked.carrier.protocol).capabilities
        reversal = Reversal.objects.create(
            payment=locked,
            payment_created_at=locked.created_at,
            reason=reason[:255],
            requested_by=actor,
            via_carrier=locked.carrier.supports_reversal and capabilities.reversal,
        )
        # A pending reversal blocks refunds (request_refund checks it under the same row lock).
        if reversal.via_carrier:
            dispatch(locked, "execute_reversal")
        else:
            _settle(reversal, locked, succeeded=True, actor=actor)
    return Reversal.objects.get(pk=reversal.pk, payment_created_at=reversal.payment_created_at)


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


def dispatch_resolve(operation: Refund | Reversal) -> None:
    """Check a refund or reversal whose outcome is unknown, on its carrier's queue, after the current commit
    (the resolver job)."""
    payment = operation.payment
    if isinstance(operation, Refund):
        outbox.enqueue(
            "payments.tasks.resolve_refund",
            queue=carrier_queue(payment.carrier),
            refund_id=operation.pk,
            public_id=str(operation.public_id),
            payment_public_id=str(payment.public_id),
        )
    else:
        outbox.enqueue(
            "payments.tasks.resolve_reversal",
            queue=carrier_queue(payment.carrier),
            reversal_id=operation.pk,
            public_id=str(payment.public_id),
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


def _reversal_request(reversal: Reversal, payment: Payment) -> ChargeRequest:
    request = charge_request(payment)
    return dataclasses.replace(
        request,
        description=reversal.reason,
        state={**request.state, **asked_at(reversal.carrier_requested_at)},
    )


# -- at the carrier: one set of steps for refunds and reversals -------------------------------------
#
# Send: claim the operation (`carrier_requested_at`, committed) and call the carrier. Not sent (the carrier
# unreachable, refused for now, or we had to wait): released, and sent again by the resolver job. Sent
# without a usable answer: unknown, checked by the resolver job. Settled: once, under the row's lock.

MoneyBack = Refund | Reversal


def _read(model: type[MoneyBack], pk: int, *, lock: bool = False) -> MoneyBack:
    """The refund or reversal of id `pk`, read from the months that can hold it (locked with `lock`)."""
    months = REFUND_MONTHS if model is Refund else REVERSAL_MONTHS
    rows = model.objects.select_for_update() if lock else model.objects.all()
    return cast(MoneyBack, months.get(rows, pk))


def _locked(model: type[MoneyBack], pk: int) -> MoneyBack:
    return _read(model, pk, lock=True)


def _call(operation: MoneyBack, *, check: bool) -> CarrierResult:
    """Send `operation` to its carrier, or, with `check`, ask what became of it (the protocol's way)."""
    payment = load_payment(operation.payment_id)
    call: Callable[[CarrierAdapter], CarrierResult]
    request: RefundRequest | ChargeRequest
    if isinstance(operation, Refund):
        refund_request = request = _refund_request(operation, payment)
        name = "query_refund" if check else "refund"
        call = (lambda a: a.query_refund(refund_request)) if check else (lambda a: a.refund(refund_request))
    else:
        reversal_request = request = _reversal_request(operation, payment)
        name = "query_reversal" if check else "reverse"
        call = (lambda a: a.query_reversal(reversal_request)) if check else (lambda a: a.reverse(reversal_request))
    return call_carrier(payment.carrier, call, name=name, request=request, payment_id=str(payment.public_id))


def _send(model: type[MoneyBack], pk: int) -> None:
    """Ask the carrier (task on its queue); a second run while it is asked does nothing."""
    with transaction.atomic():
        operation = _locked(model, pk)
        if operation.status != MoneyOperation.Status.PENDING or operation.carrier_requested_at:
            return
        claimed_at = operation.carrier_requested_at = timezone.now()  # claimed: a second run does not send twice
        tracking = outcomes.mark_unknown(operation, now=claimed_at)
        operation.save(update_fields=["carrier_requested_at", *tracking])
    try:
        result = _call(operation, check=False)
    except CarrierBusy as busy:
        _not_sent(model, pk, retry_after=busy.retry_after, claimed_at=claimed_at)
        return
    _record_result(model, pk, result, claimed_at=claimed_at)


def _not_sent(model: type[MoneyBack], pk: int, *, retry_after: float | None, claimed_at: datetime | None) -> None:
    """The carrier did not get it: the resolver job sends it again once due, the wait growing with each try
    and never shorter than the carrier asked.

    Only the send claimed at `claimed_at` is released: a stale answer (a check run twice) never frees a
    newer send, which could then go out twice.
    """
    with transaction.atomic():
        operation = _locked(model, pk)
        if operation.status != MoneyOperation.Status.PENDING or operation.carrier_requested_at != claimed_at:
            return
        operation.carrier_requested_at = None
        tracking = outcomes.mark_unknown(operation)
        fields = outcomes.check_again_after(operation, outcomes.next_wait(operation, retry_after))
        operation.save(update_fields=["carrier_requested_at", *tracking, *fields])


def _resolve(model: type[MoneyBack], pk: int) -> None:
    """Settle an unknown outcome (resolver job): ask the carrier, or send it again where it was not sent.
    One settled meanwhile (by its callback) is left alone."""
    operation = _read(model, pk)
    if operation.status != MoneyOperation.Status.PENDING or operation.outcome_unknown_since is None:
        return
    if operation.carrier_requested_at is None:
        _send(model, pk)
        return
    claimed_at = operation.carrier_requested_at
    try:
        result = _call(operation, check=True)
    except CarrierBusy as busy:
        with transaction.atomic():
            locked = _locked(model, pk)
            if locked.status == MoneyOperation.Status.PENDING:
                locked.save(update_fields=outcomes.check_again_after(locked, timedelta(seconds=busy.retry_after)))
        return
    _record_result(model, pk, result, claimed_at=claimed_at)
    if _never_received(result):
        _send(model, pk)  # certain the carrier never got it: send it now


def _never_received(result: CarrierResult) -> bool:
    """A status check that found no trace of the request, and no wait asked for: it can be sent at once."""
    return result.outcome == Outcome.FAILED and result.not_sent and not result.retry_after


def _record_result(
    model: type[MoneyBack], pk: int, result: CarrierResult, *, claimed_at: datetime | None, actor: str | None = None
) -> None:
    """Apply the carrier's answer (its reply, a callback, a status check or its settlement file) to a pending
    refund or reversal.

    Under the row's lock, so that an answer for one already settled changes nothing: a callback racing
    the resolver, or a task run twice, settles it once. `claimed_at`: the send the answer is about.
    `actor`: who brought the answer, when not the carrier's call or callback.
    """
    if result.outcome == Outcome.FAILED and result.not_sent:
        _not_sent(model, pk, retry_after=result.retry_after, claimed_at=claimed_at)
        return
    with transaction.atomic():
        operation = _locked(model, pk)
        if operation.status != MoneyOperation.Status.PENDING:
            return
        fields = _take_reference(operation, result)
        if result.outcome == Outcome.PENDING:
            # Accepted, processing, or no usable answer: the callback or the resolver job settles it.
            fields += outcomes.mark_unknown(operation)
            if fields:
                operation.save(update_fields=fields)
            return
        payment = locked_payment(operation.payment_id)
        if result.outcome == Outcome.FAILED:
            operation.failure_code, operation.failure_message = result.failure
        outcomes.clear_unknown(operation)
        succeeded = result.outcome == Outcome.SUCCEEDED
        _settle(operation, payment, succeeded=succeeded, actor=actor or carrier_actor(payment.carrier))


def _take_reference(operation: MoneyBack, result: CarrierResult) -> list[str]:
    """A refund keeps the carrier's reference for it (reversals are known by the payment's)."""
    if isinstance(operation, Refund) and result.carrier_reference not in ("", operation.carrier_reference):
        operation.carrier_reference = result.carrier_reference
        return ["carrier_reference"]
    return []


def _settle(operation: MoneyBack, payment: Payment, *, succeeded: bool, actor: str) -> None:
    """Finish a refund or reversal under the payment's lock: post it and move the payment, or, for a failed
    refund, release its reservation."""
    operation.status = MoneyOperation.Status.SUCCEEDED if succeeded else MoneyOperation.Status.FAILED
    operation.completed_at = timezone.now()
    operation.save()
    if isinstance(operation, Refund):
        _settle_refund(operation, payment, succeeded=succeeded, actor=actor)
    elif succeeded:
        ledger.post_reversal(operation)
        transition(payment, PaymentStatus.REVERSED, actor=actor, reason=f"reversal: {operation.reason}")


def _settle_refund(refund: Refund, payment: Payment, *, succeeded: bool, actor: str) -> None:
    if not succeeded:
        payment.refunded_minor -= refund.amount_minor
        payment.save(update_fields=["refunded_minor", "updated_at"])
        return
    settled_before = sum(
        refunds_of(payment)
        .filter(status=Refund.Status.SUCCEEDED)
        .exclude(pk=refund.pk)
        .values_list("amount_minor", flat=True)
    )
    ledger.post_refund(refund, refunded_before=settled_before)
    fully = settled_before + refund.amount_minor == payment.amount_minor
    transition(
        payment,
        PaymentStatus.REFUNDED if fully else PaymentStatus.PARTIALLY_REFUNDED,
        actor=actor,
        reason=f"refund of {format_money(refund.amount_minor, refund.currency)}: {refund.reason}",
    )


# -- the entry points: tasks on the carrier's queue, and the carrier's callbacks ---------------------


def execute_refund(*, refund_id: int) -> None:
    _send(Refund, refund_id)


def resolve_refund(*, refund_id: int) -> None:
    _resolve(Refund, refund_id)


def record_refund_result(
    *, refund_id: int, result: CarrierResult, claimed_at: datetime | None = None, actor: str | None = None
) -> None:
    _record_result(Refund, refund_id, result, claimed_at=claimed_at, actor=actor)


def execute_reversal(*, payment_id: int) -> None:
    reversal_id = Reversal.objects.filter(payment_id=payment_id).values_list("pk", flat=True).first()
    if reversal_id is not None:
        _send(Reversal, reversal_id)


def resolve_reversal(*, reversal_id: int) -> None:
    _resolve(Reversal, reversal_id)


def record_reversal_result(*, reversal_id: int, result: CarrierResult, claimed_at: datetime | None = None) -> None:
    _record_result(Reversal, reversal_id, result, claimed_at=claimed_at)


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
    after = Refund.objects.values_list("status", flat=True).get(
        pk=refund.pk, payment_created_at=refund.payment_created_at
    )
    return f"refund {before} -> {after}" if after != before else f"refund: no change ({before})"
