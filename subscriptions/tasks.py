"""Celery tasks of subscriptions: thin wrappers over the services; the periodic one is declared in
django-celery-beat by a data migration."""

from celery import shared_task
from django.utils import timezone

from subscriptions.services.renewals import run_renewals


@shared_task(acks_late=True)
def renew_due_subscriptions() -> int:
    """Charge the subscriptions whose period is due (a run that overlaps another takes other rows)."""
    return run_renewals(now=timezone.now()).charged
