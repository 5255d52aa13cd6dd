"""Fixtures of the subscription tests: a shop whose carrier takes subscriptions, and a weekly plan on it."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from payments.models import WebhookDelivery
from sandbox.adapter import TEST_PIN
from subscriptions.models import Plan, PlanOffer, Subscription, SubscriptionStatus
from subscriptions.periods import Period, boundary
from subscriptions.services.renewals import RenewalRun, run_renewals
from tests.conftest import MSISDN, Shop
from tests.payments.test_webhooks import Receiver


@dataclass
class Subs:
    """A shop selling the plan `vip-weekly` by subscription, driven through the API."""

    shop: Shop
    plan: Plan
    offer: PlanOffer

    def subscribe(self, key: str = "sub-1", **body: Any) -> Any:
        payload = {"user_ref": "player-1", "msisdn": MSISDN, "plan": self.plan.code, **body}
        with self.shop.after_commit(execute=True):
            return self.shop.client.post("/api/v1/subscriptions/", payload, format="json", HTTP_IDEMPOTENCY_KEY=key)

    def confirm(self, subscription_id: str, pin: str = TEST_PIN) -> Any:
        with self.shop.after_commit(execute=True):
            return self.shop.client.post(
                f"/api/v1/subscriptions/{subscription_id}/confirm/", {"pin": pin}, format="json"
            )

    def get(self, subscription_id: str) -> Any:
        response = self.shop.client.get(f"/api/v1/subscriptions/{subscription_id}/")
        assert response.status_code == 200, response.content
        return response.json()

    def active(self, key: str = "sub-1", **body: Any) -> Subscription:
        """A subscription opted in and confirmed: active, its first period paid."""
        created = self.subscribe(key, **body)
        assert created.status_code == 201, created.content
        self.confirm(created.json()["id"])
        subscription = Subscription.objects.get(public_id=created.json()["id"])
        assert subscription.status == "active", subscription.status
        return subscription

    def bulk_active(self, count: int, *, anchor: datetime) -> list[Subscription]:
        """`count` subscriptions to the plan in their first paid period since `anchor`, written directly (the
        opt-in is not the point)."""
        price_point = self.offer.price_point
        end = boundary(anchor, self.plan.period, 1)
        return Subscription.objects.bulk_create(
            Subscription(
                app=self.shop.app,
                user_ref=f"player-{n}",
                msisdn=MSISDN,
                carrier=self.shop.carrier,
                plan=self.plan,
                offer=self.offer,
                price_point=price_point,
                amount_minor=price_point.amount_minor,
                currency=price_point.currency,
                status=SubscriptionStatus.ACTIVE,
                anchor_at=anchor,
                current_period_start=anchor,
                current_period_end=end,
                entitled_until=end,
                next_charge_at=end,
            )
            for n in range(count)
        )

    def renew(self, now: datetime, **options: Any) -> RenewalRun:
        """A run of the renewal engine at `now`, and the carrier work it queued."""
        with self.shop.after_commit(execute=True):
            return run_renewals(now=now, **options)

    def cancel(self, subscription_id: str, **body: Any) -> Any:
        with self.shop.after_commit(execute=True):
            return self.shop.client.post(f"/api/v1/subscriptions/{subscription_id}/cancel/", body, format="json")


def make_plan(shop: Shop, *, period: str = Period.WEEKLY, code: str = "vip-weekly") -> tuple[Plan, PlanOffer]:
    plan = Plan.objects.create(app=shop.app, code=code, name="VIP pass", period=period)
    offer = PlanOffer.objects.create(plan=plan, carrier=shop.carrier, price_point=shop.price_point)
    return plan, offer


@pytest.fixture
def make_subs(make_shop: Callable[..., Shop]) -> Callable[..., Subs]:
    def make(**carrier_fields: Any) -> Subs:
        # Declines fail the renewal's payment at once: the subscription's own schedule retries it.
        shop = make_shop(supports_subscriptions=True, insufficient_funds_retry_minutes="", **carrier_fields)
        plan, offer = make_plan(shop)
        return Subs(shop=shop, plan=plan, offer=offer)

    return make


@pytest.fixture
def subs(db: Any, make_subs: Callable[..., Subs]) -> Subs:
    return make_subs()


@pytest.fixture
def hooks(subs: Subs) -> Iterator[Receiver]:
    """The shop's webhook endpoint, on loopback."""
    receiver = Receiver()
    subs.shop.app.webhook_url = receiver.url
    subs.shop.app.save(update_fields=["webhook_url"])
    yield receiver
    receiver.server.shutdown()


def event_types(subscription: Subscription) -> list[str]:
    """The subscription webhooks queued for its app, oldest first."""
    deliveries = WebhookDelivery.objects.filter(event_type__startswith="subscription.").order_by("id")
    return [d.event_type for d in deliveries if d.payload["data"]["id"] == str(subscription.public_id)]
