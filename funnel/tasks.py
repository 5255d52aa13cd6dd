"""Periodic funnel jobs."""

from celery import shared_task

from funnel.analytics import shipping
from funnel.rollups import refresh_recent_rollups


@shared_task(acks_late=True)
def refresh_funnel_rollups() -> int:
    return refresh_recent_rollups()


@shared_task(acks_late=True)
def ship_to_clickhouse() -> str:
    shipped = shipping.ship_to_clickhouse()
    return ", ".join(f"{s.source} {s.rows}" for s in shipped if s.rows)
