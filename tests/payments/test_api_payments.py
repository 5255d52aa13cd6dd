"""The payment API as a game backend uses it."""

import os
import secrets
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from carriers import adapters
from payments.models import IdempotencyRecord, Payment, PaymentStatus
from sandbox.adapter import TEST_PIN
from tests.conftest import MSISDN, Shop, assert_problem

pytestmark = pytest.mark.django_db


def test_create_pin_payment_returns_201_with_next_action(shop: Shop) -> None:
    response = shop.create_payment()
    assert response.status_code == 201
    assert response.json()["status"] == "created"  # the carrier's work runs after the commit
    body = shop.get(response.json()["id"])
    assert body["status"] == "pin_sent"
    assert body["flow"] == "pin"
    assert body["amount_minor"] == 99
    assert body["currency"] == "GBP"
    assert body["carrier"] == shop.carrier.slug
    assert body["price_point"] == "gems-100"
    assert body["msisdn"] == MSISDN
    assert body["next_action"]["type"] == "enter_pin"
    assert body["next_action"]["attempts_remaining"] == 3
    payment = Payment.objects.get(public_id=body["id"])
    assert [(h.from_status, h.to_status) for h in payment.history.all()] == [("", "created"), ("created", "pin_sent")]


def test_the_create_answer_names_carrier_and_price_point_without_reading_them_again(shop: Shop) -> None:
    assert shop.create_payment("key-1").status_code == 201  # routing and price points are now memoised

    with CaptureQueriesContext(connection) as statements:  # the request alone: its carrier work waits for a commit
        response = shop.client.post(
            "/api/v1/payments/",
            {"user_ref": "player-1", "msisdn": MSISDN, "price_point": "gems-100"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="key-2",
        )

    assert response.status_code == 201
    assert (response.json()["carrier"], response.json()["price_point"]) == (shop.carrier.slug, "gems-100")
    reads = [q["sql"] for q in statements.captured_queries if q["sql"].startswith("SELECT")]
    assert not [sql for sql in reads if '"carriers_carrier"' in sql or '"carriers_pricepoint"' in sql], reads


def test_confirm_with_the_right_pin_charges_the_payment(shop: Shop) -> None:
    payment_id = shop.pay()["id"]
    response = shop.confirm(payment_id, TEST_PIN)
    # Answered before the check: it runs on the carrier's queue, here after the request's commit.
    assert response.status_code == 202
    assert response.json()["status"] == "pin_sent"
    assert response.json()["next_action"] == {"type": "wait", "poll_after_seconds": 1}
    assert shop.get(payment_id)["status"] == "succeeded"
    history = Payment.objects.get(public_id=payment_id).history.values_list("to_status", "actor")
    assert list(history)[-3:] == [
        ("pin_verified", f"carrier:{shop.carrier.slug}"),
        ("charging", f"app:{shop.app.name}"),
        ("succeeded", f"carrier:{shop.carrier.slug}"),
    ]


def test_three_wrong_pins_fail_the_payment(shop: Shop) -> None:
    payment_id = shop.create_payment().json()["id"]
    first = shop.confirm(payment_id, "0000")
    assert first.status_code == 202
    next_action = shop.get(payment_id)["next_action"]
    assert (next_action["type"], next_action["pin_error"], next_action["attempts_remaining"]) == (
        "enter_pin",
        "invalid_pin",
        2,
    )
    shop.confirm(payment_id, "0000")
    assert shop.get(payment_id)["next_action"]["attempts_remaining"] == 1
    shop.confirm(payment_id, "0000")
    body = shop.get(payment_id)
    assert (body["status"], body["failure"]["code"], body["next_action"]) == ("failed", "invalid_pin", {"type": "none"})
    payment = Payment.objects.get(public_id=payment_id)
    assert payment.status == PaymentStatus.FAILED
    assert payment.failure_code == "invalid_pin"
    # Once failed, even the right PIN is refused.
    assert shop.confirm(payment_id, TEST_PIN).status_code == 409


def test_a_second_pin_while_the_first_is_being_checked_is_refused(shop: Shop) -> None:
    payment_id = shop.pay()["id"]
    first = shop.client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": "0000"}, format="json")
    assert first.status_code == 202  # its check is queued (this test's transaction never commits)
    assert_problem(shop.confirm(payment_id, TEST_PIN), status=409, code="illegal_transition")


def test_expired_pin_is_refused_and_expires_the_payment(shop: Shop) -> None:
    payment_id = shop.create_payment().json()["id"]
    Payment.objects.filter(public_id=payment_id).update(pin_expires_at=timezone.now() - timedelta(seconds=1))
    response = shop.confirm(payment_id, TEST_PIN)
    assert response.status_code == 409
    assert response.json()["code"] == "pin_expired"
    assert Payment.objects.get(public_id=payment_id).status == PaymentStatus.EXPIRED


def test_one_click_payment_is_charged_at_creation(shop: Shop) -> None:
    body = shop.pay(flow="one_click")
    assert body["status"] == "succeeded"
    assert body["next_action"] == {"type": "none"}


def test_carrier_decline_fails_the_payment_with_the_standard_code(shop: Shop) -> None:
    body = shop.pay(flow="one_click", msisdn="+447400120002")
    assert body["status"] == "failed"
    assert body["failure"]["code"] == "insufficient_funds"


def test_unanswered_charge_stays_charging_never_success_or_failure(shop: Shop) -> None:
    body = shop.pay(flow="one_click", msisdn="+447400120005")
    assert body["status"] == "charging"
    assert body["next_action"]["type"] == "wait"


def test_flow_the_carrier_does_not_offer_is_refused(make_shop) -> None:
    shop = make_shop(supports_one_click=False)
    response = shop.create_payment(flow="one_click")
    assert response.status_code == 422
    assert response.json()["code"] == "flow_not_supported"
    assert not Payment.objects.exists()


def test_a_carrier_whose_protocol_this_deployment_does_not_run_is_refused_before_anything_is_stored(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in production, where the sandbox app (and so its adapter) is not installed.
    monkeypatch.delitem(adapters._ADAPTERS, shop.carrier.protocol)
    problem = assert_problem(shop.create_payment(), status=503, code="carrier_protocol_unavailable")
    assert "sandbox" in problem["detail"]
    assert not Payment.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_app_cannot_see_or_confirm_another_apps_payment(make_shop) -> None:
    mine, theirs = make_shop(), make_shop(prefix="4475")
    payment_id = theirs.create_payment(msisdn="+447500123456").json()["id"]
    assert mine.client.get(f"/api/v1/payments/{payment_id}/").status_code == 404
    assert mine.confirm(payment_id, TEST_PIN).status_code == 404
    assert mine.client.get("/api/v1/payments/").json()["results"] == []
    assert theirs.client.get(f"/api/v1/payments/{payment_id}/").status_code == 200


def test_list_filters_by_status_and_user_ref(shop: Shop) -> None:
    shop.create_payment(key="a", user_ref="alice")
    shop.create_payment(key="b", user_ref="bob", flow="one_click")
    results = shop.client.get("/api/v1/payments/", {"status": "succeeded"}).json()["results"]
    assert [row["user_ref"] for row in results] == ["bob"]
    results = shop.client.get("/api/v1/payments/", {"user_ref": "alice"}).json()["results"]
    assert [row["status"] for row in results] == ["pin_sent"]
    bad = shop.client.get("/api/v1/payments/", {"status": "paid"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["pointer"] == "#/status"


def test_unknown_payment_id_is_404_problem(shop: Shop) -> None:
    for bad in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"]:
        response = shop.client.get(f"/api/v1/payments/{bad}/")
        assert_problem(response, status=404, code="not_found")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Api-Key pp_nope_nope", "authentication_failed"),
        ("Bearer x", "authentication_failed"),
    ],
)
def test_requests_without_a_valid_key_are_401(shop: Shop, header: str | None, code: str) -> None:
    shop.client.credentials(**({"HTTP_AUTHORIZATION": header} if header else {}))
    response = shop.client.get("/api/v1/payments/")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == "Api-Key"
    assert response.json()["code"] == code


def test_revoked_key_is_refused(shop: Shop) -> None:
    shop.app.api_keys.update(revoked_at=timezone.now())
    response = shop.client.get("/api/v1/payments/")
    assert_problem(response, status=401, code="authentication_failed")
    assert response["WWW-Authenticate"] == "Api-Key"


def test_undocumented_fields_are_rejected_and_nothing_is_created(shop: Shop) -> None:
    response = shop.create_payment(status="succeeded", amount_minor=1)
    assert response.status_code == 400
    pointers = {error["pointer"] for error in response.json()["errors"]}
    assert pointers == {"#/status", "#/amount_minor"}
    assert not Payment.objects.exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"msisdn": "12"}, 400, "invalid_msisdn"),
        ({"msisdn": "+442071838750"}, 400, "invalid_msisdn"),  # a London landline
        ({"msisdn": "+34612345678"}, 422, "carrier_not_resolved"),
        ({"price_point": "gems-999"}, 422, "price_point_not_found"),
        ({"carrier": "no-such-carrier"}, 422, "carrier_not_found"),
        ({"user_ref": ""}, 400, "validation_error"),
        ({"metadata": {"blob": "x" * 5000}}, 400, "validation_error"),
    ],
)
def test_invalid_requests_get_a_problem_and_change_nothing(
    shop: Shop, body: dict[str, Any], status: int, code: str
) -> None:
    response = shop.create_payment(**body)
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert problem["type"] == f"/api/problems/{code}"
    assert problem["status"] == status
    assert problem["detail"]
    assert not Payment.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_inactive_price_point_is_not_offered(shop: Shop) -> None:
    shop.price_point.is_active = False
    shop.price_point.save()
    assert shop.create_payment().json()["code"] == "price_point_not_found"


def test_named_carrier_must_serve_the_numbers_country(shop: Shop) -> None:
    response = shop.create_payment(carrier=shop.carrier.slug, msisdn="+34612345678")
    assert response.status_code == 422
    assert response.json()["code"] == "carrier_country_mismatch"


def test_price_points_lists_what_an_app_may_offer(make_shop) -> None:
    shop = make_shop()
    spain = make_shop(prefix="346", country__code="ES", country__name="Spain", country__dialing_code="34")
    spain.price_point.currency = "EUR"
    spain.price_point.save()
    body = shop.client.get("/api/v1/price-points/", {"country": "es"}).json()
    assert [(row["carrier"], row["currency"]) for row in body["results"]] == [(spain.carrier.slug, "EUR")]
    body = shop.client.get("/api/v1/price-points/", {"carrier": shop.carrier.slug}).json()
    assert [row["code"] for row in body["results"]] == ["gems-100"]
    assert shop.client.get("/api/v1/price-points/", {"country": "Spain"}).status_code == 400


def test_requests_over_the_apps_rate_limit_get_429_with_retry_after(shop: Shop) -> None:
    shop.app.rate_limit_per_minute = 3
    shop.app.save()
    if time.time() % 60 > 55:  # keep the five requests inside one one-minute window
        time.sleep(61 - time.time() % 60)
    statuses = [shop.client.get("/api/v1/payments/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = shop.client.get("/api/v1/payments/")
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60


@pytest.mark.broker  # a real Redis, the broker's, as the rate limit's cache in production
def test_on_redis_the_rate_limit_counts_in_one_command_whose_window_expires(shop: Shop, settings: Any) -> None:
    from django.core.cache import caches

    from tenants.throttling import count_request

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["CELERY_BROKER_URL"],
            "KEY_PREFIX": f"test-throttle-{secrets.token_hex(4)}",
        }
    }
    assert [count_request("window", ttl=65) for _ in range(3)] == [1, 2, 3]
    backend = caches["default"]
    client = backend._cache.get_client(write=True)  # type: ignore[attr-defined]
    key = backend.make_and_validate_key("window")
    assert 60 < client.ttl(key) <= 65
    client.expire(key, 10)
    assert count_request("window", ttl=65) == 4
    assert client.ttl(key) <= 10  # the window's expiry is set by its first request only
    client.script_flush()  # the server lost its scripts (a restart): the count goes on
    assert count_request("window", ttl=65) == 5

    shop.app.rate_limit_per_minute = 2
    shop.app.save()
    if time.time() % 60 > 55:  # keep the requests inside one one-minute window
        time.sleep(61 - time.time() % 60)
    assert [shop.client.get("/api/v1/payments/").status_code for _ in range(3)] == [200, 200, 429]


def test_insufficient_funds_is_tried_again_on_the_carriers_schedule(make_shop: Any, settings: Any) -> None:
    from payments.services.carrier_flow import due_attempts

    shop = make_shop(insufficient_funds_retry_minutes="60,1440")
    body = shop.pay(flow="one_click", msisdn="+447400120002")
    assert body["status"] == "charging"  # declined, another attempt is scheduled
    assert body["failure"]["code"] == "insufficient_funds"
    payment = Payment.objects.get(public_id=body["id"])
    assert payment.next_attempt_at is not None
    assert timedelta(minutes=59) < payment.next_attempt_at - timezone.now() <= timedelta(minutes=60)
    for expected_attempts in (2, 3):
        Payment.objects.filter(pk=payment.pk).update(next_attempt_at=timezone.now())
        with shop.after_commit(execute=True):
            due_attempts()
        payment.refresh_from_db()
        assert payment.charge_attempts == expected_attempts
    assert payment.status == PaymentStatus.FAILED  # the schedule is used up
    assert payment.failure_code == "insufficient_funds"
