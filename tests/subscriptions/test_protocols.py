"""Subscriptions on the platform-managed protocols, against their simulators over real HTTP: the opt-in by
PIN, then a renewal by the protocol's one-click charge."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from sandbox.simulators.core import simulator
from subscriptions.models import Plan, PlanOffer, Subscription
from subscriptions.services.renewals import run_renewals
from tenants.services import issue_api_key
from tests.conftest import MSISDN
from tests.factories import AppFactory
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(live_server: Any, settings: Any) -> str:
    settings.PUBLIC_BASE_URL = live_server.url
    return str(live_server.url)


@pytest.mark.parametrize("protocol", ["camara", "parlayx"])
def test_a_subscription_opts_in_by_pin_and_renews_by_one_click(live: str, protocol: str) -> None:
    carrier = simulated_carrier(
        live, protocol, supports_subscriptions=True, supports_one_click=True, insufficient_funds_retry_minutes=""
    )
    app = AppFactory.create()
    plan = Plan.objects.create(app=app, code="vip-weekly", name="VIP pass", period="weekly")
    PlanOffer.objects.create(plan=plan, carrier=carrier, price_point=carrier.price_points.get())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=app).raw_key}")
    body = {"user_ref": "player-1", "msisdn": MSISDN, "plan": "vip-weekly"}
    created = client.post("/api/v1/subscriptions/", body, format="json", HTTP_IDEMPOTENCY_KEY="s-1")
    assert created.status_code == 201, created.content
    subscription_id = created.json()["id"]

    pin = last_pin(protocol, MSISDN)
    if protocol == "parlayx":  # PlayPay sends the PIN itself: the message states the price and the period
        assert (
            simulator(protocol)
            .sms[MSISDN][-1]
            .endswith("VIP pass: subscription, £0.99 per week, renewed until you cancel")
        )
    client.post(f"/api/v1/subscriptions/{subscription_id}/confirm/", {"pin": pin}, format="json")
    wait_for(
        lambda: Subscription.objects.filter(public_id=subscription_id, status="active").exists(), what="activation"
    )

    subscription = Subscription.objects.get(public_id=subscription_id)
    assert subscription.current_period_end is not None
    assert run_renewals(now=subscription.current_period_end).charged == 1
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, period_index=1).exists(), what="the renewal")
    assert len(simulator(protocol).charges[MSISDN]) == 2  # the opt-in's and the renewal's, once each
