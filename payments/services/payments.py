"""Creating and confirming payments: what a game backend asks for through the API.

The carrier calls themselves run on the carrier's queue (`carrier_flow`); in the
embedded default they run in-process right after the commit, so the API answers
with the carrier's first result.
"""

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from carriers.adapters import adapter_class
from carriers.adapters.base import CarrierResult, Outcome
from carriers.errors import ErrorCode
from carriers.gateway import CarrierBusy, call_carrier
from carriers.models import Carrier
from carriers.msisdn import normalize_msisdn
from carriers.services import get_offered_price_point, resolve_carrier
from payments.errors import (
    CarrierTemporarilyUnavailable,
    FlowNotSupported,
    IllegalTransition,
    InvalidPin,
    PinExpired,
)
from payments.models import Payment, PaymentFlow, PaymentStatus
from payments.services.carrier_flow import (
    carrier_actor,
    charge_request,
    count_wrong_pin,
    dispatch,
    fail,
    load_payment,
    locked_payment,
)
from payments.services.idempotency import IdempotencyKey, KeyAlreadyClaimed, claim_key, is_unique_violation
from payments.services.state_machine import record_creation, transition
from tenants.models import App


@dataclass(frozen=True)
class PaymentRequest:
    user_ref: str
    msisdn: str
    price_point: str
    carrier: str | None = None
    flow: str | None = None
    journey_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def app_actor(app: App) -> str:
    return f"app:{app.name}"


def _choose_flow(carrier: Carrier, requested: str | None) -> str:
    supported = [
        flow
        for flow, ok in ((PaymentFlow.PIN, carrier.supports_pin), (PaymentFlow.ONE_CLICK, carrier.supports_one_click))
        if ok
    ]
    if requested is None:
        if not supported:
            raise FlowNotSupported(f"Carrier {carrier.slug!r} has no payment flow enabled.")
        return supported[0]
    if requested not in supported:
        raise FlowNotSupported(f"Carrier {carrier.slug!r} does not support the {requested!r} flow.")
    return requested


def create_payment(*, app: App, request: PaymentRequest, idempotency: IdempotencyKey) -> Payment:
    """Validate, create the payment under its idempotency key, and have the carrier start it."""
    msisdn = normalize_msisdn(request.msisdn)
    carrier = resolve_carrier(msisdn=msisdn, carrier_slug=request.carrier)
    adapter_class(carrier.protocol)  # a protocol this deployment does not run is refused (503) before any row
    price_point = get_offered_price_point(carrier=carrier, code=request.price_point)
    flow = _choose_flow(carrier, request.flow)
    public_id = uuid.uuid4()
    with transaction.atomic():
        try:
            payment = Payment.objects.create(
                public_id=public_id,
                app=app,
                user_ref=request.user_ref,
                msisdn=msisdn,
                carrier=carrier,
                price_point=price_point,
                amount_minor=price_point.amount_minor,
                currency=price_point.currency,
                flow=flow,
                idempotency_key=idempotency.key,
                journey_id=request.journey_id,
                metadata=request.metadata,
            )
        except IntegrityError as exc:
            # The payment's own (app, idempotency key) constraint: another request with this key
            # committed, or is still running (PostgreSQL made us wait for it).
            if is_unique_violation(exc):
                raise KeyAlreadyClaimed(idempotency.key) from exc
            raise
        record_creation(payment, actor=app_actor(app))
        dispatch(payment, "start_payment")
        claim_key(idempotency, resource_id=public_id)
    # As it is now: where tasks run in-process, the carrier's first step already ran at the commit.
    payment.refresh_from_db()
    return payment


def confirm_payment(*, app: App, payment: Payment, pin: str) -> Payment:
    """Check the player's PIN with the carrier (the player is waiting), then queue the charge."""
    if payment.status != PaymentStatus.PIN_SENT or payment.pin_submitted_at is not None:
        raise IllegalTransition(f"Only a payment waiting for its PIN takes one; this one is {payment.status!r}.")
    if payment.pin_expires_at is not None and payment.pin_expires_at <= timezone.now():
        expire_payment(payment_id=payment.pk, reason="PIN expired before confirmation")
        raise PinExpired()
    verdict = _verify_pin(payment, pin)
    if _is_wrong_pin(verdict):
        _record_rejected_pin(
            payment_id=payment.pk, error_code=verdict.error_code or ErrorCode.INVALID_PIN, actor=app_actor(app)
        )
    with transaction.atomic():
        locked = locked_payment(payment.pk)
        if locked.status != PaymentStatus.PIN_SENT:
            raise IllegalTransition(f"The payment is now {locked.status!r}.")
        _apply_pin_verdict(locked, verdict, app=app)
    return load_payment(payment.pk)


def _verify_pin(payment: Payment, pin: str) -> CarrierResult:
    request = charge_request(payment)
    try:
        return call_carrier(
            payment.carrier, lambda adapter: adapter.verify_pin(request, pin=pin), name="verify_pin", request=request
        )
    except CarrierBusy as busy:
        raise CarrierTemporarilyUnavailable(retry_after=max(int(busy.retry_after), 1)) from busy


def _is_wrong_pin(verdict: CarrierResult) -> bool:
    return verdict.outcome == Outcome.PIN_REJECTED or (
        verdict.outcome == Outcome.FAILED and verdict.error_code in (ErrorCode.INVALID_PIN, ErrorCode.PIN_EXPIRED)
    )


def _apply_pin_verdict(locked: Payment, verdict: CarrierResult, *, app: App) -> None:
    """The carrier's answer to a PIN the player is waiting on, on the locked `pin_sent` payment."""
    carrier = carrier_actor(locked.carrier)
    if verdict.outcome == Outcome.PIN_VERIFIED:
        transition(locked, PaymentStatus.PIN_VERIFIED, actor=carrier, reason="PIN verified")
        transition(locked, PaymentStatus.CHARGING, actor=app_actor(app), reason="charge after PIN")
        dispatch(locked, "charge_payment")
    elif verdict.outcome == Outcome.PENDING and verdict.not_sent is False and not verdict.transport_failed:
        # An asynchronous carrier took the PIN; its verdict comes by callback.
        locked.carrier_data = {**locked.carrier_data, **verdict.state}
        locked.pin_submitted_at = locked.outcome_unknown_since = timezone.now()
        locked.save(update_fields=["carrier_data", "pin_submitted_at", "outcome_unknown_since", "updated_at"])
    elif verdict.outcome == Outcome.FAILED and not verdict.transport_failed:
        fail(locked, verdict, actor=carrier)
    else:
        # Unreachable or no answer: nothing moved money; the player may submit the PIN again.
        raise CarrierTemporarilyUnavailable(retry_after=2)


def _record_rejected_pin(*, payment_id: int, error_code: str, actor: str) -> None:
    """Count a wrong PIN (the payment fails after PIN_MAX_ATTEMPTS) and raise for the caller."""
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.status != PaymentStatus.PIN_SENT:
            raise IllegalTransition(f"The payment is now {locked.status!r}.")
        expired = error_code == ErrorCode.PIN_EXPIRED
        remaining = 0
        if expired:
            transition(locked, PaymentStatus.EXPIRED, actor=actor, reason="carrier: PIN expired")
            dispatch(locked, "cancel_payment")
        else:
            remaining = count_wrong_pin(locked, actor=actor)
    if expired:
        raise PinExpired()
    raise InvalidPin(
        "The PIN is not correct." + (" No attempts left: the payment has failed." if remaining == 0 else ""),
        attempts_remaining=remaining,
        payment_status=locked.status,
    )


def expire_payment(*, payment_id: int, reason: str) -> None:
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.status == PaymentStatus.PIN_SENT:
            transition(locked, PaymentStatus.EXPIRED, actor="system", reason=reason)
            dispatch(locked, "cancel_payment")


def expire_abandoned_payments() -> int:
    """Expire PIN payments whose PIN was never confirmed in time; returns how many."""
    due = Payment.objects.filter(status=PaymentStatus.PIN_SENT, pin_expires_at__lte=timezone.now())
    ids = list(due.values_list("id", flat=True)[:10_000])
    for payment_id in ids:
        expire_payment(payment_id=payment_id, reason="PIN not confirmed in time")
    return len(ids)


def next_action(payment: Payment) -> dict[str, Any]:
    """What the game backend should do next with this payment."""
    if payment.status == PaymentStatus.PIN_SENT and payment.pin_submitted_at is None:
        return {
            "type": "enter_pin",
            "expires_at": payment.pin_expires_at,
            "attempts_remaining": max(settings.PIN_MAX_ATTEMPTS - payment.pin_attempts, 0),
        }
    if payment.status in (
        PaymentStatus.CREATED,
        PaymentStatus.PIN_SENT,
        PaymentStatus.PIN_VERIFIED,
        PaymentStatus.CHARGING,
    ):
        return {"type": "wait", "poll_after_seconds": 2}
    return {"type": "none"}
