"""A PIN confirm never calls the carrier in the request: the PIN is checked on the carrier's queue.

With a broker, a worker on the carrier's queue checks it (real Celery worker, CAMARA simulator over
HTTP); in the embedded default the check runs in-process at the commit, so the answer has the verdict.
"""

import json
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from carriers.adapters import carrier_queue
from carriers.models import Carrier
from journal.store import JournalQuery, journal_store
from payments.models import OutboxMessage, Payment, PaymentStatus
from payments.services import payments as payment_service
from playpay.celery import app as celery_app
from playpay.crypto import decrypt_credentials
from sandbox.adapter import TEST_PIN
from sandbox.simulators.core import simulator
from tenants.services import issue_api_key
from tests.concurrency import other_session
from tests.conftest import Shop, StaffClient, assert_problem
from tests.factories import AppFactory, PaymentFactory
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for, wait_for_status

MSISDN = "+447400123456"


class Api:
    """The API over real HTTP, as a game backend calls it (with its own client timeout)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.key = issue_api_key(app=AppFactory.create()).raw_key

    def post(
        self, path: str, body: dict[str, Any], *, timeout: float = 10.0, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Api-Key {self.key}", **(headers or {})}
        return httpx.post(f"{self.base_url}{path}", json=body, headers=headers, timeout=timeout)

    def get(self, payment_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.base_url}/api/v1/payments/{payment_id}/", headers={"Authorization": f"Api-Key {self.key}"}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def create(self, key: str) -> str:
        body = {"user_ref": "player-1", "msisdn": MSISDN, "price_point": "gems-100"}
        response = self.post("/api/v1/payments/", body, headers={"Idempotency-Key": key})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def confirm(self, payment_id: str, pin: str, *, timeout: float = 10.0) -> httpx.Response:
        return self.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, timeout=timeout)


@pytest.fixture
def api(live_server: Any, settings: Any) -> Api:
    settings.PUBLIC_BASE_URL = live_server.url
    return Api(str(live_server.url))


@pytest.fixture
def camara(api: Api) -> Carrier:
    carrier = simulated_carrier(api.base_url, "camara")
    celery_app.control.purge()
    return carrier


def camara_worker(carrier: Carrier) -> Any:
    """A real Celery worker consuming the carrier's queue over the broker."""
    return start_worker(celery_app, queues=[carrier_queue(carrier)], perform_ping_check=False, shutdown_timeout=10)


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_confirm_answers_at_once_while_a_slow_carrier_checks_the_pin_on_its_queue(
    api: Api, camara: Carrier, settings: Any
) -> None:
    settings.PIN_CONFIRM_WAIT_MS = 300
    Carrier.objects.filter(pk=camara.pk).update(read_timeout_ms=10_000)
    with camara_worker(camara):
        payment_id = api.create("slow-1")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT, timeout=20)
        pin = last_pin("camara", MSISDN)
        simulator("camara").configure(latency_ms=8000)  # each answer of the carrier now takes 8 s
        # The client gives up after 5 s (room for a loaded machine): the answer must not wait for the carrier.
        answered = api.confirm(payment_id, pin, timeout=5.0)
        assert answered.status_code == 202, answered.text
        assert (answered.json()["status"], answered.json()["next_action"]) == (
            "pin_sent",
            {"type": "wait", "poll_after_seconds": 1},
        )
        simulator("camara").configure(latency_ms=0)  # the check in flight still takes its 8 s
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED, timeout=30)
    history = list(payment.history.values_list("to_status", "actor"))
    assert history[-3:] == [
        ("pin_verified", "carrier:camara-gb"),
        ("charging", f"app:{payment.app.name}"),
        ("succeeded", "carrier:camara-gb"),
    ]
    assert len(simulator("camara").charges[MSISDN]) == 1


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_waiting_confirm_is_woken_by_the_commit_of_the_verdict_not_by_looking_again(
    api: Api, camara: Carrier, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PIN_CONFIRM_WAIT_MS = 5000
    # Without the database's notification the request would look at the payment again only at its 5 s deadline.
    monkeypatch.setattr(payment_service, "PIN_RECHECK_INTERVAL_S", 30.0)
    Carrier.objects.filter(pk=camara.pk).update(read_timeout_ms=10_000)
    with camara_worker(camara):
        payment_id = api.create("woken-1")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT, timeout=20)
        pin = last_pin("camara", MSISDN)
        simulator("camara").configure(latency_ms=1000)  # the verdict is committed a second after the PIN came
        started = time.monotonic()
        answered = api.confirm(payment_id, pin, timeout=10.0)
        elapsed = time.monotonic() - started
    assert answered.status_code == 200, answered.text  # the verdict, within the wait
    assert answered.json()["status"] in ("pin_verified", "charging", "succeeded")
    assert 1.0 <= elapsed < 4.5, elapsed  # its deadline is at 5 s


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_wrong_pin_checked_on_the_queue_asks_the_player_for_the_pin_again(
    api: Api, camara: Carrier, settings: Any
) -> None:
    settings.PIN_CONFIRM_WAIT_MS = 0
    with camara_worker(camara):
        payment_id = api.create("wrong-1")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT, timeout=20)
        pin = last_pin("camara", MSISDN)
        wrong = "0" * len(pin) if pin != "0" * len(pin) else "1" * len(pin)
        assert api.confirm(payment_id, wrong).status_code == 202
        wait_for(lambda: Payment.objects.get(public_id=payment_id).pin_attempts == 1, what="the wrong PIN to count")
        next_action = api.get(payment_id)["next_action"]
        assert next_action == {
            "type": "enter_pin",
            "expires_at": next_action["expires_at"],
            "attempts_remaining": 2,
            "pin_error": "invalid_pin",
        }
        assert api.confirm(payment_id, pin).status_code == 202
        wait_for_status(payment_id, PaymentStatus.SUCCEEDED, timeout=20)


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_pin_the_carrier_did_not_answer_for_may_be_submitted_again(api: Api, camara: Carrier, settings: Any) -> None:
    settings.PIN_CONFIRM_WAIT_MS = 0
    Carrier.objects.filter(pk=camara.pk).update(read_timeout_ms=500)
    with camara_worker(camara):
        payment_id = api.create("timeout-1")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT, timeout=20)
        pin = last_pin("camara", MSISDN)
        simulator("camara").configure(latency_ms=1500)  # over the carrier's read timeout: no answer
        assert api.confirm(payment_id, pin).status_code == 202
        wait_for(
            lambda: Payment.objects.filter(public_id=payment_id, pin_error="carrier_unavailable").exists(),
            timeout=20,
            what="the check to end without an answer",
        )
        body = api.get(payment_id)
        assert (body["status"], body["failure"]) == ("pin_sent", None)
        assert body["next_action"] == {
            "type": "enter_pin",
            "expires_at": body["next_action"]["expires_at"],
            "attempts_remaining": 3,  # not counted as a wrong PIN
            "pin_error": "carrier_unavailable",
        }
        simulator("camara").configure(latency_ms=0)
        assert api.confirm(payment_id, pin).status_code == 202
        wait_for_status(payment_id, PaymentStatus.SUCCEEDED, timeout=20)
    assert len(simulator("camara").charges[MSISDN]) == 1


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_the_pin_is_kept_encrypted_only_until_checked_and_never_in_the_message_or_the_journal(
    api: Api, camara: Carrier, settings: Any, staff_client: StaffClient
) -> None:
    settings.PIN_CONFIRM_WAIT_MS = 0
    with camara_worker(camara):
        payment_id = api.create("secret-1")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT, timeout=20)
        pin = last_pin("camara", MSISDN)
    # No worker now: the submitted PIN waits on the payment row.
    assert api.confirm(payment_id, pin).status_code == 202
    payment = Payment.objects.get(public_id=payment_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pin_ciphertext FROM payments_payment WHERE id = %s", [payment.pk])
        (stored,) = cursor.fetchone()
    assert stored != pin
    assert decrypt_credentials(stored) == {"pin": pin}
    message = OutboxMessage.objects.get(task="payments.tasks.check_pin")
    assert message.kwargs == {"payment_id": payment.pk, "public_id": payment_id}
    page = staff_client("superuser").get(reverse("admin:payments_payment_change", args=[payment.pk]))
    assert page.status_code == 200
    assert stored not in page.content.decode()  # not shown to staff, even encrypted

    with camara_worker(camara):
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED, timeout=20)
    assert payment.pin_ciphertext == ""
    records = journal_store().query(JournalQuery(correlation={"payment_id": payment_id}, limit=1000))
    assert {"api_request", "carrier_call"} <= {record["kind"] for record in records}
    assert pin not in json.dumps(records, default=str)


@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_in_the_embedded_default_the_confirm_answers_with_the_verdict(make_shop: Any) -> None:
    shop: Shop = make_shop()
    payment_id = shop.pay()["id"]
    response = shop.confirm(payment_id, TEST_PIN)  # the check and the charge ran in-process at the commit
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "succeeded"


@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_in_the_embedded_default_a_wrong_pin_is_answered_422_with_the_attempts_left(make_shop: Any) -> None:
    shop: Shop = make_shop()
    payment_id = shop.pay()["id"]
    first = assert_problem(shop.confirm(payment_id, "0000"), status=422, code="invalid_pin")
    assert (first["attempts_remaining"], first["payment_status"]) == (2, "pin_sent")
    shop.confirm(payment_id, "0000")
    last = assert_problem(shop.confirm(payment_id, "0000"), status=422, code="invalid_pin")
    assert (last["attempts_remaining"], last["payment_status"]) == (0, "failed")
    assert Payment.objects.get(public_id=payment_id).failure_code == "invalid_pin"
    assert_problem(shop.confirm(payment_id, TEST_PIN), status=409, code="illegal_transition")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_database_notifies_a_payments_channel_when_its_pin_check_stops_being_pending_and_only_then() -> None:
    wrong_pin, verified, unrelated = (
        PaymentFactory.create(status=PaymentStatus.PIN_SENT, pin_submitted_at=timezone.now()) for _ in range(3)
    )
    with other_session() as session:
        for payment in (wrong_pin, verified, unrelated):
            session.execute(f'LISTEN "{payment_service.pin_verdict_channel(payment.pk)}"')
        Payment.objects.filter(pk=unrelated.pk).update(pin_attempts=1)  # still pending: nobody is woken
        Payment.objects.filter(pk=wrong_pin.pk).update(pin_submitted_at=None, pin_error="invalid_pin")
        Payment.objects.filter(pk=verified.pk).update(status=PaymentStatus.PIN_VERIFIED)
        channels = [notify.channel for notify in session.notifies(timeout=2.0, stop_after=2)]
        channels += [notify.channel for notify in session.notifies(timeout=0.5)]  # nothing more comes
    assert sorted(channels) == sorted(payment_service.pin_verdict_channel(p.pk) for p in (wrong_pin, verified))


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("wait_ms", [0, 300])
def test_a_confirm_without_a_verdict_listens_only_when_it_waits_and_looks_a_few_times(
    settings: Any, wait_ms: int
) -> None:
    settings.PIN_CONFIRM_WAIT_MS = wait_ms  # no worker: no verdict comes
    payment = PaymentFactory.create(status=PaymentStatus.PIN_SENT, pin_expires_at=timezone.now() + timedelta(minutes=5))
    with CaptureQueriesContext(connection) as statements:
        answered = payment_service.confirm_payment(payment=payment, pin="1234")
    assert answered.status == PaymentStatus.PIN_SENT
    assert answered.pin_submitted_at is not None
    sql = [statement["sql"] for statement in statements.captured_queries]
    listens = [text for text in sql if text.startswith(("LISTEN", "UNLISTEN"))]
    looks = [text for text in sql if text.startswith("SELECT 1 AS") and "pin_submitted_at" in text]
    if wait_ms == 0:
        assert (listens, looks) == ([], [])
    else:
        channel = payment_service.pin_verdict_channel(payment.pk)
        assert listens == [f'LISTEN "{channel}"', f'UNLISTEN "{channel}"']
        assert 1 <= len(looks) <= 3  # every 250 ms, not every 50 ms (6 looks)
