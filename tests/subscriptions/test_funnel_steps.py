"""A subscription's opt-in in the app's funnel journey: the journey given to the API, the steps the platform
records there (the subscription's own and its opt-in payment's), and a funnel report defined on them."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from funnel.models import FunnelEvent, Journey
from funnel.selectors import funnel_report
from tests.conftest import assert_problem
from tests.subscriptions.conftest import Subs
from tests.subscriptions.test_renewals import BROKE

pytestmark = pytest.mark.django_db

OPT_IN_FUNNEL = [
    "store_opened",
    "subscription_opt_in_started",
    "pin_sent",
    "pin_verified",
    "subscription_activated",
]


def steps_of(journey_id: str) -> list[tuple[str, str]]:
    events = FunnelEvent.objects.filter(journey_id=journey_id).order_by("occurred_at", "id")
    return list(events.values_list("step", "error_code"))


def game_event(subs: Subs, journey_id: str, *, step: str = "store_opened") -> None:
    at = (timezone.now() - timedelta(minutes=1)).isoformat()
    event = {"event_id": f"{journey_id}-{step}", "journey_id": journey_id, "step": step, "occurred_at": at}
    assert subs.shop.client.post("/api/v1/funnel/events/", event, format="json").status_code == 200


def test_an_opt_in_with_a_journey_records_its_steps_there_through_activation(subs: Subs) -> None:
    created = subs.subscribe(journey_id="j-sub")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["journey_id"] == "j-sub"
    assert steps_of("j-sub") == [("subscription_opt_in_started", ""), ("payment_created", ""), ("pin_sent", "")]

    subs.confirm(body["id"])

    assert subs.get(body["id"])["status"] == "active"
    assert steps_of("j-sub")[3] == ("pin_verified", "")
    # The activation is the charge's success, at the same instant.
    assert sorted(steps_of("j-sub")[4:]) == [("charge_succeeded", ""), ("subscription_activated", "")]
    activated = FunnelEvent.objects.get(journey_id="j-sub", step="subscription_activated")
    assert activated.occurred_at == FunnelEvent.objects.get(journey_id="j-sub", step="charge_succeeded").occurred_at
    started = FunnelEvent.objects.get(journey_id="j-sub", step="subscription_opt_in_started")
    assert (started.source, started.properties) == ("platform", {"subscription_id": body["id"], "plan": "vip-weekly"})
    journey = Journey.objects.get(journey_id="j-sub")
    assert (journey.user_ref, journey.started_at) == ("player-1", started.occurred_at)
    assert (journey.carrier, journey.flow, journey.outcome) == (subs.shop.carrier.slug, "pin", "succeeded")
    payment = subs.shop.client.get(f"/api/v1/payments/{body['opt_in_payment']}/").json()
    assert payment["journey_id"] == "j-sub"


def test_an_opt_in_without_a_journey_records_no_step(subs: Subs) -> None:
    created = subs.subscribe()
    assert created.status_code == 201, created.content
    subs.confirm(created.json()["id"])
    assert created.json()["journey_id"] == ""
    assert not FunnelEvent.objects.exists()
    assert not Journey.objects.exists()


def test_a_failed_opt_in_records_its_failure_with_the_standard_error_code(subs: Subs) -> None:
    created = subs.subscribe(journey_id="j-broke", msisdn=BROKE)
    assert created.status_code == 201, created.content
    subs.confirm(created.json()["id"])

    assert subs.get(created.json()["id"])["status"] == "expired"
    assert sorted(steps_of("j-broke")[-2:]) == [
        ("charge_failed", "insufficient_funds"),
        ("subscription_opt_in_failed", "insufficient_funds"),
    ]


def test_an_opt_in_cancelled_before_its_pin_records_its_failure_as_cancelled(subs: Subs) -> None:
    created = subs.subscribe(journey_id="j-cancel")
    subs.cancel(created.json()["id"], reason="changed my mind", at_period_end=False)
    (failed,) = FunnelEvent.objects.filter(journey_id="j-cancel", step="subscription_opt_in_failed")
    assert failed.error_code == "cancelled"
    assert not FunnelEvent.objects.filter(step="subscription_activated").exists()


@pytest.mark.parametrize(
    ("journey_id", "code"),
    [
        ("j" * 129, "validation_error"),
        ({"id": "j"}, "validation_error"),
        (None, "validation_error"),
        ("j\x00", "invalid_json_value"),
    ],
)
def test_an_invalid_journey_is_a_problem_and_opens_nothing(subs: Subs, journey_id: Any, code: str) -> None:
    response = subs.subscribe(journey_id=journey_id)
    problem = assert_problem(response, status=400, code=code)
    assert [error["pointer"] for error in problem["errors"]] == ["#/journey_id"]
    assert subs.shop.client.get("/api/v1/subscriptions/").json()["results"] == []
    # The payments API answers the same journey the same way.
    payment = subs.shop.client.post(
        "/api/v1/payments/",
        {"user_ref": "p", "msisdn": "+447400123456", "price_point": "gems-100", "journey_id": journey_id},
        format="json",
        HTTP_IDEMPOTENCY_KEY="pay-1",
    )
    assert assert_problem(payment, status=400, code=code)["errors"] == problem["errors"]


def test_a_funnel_report_counts_opt_ins_through_their_steps(subs: Subs) -> None:
    since = timezone.now() - timedelta(minutes=5)
    game_event(subs, "j-1")
    subs.confirm(subs.subscribe("k-1", journey_id="j-1").json()["id"])  # activated
    game_event(subs, "j-2")
    subs.subscribe("k-2", journey_id="j-2", user_ref="player-2")  # PIN sent, never confirmed
    game_event(subs, "j-3")  # looked, did not subscribe

    report = funnel_report(
        steps=OPT_IN_FUNNEL,
        window=timedelta(hours=1),
        since=since,
        until=timezone.now() + timedelta(minutes=1),
        app_id=subs.shop.app.pk,
    )

    assert [(s.step, s.entered) for s in report.steps] == [
        ("store_opened", 3),
        ("subscription_opt_in_started", 2),
        ("pin_sent", 2),
        ("pin_verified", 1),
        ("subscription_activated", 1),
    ]
    assert report.journeys == 3
