"""What staff do from the admin: refunds and reversals with a reason, each recorded; four-eyes refunds."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import TextChoices
from django.utils import timezone

from carriers.adapters import adapter_class
from carriers.gateway import CarrierBusy, call_carrier
from journal.services import record_staff_action
from payments.models import Payment, RefundApproval, WebhookDelivery
from payments.services import webhooks
from payments.services.carrier_flow import charge_request, dispatch
from payments.services.refunds import (
    carrier_refunds,
    refund_refusal,
    request_refund,
    request_reversal,
    reversal_refusal,
)
from playpay.errors import DomainError
from playpay.money import currency_exponent, format_money


class RefundReason(TextChoices):
    """Why staff refund: a short list finance can count, with a free-text note beside it."""

    CUSTOMER_REQUEST = "customer_request", "customer request"
    DUPLICATE = "duplicate", "duplicate charge"
    FRAUD = "fraud", "fraud"
    TECHNICAL_ERROR = "technical_error", "technical error"
    GOODWILL = "goodwill", "goodwill"
    OTHER = "other", "other"


def refund_reason(*, code: str, note: str) -> str:
    """The reason kept with a refund: its code's label, then the note ("goodwill: ticket #123")."""
    label = str(RefundReason(code).label)
    return f"{label}: {note.strip()}" if note.strip() else label


class ApprovalRefused(Exception):
    """A four-eyes decision that cannot be taken; says why, in a sentence for the person."""


@dataclass(frozen=True)
class ActionResult:
    payment: Payment
    ok: bool
    message: str


def staff_actor(user: AbstractBaseUser) -> str:
    return f"staff:{user.get_username()}"


def refund_payments(
    *, user: AbstractBaseUser, payments: list[Payment], reason: str, amount_minor: int | None = None
) -> list[ActionResult]:
    """Refund each payment (all that is left, or `amount_minor` for a single one); each one is recorded."""
    results = []
    for payment in payments:
        try:
            refund = request_refund(payment=payment, amount_minor=amount_minor, reason=reason, actor=staff_actor(user))
            result = ActionResult(
                payment, True, f"refund of {format_money(refund.amount_minor, refund.currency)}: {refund.status}"
            )
        except DomainError as error:
            result = ActionResult(payment, False, f"refused: {error.detail}")
        record_staff_action(user=user, action="refund", target=payment, reason=reason, outcome=result.message)
        results.append(result)
    return results


def approval_threshold_minor(currency: str) -> int | None:
    """Refunds above this many minor units of `currency` wait for a second person; None: every refund does."""
    above = settings.REFUND_APPROVAL_ABOVE.get(currency.upper())
    if above is None:
        return None
    return int(Decimal(above).scaleb(currency_exponent(currency)))


def needs_approval(payment: Payment, *, amount_minor: int | None, bulk: bool) -> bool:
    """Whether a staff refund of `payment` waits for a second person: every bulk refund, and any above the
    currency's threshold (REFUND_APPROVAL_ABOVE)."""
    if bulk:
        return True
    amount = payment.amount_minor - payment.refunded_minor if amount_minor is None else amount_minor
    threshold = approval_threshold_minor(payment.currency)
    return threshold is None or amount > threshold


def ask_refunds(
    *, user: AbstractBaseUser, payments: list[Payment], reason: str, amount_minor: int | None = None
) -> list[ActionResult]:
    """Refund now what one person may refund alone; put the rest (large, or bulk) up for a second person."""
    bulk = len(payments) > 1
    results = []
    for payment in payments:
        allowed = preview_operation(payment, "refund", amount_minor=amount_minor).allowed
        if not allowed or not needs_approval(payment, amount_minor=amount_minor, bulk=bulk):
            # Refused at once (and recorded) when it cannot be done: nobody is asked to approve the impossible.
            results += refund_payments(user=user, payments=[payment], reason=reason, amount_minor=amount_minor)
            continue
        approval = RefundApproval.objects.create(
            payment=payment,
            amount_minor=amount_minor,
            currency=payment.currency,
            reason=reason[:255],
            requested_by_id=user.pk,
        )
        message = f"refund of {_approval_amount(approval, payment)} awaits a second person's approval"
        record_staff_action(user=user, action="refund_requested", target=payment, reason=reason, outcome=message)
        results.append(ActionResult(payment, True, message))
    return results


def _approval_amount(approval: RefundApproval, payment: Payment) -> str:
    if approval.amount_minor is None:
        return f"all that is left ({format_money(payment.amount_minor - payment.refunded_minor, payment.currency)})"
    return format_money(approval.amount_minor, approval.currency)


def _payment_of(approval: RefundApproval) -> Payment:
    # With its month: on PostgreSQL only that partition is read.
    return Payment.objects.select_related("app", "carrier").get(
        pk=approval.payment_id, created_at=approval.payment_created_at
    )


def _pending(approval_id: int, user: AbstractBaseUser) -> RefundApproval:
    approval = RefundApproval.objects.select_for_update(of=("self",)).select_related("requested_by").get(pk=approval_id)
    if approval.status != RefundApproval.Status.PENDING:
        raise ApprovalRefused(f"This refund was already {approval.status} by {approval.decided_by}.")
    if approval.requested_by_id == user.pk:
        raise ApprovalRefused("You asked for this refund: another person has to approve or reject it.")
    return approval


def approve_refund(*, user: AbstractBaseUser, approval_id: int, reason: str) -> ActionResult:
    """A second person approves a waiting refund: it runs now, once; the refund service decides whether it
    still can (the payment may have changed since)."""
    with transaction.atomic():
        approval = _pending(approval_id, user)
        payment = _payment_of(approval)
        note = f"{approval.reason} (asked by {approval.requested_by.get_username()}, approved: {reason})"
        [result] = refund_payments(user=user, payments=[payment], reason=note, amount_minor=approval.amount_minor)
        approval.status = RefundApproval.Status.APPROVED
        approval.decided_by_id = user.pk
        approval.decided_at = timezone.now()
        approval.decision_reason = reason[:255]
        approval.outcome = result.message[:255]
        approval.save()
    return result


def reject_refund(*, user: AbstractBaseUser, approval_id: int, reason: str) -> ActionResult:
    """A second person rejects a waiting refund: nothing is paid back; the rejection and its reason are kept."""
    with transaction.atomic():
        approval = _pending(approval_id, user)
        approval.status = RefundApproval.Status.REJECTED
        approval.decided_by_id = user.pk
        approval.decided_at = timezone.now()
        approval.decision_reason = reason[:255]
        approval.outcome = "rejected: nothing refunded"
        approval.save()
        payment = _payment_of(approval)
        message = f"refund of {_approval_amount(approval, payment)} rejected"
        record_staff_action(user=user, action="refund_rejected", target=payment, reason=reason, outcome=message)
    return ActionResult(payment, True, message)


def reverse_payments(*, user: AbstractBaseUser, payments: list[Payment], reason: str) -> list[ActionResult]:
    results = []
    for payment in payments:
        try:
            reversal = request_reversal(payment=payment, reason=reason, actor=staff_actor(user))
            result = ActionResult(payment, True, f"reversal: {reversal.status}")
        except DomainError as error:
            result = ActionResult(payment, False, f"refused: {error.detail}")
        record_staff_action(user=user, action="reverse", target=payment, reason=reason, outcome=result.message)
        results.append(result)
    return results


@dataclass(frozen=True)
class Preview:
    payment: Payment
    charged: str
    refunded: str
    allowed: bool
    plan: str


def preview_operation(payment: Payment, action: str, *, amount_minor: int | None = None, bulk: bool = False) -> Preview:
    """What a refund (of `amount_minor`, default all that is left) or a reversal of `payment` would do, before
    it is confirmed; a refund that waits for a second person's approval says so."""
    left = payment.amount_minor - payment.refunded_minor
    charged = format_money(payment.amount_minor, payment.currency)
    refunded = format_money(payment.refunded_minor, payment.currency)
    carrier = payment.carrier
    if action == "refund":
        amount = left if amount_minor is None else amount_minor
        refusal = refund_refusal(payment) or (
            None
            if 0 < amount <= left
            else f"At most {format_money(left, payment.currency)} is left to refund."
            if left > 0
            else "Nothing is left to refund."
        )
        how = (
            f"through {carrier.slug}"
            if carrier_refunds(payment)
            else "paid by the platform (the carrier cannot refund)"
        )
        wait = (
            ", after a second person approves it"
            if needs_approval(payment, amount_minor=amount_minor, bulk=bulk)
            else ""
        )
        plan = refusal or f"refund {format_money(amount, payment.currency)} {how}{wait}"
    else:
        refusal = reversal_refusal(payment)
        plan = refusal or f"reverse the whole charge of {charged}, undoing its ledger entry"
    allowed = refusal is None
    return Preview(payment=payment, charged=charged, refunded=refunded, allowed=allowed, plan=plan)


def can_query_carrier(payment: Payment) -> bool:
    """Whether the carrier can be asked about this payment: it has the carrier's reference, and the protocol a
    status query."""
    return bool(payment.carrier_reference) and adapter_class(payment.carrier.protocol).capabilities.status_query


def query_carrier_status(*, user: AbstractBaseUser, payment: Payment) -> ActionResult:
    """Ask the carrier what it knows of the payment, and say it; a payment whose outcome is unknown is handed
    to the resolver, which settles it from the same answer the normal way."""
    request = charge_request(payment)
    try:
        result = call_carrier(
            payment.carrier,
            lambda adapter: adapter.query_status(request),
            name="query_status",
            request=request,
            payment_id=str(payment.public_id),
        )
    except CarrierBusy as busy:
        outcome = ActionResult(payment, False, f"the carrier cannot be asked now: {busy}")
    else:
        said = f"the carrier says {result.outcome}" + (f" ({result.raw_code})" if result.raw_code else "")
        if payment.outcome_unknown_since is not None:
            with transaction.atomic():
                dispatch(payment, "resolve_payment")
            said += "; the payment's unknown outcome is being settled from it"
        outcome = ActionResult(payment, not result.transport_failed, said)
    record_staff_action(user=user, action="query_status", target=payment, reason="", outcome=outcome.message)
    return outcome


def resend_payment_webhook(*, user: AbstractBaseUser, payment: Payment) -> ActionResult:
    """Send the app the payment's latest webhook again now (same webhook-id), or a new one of its state when
    none was sent."""
    delivery = WebhookDelivery.objects.filter(payment=payment, payment_created_at=payment.created_at).last()
    if delivery is not None:
        webhooks.replay(delivery=delivery)
        message = f"webhook {delivery.event_type} ({delivery.message_id}) queued again"
    else:
        with transaction.atomic():
            delivery = webhooks.queue_payment_webhook(payment)
        message = f"webhook {delivery.event_type} queued" if delivery else "the app has no webhook URL"
    record_staff_action(user=user, action="resend_webhook", target=payment, reason="", outcome=message)
    return ActionResult(payment, delivery is not None, message)
