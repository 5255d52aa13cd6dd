"""The subscriptions API as a game backend uses it: opt-in, confirmation, reads, cancellation, entitlement."""

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from payments.models import IdempotencyRecord, Payment
from payments.services.carrier_flow import charge_request
from payments.tasks import purge_idempotency_keys
from subscriptions.models import Subscription, SubscriptionCharge
from tests.conftest import MSISDN, assert_problem
from tests.subscriptions.conftest import Subs

pytestmark = pytest.mark.django_db


def test_subscribing_sends_a_pin_that_states_the_price_and_the_period(subs: Subs) -> None:
    response = subs.subscribe()
    assert response.status_code == 201, response.content
    body = subs.get(response.json()["id"])
    assert (body["status"], body["plan"], body["period"], body["msisdn"]) == (
        "pending_opt_in",
        "vip-weekly",
        "weekly",
        MSISDN,
    )
    assert body["price"] == {"amount_minor": 99, "currency": "GBP"}
    assert body["entitled_until"] is None
    assert body["next_action"]["type"] == "enter_pin"
    payment = Payment.objects.get(public_id=body["opt_in_payment"])
    assert (payment.status, payment.flow, payment.amount_minor) == ("pin_sent", "pin", 99)
    assert (
        "$0.99 per week" in charge_request(payment).description
        or "£0.99 per week" in charge_request(payment).description
    )


def test_the_same_key_and_body_replay_the_first_answer(subs: Subs) -> None:
    first = subs.subscribe("same")
    again = subs.subscribe("same")
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert Subscription.objects.count() == 1
    assert Payment.objects.count() == 1


def test_a_key_used_again_after_it_expired_opens_a_new_subscription(subs: Subs, settings) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 0  # every key claimed before now has expired
    first = subs.subscribe("again").json()
    assert purge_idempotency_keys() == 1
    second = subs.subscribe("again")
    assert second.status_code == 201, second.content
    assert second.json()["id"] != first["id"]
    # The key is the new subscription's; the first one stays, its key cleared (the key is unique per app).
    keys = dict(Subscription.objects.values_list("public_id", "idempotency_key"))
    assert keys == {uuid.UUID(first["id"]): "", uuid.UUID(second.json()["id"]): "again"}
    assert subs.subscribe("again").json() == second.json()  # replayed, as any key within its time


def test_a_key_whose_subscription_is_younger_than_the_ttl_stays_taken_without_its_record(subs: Subs) -> None:
    first = subs.subscribe("young").json()
    IdempotencyRecord.objects.filter(key="young").delete()  # as if purged early: the subscription is new
    assert_problem(subs.subscribe("young"), status=409, code="idempotency_request_in_flight")
    assert list(Subscription.objects.values_list("public_id", "idempotency_key")) == [(uuid.UUID(first["id"]), "young")]


def test_the_same_key_with_another_body_is_refused(subs: Subs) -> None:
    subs.subscribe("same")
    assert_problem(subs.subscribe("same", user_ref="player-2"), status=422, code="idempotency_key_reused")
    assert Subscription.objects.count() == 1


def test_the_right_pin_activates_the_subscription_for_its_first_period(subs: Subs) -> None:
    subscription_id = subs.subscribe().json()["id"]
    before = timezone.now()
    response = subs.confirm(subscription_id)
    assert response.status_code == 202  # the PIN is checked on the carrier's queue, here at the commit
    body = subs.get(subscription_id)
    assert body["status"] == "active"
    start = datetime.fromisoformat(body["current_period"]["start"])
    end = datetime.fromisoformat(body["current_period"]["end"])
    assert before <= start <= timezone.now()
    assert end - start == timedelta(days=7)
    assert body["entitled_until"] == body["current_period"]["end"] == body["next_renewal_at"]
    history = Subscription.objects.get(public_id=subscription_id).history.values_list("to_status", "actor")
    assert list(history) == [
        ("pending_opt_in", f"app:{subs.shop.app.name}"),
        ("active", f"carrier:{subs.shop.carrier.slug}"),
    ]
    charge = SubscriptionCharge.objects.get()
    assert (charge.kind, charge.outcome, charge.period_index) == ("opt_in", "succeeded", 0)


def test_a_wrong_pin_is_a_problem_and_leaves_the_opt_in_pending(subs: Subs) -> None:
    subscription_id = subs.subscribe().json()["id"]
    subs.confirm(subscription_id, pin="0000")
    body = subs.get(subscription_id)
    assert body["status"] == "pending_opt_in"
    assert (body["next_action"]["pin_error"], body["next_action"]["attempts_remaining"]) == ("invalid_pin", 2)


def test_three_wrong_pins_expire_the_subscription(subs: Subs) -> None:
    subscription_id = subs.subscribe().json()["id"]
    for _ in range(3):
        subs.confirm(subscription_id, pin="0000")
    assert subs.get(subscription_id)["status"] == "expired"


def test_a_confirmed_subscription_takes_no_pin(subs: Subs) -> None:
    subscription = subs.active()
    assert_problem(subs.confirm(str(subscription.public_id)), status=409, code="illegal_subscription_transition")


def test_an_unknown_plan_is_a_problem(subs: Subs) -> None:
    assert_problem(subs.subscribe(plan="gold-monthly"), status=422, code="plan_not_available")
    assert not Subscription.objects.exists()


def test_a_carrier_without_subscriptions_is_a_problem(subs: Subs) -> None:
    subs.shop.carrier.supports_subscriptions = False
    subs.shop.carrier.save()
    assert_problem(subs.subscribe(), status=422, code="plan_not_available")


@pytest.mark.parametrize(
    "body",
    [{"user_ref": "p", "msisdn": MSISDN}, {"user_ref": "p", "msisdn": MSISDN, "plan": "vip-weekly", "extra": 1}],
)
def test_a_malformed_request_is_a_validation_problem(subs: Subs, body: dict[str, object]) -> None:
    response = subs.shop.client.post("/api/v1/subscriptions/", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert_problem(response, status=400, code="validation_error")


def test_a_subscription_without_idempotency_key_is_refused(subs: Subs) -> None:
    body = {"user_ref": "p", "msisdn": MSISDN, "plan": "vip-weekly"}
    response = subs.shop.client.post("/api/v1/subscriptions/", body, format="json")
    assert_problem(response, status=400, code="idempotency_key_missing")


def test_another_apps_subscription_is_not_found(subs: Subs, make_subs: Callable[..., Subs]) -> None:
    other = make_subs(prefix="4475")
    subscription_id = other.subscribe(msisdn="+447500123456").json()["id"]
    response = subs.shop.client.get(f"/api/v1/subscriptions/{subscription_id}/")
    assert_problem(response, status=404, code="not_found")


def test_the_list_filters_by_player_and_status(subs: Subs) -> None:
    subs.active("a", user_ref="alice")
    subs.subscribe("b", user_ref="bob")
    alice = subs.shop.client.get("/api/v1/subscriptions/", {"user_ref": "alice"}).json()
    assert [s["user_ref"] for s in alice["results"]] == ["alice"]
    pending = subs.shop.client.get("/api/v1/subscriptions/", {"status": "pending_opt_in"}).json()
    assert [s["user_ref"] for s in pending["results"]] == ["bob"]
    assert_problem(
        subs.shop.client.get("/api/v1/subscriptions/", {"status": "asleep"}), status=400, code="validation_error"
    )


def test_cancelling_at_the_period_end_keeps_the_player_entitled_until_then(subs: Subs) -> None:
    subscription = subs.active()
    response = subs.cancel(str(subscription.public_id), reason="player asked")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["cancel_at_period_end"], body["next_renewal_at"]) == ("active", True, None)
    entitlement = subs.shop.client.get("/api/v1/subscriptions/entitlement/", {"user_ref": "player-1"}).json()
    assert entitlement["entitled"] is True
    assert entitlement["entitled_until"] == body["current_period"]["end"]


def test_cancelling_now_ends_the_entitlement(subs: Subs) -> None:
    subscription = subs.active()
    response = subs.cancel(str(subscription.public_id), reason="fraud", at_period_end=False)
    assert response.json()["status"] == "cancelled"
    entitlement = subs.shop.client.get("/api/v1/subscriptions/entitlement/", {"user_ref": "player-1"}).json()
    assert (entitlement["entitled"], entitlement["entitled_until"], entitlement["subscriptions"]) == (False, None, [])
    history = Subscription.objects.get(pk=subscription.pk).history.last()
    assert history is not None
    assert (history.to_status, history.actor, history.reason) == (
        "cancelled",
        f"app:{subs.shop.app.name}",
        "cancelled: fraud",
    )
    assert_problem(
        subs.cancel(str(subscription.public_id), reason="again"), status=409, code="illegal_subscription_transition"
    )


def test_cancelling_before_the_opt_in_expires_its_pin_payment(subs: Subs) -> None:
    subscription_id = subs.subscribe().json()["id"]
    assert subs.cancel(subscription_id, reason="changed mind").json()["status"] == "cancelled"
    assert Payment.objects.get().status == "expired"


def test_a_player_never_subscribed_is_not_entitled(subs: Subs) -> None:
    response = subs.shop.client.get("/api/v1/subscriptions/entitlement/", {"user_ref": "nobody"})
    assert response.json() == {"user_ref": "nobody", "entitled": False, "entitled_until": None, "subscriptions": []}


def test_entitlement_needs_a_player(subs: Subs) -> None:
    response = subs.shop.client.get("/api/v1/subscriptions/entitlement/")
    assert_problem(response, status=400, code="validation_error")
