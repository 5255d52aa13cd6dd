"""Periodic journal jobs: move spooled records to the store; drop records past their kind's time."""

from celery import shared_task

from journal.services import drain_spool, expire


@shared_task(acks_late=True)
def drain_journal_spool() -> int:
    return drain_spool()


@shared_task(acks_late=True)
def expire_journal_records() -> int:
    return expire()
