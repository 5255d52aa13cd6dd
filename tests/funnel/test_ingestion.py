"""Funnel event ingestion from game backends, and the steps the platform emits itself."""

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from funnel.models import FunnelEvent, Journey
from journal.store import JournalQuery, journal_store
from tests.conftest import Shop, assert_problem

pytestmark = pytest.mark.django_db
URL = "/api/v1/funnel/events/"


def event(
    n: int, *, journey: str = "j1", step: str = "store_opened", minutes_ago: int = 10, **extra: Any
) -> dict[str, Any]:
    at = (timezone.now() - timedelta(minutes=minutes_ago)).isoformat()
    return {"event_id": f"e{n}", "journey_id": journey, "step": step, "occurred_at": at, **extra}


def test_a_single_event_is_accepted(shop: Shop) -> None:
    response = shop.client.post(URL, event(1, user_ref="p1"), format="json")
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    journey = Journey.objects.get()
    assert (journey.journey_id, journey.user_ref) == ("j1", "p1")


def test_a_bad_event_in_a_batch_is_rejected_by_index_and_the_others_are_kept(shop: Shop) -> None:
    batch = [event(1), {"event_id": "e2", "step": "item_selected"}, event(3, step="bad step!"), event(4)]
    body = shop.client.post(URL, {"events": batch}, format="json").json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 2]
    assert set(body["rejected"][0]["errors"]) == {"journey_id", "occurred_at"}
    assert set(FunnelEvent.objects.values_list("event_id", flat=True)) == {"e1", "e4"}


def test_repeated_event_ids_are_ignored(shop: Shop) -> None:
    shop.client.post(URL, {"events": [event(1), event(2)]}, format="json")
    body = shop.client.post(URL, {"events": [event(2), event(3), event(3)]}, format="json").json()
    assert (body["accepted"], body["duplicates"]) == (1, 2)
    assert FunnelEvent.objects.count() == 3


def test_late_events_are_placed_by_their_own_time(shop: Shop) -> None:
    shop.client.post(URL, event(1, minutes_ago=5), format="json")
    shop.client.post(URL, event(2, step="store_opened", minutes_ago=30), format="json")  # arrives late
    journey = Journey.objects.get()  # started by the late event, the earlier one
    assert timezone.now() - journey.started_at > timedelta(minutes=29)


def test_envelope_errors_are_a_problem_and_store_nothing(shop: Shop) -> None:
    too_many = {"events": [event(n) for n in range(1001)]}
    response = shop.client.post(URL, too_many, format="json")
    problem = assert_problem(response, status=400, code="validation_error")
    assert [error["pointer"] for error in problem["errors"]] == ["#/events"]
    assert shop.client.post(URL, event(1, occurred_at="2099-01-01T00:00:00Z"), format="json").json()["accepted"] == 0
    assert not FunnelEvent.objects.exists()


def test_the_platform_emits_the_payment_steps_into_the_journey(shop: Shop) -> None:
    payment_id = shop.pay(journey_id="j-42")["id"]
    shop.confirm(payment_id, "1234")
    steps = list(FunnelEvent.objects.filter(journey_id="j-42").order_by("occurred_at").values_list("step", "source"))
    assert steps == [
        ("payment_created", "platform"),
        ("pin_sent", "platform"),
        ("pin_verified", "platform"),
        ("charge_succeeded", "platform"),
    ]
    journey = Journey.objects.get(journey_id="j-42")
    assert (journey.carrier, journey.country, journey.price_point, journey.flow, journey.outcome) == (
        shop.carrier.slug,
        "GB",
        "gems-100",
        "pin",
        "succeeded",
    )


def test_a_failed_charge_step_carries_the_standard_error_code(shop: Shop) -> None:
    shop.pay(journey_id="j-7", flow="one_click", msisdn="+447400120002")
    failed = FunnelEvent.objects.get(journey_id="j-7", step="charge_failed")
    assert failed.error_code == "insufficient_funds"


def test_a_platform_step_earlier_than_the_journey_moves_its_start(shop: Shop) -> None:
    # The game's first event carried a clock ahead of ours: the payment created now came before it.
    shop.client.post(URL, event(1, journey="j-clock"), format="json")
    Journey.objects.filter(journey_id="j-clock").update(started_at=timezone.now() + timedelta(minutes=10))
    shop.pay(journey_id="j-clock")
    created = FunnelEvent.objects.get(journey_id="j-clock", step="payment_created")
    assert Journey.objects.get(journey_id="j-clock").started_at == created.occurred_at


def test_an_event_with_unstorable_text_or_numbers_costs_only_itself(shop: Shop) -> None:
    good = json.dumps(event(1))
    batch = (
        f'{{"events": [{good}, {{"event_id": "e2\\u0000", "journey_id": "j1", "step": "store_opened", '
        f'"occurred_at": "2026-01-01T00:00:00Z"}}, {json.dumps(event(3))[:-1]}, "properties": {{"x": NaN}}}}, '
        f'{json.dumps(event(4))[:-1]}, "properties": {{"k\\ud800": 1}}}}]}}'
    )
    response = shop.client.post(URL, data=batch, content_type="application/json")
    body = response.json()
    assert response.status_code == 200, body
    assert body["accepted"] == 1
    assert [(r["index"], sorted(r["errors"])) for r in body["rejected"]] == [
        (1, ["event_id"]),
        (2, ["properties"]),
        (3, ["properties"]),
    ]
    assert list(FunnelEvent.objects.values_list("event_id", flat=True)) == ["e1"]
    assert last_journaled(URL)["_sanitized"] is True


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+14:00", "1999-12-31T23:59:59Z", "0001-01-01T00:00:00"])
def test_an_event_before_2000_is_rejected_by_index(shop: Shop, at: str) -> None:
    body = shop.client.post(URL, {"events": [event(1), event(2, occurred_at=at)]}, format="json").json()
    assert body["accepted"] == 1
    assert body["rejected"] == [{"index": 1, "errors": {"occurred_at": ["Before 2000-01-01."]}}]
    assert list(FunnelEvent.objects.values_list("event_id", flat=True)) == ["e1"]


def test_a_full_batch_within_the_documented_limits_is_accepted(shop: Shop) -> None:
    properties = {"blob": "x" * 3000}
    batch = {"events": [event(n, journey=f"j{n % 50}", properties=properties) for n in range(1000)]}
    assert len(json.dumps(batch)) > 3_000_000
    response = shop.client.post(URL, batch, format="json")
    assert response.status_code == 200, response.content[:500]
    assert response.json()["accepted"] == 1000


def test_a_batch_over_the_size_limit_is_a_413_problem_and_stores_nothing(shop: Shop, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000  # the same middleware, a smaller limit: a smaller test
    batch = {"events": [event(n, properties={"blob": "x" * 3000}) for n in range(40)]}
    response = shop.client.post(URL, batch, format="json")
    assert_problem(response, status=413, code="request_too_large")
    assert not FunnelEvent.objects.exists()
    assert last_journaled(URL)["data"]["status"] == 413


def test_nesting_deeper_than_the_limit_is_a_problem(shop: Shop) -> None:
    deep = "[" * 5000 + "]" * 5000
    response = shop.client.post(URL, data=f'{{"events": {deep}}}', content_type="application/json")
    assert_problem(response, status=400, code="json_too_deep")
    assert not FunnelEvent.objects.exists()


def last_journaled(endpoint: str) -> dict[str, Any]:
    documents = journal_store().query(JournalQuery(kind="api_request", limit=20))
    return next(document for document in documents if document["data"]["endpoint"] == endpoint)
