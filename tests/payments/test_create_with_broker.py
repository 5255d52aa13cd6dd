"""Creating a payment where a broker runs the carrier work: the answer is the payment as inserted, stored with
the idempotency key's claim in the creating transaction."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from payments.models import IdempotencyRecord, OutboxMessage, Payment, PaymentStatus
from tenants.services import issue_api_key
from tests.conftest import MSISDN, Shop
from tests.factories import AppFactory, NumberPrefixFactory, PricePointFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.broker
@pytest.mark.django_db
def test_with_a_broker_the_answer_is_the_payment_as_stored(shop: Shop) -> None:
    created = shop.create_payment(key="as-stored")
    assert created.status_code == 201
    assert created.json()["status"] == PaymentStatus.CREATED  # the carrier's first step waits on the broker
    assert created.json() == shop.get(created.json()["id"])
    record = IdempotencyRecord.objects.get(key="as-stored")  # completed in the creating transaction, answer kept
    assert (record.state, record.response_status, record.response_body) == (
        IdempotencyRecord.State.COMPLETED,
        201,
        created.json(),
    )


CRASH_AFTER_COMMIT = """
import os, django
django.setup()
from django.test import Client
from payments.services import outbox
outbox.send = lambda message: os.kill(os.getpid(), 9)  # die between the commit and the publish
Client().post(
    "/api/v1/payments/",
    os.environ["BODY"],
    content_type="application/json",
    headers={"Authorization": "Api-Key " + os.environ["API_KEY"], "Idempotency-Key": "crash-1"},
)
"""


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.journal  # the retry is journaled from this thread
@pytest.mark.django_db(transaction=True)
def test_with_a_broker_a_request_that_died_after_its_commit_is_replayed_at_once() -> None:
    price_point = PricePointFactory.create()
    NumberPrefixFactory.create(carrier=price_point.carrier, prefix="4474")
    key = issue_api_key(app=AppFactory.create()).raw_key
    body = {"user_ref": "p1", "msisdn": MSISDN, "price_point": price_point.code}
    db, journal = connection.settings_dict, connections["journal"].settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        # This run's test databases (a pytest-xdist worker has its own), never the ones the test runner was given.
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "JOURNAL_URL": f"postgres://{journal['USER']}@{journal['HOST']}:{journal['PORT']}/{journal['NAME']}",
        "API_KEY": key,
        "BODY": json.dumps(body),
    }
    result = subprocess.run([sys.executable, "-c", CRASH_AFTER_COMMIT], cwd=ROOT, env=env, timeout=60)
    assert result.returncode == -signal.SIGKILL

    payment = Payment.objects.get()
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 1  # left for the relay
    record = IdempotencyRecord.objects.get(key="crash-1")
    assert (record.state, record.response_status) == (IdempotencyRecord.State.COMPLETED, 201)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    retry = client.post("/api/v1/payments/", body, format="json", HTTP_IDEMPOTENCY_KEY="crash-1")
    assert retry.status_code == 201, retry.content  # not 409 until the in-flight timeout
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.json() == record.response_body
    assert retry.json()["id"] == str(payment.public_id)
    assert Payment.objects.count() == 1
