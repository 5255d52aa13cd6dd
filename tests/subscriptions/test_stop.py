"""The player's STOP, told by the app: every live subscription of the number in that app cancelled now."""

from collections.abc import Callable
from typing import Any

import pytest

from subscriptions.models import Subscription, SubscriptionStatus, SubscriptionStatusChange
from tests.conftest import MSISDN
from tests.payments.test_webhooks import Receiver
from tests.subscriptions.conftest import Subs, event_types, make_plan

pytestmark = pytest.mark.django_db


def stop(subs: Subs, **body: object) -> Any:
    with subs.shop.after_commit(execute=True):
        return subs.shop.client.post("/api/v1/subscriptions/stop/", body, format="json")


def test_stop_cancels_every_live_subscription_of_the_number_now_and_a_second_stop_changes_nothing(
    subs: Subs, hooks: Receiver
) -> None:
    active = subs.active("sub-1")
    pending = Subscription.objects.get(public_id=subs.subscribe("sub-2").json()["id"])
    other_number = subs.active("sub-3", msisdn=MSISDN[:-1] + "9")
    response = stop(subs, msisdn=MSISDN.removeprefix("+"))
    assert response.status_code == 200, response.content
    assert sorted(s["id"] for s in response.json()["cancelled"]) == sorted(
        [str(active.public_id), str(pending.public_id)]
    )
    for subscription in (active, pending):
        subscription.refresh_from_db()
        assert subscription.status == SubscriptionStatus.CANCELLED
        assert subscription.cancel_reason == "STOP from the player"
        assert subscription.next_charge_at is None
    assert active.entitled_until == active.cancelled_at  # access ends now
    assert event_types(active)[-1] == "subscription.cancelled"
    other_number.refresh_from_db()
    assert other_number.status == SubscriptionStatus.ACTIVE
    changes = SubscriptionStatusChange.objects.count()
    again = stop(subs, msisdn=MSISDN)
    assert again.status_code == 200, again.content
    assert again.json() == {"cancelled": []}
    assert SubscriptionStatusChange.objects.count() == changes
    assert event_types(active).count("subscription.cancelled") == 1


def test_stop_with_a_plan_cancels_only_that_plans_subscriptions(subs: Subs) -> None:
    make_plan(subs.shop, code="gold-weekly")
    vip = subs.active("sub-1")
    gold = subs.active("sub-2", plan="gold-weekly")
    response = stop(subs, msisdn=MSISDN, plan="gold-weekly")
    assert [s["id"] for s in response.json()["cancelled"]] == [str(gold.public_id)]
    vip.refresh_from_db()
    assert vip.status == SubscriptionStatus.ACTIVE


def test_stop_does_not_reach_another_apps_subscriptions(subs: Subs, make_subs: Callable[..., Subs]) -> None:
    subscription = subs.active()
    other = make_subs(prefix="4475")
    response = stop(other, msisdn=MSISDN)
    assert response.json() == {"cancelled": []}
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "validation_error"),
        ({"msisdn": "not a number"}, "invalid_msisdn"),
        ({"msisdn": MSISDN, "plan": "no spaces allowed"}, "validation_error"),
        ({"msisdn": MSISDN, "extra": 1}, "validation_error"),
        ({"msisdn": ["+447400123456"]}, "validation_error"),
        ({"msisdn": 447400123456}, "validation_error"),
        ({"msisdn": MSISDN, "plan": 0}, "validation_error"),
    ],
)
def test_a_bad_stop_is_a_problem_and_changes_nothing(subs: Subs, body: dict[str, object], code: str) -> None:
    subscription = subs.active()
    response = stop(subs, **body)
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
