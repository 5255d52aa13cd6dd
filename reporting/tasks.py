"""Celery tasks of reporting: thin wrappers over the services."""

from celery import shared_task
from django.utils import timezone

from reporting.services import alerts, call_rollups, datasets, exports, rollups, subscriber_counts

# At-least-once (acks_late, reject_on_worker_lost, also the project defaults, said here as in payments' tasks):
# a task whose worker dies is delivered again; every one is safe to run twice.


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_export(job_id: int) -> str:
    """Idempotent: runs the job only if it is queued; one done, failed or held by a live worker is left alone."""
    return exports.run_export_job(job_id=job_id).status


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_queued_exports() -> int:
    """The embedded default's worker for exports (run by `manage.py run_scheduler` in a thread of its own)."""
    return exports.run_queued_export_jobs()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def requeue_stale_exports() -> str:
    """Exports whose worker died: queued again, or failed with the reason after too many attempts."""
    result = exports.requeue_stale_export_jobs()
    return (
        f"{len(result.requeued)} queued again, {len(result.failed)} failed" if result.requeued or result.failed else ""
    )


@shared_task(acks_late=True, reject_on_worker_lost=True)
def refresh_api_datasets() -> int:
    """Fetch every API dataset whose refresh interval has passed; each fetch has the dataset's timeout."""
    due = datasets.due_api_datasets(now=timezone.now())
    for dataset_id in due:
        datasets.fetch_api_dataset(dataset_id=dataset_id)
    return len(due)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def evaluate_alerts() -> str:
    """Evaluate the active alert rules; safe to run twice (a firing rule fires once until it resolves)."""
    result = alerts.evaluate_alert_rules()
    return f"{result.fired} fired, {result.resolved} resolved"


@shared_task(acks_late=True, reject_on_worker_lost=True)
def refresh_payment_rollups() -> str:
    """Recompute the hours of payments that changed and add the last whole hour; safe to run twice."""
    result = rollups.refresh_payment_rollups()
    return str(result) if result.hours else ""  # the scheduler logs what is not empty


@shared_task(acks_late=True, reject_on_worker_lost=True)
def refresh_carrier_call_rollups() -> str:
    """Recompute the hours that received carrier calls and add the last whole hour; safe to run twice."""
    result = call_rollups.refresh_carrier_call_rollups()
    return str(result) if result.hours else ""


@shared_task(acks_late=True, reject_on_worker_lost=True)
def fold_subscriber_counts() -> str:
    """Count the subscriber base of each day that began, and move the subscriber-count changes written since the
    last run into the counts; safe to run twice."""
    folded = subscriber_counts.fold()
    return f"{folded} subscriber-count changes folded" if folded else ""
