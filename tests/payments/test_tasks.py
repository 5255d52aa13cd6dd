"""Celery wiring: beat schedule declared in the database, tasks run by a worker over the real broker."""

import time
import uuid
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from payments.models import IdempotencyRecord, Payment, PaymentStatus
from payments.tasks import expire_abandoned, purge_idempotency_keys
from playpay.celery import app as celery_app
from tests.conftest import Shop


@pytest.mark.django_db
def test_housekeeping_is_scheduled_in_django_celery_beat() -> None:
    tasks = set(PeriodicTask.objects.filter(enabled=True).values_list("task", flat=True))
    assert {"payments.tasks.purge_idempotency_keys", "payments.tasks.expire_abandoned"} <= tasks


@pytest.mark.django_db
def test_unconfirmed_pin_payments_expire(shop: Shop) -> None:
    payment_id = shop.create_payment().json()["id"]
    shop.create_payment(key="fresh", user_ref="p2")
    Payment.objects.filter(public_id=payment_id).update(pin_expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_abandoned() == 1
    assert Payment.objects.get(public_id=payment_id).status == PaymentStatus.EXPIRED
    assert Payment.objects.filter(status=PaymentStatus.PIN_SENT).count() == 1


@pytest.mark.django_db
def test_a_pin_payment_whose_check_is_at_the_carrier_is_left_to_its_verdict(shop: Shop) -> None:
    payment_id = shop.create_payment().json()["id"]
    Payment.objects.filter(public_id=payment_id).update(
        pin_expires_at=timezone.now() - timedelta(seconds=1),
        pin_submitted_at=timezone.now() - timedelta(minutes=1),
        outcome_unknown_since=timezone.now() - timedelta(minutes=1),
    )
    assert expire_abandoned() == 0
    assert Payment.objects.get(public_id=payment_id).status == PaymentStatus.PIN_SENT


@pytest.mark.broker
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_a_task_sent_through_the_broker(shop: Shop, settings) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 1
    shop.create_payment(key="old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=2))
    # A queue of its own: nothing an earlier test left on the default queue runs first.
    queue = f"test-purge-{uuid.uuid4().hex[:8]}"
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        purge_idempotency_keys.apply_async(queue=queue)
        deadline = time.monotonic() + 30
        while IdempotencyRecord.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db
def test_the_embedded_scheduler_runs_the_periodic_jobs(shop: Shop) -> None:
    import io

    from django.core.management import call_command

    payment_id = shop.create_payment().json()["id"]
    Payment.objects.filter(public_id=payment_id).update(pin_expires_at=timezone.now() - timedelta(seconds=1))
    out = io.StringIO()
    call_command("run_scheduler", "--once", stdout=out)
    assert "expire unconfirmed PIN payments: 1" in out.getvalue()
    assert Payment.objects.get(public_id=payment_id).status == PaymentStatus.EXPIRED


@pytest.mark.django_db
def test_the_embedded_scheduler_runs_its_jobs_in_a_process_that_ran_a_celery_worker(shop: Shop) -> None:
    """A worker's pool marks its process as one where waiting on a task's result would block (a test or a tool
    that started a worker in a thread leaves the mark behind); the scheduler's eager results never block, so the
    mark must not fail every periodic job (it did, at random, in the suite)."""
    import io

    from celery.result import denied_join_result
    from django.core.management import call_command

    payment_id = shop.create_payment().json()["id"]
    Payment.objects.filter(public_id=payment_id).update(pin_expires_at=timezone.now() - timedelta(seconds=1))
    out, err = io.StringIO(), io.StringIO()
    with denied_join_result():  # the mark a worker's pool sets at its start
        call_command("run_scheduler", "--once", stdout=out, stderr=err)
    assert "failed" not in err.getvalue(), err.getvalue()
    assert "expire unconfirmed PIN payments: 1" in out.getvalue()
