"""STOP by SMS on Parlay X, over real HTTP: the player texts STOP to the service number, the gateway (its
simulator) pushes the SMS to PlayPay's callback endpoint (`notifySmsReception`, HTTP Basic), and every live
subscription of that number on that carrier is cancelled within that one callback."""

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from rest_framework.test import APIClient

from carriers.adapters import adapter_for
from carriers.models import Carrier
from payments.models import CarrierNotification
from playpay.celery import app as celery_app
from sandbox.simulators.parlayx import sms_reception
from subscriptions.models import Plan, PlanOffer, Subscription
from subscriptions.services.stop import SMS_STOP_REASON, stop_request
from tenants.services import issue_api_key
from tests.conftest import MSISDN
from tests.factories import AppFactory
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_the_stop_keywords_and_the_plan_they_name() -> None:
    assert stop_request("STOP") == (True, None)
    assert stop_request("  stop all ") == (True, None)
    assert stop_request("Stop vip-weekly") == (True, "vip-weekly")
    assert stop_request("UNSUBSCRIBE") == (True, None)
    assert stop_request("stopall") == (True, None)
    assert stop_request("hello STOP") == (False, None)
    assert stop_request("") == (False, None)


class Shop:
    def __init__(self, live: str) -> None:
        self.live = live
        self.carrier = simulated_carrier(
            live, "parlayx", supports_subscriptions=True, supports_one_click=True, insufficient_funds_retry_minutes=""
        )
        self.app = AppFactory.create()
        price_point = self.carrier.price_points.get()
        for code in ("vip-weekly", "coins-monthly"):
            plan = Plan.objects.create(app=self.app, code=code, name=code, period="weekly")
            PlanOffer.objects.create(plan=plan, carrier=self.carrier, price_point=price_point)
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=self.app).raw_key}")

    @property
    def notify_url(self) -> str:
        return f"{self.live}/api/v1/carriers/{self.carrier.slug}/notifications/"

    def subscribe(self, plan: str) -> Subscription:
        body = {"user_ref": "player-1", "msisdn": MSISDN, "plan": plan}
        created = self.client.post("/api/v1/subscriptions/", body, format="json", HTTP_IDEMPOTENCY_KEY=plan)
        assert created.status_code == 201, created.content
        public_id = created.json()["id"]
        self.client.post(
            f"/api/v1/subscriptions/{public_id}/confirm/", {"pin": last_pin("parlayx", MSISDN)}, format="json"
        )
        wait_for(lambda: Subscription.objects.filter(public_id=public_id, status="active").exists(), what="opt-in")
        return Subscription.objects.get(public_id=public_id)

    def text(self, message: str) -> None:
        """The player's handset sends `message` to the service number."""
        sent = httpx.post(
            f"{self.live}/simulators/parlayx/_player_sms",
            json={"msisdn": MSISDN, "text": message, "to": "84000", "notify_url": self.notify_url},
            timeout=10,
        )
        assert sent.status_code == 202, sent.text


@pytest.fixture
def shop(live_server: Any, settings: Any) -> Shop:
    settings.PUBLIC_BASE_URL = live_server.url
    return Shop(str(live_server.url))


def wait_until_cancelled(*subscriptions: Subscription) -> None:
    pks = [subscription.pk for subscription in subscriptions]
    wait_for(lambda: not Subscription.objects.filter(pk__in=pks).exclude(status="cancelled").exists(), what="the STOP")


def test_stop_by_sms_cancels_every_live_subscription_of_the_number_on_that_carrier(shop: Shop) -> None:
    weekly, monthly = shop.subscribe("vip-weekly"), shop.subscribe("coins-monthly")
    shop.text("STOP")
    wait_until_cancelled(weekly, monthly)
    for subscription in (weekly, monthly):
        subscription.refresh_from_db()
        assert subscription.cancel_reason == SMS_STOP_REASON
        assert subscription.history.order_by("-id").first().actor == f"carrier:{shop.carrier.slug}"  # type: ignore[union-attr]
    record = CarrierNotification.objects.get(kind="sms")
    assert record.result == "STOP: 2 subscription(s) cancelled now"
    # A second STOP finds nothing left to cancel.
    shop.text("stop")
    wait_for(lambda: CarrierNotification.objects.filter(kind="sms").count() == 2, what="the second STOP")
    assert CarrierNotification.objects.filter(result="STOP: 0 subscription(s) cancelled now").exists()


def test_stop_with_a_word_that_names_no_plan_stops_them_all(shop: Shop) -> None:
    weekly, monthly = shop.subscribe("vip-weekly"), shop.subscribe("coins-monthly")
    shop.text("STOP please")
    wait_until_cancelled(weekly, monthly)
    assert CarrierNotification.objects.get(kind="sms").result == "STOP: 2 subscription(s) cancelled now"


def test_the_same_sms_pushed_again_within_minutes_is_one_and_later_is_another(shop: Shop) -> None:
    body, headers = sms_reception(MSISDN, "STOP", "84000")  # one message, its bytes fixed
    adapter = adapter_for(shop.carrier)
    now = datetime(2026, 12, 5, 10, 0, 5, tzinfo=UTC)
    first = adapter.parse_notification(headers=headers, body=body, now=now)
    retried = adapter.parse_notification(headers=headers, body=body, now=now + timedelta(minutes=4))
    later = adapter.parse_notification(headers=headers, body=body, now=now + timedelta(minutes=15))
    assert first.notification_id == retried.notification_id
    assert later.notification_id != first.notification_id
    assert first.sms is not None
    assert (first.sms.msisdn, first.sms.text, first.sms.to) == (MSISDN, "STOP", "84000")


def test_stop_naming_a_plan_cancels_that_plan_only_and_other_texts_nothing(shop: Shop) -> None:
    weekly, monthly = shop.subscribe("vip-weekly"), shop.subscribe("coins-monthly")
    shop.text("hello")
    shop.text("STOP coins-monthly")
    wait_for(lambda: Subscription.objects.filter(pk=monthly.pk, status="cancelled").exists(), what="the STOP")
    wait_for(lambda: CarrierNotification.objects.filter(kind="sms").count() == 2, what="both texts")
    assert CarrierNotification.objects.filter(result="ignored: not a STOP keyword").exists()
    weekly.refresh_from_db()
    assert weekly.status == "active"


def test_an_sms_notification_without_the_sps_credentials_is_refused_and_changes_nothing(shop: Shop) -> None:
    subscription = shop.subscribe("vip-weekly")
    body, headers = sms_reception(MSISDN, "STOP", "84000")
    forged = headers | {"Authorization": "Basic " + base64.b64encode(b"000201:guessed").decode()}
    for sent in (forged, {k: v for k, v in headers.items() if k != "Authorization"}):
        answer = httpx.post(shop.notify_url, content=body, headers=sent, timeout=10)
        assert answer.status_code == 401, answer.text
        assert answer.headers["Content-Type"].startswith("application/problem+json")
    not_soap = httpx.post(shop.notify_url, content=b"<not-soap/>", headers=headers, timeout=10)
    assert not_soap.status_code == 400, not_soap.text
    subscription.refresh_from_db()
    assert subscription.status == "active"
    assert not CarrierNotification.objects.exists()


def test_a_carrier_without_sp_credentials_takes_no_sms_notification(shop: Shop) -> None:
    Carrier.objects.filter(pk=shop.carrier.pk).update(credentials_encrypted="")
    body, headers = sms_reception(MSISDN, "STOP", "84000")
    answer = httpx.post(shop.notify_url, content=body, headers=headers, timeout=10)
    assert answer.status_code == 401, answer.text


@pytest.mark.broker
def test_with_a_broker_and_no_worker_the_stop_is_done_within_the_callback(shop: Shop) -> None:
    """In production the callback's own request cancels (right after its commit): no worker needs to run for a
    STOP to take effect; the outbox's message (the fallback) finds it done."""
    celery_app.control.purge()
    body = {"user_ref": "player-1", "msisdn": MSISDN, "plan": "vip-weekly"}
    created = shop.client.post("/api/v1/subscriptions/", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    assert created.status_code == 201, created.content
    subscription = Subscription.objects.get(public_id=created.json()["id"])
    # Made active directly: with a broker and no worker, the opt-in's carrier work would wait in the queue.
    Subscription.objects.filter(pk=subscription.pk).update(status="active")
    message, headers = sms_reception(MSISDN, "STOP", "84000")
    answer = httpx.post(shop.notify_url, content=message, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == "STOP: 1 subscription(s) cancelled now"
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_reason) == ("cancelled", SMS_STOP_REASON)
    celery_app.control.purge()


def test_the_handset_refuses_a_text_no_xml_message_carries(shop: Shop) -> None:
    sent = httpx.post(
        f"{shop.live}/simulators/parlayx/_player_sms",
        json={"msisdn": MSISDN, "text": "STOP\u0001", "notify_url": shop.notify_url},
        timeout=10,
    )
    assert sent.status_code == 400, sent.text
    assert not CarrierNotification.objects.exists()
