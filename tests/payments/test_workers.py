"""Real Celery wiring: a worker consuming a carrier's queue over the broker; the outbox when a process dies."""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from carriers.adapters import carrier_queue
from payments.models import OutboxMessage, Payment, PaymentStatus
from payments.services import outbox
from playpay.celery import app as celery_app
from tenants.services import issue_api_key
from tests.factories import AppFactory, NumberPrefixFactory, PricePointFactory
from tests.payments.carrier_helpers import wait_for_status

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.broker
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_payment_made_through_the_api_is_charged_by_a_worker_on_its_carrier_queue() -> None:
    price_point = PricePointFactory.create()
    NumberPrefixFactory.create(carrier=price_point.carrier, prefix="4474")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=AppFactory.create()).raw_key}")
    queue = carrier_queue(price_point.carrier)
    celery_app.control.purge()

    body = {"user_ref": "p1", "msisdn": "+447400123456", "price_point": price_point.code, "flow": "one_click"}
    response = client.post("/api/v1/payments/", body, format="json", HTTP_IDEMPOTENCY_KEY="w1")
    assert response.status_code == 201
    assert response.json()["status"] == "created"  # nothing ran in-process: the work is on the broker
    message = OutboxMessage.objects.get()
    assert (message.queue, message.sent_at is not None) == (queue, True)

    with start_worker(celery_app, queues=[queue], perform_ping_check=False, shutdown_timeout=10):
        payment = wait_for_status(response.json()["id"], PaymentStatus.SUCCEEDED, timeout=20)
    assert payment.history.filter(to_status="charging", actor="system").exists()


CRASH_AFTER_COMMIT = """
import os, django
django.setup()
from payments.services import outbox
outbox.send = lambda message: os.kill(os.getpid(), 9)  # die between the commit and the enqueue
from tenants.models import App
from payments.services.idempotency import IdempotencyKey
from payments.services.payments import PaymentRequest, create_payment
app = App.objects.get(name=os.environ["APP_NAME"])
create_payment(
    app=app,
    request=PaymentRequest(user_ref="p1", msisdn="+447400123456", price_point="gems-100"),
    idempotency=IdempotencyKey(app=app, key="crash-1", fingerprint="f"),
)
"""


@pytest.mark.postgres
@pytest.mark.journal  # the relayed work calls the carrier from this thread
@pytest.mark.django_db(transaction=True)
def test_work_committed_by_a_process_that_died_before_enqueuing_it_is_relayed(settings: Any) -> None:
    price_point = PricePointFactory.create()
    NumberPrefixFactory.create(carrier=price_point.carrier, prefix="4474")
    app = AppFactory.create()
    db, journal = connection.settings_dict, connections["journal"].settings_dict
    env = {
        **os.environ,
        "APP_NAME": app.name,
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        # This run's test databases (a pytest-xdist worker has its own), never the ones the test runner was given.
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "JOURNAL_URL": f"postgres://{journal['USER']}@{journal['HOST']}:{journal['PORT']}/{journal['NAME']}",
        "CELERY_BROKER_URL": "",
    }
    result = subprocess.run([sys.executable, "-c", CRASH_AFTER_COMMIT], cwd=ROOT, env=env, timeout=60)
    assert result.returncode == -signal.SIGKILL

    payment = Payment.objects.get()
    assert payment.status == PaymentStatus.CREATED  # committed, but its work never reached a queue
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 1
    assert outbox.relay_pending() == 0  # too young: its own process may still send it
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(minutes=1))
    assert outbox.relay_pending() == 1  # the periodic relay; the task runs in-process here
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PIN_SENT
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 0
