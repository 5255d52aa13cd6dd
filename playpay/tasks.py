"""Periodic jobs shared by every app."""

from celery import shared_task

from playpay.partitions import ensure_all


@shared_task(acks_late=True)
def create_partitions_ahead() -> list[str]:
    return ensure_all()
