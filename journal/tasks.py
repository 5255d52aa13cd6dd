"""Periodic journal job: move spooled records to the store."""

from celery import shared_task

from journal.services import drain_spool


@shared_task(acks_late=True)
def drain_journal_spool() -> int:
    return drain_spool()
