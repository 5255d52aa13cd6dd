"""Celery tasks of subscriptions: thin wrappers over the services; the periodic one is declared in
django-celery-beat by a data migration."""

from celery import shared_task
from django.utils import timezone

from subscriptions.services.charges import refund_unwanted_charge as refund_charge
from subscriptions.services.renewals import run_renewals


@shared_task(acks_late=True)
def renew_due_subscriptions() -> int:
    """Charge the subscriptions whose period is due (a run that overlaps another takes other rows)."""
    return run_renewals(now=timezone.now()).charged


@shared_task(acks_late=True, reject_on_worker_lost=True)
def refund_unwanted_charge(charge_id: int) -> None:
    """Refund a charge that succeeded after its subscription ended (queued by its settlement)."""
    refund_charge(charge_id=charge_id)
