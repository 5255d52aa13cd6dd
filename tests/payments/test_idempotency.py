"""Idempotency-Key semantics of POST /api/v1/payments/."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from payments.models import IdempotencyRecord, Payment, PaymentIdempotencyKey
from payments.tasks import purge_idempotency_keys
from tests.conftest import MSISDN, Shop, assert_problem


@pytest.mark.django_db
def test_same_key_and_body_replays_the_first_response(shop: Shop) -> None:
    first = shop.create_payment(key="order-42")
    again = shop.create_payment(key="order-42")
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_replay_returns_the_first_response_even_after_the_payment_moved_on(shop: Shop) -> None:
    first = shop.create_payment(key="order-42").json()
    shop.confirm(first["id"], "1234")
    assert shop.get(first["id"])["status"] == "succeeded"
    assert shop.create_payment(key="order-42").json() == first


@pytest.mark.django_db
def test_same_key_with_a_different_body_is_422(shop: Shop) -> None:
    shop.create_payment(key="order-42")
    response = shop.create_payment(key="order-42", user_ref="someone-else")
    assert_problem(response, status=422, code="idempotency_key_reused")
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_scoped_per_app(make_shop) -> None:
    one, two = make_shop(), make_shop(prefix="4475")
    assert one.create_payment(key="k").status_code == 201
    assert two.create_payment(key="k", msisdn="+447500123456").status_code == 201
    assert Payment.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(("key", "code"), [(None, "idempotency_key_missing"), ("x" * 256, "idempotency_key_invalid")])
def test_missing_or_oversized_key_is_400(shop: Shop, key: str | None, code: str) -> None:
    body = {"user_ref": "p", "msisdn": MSISDN, "price_point": "gems-100"}
    headers = {"Idempotency-Key": key} if key else {}
    response = shop.client.post("/api/v1/payments/", body, format="json", headers=headers)
    assert_problem(response, status=400, code=code)
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_key_of_255_characters_is_accepted(shop: Shop) -> None:
    assert shop.create_payment(key="k" * 255).status_code == 201


@pytest.mark.django_db
def test_a_request_that_fails_validation_is_not_stored_under_its_key(shop: Shop) -> None:
    assert shop.create_payment(key="retry-me", msisdn="123").status_code == 400
    assert shop.create_payment(key="retry-me").status_code == 201


@pytest.mark.django_db
def test_key_in_flight_is_409_with_retry_after(shop: Shop) -> None:
    body = {"user_ref": "player-1", "msisdn": MSISDN, "price_point": "gems-100"}
    from payments.services.idempotency import fingerprint

    IdempotencyRecord.objects.create(
        app=shop.app, key="busy", fingerprint=fingerprint(method="POST", path="/api/v1/payments/", body=body)
    )
    response = shop.create_payment(key="busy")
    assert_problem(response, status=409, code="idempotency_request_in_flight")
    assert response["Retry-After"] == "1"


@pytest.mark.django_db
def test_a_request_that_died_in_flight_is_answered_from_the_payment(shop: Shop, settings) -> None:
    settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS = 60
    created = shop.create_payment(key="crashed").json()
    record = IdempotencyRecord.objects.get(key="crashed")
    # As if the process died after creating the payment, before storing the response.
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        state=IdempotencyRecord.State.IN_FLIGHT, response_body=None, created_at=timezone.now() - timedelta(minutes=5)
    )
    replay = shop.create_payment(key="crashed")
    assert replay.status_code == 201
    assert replay.json()["id"] == created["id"]
    assert IdempotencyRecord.objects.get(pk=record.pk).state == IdempotencyRecord.State.COMPLETED


@pytest.mark.django_db
def test_scheduled_purge_removes_keys_older_than_the_ttl(shop: Shop, settings) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    shop.create_payment(key="old")
    shop.create_payment(key="new", user_ref="p2")
    IdempotencyRecord.objects.filter(key="old").update(created_at=timezone.now() - timedelta(hours=25))
    assert purge_idempotency_keys() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]
    # After the purge the key is free again; the payment itself stays.
    assert Payment.objects.count() == 2


@pytest.mark.django_db
def test_a_key_used_again_after_it_expired_creates_a_new_payment(shop: Shop, settings) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 0  # every key claimed before now has expired
    first = shop.create_payment(key="again").json()
    assert purge_idempotency_keys() == 1
    second = shop.create_payment(key="again")
    assert second.status_code == 201, second.content
    assert second.json()["id"] != first["id"]
    # The first payment keeps its key on its own row; the key's claim is the new payment's.
    assert Payment.objects.filter(idempotency_key="again").count() == 2
    assert PaymentIdempotencyKey.objects.get(key="again").payment.public_id == uuid.UUID(second.json()["id"])
    assert shop.create_payment(key="again").json() == second.json()  # replayed, as any key within its time


@pytest.mark.django_db
def test_a_key_whose_payment_is_younger_than_the_ttl_stays_taken_without_its_record(shop: Shop) -> None:
    first = shop.create_payment(key="young")
    IdempotencyRecord.objects.filter(key="young").delete()  # as if purged early: the payment is a minute old
    assert_problem(shop.create_payment(key="young"), status=409, code="idempotency_request_in_flight")
    assert PaymentIdempotencyKey.objects.get(key="young").payment.public_id == uuid.UUID(first.json()["id"])
    assert Payment.objects.count() == 1


def _at_once(server: str, shop: Shop, *, key: str, requests: int) -> list[httpx.Response]:
    """`requests` payment requests with one key and one body, sent at once over HTTP."""
    body = {"user_ref": "player-1", "msisdn": MSISDN, "price_point": "gems-100"}
    headers = {"Authorization": f"Api-Key {shop.key}", "Idempotency-Key": key}

    def send(_: int) -> httpx.Response:
        return httpx.post(f"{server}/api/v1/payments/", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=requests) as pool:
        return list(pool.map(send, range(requests)))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_parallel_requests_with_one_expired_key_create_exactly_one_new_payment(
    live_server, make_shop, settings
) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 0  # every key claimed before now has expired
    shop = make_shop()
    first = shop.create_payment(key="expired-for-all").json()
    assert purge_idempotency_keys() == 1

    responses = _at_once(live_server.url, shop, key="expired-for-all", requests=16)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, statuses
    new = Payment.objects.exclude(public_id=first["id"])
    assert new.count() == 1  # the released key went to one request only
    assert {response.json()["id"] for response in responses if response.status_code == 201} == {
        str(new.get().public_id)
    }
    # The requests that lost did not release the winner's claim (expired too, with no time to live here).
    assert PaymentIdempotencyKey.objects.get(key="expired-for-all").payment_id == new.get().pk
    (again,) = _at_once(live_server.url, shop, key="expired-for-all", requests=1)
    assert again.json()["id"] == str(new.get().public_id)  # replayed


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tasks", ["in-process", pytest.param("broker", marks=pytest.mark.broker)])
def test_parallel_requests_with_one_key_create_exactly_one_payment(live_server, make_shop, tasks: str) -> None:
    # In-process the response is stored after the commit; with a broker, with the claim itself.
    shop = make_shop()
    responses = _at_once(live_server.url, shop, key="same-for-all", requests=24)

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, statuses
    assert statuses.count(201) >= 1
    assert Payment.objects.count() == 1
    payment_id = str(Payment.objects.get().public_id)
    assert {response.json()["id"] for response in responses if response.status_code == 201} == {payment_id}
    conflicts = [response for response in responses if response.status_code == 409]
    assert all(response.json()["code"] == "idempotency_request_in_flight" for response in conflicts)


@pytest.mark.django_db
def test_a_replay_returns_the_first_response_even_if_the_request_would_no_longer_validate(shop: Shop) -> None:
    first = shop.create_payment(key="order-7")
    shop.price_point.is_active = False
    shop.price_point.save()
    again = shop.create_payment(key="order-7")
    assert again.status_code == 201
    assert again.json() == first.json()
    assert shop.create_payment(key="order-8").json()["code"] == "price_point_not_found"


@pytest.mark.broker
@pytest.mark.django_db
def test_with_a_broker_the_response_is_stored_with_the_claim_and_replayed(shop: Shop) -> None:
    first = shop.create_payment(key="k-broker")
    assert first.status_code == 201
    record = IdempotencyRecord.objects.get(app=shop.app, key="k-broker")
    assert record.state == IdempotencyRecord.State.COMPLETED
    assert record.response_status == 201
    assert record.response_body == first.json()

    replay = shop.create_payment(key="k-broker")
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    different = shop.create_payment(key="k-broker", user_ref="someone-else")
    assert different.status_code == 422
    assert Payment.objects.count() == 1
