"""Periodic carrier jobs."""

from celery import shared_task

from carriers.gateway import refresh_health
from carriers.models import Carrier


@shared_task(acks_late=True)
def refresh_carrier_health() -> int:
    carriers = list(Carrier.objects.filter(is_active=True))
    for carrier in carriers:
        refresh_health(carrier)
    return len(carriers)
