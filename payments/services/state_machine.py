"""The payment state machine: the allowed transitions and the one function that applies them.

What a transition causes beyond the payment's own row and history (ledger postings,
webhooks, funnel steps, metrics) subscribes to the `PaymentStatusChanged` event it
publishes (`payments.events`).
"""

import logging

from django.db import transaction

from payments.errors import IllegalTransition
from payments.events import PaymentStatusChanged, publish
from payments.models import Payment, PaymentStatus, PaymentStatusChange
from playpay.inserts import insert_rows

logger = logging.getLogger(__name__)

TRANSITIONS: dict[str, frozenset[str]] = {
    PaymentStatus.CREATED: frozenset({PaymentStatus.PIN_SENT, PaymentStatus.CHARGING, PaymentStatus.FAILED}),
    PaymentStatus.PIN_SENT: frozenset({PaymentStatus.PIN_VERIFIED, PaymentStatus.FAILED, PaymentStatus.EXPIRED}),
    PaymentStatus.PIN_VERIFIED: frozenset({PaymentStatus.CHARGING, PaymentStatus.FAILED}),
    PaymentStatus.CHARGING: frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}),
    PaymentStatus.SUCCEEDED: frozenset(
        {PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED, PaymentStatus.REVERSED}
    ),
    PaymentStatus.PARTIALLY_REFUNDED: frozenset({PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.EXPIRED: frozenset(),
    PaymentStatus.REFUNDED: frozenset(),
    PaymentStatus.REVERSED: frozenset(),
}
FINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
# Apps receive a webhook whenever a payment reaches one of these.
WEBHOOK_STATUSES = FINAL_STATUSES | {PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED}


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
        payment=payment,
        payment_created_at=payment.created_at,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        reason=reason[:255],
    )
    _published(change, payment)
    return change


def record_creation(payment: Payment, *, actor: str) -> PaymentStatusChange:
    """The first history entry of a payment (no previous status)."""
    change = creation_entry(payment, actor=actor)
    insert_rows(change)
    published_creation(change, payment)
    return change


def creation_entry(payment: Payment, *, actor: str) -> PaymentStatusChange:
    """`record_creation`'s entry, not written yet: for a service that inserts it with the payment's other rows
    in one round trip (`insert_rows`), then calls `published_creation`."""
    return PaymentStatusChange(
        payment=payment,
        payment_created_at=payment.created_at,
        from_status="",
        to_status=payment.status,
        actor=actor,
        reason="payment created",
    )


def published_creation(change: PaymentStatusChange, payment: Payment) -> None:
    """What follows a payment's first entry once it is written: its log line and its event."""
    _published(change, payment)


def _published(change: PaymentStatusChange, payment: Payment) -> None:
    logger.info(
        "payment %s: %s -> %s (%s)",
        payment.public_id,
        change.from_status or "new",
        change.to_status,
        change.reason,
        extra={
            "payment_id": str(payment.public_id),
            "from_status": change.from_status,
            "to_status": change.to_status,
            "actor": change.actor,
            "carrier": payment.carrier.slug,
        },
    )
    publish(
        PaymentStatusChanged(
            payment=payment,
            from_status=change.from_status,
            to_status=change.to_status,
            actor=change.actor,
            occurred_at=change.created_at,
        )
    )
