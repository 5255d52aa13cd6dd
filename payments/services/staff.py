"""What staff do from the admin: refunds and reversals with a reason, each recorded."""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser

from journal.services import record_staff_action
from payments.models import Payment
from payments.services.refunds import (
    carrier_refunds,
    refund_refusal,
    request_refund,
    request_reversal,
    reversal_refusal,
)
from playpay.errors import DomainError
from playpay.money import format_money


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
            result = ActionResult(payment, True, f"refund of {refund.amount_minor} {refund.currency}: {refund.status}")
        except DomainError as error:
            result = ActionResult(payment, False, f"refused: {error.detail}")
        record_staff_action(user=user, action="refund", target=payment, reason=reason, outcome=result.message)
        results.append(result)
    return results


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


def preview_operation(payment: Payment, action: str) -> Preview:
    """What a refund (of all that is left) or a reversal of `payment` would do, before it is confirmed."""
    left = payment.amount_minor - payment.refunded_minor
    charged = format_money(payment.amount_minor, payment.currency)
    refunded = format_money(payment.refunded_minor, payment.currency)
    carrier = payment.carrier
    if action == "refund":
        refusal = refund_refusal(payment) or (None if left > 0 else "Nothing is left to refund.")
        how = (
            f"through {carrier.slug}"
            if carrier_refunds(payment)
            else "paid by the platform (the carrier cannot refund)"
        )
        plan = refusal or f"refund {format_money(left, payment.currency)} {how}"
    else:
        refusal = reversal_refusal(payment)
        plan = refusal or f"reverse the whole charge of {charged}, undoing its ledger entry"
    allowed = refusal is None
    return Preview(payment=payment, charged=charged, refunded=refunded, allowed=allowed, plan=plan)
