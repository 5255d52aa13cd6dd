"""Celery tasks of the sandbox: the simulators' own periodic work, declared in django-celery-beat by the sandbox's
data migration, so it exists only where the sandbox is installed."""

from celery import shared_task
from django.utils import timezone

from sandbox.simulators import aggregator


@shared_task(acks_late=True)
def run_aggregator_schedule() -> int:
    """The simulated aggregator charges the subscription periods that have come, as a real one does on its own
    schedule; how many charges it made. A run repeated, or two at once, charge each period once."""
    return aggregator.run_schedule(timezone.now())
