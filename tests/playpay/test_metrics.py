"""The Prometheus endpoint: protected by a bearer token, and what it reports."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from carriers.adapters.base import CarrierResult
from carriers.errors import ErrorCode
from carriers.gateway import Breaker, call_carrier
from journal.services import journal_spool
from payments.models import OutboxMessage
from playpay.celery import app as celery_app
from sandbox.adapter import TEST_PIN
from tests.conftest import Shop
from tests.factories import CarrierFactory

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-for-tests"


@pytest.fixture
def token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(client: Client | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by (sample name, labels), parsed as Prometheus parses it."""
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_absent_without_a_configured_token(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


@pytest.mark.parametrize(
    "authorization",
    ["", f"Basic {TOKEN}", "Bearer wrong-token", f"Bearer {TOKEN}x", "Bearer"],
    ids=["none", "other-scheme", "wrong", "longer", "empty"],
)
def test_metrics_refuse_a_missing_or_wrong_token(token: str, authorization: str) -> None:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"playpay_" not in response.content


def test_a_payment_through_the_api_shows_in_the_request_and_carrier_call_metrics(token: str, shop: Shop) -> None:
    before = scrape()
    route = "/api/v1/payments/"
    shop.pay()
    after = scrape()
    requests = ("playpay_http_requests_total", {"method": "POST", "route": route, "status": "201"})
    assert value(after, requests[0], **requests[1]) == value(before, requests[0], **requests[1]) + 1
    latency = ("playpay_http_request_duration_seconds_count", {"method": "POST", "route": route})
    assert value(after, latency[0], **latency[1]) == value(before, latency[0], **latency[1]) + 1
    # The status read is counted by its route pattern, not its path.
    reads = ("playpay_http_requests_total", {"method": "GET", "route": "/api/v1/payments/<id>/", "status": "200"})
    assert value(after, reads[0], **reads[1]) > value(before, reads[0], **reads[1])
    calls = {"carrier": shop.carrier.slug, "operation": "send_pin"}
    sent = ("playpay_carrier_calls_total", {**calls, "result": "succeeded"})
    assert value(after, sent[0], **sent[1]) == value(before, sent[0], **sent[1]) + 1
    timed = ("playpay_carrier_call_duration_seconds_count", calls)
    assert value(after, timed[0], **timed[1]) == value(before, timed[0], **timed[1]) + 1
    assert value(after, "playpay_carrier_breaker_state", carrier=shop.carrier.slug) == 0


def test_payment_transitions_are_counted_by_status_and_carrier(token: str, shop: Shop) -> None:
    before = scrape()
    payment_id = shop.pay()["id"]  # created -> pin_sent
    assert shop.confirm(payment_id, TEST_PIN).status_code == 202  # the PIN check and the charge after the commit
    assert shop.get(payment_id)["status"] == "succeeded"
    after = scrape()
    for status in ("created", "pin_sent", "pin_verified", "charging", "succeeded"):
        labels = {"status": status, "carrier": shop.carrier.slug}
        assert value(after, "playpay_payment_transitions_total", **labels) == (
            value(before, "playpay_payment_transitions_total", **labels) + 1
        ), status


def test_outbox_lag_is_the_age_of_the_oldest_unsent_message(token: str) -> None:
    assert value(scrape(), "playpay_outbox_lag_seconds") == 0
    old = OutboxMessage.objects.create(task="payments.tasks.relay_outbox", queue="default")
    newer = OutboxMessage.objects.create(task="payments.tasks.relay_outbox", queue="default")
    sent = OutboxMessage.objects.create(task="payments.tasks.relay_outbox", queue="default", sent_at=timezone.now())
    now = timezone.now()
    OutboxMessage.objects.filter(pk=old.pk).update(created_at=now - timedelta(seconds=120))
    OutboxMessage.objects.filter(pk=newer.pk).update(created_at=now - timedelta(seconds=5))
    OutboxMessage.objects.filter(pk=sent.pk).update(created_at=now - timedelta(hours=1))
    assert 120 <= value(scrape(), "playpay_outbox_lag_seconds") < 180


def test_journal_spool_depth_counts_the_spooled_records(token: str) -> None:
    assert value(scrape(), "playpay_journal_spool_depth") == 0
    journal_spool().append([{"kind": "api_request"}] * 2)
    journal_spool().append([{"kind": "api_request"}])
    assert value(scrape(), "playpay_journal_spool_depth") == 3


def test_an_open_breaker_shows_in_its_gauge(token: str, shop: Shop) -> None:
    for _ in range(shop.carrier.breaker_failure_threshold):
        Breaker(shop.carrier).record_failure()
    assert value(scrape(), "playpay_carrier_breaker_state", carrier=shop.carrier.slug) == 2


def test_no_queue_depths_while_tasks_run_in_process(token: str) -> None:
    assert not [name for name, _ in scrape() if name == "playpay_celery_queue_depth"]


@pytest.mark.broker
def test_queue_depths_are_read_from_the_broker(token: str) -> None:
    carrier = CarrierFactory.create()
    queue = f"carrier.{carrier.slug}"
    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    prefix = (celery_app.conf.broker_transport_options or {}).get("global_keyprefix", "")
    broker.delete(prefix + queue, prefix + "webhooks")
    try:
        for _ in range(2):
            celery_app.send_task("payments.tasks.relay_outbox", queue=queue)
        celery_app.send_task("payments.tasks.relay_outbox", queue="webhooks")
        samples = scrape()
        assert value(samples, "playpay_celery_queue_depth", queue=queue) == 2
        assert value(samples, "playpay_celery_queue_depth", queue="webhooks") == 1
        assert ("playpay_celery_queue_depth", frozenset({("queue", "default")})) in samples
    finally:
        broker.delete(prefix + queue, prefix + "webhooks")


def test_multiprocess_mode_adds_up_what_every_worker_counted(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "playpay.settings"}
    count = (
        "import django; django.setup(); from playpay.metrics import HTTP_REQUESTS; "
        "HTTP_REQUESTS.labels(method='GET', route='/healthz', status='200').inc()"
    )
    for _ in range(2):  # two worker processes, one after the other
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    read = (
        "import django; django.setup(); from prometheus_client import generate_latest; "
        "from playpay.metrics import process_registry; print(generate_latest(process_registry()).decode())"
    )
    exposition = subprocess.run([sys.executable, "-c", read], env=env, check=True, capture_output=True, text=True)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition.stdout)
        for sample in family.samples
    }
    assert value(samples, "playpay_http_requests_total", method="GET", route="/healthz", status="200") == 2


def test_a_transport_failure_counts_as_a_carrier_call_error(token: str) -> None:
    carrier = CarrierFactory.create()
    labels = {"carrier": carrier.slug, "operation": "charge"}
    unreachable = CarrierResult.failed(ErrorCode.CARRIER_UNAVAILABLE, "CONNECT", not_sent=True, transport_failed=True)
    call_carrier(carrier, lambda adapter: unreachable, name="charge")
    samples = scrape()
    assert value(samples, "playpay_carrier_call_errors_total", **labels, kind="unreachable") == 1
    assert value(samples, "playpay_carrier_calls_total", **labels, result="unreachable") == 1
