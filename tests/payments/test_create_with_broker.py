"""Creating a payment where a broker runs the carrier work: the answer is the payment as inserted, stored with
the idempotency key's claim in the creating transaction."""

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from payments.models import IdempotencyRecord, OutboxMessage, Payment, PaymentStatus
from tenants.services import issue_api_key
from tests.conftest import MSISDN, Shop
from tests.deploy.processes import free_port, wait_for
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


PAY_TWICE = """
import json, os, time, django
django.setup()
from django.test import Client
answers = []
for key in ("broker-fault-1", "broker-fault-2"):
    started = time.monotonic()
    response = Client().post(
        "/api/v1/payments/",
        os.environ["BODY"],
        content_type="application/json",
        headers={"Authorization": "Api-Key " + os.environ["API_KEY"], "Idempotency-Key": key},
    )
    answers.append({"status": response.status_code, "seconds": time.monotonic() - started})
print("RESULT " + json.dumps(answers))
"""

RELAY = """
import django
django.setup()
from payments.services import outbox
print("RESULT " + str(outbox.relay_pending()))
"""


def _result(completed: subprocess.CompletedProcess[str]) -> Any:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout + completed.stderr
    return json.loads(lines[-1].removeprefix("RESULT "))


class _Redis:
    """A Redis server of the test's own on a free loopback port, which it may freeze (SIGSTOP: the kernel still
    takes connections and bytes, nothing answers), thaw, stop, and start again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.folder),
        ]
        self.server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for("the test's Redis", lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), timeout=10)

    def signal(self, number: int) -> None:
        assert self.server is not None
        self.server.send_signal(number)

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGCONT)
            self.server.kill()
            self.server.wait(timeout=10)
            self.server = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[_Redis]:
    server = _Redis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.journal  # the subprocesses journal into this run's journal database
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["frozen", "stopped"])
def test_a_broker_that_does_not_take_the_first_step_delays_the_answer_a_bounded_time_and_the_relay_sends_it(
    own_redis: _Redis, fault: str
) -> None:
    price_point = PricePointFactory.create()
    NumberPrefixFactory.create(carrier=price_point.carrier, prefix="4474")
    key = issue_api_key(app=AppFactory.create()).raw_key
    db, journal = connection.settings_dict, connections["journal"].settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "JOURNAL_URL": f"postgres://{journal['USER']}@{journal['HOST']}:{journal['PORT']}/{journal['NAME']}",
        "CELERY_BROKER_URL": own_redis.url,
        "BROKER_TIMEOUT_SECONDS": "2",
        "API_KEY": key,
        "BODY": json.dumps({"user_ref": "p1", "msisdn": MSISDN, "price_point": price_point.code}),
    }

    def run(script: str) -> Any:
        return _result(
            subprocess.run(
                [sys.executable, "-c", script], cwd=ROOT, env=env, text=True, capture_output=True, timeout=60
            )
        )

    if fault == "frozen":
        own_redis.signal(signal.SIGSTOP)
    else:
        own_redis.stop()
    first, second = run(PAY_TWICE)
    assert first["status"] == second["status"] == 201  # the payments are committed: a broker fault fails nothing
    assert first["seconds"] < 6, first  # two tries of 2 s at most, not a worker's timeout
    assert second["seconds"] < 1, second  # the process does not wait on the broker again right after a failure
    assert set(Payment.objects.values_list("status", flat=True)) == {PaymentStatus.CREATED}
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 2  # left for the relay

    if fault == "frozen":
        own_redis.signal(signal.SIGCONT)
    else:
        own_redis.start()
    OutboxMessage.objects.update(created_at=timezone.now())
    assert run(RELAY) == 0  # too young: their own process may still send them
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(minutes=1))
    assert run(RELAY) == 2
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
    message = OutboxMessage.objects.order_by("id").first()
    assert message is not None
    queued = redis.Redis.from_url(own_redis.url).lrange(message.queue, 0, -1)
    assert len(queued) == 2
    envelope = json.loads(queued[-1])  # LPUSH: the first sent is the last in the list
    assert envelope["headers"]["task"] == message.task == "payments.tasks.start_payment"
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert (args, kwargs) == ([], message.kwargs)
    assert kwargs["public_id"] == str(Payment.objects.get(pk=kwargs["payment_id"]).public_id)
