"""Periodic payment housekeeping; scheduled in django-celery-beat by a data migration."""

from celery import shared_task

from payments.services.idempotency import purge_expired_keys
from payments.services.payments import expire_abandoned_payments


@shared_task(acks_late=True)
def purge_idempotency_keys() -> int:
    return purge_expired_keys()


@shared_task(acks_late=True)
def expire_abandoned() -> int:
    return expire_abandoned_payments()
