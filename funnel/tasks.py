"""Periodic funnel jobs."""

from celery import shared_task

from funnel.rollups import refresh_recent_rollups


@shared_task(acks_late=True)
def refresh_funnel_rollups() -> int:
    return refresh_recent_rollups()
