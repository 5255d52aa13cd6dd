"""Notifications to apps, as the Standard Webhooks specification defines them."""

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.utils import timezone

from payments.models import WebhookDelivery
from payments.services import webhooks
from tests.conftest import Shop


class Receiver:
    """A game backend's webhook endpoint on loopback, answering with the queued status codes."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split(" "))


def test_signature_matches_the_specifications_test_vector() -> None:
    body = b'{"test": 2432232314}'
    signature = webhooks.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.django_db
def test_app_is_notified_of_a_final_state_with_a_verifiable_signature(shop: Shop, receiver: Receiver) -> None:
    shop.app.webhook_url = receiver.url
    shop.app.save()
    secret = webhooks.new_secret(app=shop.app)
    payment = shop.pay(flow="one_click")
    headers, body = receiver.requests[-1]
    event = json.loads(body)
    assert event["type"] == "payment.succeeded"
    assert event["data"]["id"] == payment["id"]
    assert headers["webhook-id"].startswith("msg_")
    assert verify(secret, headers, body)
    assert abs(int(headers["webhook-timestamp"]) - timezone.now().timestamp()) < 60
    assert WebhookDelivery.objects.get().status == WebhookDelivery.Status.SUCCEEDED


@pytest.mark.django_db
def test_failed_deliveries_are_retried_with_backoff_then_given_up_after_about_three_days(
    shop: Shop, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    shop.app.webhook_url = receiver.url
    shop.app.save()
    receiver.answers = [500] * 20
    shop.pay(flow="one_click")
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.next_attempt_at is not None
    first_retry = delivery.next_attempt_at - timezone.now()
    assert timedelta(seconds=4) < first_retry < timedelta(seconds=7)
    assert sum(webhooks.RETRY_SCHEDULE, timedelta()) > timedelta(days=3)
    for _ in webhooks.RETRY_SCHEDULE:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        with django_capture_on_commit_callbacks(execute=True):
            webhooks.deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 10)
    assert len({headers["webhook-id"] for headers, _ in receiver.requests}) == 1  # same id on every retry
    assert delivery.attempt_log.count() == 10


@pytest.mark.django_db
def test_a_delivery_can_be_replayed_and_a_gone_endpoint_is_abandoned(
    shop: Shop, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    shop.app.webhook_url = receiver.url
    shop.app.save()
    receiver.answers = [410]
    shop.pay(flow="one_click")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDelivery.Status.ABANDONED
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.replay(delivery=delivery)
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert len(receiver.requests) == 2


@pytest.mark.django_db
def test_during_a_rotation_both_secrets_sign(shop: Shop, receiver: Receiver) -> None:
    shop.app.webhook_url = receiver.url
    shop.app.save()
    old = webhooks.new_secret(app=shop.app)
    new = webhooks.new_secret(app=shop.app)
    shop.pay(flow="one_click")
    headers, body = receiver.requests[-1]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(old, headers, body)
    assert verify(new, headers, body)
