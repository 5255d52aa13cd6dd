"""Creating and confirming payments: what a game backend asks for through the API.

No carrier is called while a request waits: the carrier calls run on the carrier's
queue (`carrier_flow`, `check_submitted_pin`). In the embedded default they run
in-process right after the commit, so the API answers with the carrier's first result.
"""

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from carriers.adapters import adapter_class
from carriers.adapters.base import CarrierResult, Outcome
from carriers.errors import ErrorCode
from carriers.gateway import CarrierBusy, call_carrier
from carriers.models import Carrier, PricePoint
from carriers.msisdn import normalize_msisdn
from carriers.services import get_offered_price_point, resolve_carrier
from payments.errors import (
    CarrierTemporarilyUnavailable,
    FlowNotSupported,
    IllegalTransition,
    InvalidPin,
    PinExpired,
)
from payments.models import IdempotencyRecord, Payment, PaymentFlow, PaymentStatus
from payments.services import outbox
from payments.services.carrier_flow import (
    DESCRIPTION,
    app_actor,
    carrier_actor,
    charge_request,
    dispatch,
    fail,
    load_payment,
    locked_payment,
    pin_check_pending,
    pin_to_submit_again,
    record_pin_verdict,
    task_message,
)
from payments.services.idempotency import (
    AnswerAtClaim,
    IdempotencyKey,
    KeyAlreadyClaimed,
    claim_row,
    key_claimed_once,
)
from payments.services.outcomes import mark_unknown
from payments.services.payment_keys import idempotency_key_row, release_expired_idempotency_key
from payments.services.players import ensure_player_may_pay
from payments.services.state_machine import creation_entry, published_creation, record_creation, transition
from playpay.crypto import decrypt_credentials, encrypt_credentials
from playpay.ids import new_public_id
from playpay.inserts import insert_rows
from playpay.postgresql.listen import listening
from tenants.models import App

# While a confirm request waits for the PIN's verdict, it is woken when the verdict is committed (on PostgreSQL,
# a notification sent by the database: payments 0030) and looks at the payment at least this often anyway;
# elsewhere it looks every PIN_POLL_INTERVAL_S.
PIN_RECHECK_INTERVAL_S = 0.25
PIN_POLL_INTERVAL_S = 0.05
# What an app is told to wait before submitting the PIN again when the carrier could not check it and
# asked for no particular wait (else the wait it asked for, or the gateway's: breaker, rate limit).
PIN_RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True)
class PaymentRequest:
    user_ref: str
    msisdn: str
    price_point: str
    carrier: str | None = None
    flow: str | None = None
    journey_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


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


def create_payment(
    *,
    app: App,
    request: PaymentRequest,
    idempotency: IdempotencyKey,
    answer_at_claim: AnswerAtClaim[Payment] | None = None,
) -> Payment:
    """Validate, create the payment under its idempotency key, and have the carrier start it.

    Where a broker runs the carrier's first step, nothing changes the payment at the commit: it is answered
    as inserted, and the answer (`answer_at_claim`, from `run_idempotent`) is stored with the key's claim.
    Where tasks run in-process, the first step runs at the commit and the payment is read back after it.
    """
    msisdn = normalize_msisdn(request.msisdn)
    ensure_player_may_pay(app=app, msisdn=msisdn, user_ref=request.user_ref)
    carrier = resolve_carrier(msisdn=msisdn, carrier_slug=request.carrier)
    adapter_class(carrier.protocol)  # a protocol this deployment does not run is refused (503) before any row
    price_point = get_offered_price_point(carrier=carrier, code=request.price_point)
    flow = _choose_flow(carrier, request.flow)
    final_at_commit = not outbox.runs_in_process()

    def claim(payment: Payment) -> IdempotencyRecord:
        answer = answer_at_claim(payment) if final_at_commit and answer_at_claim is not None else None
        return claim_row(idempotency, resource_id=payment.public_id, answer=answer)

    def opened() -> Payment:
        with transaction.atomic():
            return open_payment(
                app=app,
                user_ref=request.user_ref,
                msisdn=msisdn,
                carrier=carrier,
                price_point=price_point,
                flow=flow,
                actor=app_actor(app),
                idempotency_key=idempotency.key,
                journey_id=request.journey_id,
                metadata=request.metadata,
                claim=claim,
            )

    try:
        payment = opened()
    except KeyAlreadyClaimed:
        # A key used again after it expired is free: its old payment's claim is released, once.
        if not release_expired_idempotency_key(app_id=app.pk, key=idempotency.key):
            raise
        payment = opened()
    if final_at_commit:
        return payment
    payment.refresh_from_db()
    # The reload forgets the carrier and price point the payment was made with; the answer names them, and
    # they are the ones in hand (a payment keeps its own), so they are not read again.
    if payment.carrier_id == carrier.pk:
        payment.carrier = carrier
    if payment.price_point_id == price_point.pk:
        payment.price_point = price_point
    return payment


def open_payment(
    *,
    app: App,
    user_ref: str,
    msisdn: str,
    carrier: Carrier,
    price_point: PricePoint,
    flow: str,
    actor: str,
    idempotency_key: str = "",
    journey_id: str = "",
    metadata: dict[str, Any] | None = None,
    description: str = "",
    not_before: datetime | None = None,
    claim: Callable[[Payment], IdempotencyRecord] | None = None,
) -> Payment:
    """Insert a payment for a validated request and queue the carrier's first step (sending the PIN, or the
    one-click charge) for after the commit. Call inside `transaction.atomic()`.

    Two round trips: the payment, then its other rows at once (its key's claim, its history's first entry,
    the first step's outbox message, and the request's `claim(payment)` of its Idempotency-Key when given).
    A key taken by another payment or request raises KeyAlreadyClaimed.

    `description`: what the carrier tells the player (the PIN message, the charge's text), where the
    protocol carries one; default: the app's name and the price point's code.
    `not_before`: a later moment for the first step (the renewal engine's pacing): the payment waits with it as
    its `next_attempt_at`, and the due-attempts job sends it then.
    """
    later = not_before is not None and not_before > timezone.now()
    payment = _new_payment(
        price_point,
        app=app,
        user_ref=user_ref,
        msisdn=msisdn,
        carrier=carrier,
        flow=flow,
        idempotency_key=idempotency_key,
        journey_id=journey_id,
        metadata=metadata or {},
        carrier_data={DESCRIPTION: description} if description else {},
        next_attempt_at=not_before if later else None,
    )
    # The key per app, unique across the payments' months: another request with this key committed, or is
    # still running (PostgreSQL makes us wait for it), and this one raises KeyAlreadyClaimed.
    key = idempotency_key_row(payment) if idempotency_key else None
    first_step = task_message(payment, "start_payment") if not later else None
    request_claim = claim(payment) if claim is not None else None
    entry = creation_entry(payment, actor=actor)
    with key_claimed_once(idempotency_key) if idempotency_key else nullcontext():
        insert_rows(*(row for row in (key, entry, first_step, request_claim) if row is not None))
    published_creation(entry, payment)
    if first_step is not None:
        outbox.send_after_commit(first_step)
    return payment


def _new_payment(price_point: PricePoint, **fields: Any) -> Payment:
    payment = Payment(
        public_id=new_public_id(),
        price_point=price_point,
        amount_minor=price_point.amount_minor,
        currency=price_point.currency,
        **fields,
    )
    insert_rows(payment)
    return payment


def open_carrier_charge(
    *,
    app: App,
    user_ref: str,
    msisdn: str,
    carrier: Carrier,
    price_point: PricePoint,
    carrier_reference: str,
    metadata: dict[str, Any],
    description: str,
) -> Payment:
    """A payment for a charge the carrier made on its own (a renewal of a subscription it manages): inserted
    as charging, with the carrier's reference, and never sent to the carrier. `settle_carrier_charge` then
    records what the carrier said of it. Call inside `transaction.atomic()`."""
    actor = carrier_actor(carrier)
    payment = _new_payment(
        price_point,
        app=app,
        user_ref=user_ref,
        msisdn=msisdn,
        carrier=carrier,
        flow=PaymentFlow.ONE_CLICK,
        carrier_reference=carrier_reference,
        metadata=metadata,
        carrier_data={DESCRIPTION: description},
    )
    record_creation(payment, actor=actor)
    transition(payment, PaymentStatus.CHARGING, actor=actor, reason="charged by the carrier on its own schedule")
    return payment


def settle_carrier_charge(*, payment_id: int, result: CarrierResult) -> None:
    """Record the outcome the carrier told of a charge it made on its own (`open_carrier_charge`): a success
    posts the ledger as any payment's does; a decline fails it, never retried by PlayPay."""
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.status != PaymentStatus.CHARGING:
            return
        actor = carrier_actor(locked.carrier)
        if result.outcome == Outcome.SUCCEEDED:
            transition(locked, PaymentStatus.SUCCEEDED, actor=actor, reason="charge made and told by the carrier")
        elif result.outcome == Outcome.FAILED:
            fail(locked, result, actor=actor)


def confirm_payment(*, payment: Payment, pin: str) -> Payment:
    """Take the player's PIN and have the carrier's queue check it; return the payment as it is then.

    No carrier is called here: the PIN is stored encrypted and `check_submitted_pin` runs on the
    carrier's queue. The request waits for its verdict at most PIN_CONFIRM_WAIT_MS (woken when it is committed);
    a verdict known by then is told as before (a wrong PIN raises `InvalidPin`, an unreachable carrier
    `CarrierTemporarilyUnavailable`), else the payment comes back with its PIN check pending.
    """
    _submit_pin(payment_id=payment.pk, pin=pin)
    _await_pin_verdict(payment)
    return _told_verdict(load_payment(payment.pk))


def _submit_pin(*, payment_id: int, pin: str) -> None:
    expired = False
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.status != PaymentStatus.PIN_SENT or locked.pin_submitted_at is not None:
            raise IllegalTransition(f"Only a payment waiting for its PIN takes one; this one is {locked.status!r}.")
        if locked.pin_expires_at is not None and locked.pin_expires_at <= timezone.now():
            transition(locked, PaymentStatus.EXPIRED, actor="system", reason="PIN expired before confirmation")
            dispatch(locked, "cancel_payment")
            expired = True
        else:
            locked.pin_ciphertext = encrypt_credentials({"pin": pin})
            locked.pin_submitted_at = timezone.now()
            locked.pin_error = ""
            locked.save(update_fields=["pin_ciphertext", "pin_submitted_at", "pin_error", "updated_at"])
            dispatch(locked, "check_pin")
    if expired:
        raise PinExpired()


def _await_pin_verdict(payment: Payment) -> None:
    """Wait, at most PIN_CONFIRM_WAIT_MS, until the payment's PIN check is no longer pending."""
    if outbox.runs_in_process():
        return  # the check ran at the commit, in this process: there is nothing to wait for
    deadline = time.monotonic() + settings.PIN_CONFIRM_WAIT_MS / 1000
    pending = Payment.objects.filter(
        pk=payment.pk, created_at=payment.created_at, status=PaymentStatus.PIN_SENT, pin_submitted_at__isnull=False
    )
    if settings.PIN_CONFIRM_WAIT_MS <= 0:
        return  # no wait: no LISTEN, no UNLISTEN
    with listening(pin_verdict_channel(payment.pk), fallback_interval=PIN_POLL_INTERVAL_S) as wait:
        # Looked at once listening: a verdict committed before the LISTEN notified no one.
        while (left := deadline - time.monotonic()) > 0 and pending.exists():
            wait(min(left, PIN_RECHECK_INTERVAL_S))


def pin_verdict_channel(payment_id: int) -> str:
    """The notification channel of a payment's PIN verdict (the trigger of payments 0030 names it alike)."""
    return f"payment_pin_verdict_{payment_id}"


def _told_verdict(payment: Payment) -> Payment:
    """The payment, or the error its PIN check ended with (as the app was told when the check ran in the request)."""
    if payment.status == PaymentStatus.PIN_SENT and payment.pin_error == ErrorCode.INVALID_PIN:
        raise InvalidPin(
            "The PIN is not correct.",
            attempts_remaining=max(settings.PIN_MAX_ATTEMPTS - payment.pin_attempts, 0),
            payment_status=payment.status,
        )
    if payment.status == PaymentStatus.PIN_SENT and payment.pin_error == CarrierTemporarilyUnavailable.code:
        raise CarrierTemporarilyUnavailable(retry_after=pin_retry_after(payment) or PIN_RETRY_AFTER_SECONDS)
    if payment.status == PaymentStatus.FAILED and payment.failure_code == ErrorCode.INVALID_PIN:
        raise InvalidPin(
            "The PIN is not correct. No attempts left: the payment has failed.",
            attempts_remaining=0,
            payment_status=payment.status,
        )
    if payment.status == PaymentStatus.EXPIRED:
        raise PinExpired()
    return payment


def pin_retry_after(payment: Payment) -> int | None:
    """Seconds the app should wait before submitting the PIN again, when the carrier (or the gateway in
    front of it) asked for a wait the last time it could not check one; None when none is left."""
    if payment.status != PaymentStatus.PIN_SENT or payment.pin_error != ErrorCode.CARRIER_UNAVAILABLE:
        return None
    if payment.pin_submitted_at is not None or payment.next_attempt_at is None:
        return None
    left = (payment.next_attempt_at - timezone.now()).total_seconds()
    return math.ceil(left) if left > 0 else None


def check_submitted_pin(*, payment_id: int) -> None:
    """Check the submitted PIN with the carrier and apply its verdict (task on the carrier's queue)."""
    taken = _take_submitted_pin(payment_id)
    if taken is None:
        return
    payment, pin = taken
    assert payment.outcome_unknown_since is not None
    request = charge_request(payment)
    try:
        verdict = call_carrier(
            payment.carrier, lambda adapter: adapter.verify_pin(request, pin=pin), name="verify_pin", request=request
        )
    except CarrierBusy as busy:  # the gateway put the call off (breaker, rate limit, Retry-After) and logged it
        record_pin_verdict(
            payment_id=payment_id, verdict=None, taken_at=payment.outcome_unknown_since, retry_after=busy.retry_after
        )
        return
    record_pin_verdict(payment_id=payment_id, verdict=verdict, taken_at=payment.outcome_unknown_since)


def _take_submitted_pin(payment_id: int) -> tuple[Payment, str] | None:
    """Take the stored PIN off the payment (it is kept only until used) and mark its check as at the carrier.

    None when there is nothing to check: a payment that moved on (expired) meanwhile, or a repeated task
    whose PIN was taken by a run that got no verdict (its worker died, or applying the verdict failed).
    Such a check is released at once where the carrier has no other way to state the verdict (a
    synchronous protocol): a PIN check moves no money, so the player submits the PIN again. On an
    asynchronous carrier, which charges when it gets the PIN, the resolver asks the carrier instead.
    """
    with transaction.atomic():
        locked = locked_payment(payment_id)
        ciphertext = locked.pin_ciphertext
        due = bool(ciphertext) and pin_check_pending(locked) and locked.outcome_unknown_since is None
        if not due:
            asynchronous = adapter_class(locked.carrier.protocol).capabilities.asynchronous
            if pin_check_pending(locked) and not asynchronous:
                pin_to_submit_again(locked, error=ErrorCode.CARRIER_UNAVAILABLE)
            elif ciphertext:
                locked.pin_ciphertext = ""
                locked.save(update_fields=["pin_ciphertext", "updated_at"])
            return None
        locked.pin_ciphertext = ""
        tracking = mark_unknown(locked)
        locked.save(update_fields=["pin_ciphertext", *tracking, "updated_at"])
        taken_at = locked.outcome_unknown_since
    assert taken_at is not None
    try:
        pin = str(decrypt_credentials(ciphertext)["pin"])
    except ValueError:  # the key it was encrypted with was dropped meanwhile: the player submits again
        record_pin_verdict(payment_id=payment_id, verdict=None, taken_at=taken_at)
        return None
    return load_payment(payment_id), pin


def expire_payment(*, payment_id: int, reason: str) -> None:
    with transaction.atomic():
        locked = locked_payment(payment_id)
        # A PIN check at the carrier is left to its verdict or the resolver: an asynchronous carrier charges
        # on the PIN, and an expired payment would ignore its success.
        if locked.status == PaymentStatus.PIN_SENT and locked.outcome_unknown_since is None:
            locked.pin_ciphertext = ""
            transition(locked, PaymentStatus.EXPIRED, actor="system", reason=reason, update_fields=("pin_ciphertext",))
            dispatch(locked, "cancel_payment")


# A payment withdrawn by its creator before its charge reached the carrier (a subscription cancelled while its
# renewal waited to be sent).
WITHDRAWN = "withdrawn"


def withdraw_payment(payment: Payment, *, actor: str, reason: str) -> bool:
    """Fail a one-click payment whose charge has not been sent to the carrier, so that it never is.

    Call inside `transaction.atomic()` on a payment from `locked_payment`. A charge being sent, or sent and
    not answered yet (`outcome_unknown_since`), cannot be taken back: False, and its outcome stands (as does
    that of a payment already final). The carrier flow re-reads the payment under its lock before any call,
    so a withdrawn payment is never sent.
    """
    waiting = payment.status == PaymentStatus.CREATED or (
        payment.status == PaymentStatus.CHARGING and payment.flow == PaymentFlow.ONE_CLICK
    )
    if not waiting or payment.outcome_unknown_since is not None:
        return False
    payment.failure_code, payment.failure_message = WITHDRAWN, reason[:255]
    payment.next_attempt_at = None
    transition(
        payment,
        PaymentStatus.FAILED,
        actor=actor,
        reason=f"withdrawn: {reason}",
        update_fields=("failure_code", "failure_message", "next_attempt_at"),
    )
    return True


def expire_abandoned_payments() -> int:
    """Expire PIN payments whose PIN was never confirmed in time; returns how many."""
    due = Payment.objects.filter(
        status=PaymentStatus.PIN_SENT, pin_expires_at__lte=timezone.now(), outcome_unknown_since__isnull=True
    )
    ids = list(due.values_list("id", flat=True)[:10_000])
    for payment_id in ids:
        expire_payment(payment_id=payment_id, reason="PIN not confirmed in time")
    return len(ids)


def next_action(payment: Payment) -> dict[str, Any]:
    """What the game backend should do next with this payment."""
    if payment.status == PaymentStatus.PIN_SENT and not pin_check_pending(payment):
        return {
            "type": "enter_pin",
            "expires_at": payment.pin_expires_at,
            "attempts_remaining": max(settings.PIN_MAX_ATTEMPTS - payment.pin_attempts, 0),
            **({"pin_error": payment.pin_error} if payment.pin_error else {}),
            **({"retry_after_seconds": wait} if (wait := pin_retry_after(payment)) else {}),
        }
    if pin_check_pending(payment):
        return {"type": "wait", "poll_after_seconds": 1}
    if payment.status in (
        PaymentStatus.CREATED,
        PaymentStatus.PIN_SENT,
        PaymentStatus.PIN_VERIFIED,
        PaymentStatus.CHARGING,
    ):
        return {"type": "wait", "poll_after_seconds": 2}
    return {"type": "none"}
