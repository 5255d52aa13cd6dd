"""Faults that come with a subscription's later periods, end to end: the renewal engine charging through the
Parlay X and CAMARA simulators over real HTTP, each number's answer changing over its life (core.SCENARIOS):
0021 pays its first charge then is declined for insufficient funds on every other one, 0022 is ported out
after it (unknown subscriber), 0023 barred after it."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient

from carriers.models import Carrier, PricePoint
from payments.models import WebhookDelivery
from sandbox.simulators.core import simulator
from subscriptions.models import Plan, PlanOffer, Subscription, SubscriptionCharge, SubscriptionStatus
from subscriptions.services.renewals import run_renewals
from tenants.services import issue_api_key
from tests.conftest import MSISDN
from tests.factories import AppFactory
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for
from tests.payments.test_webhooks import Receiver

pytestmark = [pytest.mark.django_db(transaction=True)]

PROTOCOLS = ["parlayx", "camara"]
EVERY_OTHER, PORTED_OUT, BARRED = (MSISDN[:-4] + ending for ending in ("0021", "0022", "0023"))


@pytest.fixture
def live(live_server: Any, settings: Any) -> str:
    settings.PUBLIC_BASE_URL = live_server.url
    return str(live_server.url)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def subscribed(live: str, protocol: str, msisdn: str, receiver: Receiver, *, fallback: bool = False) -> Subscription:
    """A weekly plan at £0.99 on the protocol's simulated carrier (with a £0.49 fallback price, downgrade billing
    allowed, when `fallback`), and `msisdn` opted in by PIN: active, its first period paid."""
    carrier = simulated_carrier(
        live,
        protocol,
        supports_subscriptions=True,
        supports_one_click=True,
        insufficient_funds_retry_minutes="",
        supports_downgrade_billing=fallback,
    )
    app = AppFactory.create(webhook_url=receiver.url)
    plan = Plan.objects.create(app=app, code="vip-weekly", name="VIP pass", period="weekly")
    low = None
    if fallback:
        low = PricePoint.objects.create(
            carrier=carrier, code="gems-low", amount_minor=49, currency="GBP", carrier_payout_minor=30
        )
    PlanOffer.objects.create(
        plan=plan, carrier=carrier, price_point=carrier.price_points.get(code="gems-100"), fallback_price_point=low
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=app).raw_key}")
    body = {"user_ref": "player-1", "msisdn": msisdn, "plan": "vip-weekly"}
    created = client.post("/api/v1/subscriptions/", body, format="json", HTTP_IDEMPOTENCY_KEY="s-1")
    assert created.status_code == 201, created.content
    subscription_id = created.json()["id"]
    client.post(f"/api/v1/subscriptions/{subscription_id}/confirm/", {"pin": last_pin(protocol, msisdn)}, format="json")
    wait_for(
        lambda: Subscription.objects.filter(public_id=subscription_id, status="active").exists(), what="activation"
    )
    return Subscription.objects.get(public_id=subscription_id)


def settled(subscription: Subscription, count: int) -> list[tuple[int, int, str, str]]:
    """Once `count` renewal charges are decided: (period, attempt, outcome, failure code) of each, in order."""
    renewals = SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal")
    wait_for(lambda: renewals.exclude(outcome="pending").count() == count, what=f"{count} renewal(s) decided")
    return list(renewals.order_by("id").values_list("period_index", "attempt", "outcome", "failure_code"))


def webhooks(subscription: Subscription) -> list[tuple[str, dict[str, Any]]]:
    deliveries = WebhookDelivery.objects.filter(event_type__startswith="subscription.").order_by("id")
    return [
        (d.event_type, d.payload["data"]) for d in deliveries if d.payload["data"]["id"] == str(subscription.public_id)
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_insufficient_funds_on_a_later_period_is_retried_at_the_fallback_price(
    live: str, protocol: str, receiver: Receiver
) -> None:
    subscription = subscribed(live, protocol, EVERY_OTHER, receiver, fallback=True)
    end = subscription.current_period_end
    assert end is not None

    run_renewals(now=end)  # the number's second charge: declined
    assert settled(subscription, 1) == [(1, 1, "failed", "insufficient_funds")]
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE

    assert subscription.next_charge_at == end + timedelta(days=1)
    run_renewals(now=subscription.next_charge_at)  # the next day's retry, at the fallback price
    assert settled(subscription, 2)[-1] == (1, 2, "succeeded", "")
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index, subscription.entitled_until) == (
        SubscriptionStatus.ACTIVE,
        1,
        subscription.current_period_end,
    )
    retry = SubscriptionCharge.objects.get(subscription=subscription, attempt=2)
    assert retry.fallback_price
    assert retry.payment is not None
    assert retry.payment.amount_minor == 49
    assert len(simulator(protocol).charges[EVERY_OTHER]) == 2  # the opt-in's and the fallback retry's
    renewed = dict(webhooks(subscription))["subscription.renewed"]
    assert (renewed["amount_display"], renewed["fallback_price"]) == ("£0.49", True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("msisdn", "code", "reason"),
    [
        (PORTED_OUT, "unknown_subscriber", "the carrier no longer knows the number (ported out or disconnected)"),
        (BARRED, "user_barred", "the number is barred from carrier billing"),
    ],
)
def test_a_number_ported_out_or_barred_after_its_first_period_ends_the_subscription_at_once(
    live: str, protocol: str, msisdn: str, code: str, reason: str, receiver: Receiver
) -> None:
    subscription = subscribed(live, protocol, msisdn, receiver)
    end = subscription.current_period_end
    assert end is not None
    run_renewals(now=end)
    assert settled(subscription, 1) == [(1, 1, "failed", code)]
    subscription.refresh_from_db()
    assert (subscription.status, subscription.next_charge_at) == (SubscriptionStatus.EXPIRED, None)
    last = subscription.history.last()
    assert last is not None
    assert last.reason == f"renewal failed: {code} ({reason})"
    events = webhooks(subscription)
    assert [kind for kind, _ in events] == [
        "subscription.activated",
        "subscription.renewal_failed",
        "subscription.expired",
    ]
    assert (events[-1][1]["failure_code"], events[-1][1]["period"]["index"]) == (code, 1)
    # No pointless retry: nothing more is charged, or asked of the carrier.
    assert run_renewals(now=end + timedelta(days=7)).charged == 0
    assert SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal").count() == 1
    assert Carrier.objects.filter(pk=subscription.carrier_id, is_active=True).exists()
