"""The carrier side of a payment: starting it, charging, resolving unknown outcomes, callbacks.

Each function runs as (or is called from) a Celery task on the carrier's queue and is
safe to run twice. Before any carrier call that could move money, the payment is
marked `outcome_unknown_since` in a committed transaction; the mark is cleared when
the carrier states an outcome. A payment so marked is never charged again: its
outcome is first resolved by its callback, or by the resolver job
(`payments.services.resolver`) through `resolve_payment`.
"""

import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from carriers.adapters import adapter_class, carrier_queue
from carriers.adapters.base import CarrierAdapter, CarrierResult, ChargeRequest, Notification, NotificationKind, Outcome
from carriers.errors import ErrorCode
from carriers.gateway import CarrierBusy, call_carrier
from carriers.models import Carrier
from payments.models import UNDECIDED_STATUSES, OutboxMessage, Payment, PaymentFlow, PaymentStatus
from payments.partitions import PAYMENT_MONTHS
from payments.services import outbox, outcomes
from payments.services.payment_keys import attach_carrier_reference, payment_by_carrier_reference
from payments.services.state_machine import transition
from playpay.compiled_reads import CompiledRead
from tenants.models import App

logger = logging.getLogger(__name__)


def carrier_actor(carrier: Carrier) -> str:
    return f"carrier:{carrier.slug}"


# The key in a payment's carrier_data of what the carrier tells the player, when its creator set one.
DESCRIPTION = "description"


def charge_request(payment: Payment) -> ChargeRequest:
    return ChargeRequest(
        payment_id=str(payment.public_id),
        msisdn=payment.msisdn,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        price_point=payment.price_point.code,
        description=payment.carrier_data.get(DESCRIPTION) or f"{payment.app.name}: {payment.price_point.code}",
        carrier_reference=payment.carrier_reference,
        state={**payment.carrier_data, "attempt": payment.charge_attempts, **asked_at(payment.outcome_unknown_since)},
    )


def asked_at(since: datetime | None) -> dict[str, str]:
    """When the call whose outcome is unknown was made, for an adapter that must judge "never received"."""
    return {"asked_at": since.isoformat()} if since is not None else {}


def dispatch(payment: Payment, task: str, *, countdown: int = 0) -> None:
    """Enqueue `payments.tasks.<task>(payment_id)` on the carrier's queue, after the current commit."""
    outbox.write(task_message(payment, task, countdown=countdown))


def task_message(payment: Payment, task: str, *, countdown: int = 0) -> OutboxMessage:
    """The outbox message of `dispatch`, not written yet (`outbox.new_message`)."""
    return outbox.new_message(
        f"payments.tasks.{task}",
        queue=carrier_queue(payment.carrier),
        countdown=countdown,
        payment_id=payment.pk,
        public_id=str(payment.public_id),
    )


# The carrier work and the PIN confirm read a payment this way several times a step: SQL built once per process.
_PAYMENT_READ = CompiledRead(lambda: Payment.objects.select_related("app", "carrier", "price_point"))
_PAYMENT_LOCK = CompiledRead(lambda: Payment.objects.select_for_update(of=("self",)).select_related("app", "carrier"))


def load_payment(payment_id: int) -> Payment:
    return PAYMENT_MONTHS.get(_PAYMENT_READ, payment_id)


def locked_payment(payment_id: int) -> Payment:
    return PAYMENT_MONTHS.get(_PAYMENT_LOCK, payment_id)


def _claim_call(payment_id: int, expected: str, *, count_attempt: bool = False) -> Payment | None:
    """Mark the payment as awaiting a carrier answer, unless it moved on or already awaits one."""
    with transaction.atomic():
        locked = locked_payment(payment_id)
        due = locked.next_attempt_at is None or locked.next_attempt_at <= timezone.now()
        if locked.status != expected or locked.outcome_unknown_since is not None or not due:
            return None
        tracking = outcomes.mark_unknown(locked)
        locked.next_attempt_at = None
        if count_attempt:
            locked.charge_attempts += 1
        locked.save(update_fields=[*tracking, "next_attempt_at", "charge_attempts", "updated_at"])
    return load_payment(payment_id)


def _call(payment: Payment, name: str) -> CarrierResult | None:
    """Call `name` (send_pin or charge); when the carrier must wait, release the claim and retry later."""
    request = charge_request(payment)
    operation: Callable[[CarrierAdapter], CarrierResult] = (
        (lambda adapter: adapter.send_pin(request)) if name == "send_pin" else (lambda adapter: adapter.charge(request))
    )
    try:
        return call_carrier(payment.carrier, operation, name=name, request=request)
    except CarrierBusy as busy:
        _schedule_retry(payment.pk, delay=timedelta(seconds=busy.retry_after), uncount=True)
        return None


def _schedule_retry(payment_id: int, *, delay: timedelta, uncount: bool = False) -> None:
    with transaction.atomic():
        locked = locked_payment(payment_id)
        cleared = outcomes.clear_unknown(locked)
        locked.next_attempt_at = timezone.now() + delay
        if uncount and locked.charge_attempts:
            locked.charge_attempts -= 1
        locked.save(update_fields=[*cleared, "next_attempt_at", "charge_attempts", "updated_at"])
        task = "start_payment" if locked.status == PaymentStatus.CREATED else "charge_payment"
        dispatch(locked, task, countdown=max(int(delay.total_seconds()), 1))
    if not uncount:  # a call put off by the gateway (breaker, rate limit) was logged there
        _log_retry(locked, delay, cause="no answer")


def _log_retry(payment: Payment, delay: timedelta, *, cause: str) -> None:
    logger.info(
        "payment %s: carrier call retried in %d s (%s)",
        payment.public_id,
        delay.total_seconds(),
        cause,
        extra={
            "payment_id": str(payment.public_id),
            "carrier": payment.carrier.slug,
            "retry_in_seconds": int(delay.total_seconds()),
            "cause": cause,
            "attempt": payment.charge_attempts,
        },
    )


def _merge_state(payment: Payment, result: CarrierResult) -> list[str]:
    fields = []
    if result.state:
        payment.carrier_data = {**payment.carrier_data, **result.state}
        fields.append("carrier_data")
    reference = result.carrier_reference
    if reference and reference != payment.carrier_reference and attach_carrier_reference(payment, reference):
        payment.carrier_reference = reference
        fields.append("carrier_reference")
    return fields


def fail(payment: Payment, result: CarrierResult, *, actor: str, extra_fields: list[str] | None = None) -> None:
    payment.failure_code, payment.failure_message = result.failure
    cleared = outcomes.clear_unknown(payment)
    payment.next_attempt_at = None
    reason = f"carrier: {payment.failure_code}" + (f" ({result.raw_code})" if result.raw_code else "")
    transition(
        payment,
        PaymentStatus.FAILED,
        actor=actor,
        reason=reason,
        update_fields=(
            "failure_code",
            "failure_message",
            *cleared,
            "next_attempt_at",
            *(extra_fields or []),
        ),
    )


def start_payment(*, payment_id: int) -> None:
    """Open the flow with the carrier: send the PIN, or charge at once for one-click."""
    payment = load_payment(payment_id)
    if payment.status != PaymentStatus.CREATED:
        return
    if payment.flow == PaymentFlow.ONE_CLICK:
        with transaction.atomic():
            locked = locked_payment(payment_id)
            if locked.status != PaymentStatus.CREATED:
                return
            transition(locked, PaymentStatus.CHARGING, actor="system", reason="one-click charge")
        charge_payment(payment_id=payment_id)
        return
    claimed = _claim_call(payment_id, PaymentStatus.CREATED, count_attempt=True)
    if claimed is None:
        return
    result = _call(claimed, "send_pin")
    if result is not None:
        record_start_result(payment_id=payment_id, result=result)


def _apply_result(
    payment_id: int,
    expected: str,
    result: CarrierResult,
    apply: Callable[[Payment, CarrierResult, str, list[str]], None],
    *,
    actor: str | None = None,
) -> None:
    """Lock the payment; if it is still in `expected`, keep the carrier's state and `apply` its answer.

    `apply` gets the locked payment, the result, the actor (the carrier's, unless the answer came
    another way, e.g. its settlement file) and the fields the carrier's state changed (to save with
    whatever it changes). A late or repeated answer finds the payment moved on and changes nothing.
    """
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.status != expected:
            return
        apply(locked, result, actor or carrier_actor(locked.carrier), _merge_state(locked, result))


def record_start_result(*, payment_id: int, result: CarrierResult) -> None:
    _apply_result(payment_id, PaymentStatus.CREATED, result, _apply_start_result)


def _apply_start_result(locked: Payment, result: CarrierResult, actor: str, fields: list[str]) -> None:
    if result.outcome == Outcome.PIN_SENT:
        cleared = outcomes.clear_unknown(locked)
        locked.pin_expires_at = timezone.now() + timedelta(seconds=settings.PIN_TTL_SECONDS)
        transition(
            locked,
            PaymentStatus.PIN_SENT,
            actor=actor,
            reason="PIN sent to the player",
            update_fields=("pin_expires_at", *cleared, *fields),
        )
    elif result.outcome == Outcome.FAILED and result.not_sent:
        locked.save(update_fields=[*fields, "updated_at"])
        _retry_or_fail(locked, result, actor=actor)
    elif result.outcome == Outcome.FAILED:
        fail(locked, result, actor=actor, extra_fields=fields)
    else:
        # Accepted for later or unknown: the callback or the resolver settles it.
        _outcome_unknown(locked, result, fields)


def charge_payment(*, payment_id: int) -> None:
    """Charge a payment in `charging`, unless a charge of it already awaits an answer."""
    claimed = _claim_call(payment_id, PaymentStatus.CHARGING, count_attempt=True)
    if claimed is None:
        return
    result = _call(claimed, "charge")
    if result is not None:
        record_charge_result(payment_id=payment_id, result=result)


def record_charge_result(*, payment_id: int, result: CarrierResult, actor: str | None = None) -> None:
    """Apply a carrier's answer to a charging payment. A late or repeated answer changes nothing.
    `actor`: who brought the answer, when not the carrier's call or callback."""
    _apply_result(payment_id, PaymentStatus.CHARGING, result, _apply_charge_result, actor=actor)


def _apply_charge_result(locked: Payment, result: CarrierResult, actor: str, fields: list[str]) -> None:
    if result.outcome == Outcome.SUCCEEDED:
        cleared = outcomes.clear_unknown(locked)
        locked.failure_code = locked.failure_message = ""
        transition(
            locked,
            PaymentStatus.SUCCEEDED,
            actor=actor,
            reason="charge confirmed by the carrier",
            update_fields=(*cleared, "failure_code", "failure_message", *fields),
        )
    elif result.outcome == Outcome.FAILED:
        locked.save(update_fields=[*fields, "updated_at"])
        _retry_or_fail(locked, result, actor=actor)
    else:
        _outcome_unknown(locked, result, fields)  # the callback or the resolver settles it


def _outcome_unknown(locked: Payment, result: CarrierResult, fields: list[str]) -> None:
    locked.save(update_fields=[*fields, "updated_at"])
    # INFO: an asynchronous carrier answering later is normal, and a failed call was logged by the gateway.
    logger.info(
        "payment %s: the carrier has not stated the outcome of its %s call yet",
        locked.public_id,
        locked.status,
        extra={
            "payment_id": str(locked.public_id),
            "carrier": locked.carrier.slug,
            "status": locked.status,
            "transport_failed": result.transport_failed,
            "raw_code": result.raw_code,
        },
    )


def _retry_or_fail(payment: Payment, result: CarrierResult, *, actor: str) -> None:
    """A failed call: retry it later where that is safe and allowed, else fail the payment."""
    carrier = payment.carrier
    delay: timedelta | None = None
    if result.not_sent and payment.charge_attempts < carrier.max_retries:
        delay = timedelta(seconds=carrier.retry_backoff_seconds * 2 ** max(payment.charge_attempts - 1, 0))
    elif result.error_code == ErrorCode.INSUFFICIENT_FUNDS and payment.flow == PaymentFlow.ONE_CLICK:
        delays = carrier.insufficient_funds_retry_delays
        earlier_declines = payment.insufficient_funds_declines
        if earlier_declines < len(delays):
            delay = timedelta(minutes=delays[earlier_declines])
            payment.insufficient_funds_declines = earlier_declines + 1
            payment.failure_code = ErrorCode.INSUFFICIENT_FUNDS
            payment.failure_message = f"declined; next attempt in {delays[earlier_declines]} min"
            payment.save(update_fields=["insufficient_funds_declines", "failure_code", "failure_message", "updated_at"])
    if delay is None:
        fail(payment, result, actor=actor)
        return
    if result.retry_after:  # never sooner than the carrier asked (its Retry-After)
        delay = max(delay, timedelta(seconds=result.retry_after))
    cleared = outcomes.clear_unknown(payment)
    payment.next_attempt_at = timezone.now() + delay
    payment.save(update_fields=[*cleared, "next_attempt_at", "updated_at"])
    _log_retry(payment, delay, cause=result.failure[0])
    dispatch(
        payment,
        "start_payment" if payment.status == PaymentStatus.CREATED else "charge_payment",
        countdown=max(int(delay.total_seconds()), 1),
    )


# The statuses in which a carrier call can await its answer.


def _forget_unknown(payment_id: int) -> None:
    """A payment that moved on (expired, settled) while marked: nothing is left to ask the carrier."""
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.status not in UNDECIDED_STATUSES and locked.outcome_unknown_since is not None:
            locked.save(update_fields=[*outcomes.clear_unknown(locked), "updated_at"])


def resolve_payment(*, payment_id: int) -> None:
    """Settle an unknown outcome the protocol's way (`CarrierAdapter.resolve_charge`): a status query, or
    the same charge sent again where the carrier deduplicates it. Runs from the resolver job."""
    payment = load_payment(payment_id)
    if payment.outcome_unknown_since is None:
        return
    if payment.status not in UNDECIDED_STATUSES:
        _forget_unknown(payment_id)
        return
    capabilities = adapter_class(payment.carrier.protocol).capabilities
    if payment.status == PaymentStatus.CREATED and not capabilities.asynchronous:
        # A PIN request that got no answer moves no money: send it again.
        _schedule_retry(payment_id, delay=timedelta(seconds=0))
        return
    if payment.status == PaymentStatus.PIN_SENT and not capabilities.asynchronous:
        # A PIN check whose verdict was lost moved no money, and the carrier is never asked about it: on
        # Parlay X that would be the charge itself. The player submits the PIN again (on CAMARA a second
        # validate of a validated payment answers ALREADY_EXISTS, read as verified).
        release_pin_check(payment_id=payment_id, taken_at=payment.outcome_unknown_since)
        return
    request = charge_request(payment)
    try:
        result = call_carrier(
            payment.carrier,
            lambda adapter: adapter.resolve_charge(request),
            name="query_status" if capabilities.status_query else "resend_charge",
            request=request,
        )
    except CarrierBusy as busy:
        with transaction.atomic():
            locked = locked_payment(payment_id)
            fields = outcomes.check_again_after(locked, timedelta(seconds=busy.retry_after))
            locked.save(update_fields=[*fields, "updated_at"])
        return
    if payment.status == PaymentStatus.CREATED:
        record_start_result(payment_id=payment_id, result=result)
    elif payment.status == PaymentStatus.CHARGING:
        record_charge_result(payment_id=payment_id, result=result)
    elif payment.status == PaymentStatus.PIN_SENT and result.outcome == Outcome.PIN_SENT:
        # The carrier still waits for a PIN: the one submitted never reached it.
        release_pin_check(payment_id=payment_id, taken_at=payment.outcome_unknown_since)
    elif payment.status == PaymentStatus.PIN_SENT:
        apply_pin_result(payment_id=payment_id, result=result)


# --- the PIN's verdict ---------------------------------------------------------------------------------


def app_actor(app: App) -> str:
    return f"app:{app.name}"


def pin_check_pending(payment: Payment) -> bool:
    """Whether the player's PIN is with the carrier (or queued for it) and its verdict not known yet."""
    return payment.status == PaymentStatus.PIN_SENT and payment.pin_submitted_at is not None


def record_pin_verdict(
    *, payment_id: int, verdict: CarrierResult | None, taken_at: datetime, retry_after: float | None = None
) -> None:
    """The answer to our own PIN check call, taken off the payment at `taken_at` (None: no call was made,
    the gateway put it off for `retry_after` s). A late answer, to a check since released, changes nothing.

    "No answer" is read here only: where the carrier states nothing but by the call's own answer
    (synchronous protocols), a PIN check without one moved no money and the player submits the PIN again.
    An asynchronous carrier charges when it gets the PIN: a call that may have reached it stays unknown,
    to be settled by its callback or the resolver's status query.
    """
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if not pin_check_pending(locked) or locked.outcome_unknown_since != taken_at:
            return
        asynchronous = adapter_class(locked.carrier.protocol).capabilities.asynchronous
        if verdict is None or verdict.not_sent or (verdict.transport_failed and not asynchronous):
            wait = retry_after if verdict is None else verdict.retry_after
            pin_to_submit_again(locked, error=ErrorCode.CARRIER_UNAVAILABLE, retry_after=wait)
            return
        _apply_pin_result(locked, verdict, carrier_actor(locked.carrier), _merge_state(locked, verdict))


def apply_pin_result(*, payment_id: int, result: CarrierResult) -> None:
    """A PIN check's result stated by the carrier (callback or status query) for a `pin_sent` payment."""
    _apply_result(payment_id, PaymentStatus.PIN_SENT, result, _apply_pin_result)


def _is_wrong_pin(result: CarrierResult) -> bool:
    return result.outcome == Outcome.PIN_REJECTED or (
        result.outcome == Outcome.FAILED and result.error_code == ErrorCode.INVALID_PIN
    )


def _apply_pin_result(locked: Payment, result: CarrierResult, actor: str, fields: list[str]) -> None:
    """The one rule for a PIN verdict the carrier stated, however it came (call, callback, status query)."""
    if result.outcome in (Outcome.PIN_VERIFIED, Outcome.SUCCEEDED):
        locked.next_attempt_at = None
        transition(
            locked,
            PaymentStatus.PIN_VERIFIED,
            actor=actor,
            reason="PIN verified",
            update_fields=(*outcomes.clear_unknown(locked), "next_attempt_at", *fields),
        )
        if result.outcome == Outcome.SUCCEEDED:  # the carrier charged on the PIN itself
            transition(locked, PaymentStatus.CHARGING, actor=actor, reason="charged by the carrier on the PIN")
            transition(locked, PaymentStatus.SUCCEEDED, actor=actor, reason="charge confirmed by the carrier")
        else:
            transition(locked, PaymentStatus.CHARGING, actor=app_actor(locked.app), reason="charge after PIN")
            dispatch(locked, "charge_payment")
    elif result.outcome in (Outcome.FAILED, Outcome.PIN_REJECTED) and result.error_code == ErrorCode.PIN_EXPIRED:
        transition(
            locked,
            PaymentStatus.EXPIRED,
            actor=actor,
            reason="carrier: PIN expired",
            update_fields=(*outcomes.clear_unknown(locked), *fields),
        )
        dispatch(locked, "cancel_payment")
    elif _is_wrong_pin(result):
        pin_to_submit_again(locked, error=ErrorCode.INVALID_PIN, fields=fields)
        count_wrong_pin(locked, actor=actor)
    elif result.outcome == Outcome.FAILED:
        fail(locked, result, actor=actor, extra_fields=fields)
    else:
        # Taken, its verdict to come (an asynchronous carrier): by callback, or the resolver asks.
        tracking = outcomes.mark_unknown(locked) if pin_check_pending(locked) else []
        locked.save(update_fields=[*fields, *tracking, "updated_at"])


def pin_to_submit_again(
    locked: Payment, *, error: str, retry_after: float | None = None, fields: Iterable[str] = ()
) -> None:
    """The PIN check is over without a verdict the player must live with: the player submits a PIN again
    (after `retry_after` s where the carrier asked for a wait)."""
    locked.pin_submitted_at = None
    locked.pin_ciphertext = ""
    locked.pin_error = error
    # A `pin_sent` payment has no attempt of ours to schedule: the field tells the app when to submit.
    locked.next_attempt_at = timezone.now() + timedelta(seconds=retry_after) if retry_after else None
    locked.save(
        update_fields=[
            "pin_submitted_at",
            "pin_ciphertext",
            "pin_error",
            "next_attempt_at",
            *outcomes.clear_unknown(locked),
            *fields,
            "updated_at",
        ]
    )


def release_pin_check(*, payment_id: int, taken_at: datetime | None) -> None:
    """Give a synchronous PIN check that will get no verdict (its task or worker lost) back to the player;
    a PIN check moves no money. Nothing changes if the check was released or answered meanwhile."""
    with transaction.atomic():
        locked = locked_payment(payment_id)
        if locked.outcome_unknown_since != taken_at:
            return
        if pin_check_pending(locked):
            pin_to_submit_again(locked, error=ErrorCode.CARRIER_UNAVAILABLE)
        elif locked.status == PaymentStatus.PIN_SENT and taken_at is not None:
            locked.save(update_fields=[*outcomes.clear_unknown(locked), "updated_at"])


def count_wrong_pin(payment: Payment, *, actor: str) -> int:
    """Count a wrong PIN on a locked `pin_sent` payment; it fails at PIN_MAX_ATTEMPTS. Returns attempts left."""
    payment.pin_attempts += 1
    remaining = max(settings.PIN_MAX_ATTEMPTS - payment.pin_attempts, 0)
    if remaining:
        payment.save(update_fields=["pin_attempts", "updated_at"])
        return remaining
    payment.failure_code = ErrorCode.INVALID_PIN
    payment.failure_message = "Too many wrong PINs"
    transition(
        payment,
        PaymentStatus.FAILED,
        actor=actor,
        reason="too many wrong PINs",
        update_fields=("pin_attempts", "failure_code", "failure_message"),
    )
    dispatch(payment, "cancel_payment")
    return 0


def cancel_at_carrier(*, payment_id: int) -> None:
    """Release what an abandoned flow holds at the carrier (reservation, prepared payment)."""
    payment = load_payment(payment_id)
    if payment.status not in (PaymentStatus.EXPIRED, PaymentStatus.FAILED) or not payment.carrier_reference:
        return
    with contextlib.suppress(CarrierBusy):  # a reservation lapses at the carrier on its own
        request = charge_request(payment)
        call_carrier(payment.carrier, lambda adapter: adapter.cancel(request), name="cancel", request=request)


def apply_notification(*, carrier: Carrier, notification: Notification) -> str:
    """Apply a verified carrier callback to its payment; returns what was done, for the log."""
    if notification.kind != NotificationKind.PAYMENT:
        return "ignored: not a payment notification"
    if notification.payment_id:
        payment = Payment.objects.filter(carrier=carrier).with_public_id(notification.payment_id).first()
    else:
        payment = payment_by_carrier_reference(carrier=carrier, reference=notification.carrier_reference)
    if payment is None:
        return "ignored: unknown payment"
    result = notification.result
    before = payment.status
    if notification.outcome == Outcome.PENDING:
        return f"ignored: pending never overrides ({before})"
    if before == PaymentStatus.CREATED:
        record_start_result(payment_id=payment.pk, result=result)
    elif before == PaymentStatus.PIN_SENT:
        apply_pin_result(payment_id=payment.pk, result=result)
    elif before == PaymentStatus.PIN_VERIFIED and notification.outcome != Outcome.PIN_SENT:
        with transaction.atomic():
            locked = locked_payment(payment.pk)
            if locked.status == PaymentStatus.PIN_VERIFIED:
                transition(locked, PaymentStatus.CHARGING, actor=carrier_actor(carrier), reason="charge after PIN")
        record_charge_result(payment_id=payment.pk, result=result)
    elif before == PaymentStatus.CHARGING:
        record_charge_result(payment_id=payment.pk, result=result)
    after = Payment.objects.values_list("status", flat=True).get(pk=payment.pk, created_at=payment.created_at)
    return f"{before} -> {after}" if after != before else f"no change ({before})"


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# How far ahead the due-attempts job (every 30 s) looks with a broker: an attempt due before its next run is sent
# now with the seconds left as its countdown, so that paced attempts (renewals) reach the carrier as paced, not
# in 30-second bursts. In process (no broker) a countdown cannot wait, so nothing is sent early.
DUE_LOOKAHEAD = timedelta(seconds=30)


def due_attempts(*, batch: int = 1000, pages: int = 20) -> int:
    """Dispatch the payments whose next attempt is due (a paced renewal, a retry after a carrier asked to wait;
    it also covers lost messages and the in-process mode), in batches of `batch`, at most `pages` of them a run
    (20,000: more than any carrier takes in the 30 s to the next run, so a backlog of sent but not yet claimed
    payments, each sent again by every run until its task claims it, stays bounded); returns how many."""
    now = timezone.now()
    ahead = timedelta(0) if outbox.runs_in_process() else DUE_LOOKAHEAD
    due = Payment.objects.filter(
        next_attempt_at__lte=now + ahead, status__in=[PaymentStatus.CREATED, PaymentStatus.CHARGING]
    ).order_by("next_attempt_at", "id")
    count = 0
    after: Q = Q()
    while True:
        # Keyset pages: a payment dispatched here stays due until its task claims it, which may be later.
        page = list(due.filter(after).select_related("carrier")[:batch])
        with transaction.atomic():
            for payment in page:
                assert payment.next_attempt_at is not None
                wait = max(0, math.ceil((payment.next_attempt_at - now).total_seconds()))
                dispatch(
                    payment,
                    "start_payment" if payment.status == PaymentStatus.CREATED else "charge_payment",
                    countdown=wait,
                )
        count += len(page)
        pages -= 1
        if len(page) < batch or pages <= 0:
            return count
        last = page[-1]
        after = Q(next_attempt_at__gt=last.next_attempt_at) | Q(next_attempt_at=last.next_attempt_at, id__gt=last.pk)
