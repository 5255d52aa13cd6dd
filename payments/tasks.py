"""Celery tasks: thin wrappers over the services. Per-payment tasks run on the carrier's queue
(`carrier.<slug>`); the periodic ones are declared in django-celery-beat by a data migration."""

from celery import shared_task

from payments.services import carrier_flow, outbox, refunds, resolver, webhooks
from payments.services.idempotency import purge_expired_keys
from payments.services.payments import check_submitted_pin, expire_abandoned_payments
from playpay.logging import bind

# At-least-once (acks_late, reject_on_worker_lost, also the project defaults): a task whose
# worker dies is delivered again; every task re-reads its payment before acting.


# A task about a payment is sent with the payment's public id (the one the API, the journal and the
# admin show) beside its row id, so that its log lines carry it without a query; messages queued
# before it was sent lack it, hence the default.


@shared_task(acks_late=True, reject_on_worker_lost=True)
def start_payment(payment_id: int, public_id: str = "") -> None:
    bind(payment_id=public_id)
    carrier_flow.start_payment(payment_id=payment_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def charge_payment(payment_id: int, public_id: str = "") -> None:
    bind(payment_id=public_id)
    carrier_flow.charge_payment(payment_id=payment_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def check_pin(payment_id: int, public_id: str = "") -> None:
    # The PIN is not in the message: the task reads it, encrypted, from the payment.
    bind(payment_id=public_id)
    check_submitted_pin(payment_id=payment_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def resolve_payment(payment_id: int, public_id: str = "") -> None:
    bind(payment_id=public_id)
    carrier_flow.resolve_payment(payment_id=payment_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def cancel_payment(payment_id: int, public_id: str = "") -> None:
    bind(payment_id=public_id)
    carrier_flow.cancel_at_carrier(payment_id=payment_id)


@shared_task(acks_late=True)
def relay_outbox() -> int:
    return outbox.relay_pending()


@shared_task(acks_late=True)
def dispatch_due_attempts() -> int:
    return carrier_flow.due_attempts()


@shared_task(acks_late=True)
def resolve_unknown_outcomes() -> int:
    return resolver.unknown_outcomes()


@shared_task(acks_late=True)
def purge_idempotency_keys() -> int:
    return purge_expired_keys() + outbox.purge_sent()


@shared_task(acks_late=True)
def expire_abandoned() -> int:
    return expire_abandoned_payments()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def deliver_webhook(delivery_id: int) -> None:
    webhooks.deliver(delivery_id=delivery_id)


@shared_task(acks_late=True)
def dispatch_due_webhooks() -> int:
    return webhooks.due_deliveries()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def execute_refund(refund_id: int, public_id: str = "", payment_public_id: str = "") -> None:
    bind(refund_id=public_id, payment_id=payment_public_id)
    refunds.execute_refund(refund_id=refund_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def execute_reversal(payment_id: int, public_id: str = "") -> None:
    bind(payment_id=public_id)
    refunds.execute_reversal(payment_id=payment_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def resolve_refund(refund_id: int, public_id: str = "", payment_public_id: str = "") -> None:
    bind(refund_id=public_id, payment_id=payment_public_id)
    refunds.resolve_refund(refund_id=refund_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def resolve_reversal(reversal_id: int, public_id: str = "") -> None:
    bind(payment_id=public_id)
    refunds.resolve_reversal(reversal_id=reversal_id)
