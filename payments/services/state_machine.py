"""The payment state machine: the allowed transitions and the one function that applies them."""

from django.db import transaction

from funnel.services import record_platform_step
from payments.errors import IllegalTransition
from payments.models import Payment, PaymentStatus, PaymentStatusChange
from payments.services import ledger, webhooks

S = PaymentStatus

TRANSITIONS: dict[str, frozenset[str]] = {
    S.CREATED: frozenset({S.PIN_SENT, S.CHARGING, S.FAILED}),
    S.PIN_SENT: frozenset({S.PIN_VERIFIED, S.FAILED, S.EXPIRED}),
    S.PIN_VERIFIED: frozenset({S.CHARGING, S.FAILED}),
    S.CHARGING: frozenset({S.SUCCEEDED, S.FAILED}),
    S.SUCCEEDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.REVERSED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
    S.REFUNDED: frozenset(),
    S.REVERSED: frozenset(),
}
FINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
# Apps are notified (webhooks) whenever a payment reaches one of these.
NOTIFIED_STATUSES = FINAL_STATUSES | {S.SUCCEEDED, S.PARTIALLY_REFUNDED}


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def transition(
    payment: Payment,
    to_status: str,
    *,
    actor: str,
    reason: str = "",
    update_fields: tuple[str, ...] = (),
) -> PaymentStatusChange:
    """Move a locked payment to `to_status` and record it in its history.

    Call inside `transaction.atomic()` on a row fetched with `select_for_update()`.
    `update_fields` names other fields the caller changed on `payment`.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("payment transitions must run inside transaction.atomic()")
    from_status = payment.status
    if not can_transition(from_status, to_status):
        raise IllegalTransition(
            f"A payment in status {from_status!r} cannot become {to_status!r}.",
            payment_status=from_status,
        )
    payment.status = to_status
    payment.save(update_fields=["status", "updated_at", *update_fields])
    change = PaymentStatusChange.objects.create(
        payment=payment, from_status=from_status, to_status=to_status, actor=actor, reason=reason[:255]
    )
    record_platform_step(payment, to_status, occurred_at=change.created_at)
    if to_status == S.SUCCEEDED:
        ledger.post_charge(payment)
    if to_status in NOTIFIED_STATUSES:
        webhooks.notify_payment(payment)
    return change


def record_creation(payment: Payment, *, actor: str) -> PaymentStatusChange:
    """The first history entry of a payment (no previous status)."""
    change = PaymentStatusChange.objects.create(
        payment=payment, from_status="", to_status=payment.status, actor=actor, reason="payment created"
    )
    record_platform_step(payment, payment.status, occurred_at=change.created_at)
    return change
