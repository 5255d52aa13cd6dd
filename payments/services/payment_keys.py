"""The payments' keys that are unique across months: an app's idempotency key and a carrier's reference.

The payments table is partitioned by month on PostgreSQL, where a unique index must hold the month: each key
is claimed in a small unpartitioned table (`PaymentIdempotencyKey`, `PaymentCarrierReference`) in the
transaction that gives it to a payment, and the carrier reference's table is also how a carrier's callback
finds its payment, reading that payment's month only.
"""

import logging

from django.db import connection
from django.db.models import Exists

from carriers.models import Carrier
from payments.models import IdempotencyRecord, Payment, PaymentCarrierReference, PaymentIdempotencyKey
from payments.services.idempotency import expired_before, key_claimed_once
from playpay.inserts import insert_rows

logger = logging.getLogger(__name__)


def claim_idempotency_key(payment: Payment) -> None:
    """Claim the payment's idempotency key for its app; call in the transaction that inserts the payment.
    Raises KeyAlreadyClaimed when another payment of the app has it (`key_claimed_once`)."""
    if not payment.idempotency_key:
        return
    with key_claimed_once(payment.idempotency_key):
        insert_rows(idempotency_key_row(payment))


def idempotency_key_row(payment: Payment) -> PaymentIdempotencyKey:
    """The claim of the payment's idempotency key for its app, not written yet: insert it in the transaction
    that inserts the payment, inside `idempotency.key_claimed_once`."""
    return PaymentIdempotencyKey(
        app_id=payment.app_id, key=payment.idempotency_key, payment=payment, payment_created_at=payment.created_at
    )


def release_expired_idempotency_key(*, app_id: int, key: str) -> bool:
    """Free an app's key that expired (its request's record purged, its payment older than the keys' time to
    live) for a new payment to claim; the old payment keeps the key on its own row. False when the key is
    held: by a record (a request running, or one to replay), or by a payment too young to have expired."""
    held = IdempotencyRecord.objects.filter(app_id=app_id, key=key)
    released, _ = PaymentIdempotencyKey.objects.filter(
        ~Exists(held), app_id=app_id, key=key, payment_created_at__lt=expired_before()
    ).delete()
    return released > 0


# One statement on the common path (a new reference): the row, or nothing when the reference is taken.
CLAIM_REFERENCE = (
    "INSERT INTO payments_paymentcarrierreference (carrier_id, reference, payment_id, payment_created_at) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (carrier_id, reference) DO NOTHING RETURNING payment_id"
)


def attach_carrier_reference(payment: Payment, reference: str) -> bool:
    """Make `reference` the payment's carrier reference in the key table; call under the payment's lock, in
    the transaction that sets `carrier_reference`. False, logged as an error, when the carrier gave the same
    reference to another payment: the reference stays that payment's and this one is not given it."""
    with connection.cursor() as cursor:
        cursor.execute(CLAIM_REFERENCE, [payment.carrier_id, reference, payment.pk, payment.created_at])
        claimed = cursor.fetchone() is not None
    if not claimed:
        owner_id = (
            PaymentCarrierReference.objects.filter(carrier_id=payment.carrier_id, reference=reference)
            .values_list("payment_id", flat=True)
            .first()
        )
        if owner_id != payment.pk:
            logger.error(
                "carrier reference already belongs to another payment",
                extra={
                    "carrier": payment.carrier.slug,
                    "carrier_reference": reference,
                    "payment_id": str(payment.public_id),
                    "owner_payment_pk": owner_id,
                },
            )
            return False
    previous = payment.carrier_reference
    if previous and previous != reference:  # it no longer names the payment (a callback names the current one)
        PaymentCarrierReference.objects.filter(
            carrier_id=payment.carrier_id, reference=previous, payment_id=payment.pk
        ).delete()
    return True


def payment_by_carrier_reference(*, carrier: Carrier, reference: str) -> Payment | None:
    """The payment the carrier gave this reference to, read from its month's partition; None if none."""
    key = (
        PaymentCarrierReference.objects.filter(carrier=carrier, reference=reference)
        .values_list("payment_id", "payment_created_at")
        .first()
    )
    if key is None:
        return None
    payment_id, created_at = key
    return Payment.objects.filter(pk=payment_id, created_at=created_at).first()
