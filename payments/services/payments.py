"""Creating, starting and confirming payments.

Carrier calls are never made inside a database transaction: a payment is marked
`charging` and committed, the carrier is called, and the result is recorded in a
new transaction.
"""

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from carriers.adapters import adapter_for
from carriers.adapters.base import CarrierResult, ChargeRequest, Outcome
from carriers.errors import ErrorCode
from carriers.models import Carrier
from carriers.msisdn import normalize_msisdn
from carriers.services import get_offered_price_point, resolve_carrier
from payments.errors import FlowNotSupported, IllegalTransition, InvalidPin, PinExpired
from payments.models import App, Payment, PaymentFlow, PaymentStatus
from payments.services.idempotency import IdempotentRequest, claim_key
from payments.services.state_machine import record_creation, transition


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


def carrier_actor(carrier: Carrier) -> str:
    return f"carrier:{carrier.slug}"


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


def _charge_request(payment: Payment) -> ChargeRequest:
    return ChargeRequest(
        payment_id=str(payment.public_id),
        msisdn=payment.msisdn,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        price_point=payment.price_point.code,
    )


def _locked(payment_id: int) -> Payment:
    return Payment.objects.select_for_update().get(pk=payment_id)


def _reload(payment_id: int) -> Payment:
    return Payment.objects.select_related("app", "carrier", "price_point").get(pk=payment_id)


def create_payment(*, app: App, request: PaymentRequest, idempotency: IdempotentRequest) -> Payment:
    """Validate, create the payment under its idempotency key, then start it with the carrier."""
    msisdn = normalize_msisdn(request.msisdn)
    carrier = resolve_carrier(msisdn=msisdn, carrier_slug=request.carrier)
    price_point = get_offered_price_point(carrier=carrier, code=request.price_point)
    flow = _choose_flow(carrier, request.flow)
    public_id = uuid.uuid4()
    with transaction.atomic():
        claim_key(idempotency, resource_id=public_id)
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
        record_creation(payment, actor=app_actor(app))
    return start_payment(payment=payment)


def start_payment(*, payment: Payment) -> Payment:
    """Open the flow with the carrier: send the PIN, or charge at once for one-click."""
    adapter = adapter_for(payment.carrier)
    if payment.flow == PaymentFlow.ONE_CLICK:
        with transaction.atomic():
            locked = _locked(payment.pk)
            transition(locked, PaymentStatus.CHARGING, actor=app_actor(payment.app), reason="one-click charge")
        result = adapter.charge(_charge_request(payment))
        return record_charge_result(payment_id=payment.pk, result=result)

    result = adapter.send_pin(_charge_request(payment))
    with transaction.atomic():
        locked = _locked(payment.pk)
        actor = carrier_actor(payment.carrier)
        if result.outcome == Outcome.PIN_SENT:
            locked.carrier_reference = result.carrier_reference
            locked.pin_expires_at = timezone.now() + timedelta(seconds=settings.PIN_TTL_SECONDS)
            transition(
                locked,
                PaymentStatus.PIN_SENT,
                actor=actor,
                reason="PIN sent to the player",
                update_fields=("carrier_reference", "pin_expires_at"),
            )
        elif result.outcome == Outcome.FAILED:
            _fail(locked, result, actor=actor)
        # PENDING: the carrier did not say; the payment stays `created` for the status job.
    return _reload(payment.pk)


def confirm_payment(*, app: App, payment: Payment, pin: str) -> Payment:
    """Check the player's PIN with the carrier, then charge."""
    if payment.status != PaymentStatus.PIN_SENT:
        raise IllegalTransition(f"Only a payment in status 'pin_sent' takes a PIN; this one is {payment.status!r}.")
    if payment.pin_expires_at is not None and payment.pin_expires_at <= timezone.now():
        expire_payment(payment_id=payment.pk, reason="PIN expired before confirmation")
        raise PinExpired()

    adapter = adapter_for(payment.carrier)
    request = _charge_request(payment)
    verdict = adapter.verify_pin(request, carrier_reference=payment.carrier_reference, pin=pin)
    if verdict.outcome != Outcome.PIN_VERIFIED:
        _record_rejected_pin(payment_id=payment.pk, verdict=verdict, actor=app_actor(app))

    with transaction.atomic():
        locked = _locked(payment.pk)
        transition(locked, PaymentStatus.PIN_VERIFIED, actor=carrier_actor(payment.carrier), reason="PIN verified")
        transition(locked, PaymentStatus.CHARGING, actor=app_actor(app), reason="charge after PIN")
    result = adapter.charge(request, carrier_reference=payment.carrier_reference)
    return record_charge_result(payment_id=payment.pk, result=result)


def _record_rejected_pin(*, payment_id: int, verdict: CarrierResult, actor: str) -> None:
    """Count a wrong PIN (the payment fails after PIN_MAX_ATTEMPTS) and raise for the caller."""
    with transaction.atomic():
        locked = _locked(payment_id)
        if locked.status != PaymentStatus.PIN_SENT:
            raise IllegalTransition(f"The payment is now {locked.status!r}.")
        expired = verdict.error_code == ErrorCode.PIN_EXPIRED
        remaining = 0
        if expired:
            transition(locked, PaymentStatus.EXPIRED, actor=actor, reason="carrier: PIN expired")
        else:
            locked.pin_attempts += 1
            remaining = max(settings.PIN_MAX_ATTEMPTS - locked.pin_attempts, 0)
            if remaining == 0:
                _fail(locked, verdict, actor=actor, extra_fields=("pin_attempts",))
            else:
                locked.save(update_fields=["pin_attempts", "updated_at"])
    if expired:
        raise PinExpired()
    raise InvalidPin(
        "The PIN is not correct." + (" No attempts left: the payment has failed." if remaining == 0 else ""),
        attempts_remaining=remaining,
        payment_status=locked.status,
    )


def record_charge_result(*, payment_id: int, result: CarrierResult) -> Payment:
    """Apply a carrier's answer to a charging payment. A late or repeated answer changes nothing."""
    with transaction.atomic():
        locked = Payment.objects.select_for_update().select_related("carrier").get(pk=payment_id)
        actor = carrier_actor(locked.carrier)
        if locked.status == PaymentStatus.CHARGING and result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED):
            if result.carrier_reference:
                locked.carrier_reference = result.carrier_reference
            if result.outcome == Outcome.SUCCEEDED:
                transition(
                    locked,
                    PaymentStatus.SUCCEEDED,
                    actor=actor,
                    reason="charge confirmed by the carrier",
                    update_fields=("carrier_reference",),
                )
            else:
                _fail(locked, result, actor=actor, extra_fields=("carrier_reference",))
    return _reload(payment_id)


def expire_payment(*, payment_id: int, reason: str) -> None:
    with transaction.atomic():
        locked = _locked(payment_id)
        if locked.status == PaymentStatus.PIN_SENT:
            transition(locked, PaymentStatus.EXPIRED, actor="system", reason=reason)


def expire_abandoned_payments() -> int:
    """Expire PIN payments whose PIN was never confirmed in time; returns how many."""
    due = Payment.objects.filter(status=PaymentStatus.PIN_SENT, pin_expires_at__lte=timezone.now())
    ids = list(due.values_list("id", flat=True)[:10_000])
    for payment_id in ids:
        expire_payment(payment_id=payment_id, reason="PIN not confirmed in time")
    return len(ids)


def _fail(payment: Payment, result: CarrierResult, *, actor: str, extra_fields: tuple[str, ...] = ()) -> None:
    payment.failure_code = result.error_code or ErrorCode.REJECTED
    payment.failure_message = (result.raw_message or result.raw_code)[:255]
    transition(
        payment,
        PaymentStatus.FAILED,
        actor=actor,
        reason=f"carrier: {payment.failure_code} ({result.raw_code})" if result.raw_code else payment.failure_code,
        update_fields=("failure_code", "failure_message", *extra_fields),
    )


def next_action(payment: Payment) -> dict[str, Any]:
    """What the game backend should do next with this payment."""
    if payment.status == PaymentStatus.PIN_SENT:
        return {
            "type": "enter_pin",
            "expires_at": payment.pin_expires_at,
            "attempts_remaining": max(settings.PIN_MAX_ATTEMPTS - payment.pin_attempts, 0),
        }
    if payment.status in (PaymentStatus.CREATED, PaymentStatus.PIN_VERIFIED, PaymentStatus.CHARGING):
        return {"type": "wait", "poll_after_seconds": 2}
    return {"type": "none"}
