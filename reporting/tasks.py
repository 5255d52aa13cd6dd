"""Celery tasks of reporting: thin wrappers over the services."""

from celery import shared_task

from reporting.services import exports


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_export(job_id: int) -> str:
    """Idempotent: a finished job is left alone; one whose worker died starts again from the first row."""
    return exports.run_export_job(job_id=job_id).status
