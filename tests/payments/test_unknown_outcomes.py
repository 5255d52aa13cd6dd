"""Unknown carrier outcomes of charges, refunds and reversals are settled by the resolver job, on every
protocol, against the simulators over HTTP: checked with a growing wait, re-sent where the carrier never
got the request, reported once when unknown too long, and never applied twice."""

import importlib
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from carriers.adapters import adapter_for
from carriers.adapters.base import CarrierResult, Outcome
from carriers.errors import ErrorCode
from payments.models import LedgerEntry, Payment, PaymentStatus, Refund, Reversal
from payments.services import carrier_flow, refunds, resolver
from payments.services.carrier_flow import charge_request
from payments.services.payments import check_submitted_pin
from playpay.metrics import exposition
from sandbox.simulators.core import simulator
from tests.conftest import GatewayClock
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True)]

PROTOCOLS = ["aggregator", "camara", "parlayx"]
# Parlay X settles an unknown outcome by sending the request again only where the carrier confirmed that
# its gateway deduplicates referenceCode (the simulator's does); without it, see the tests further down.
RESENDS: dict[str, dict[str, Any]] = {"parlayx": {"deduplicates_reference_code": True}}
PAID = "+447400123456"
OTHER = "+447400123457"


def create(client: APIClient, msisdn: str, *, flow: str = "one_click") -> str:
    payload = {"user_ref": "player-1", "msisdn": msisdn, "price_point": "gems-100", "flow": flow}
    response = client.post("/api/v1/payments/", payload, format="json", HTTP_IDEMPOTENCY_KEY=f"{msisdn}-{flow}")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def configure(live: str, protocol: str, **settings: Any) -> None:
    """Change a simulator's faults as a tester would, through its control endpoint."""
    assert httpx.post(f"{live}/simulators/{protocol}/_settings", json=settings, timeout=5).status_code == 200


def outage(live: str, protocol: str, on: bool) -> None:
    """Every request to the simulator answers 503 (with its protocol's Retry-After), or none does."""
    configure(live, protocol, outage=on)


def age(model: Any, pk: int, minutes: int = 10, **more: Any) -> None:
    """As if the unknown outcome (and the call behind it) were `minutes` old."""
    then = timezone.now() - timedelta(minutes=minutes)
    model.objects.filter(pk=pk).update(outcome_unknown_since=then, **more)


def due_now(model: Any, pk: int) -> None:
    model.objects.filter(pk=pk).update(next_resolve_at=timezone.now() - timedelta(seconds=1))


def paid(client: APIClient, protocol: str) -> Payment:
    return wait_for_status(create(client, PAID), PaymentStatus.SUCCEEDED)


def _alerts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The resolver's reports, at ERROR, of outcomes unknown for too long."""
    return [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "payments.services.resolver"]


# --- charges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_one_click_charge_answered_503_is_settled_by_the_resolver_and_charged_once(
    live: str, client: APIClient, clock: GatewayClock, protocol: str
) -> None:
    simulated_carrier(live, protocol, max_retries=3, **RESENDS.get(protocol, {}))
    paid(client, protocol)  # the carrier is reachable (and CAMARA's token is fetched)
    outage(live, protocol, True)
    payment = Payment.objects.get(public_id=create(client, OTHER))
    assert (payment.status, payment.failure_code) == (PaymentStatus.CHARGING, "")
    assert payment.outcome_unknown_since is not None
    outage(live, protocol, False)
    clock.advance(10)  # past any Retry-After the 503 asked for
    age(Payment, payment.pk)
    assert resolver.unknown_outcomes() == 1
    checked = Payment.objects.get(pk=payment.pk)
    if protocol != "parlayx":
        # The status check proved the carrier never got the charge: a new attempt is scheduled.
        # (Parlay X has no status query: the same charge was sent again, to a gateway that deduplicates it.)
        assert (checked.status, checked.outcome_unknown_since) == (PaymentStatus.CHARGING, None)
        assert checked.next_attempt_at is not None
        Payment.objects.filter(pk=payment.pk).update(next_attempt_at=timezone.now())
        carrier_flow.due_attempts()
    payment = wait_for_status(str(payment.public_id), PaymentStatus.SUCCEEDED)
    # Settled: no next check shown, no checks counted, no alert.
    assert (payment.outcome_unknown_since, payment.next_resolve_at) == (None, None)
    assert (payment.resolve_attempts, payment.outcome_alerted_at) == (0, None)
    # A check dispatched twice, and a late answer, change nothing.
    carrier_flow.resolve_payment(payment_id=payment.pk)
    carrier_flow.record_charge_result(payment_id=payment.pk, result=CarrierResult(outcome=Outcome.FAILED))
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.SUCCEEDED
    assert payment.history.filter(to_status=PaymentStatus.SUCCEEDED).count() == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, payment=payment).count() == 1
    assert len(simulator(protocol).charges[OTHER]) == 1


def test_a_parlayx_pin_charge_answered_503_is_settled_by_charging_the_reservation_again(
    live: str, client: APIClient
) -> None:
    simulated_carrier(live, "parlayx", deduplicates_reference_code=True)
    payment_id = create(client, OTHER, flow="pin")
    wait_for_status(payment_id, PaymentStatus.PIN_SENT)
    pin = last_pin("parlayx", OTHER)
    outage(live, "parlayx", True)
    assert client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json").status_code == 200
    payment = Payment.objects.get(public_id=payment_id)
    assert payment.status == PaymentStatus.CHARGING
    assert payment.outcome_unknown_since is not None
    outage(live, "parlayx", False)
    age(Payment, payment.pk)
    resolver.unknown_outcomes()
    payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
    assert len(simulator("parlayx").charges[OTHER]) == 1


def test_a_parlayx_reservation_no_longer_held_stays_unknown_and_is_reported(
    live: str, client: APIClient, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    simulated_carrier(live, "parlayx", deduplicates_reference_code=True)
    settings.OUTCOME_ALERT_AFTER_MINUTES = 60
    payment_id = create(client, OTHER, flow="pin")
    wait_for_status(payment_id, PaymentStatus.PIN_SENT)
    pin = last_pin("parlayx", OTHER)
    # The gateway charges, but its answer comes after our 1 s read timeout: the outcome is unknown.
    configure(live, "parlayx", latency_ms=1500)
    assert client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json").status_code == 200
    configure(live, "parlayx", latency_ms=0)
    payment = Payment.objects.get(public_id=payment_id)
    assert (payment.status, payment.outcome_unknown_since is not None) == (PaymentStatus.CHARGING, True)
    wait_for(lambda: len(simulator("parlayx").charges[OTHER]) == 1, what="the gateway to charge")
    age(Payment, payment.pk, minutes=61)
    with caplog.at_level(logging.ERROR, logger="payments.services.resolver"):
        resolver.unknown_outcomes()
        due_now(Payment, payment.pk)
        resolver.unknown_outcomes()
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.CHARGING  # never guessed
    assert payment.outcome_unknown_since is not None
    assert payment.resolve_attempts == 2
    alerts = _alerts(caplog)
    assert len(alerts) == 1  # once, however often the job runs
    assert alerts[0].__dict__["payment_id"] == payment_id
    assert (alerts[0].__dict__["operation"], alerts[0].__dict__["carrier"]) == ("charge", "parlayx-gb")
    assert OTHER not in alerts[0].getMessage()
    assert OTHER[-6:] not in str(alerts[0].__dict__)


# --- PIN checks ------------------------------------------------------------------------------------


def lost_pin_check(payment_id: str) -> Payment:
    """As a PIN check whose worker died after taking the PIN (or whose verdict failed to save) leaves its
    payment: `pin_sent`, the PIN submitted and gone, the outcome unknown."""
    payment = wait_for_status(payment_id, PaymentStatus.PIN_SENT)
    Payment.objects.filter(pk=payment.pk).update(
        pin_submitted_at=timezone.now(), pin_ciphertext="", outcome_unknown_since=timezone.now()
    )
    return payment


def bill(live: str, protocol: str, msisdn: str) -> list[Any]:
    response = httpx.get(f"{live}/simulators/{protocol}/_charges", params={"msisdn": msisdn}, timeout=5)
    charges: list[Any] = response.json()["charges"]
    return charges


def test_a_parlayx_pin_check_whose_verdict_was_lost_is_never_charged_and_the_player_enters_the_pin_again(
    live: str, client: APIClient
) -> None:
    simulated_carrier(live, "parlayx")
    payment_id = create(client, OTHER, flow="pin")
    payment = lost_pin_check(payment_id)
    age(Payment, payment.pk)
    assert resolver.unknown_outcomes() == 1
    assert bill(live, "parlayx", OTHER) == []  # the held reservation was not charged: the PIN was never checked
    body = client.get(f"/api/v1/payments/{payment_id}/").json()
    assert body["status"] == "pin_sent"
    assert body["next_action"] == {
        "type": "enter_pin",
        "expires_at": body["next_action"]["expires_at"],
        "attempts_remaining": 3,
        "pin_error": "carrier_unavailable",
    }
    checked = Payment.objects.get(pk=payment.pk)
    assert (checked.outcome_unknown_since, checked.resolve_attempts, checked.next_resolve_at) == (None, 0, None)
    pin = last_pin("parlayx", OTHER)
    assert client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json").status_code == 200
    wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
    assert len(bill(live, "parlayx", OTHER)) == 1


def test_a_repeated_pin_check_task_that_finds_its_pin_taken_hands_the_pin_back(live: str, client: APIClient) -> None:
    simulated_carrier(live, "parlayx")
    payment_id = create(client, OTHER, flow="pin")
    payment = lost_pin_check(payment_id)
    check_submitted_pin(payment_id=payment.pk)  # the task again (acks_late), its first run lost
    body = client.get(f"/api/v1/payments/{payment_id}/").json()
    assert (body["status"], body["next_action"]["type"]) == ("pin_sent", "enter_pin")
    assert body["next_action"]["pin_error"] == "carrier_unavailable"
    assert Payment.objects.get(pk=payment.pk).outcome_unknown_since is None
    assert bill(live, "parlayx", OTHER) == []


def test_a_camara_pin_validated_before_its_verdict_was_lost_is_verified_when_submitted_again(
    live: str, client: APIClient
) -> None:
    simulated_carrier(live, "camara")
    payment_id = create(client, OTHER, flow="pin")
    wait_for_status(payment_id, PaymentStatus.PIN_SENT)
    pin = last_pin("camara", OTHER)
    payment = Payment.objects.get(public_id=payment_id)
    # The carrier validated the code, and the worker died before saving the verdict.
    assert adapter_for(payment.carrier).verify_pin(charge_request(payment), pin=pin).outcome == Outcome.PIN_VERIFIED
    lost_pin_check(payment_id)
    age(Payment, payment.pk)
    assert resolver.unknown_outcomes() == 1
    assert bill(live, "camara", OTHER) == []
    assert Payment.objects.get(pk=payment.pk).pin_error == "carrier_unavailable"
    # The second validate is answered "already validated": the PIN is verified, and charged once.
    assert client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json").status_code == 200
    wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
    assert len(bill(live, "camara", OTHER)) == 1


def test_an_aggregator_pin_submit_that_timed_out_is_settled_by_the_resolver_and_charged_once(
    live: str, client: APIClient
) -> None:
    silent = "+447400120013"  # the aggregator never sends this number's callbacks
    simulated_carrier(live, "aggregator")
    payment_id = create(client, silent, flow="pin")
    payment = Payment.objects.get(public_id=payment_id)
    age(Payment, payment.pk)
    resolver.unknown_outcomes()  # no callback: the resolver finds the PIN sent
    wait_for_status(payment_id, PaymentStatus.PIN_SENT)
    pin = last_pin("aggregator", silent)
    # The aggregator takes the PIN and charges, but answers after our 1 s read timeout.
    configure(live, "aggregator", latency_ms=1500)
    confirmed = client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json")
    configure(live, "aggregator", latency_ms=0)
    assert confirmed.status_code == 202, confirmed.content
    assert confirmed.json()["next_action"] == {"type": "wait", "poll_after_seconds": 1}
    wait_for(lambda: len(bill(live, "aggregator", silent)) == 1, what="the aggregator to charge")
    payment.refresh_from_db()
    assert (payment.status, payment.outcome_unknown_since is not None) == (PaymentStatus.PIN_SENT, True)
    age(Payment, payment.pk)
    assert resolver.unknown_outcomes() == 1
    payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
    assert payment.history.filter(to_status=PaymentStatus.SUCCEEDED).count() == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, payment=payment).count() == 1
    assert (payment.outcome_unknown_since, payment.resolve_attempts, payment.next_resolve_at) == (None, 0, None)
    assert len(bill(live, "aggregator", silent)) == 1


@pytest.mark.parametrize("came_by", ["the check's answer", "callback or status query"])
def test_a_carrier_saying_the_pin_expired_expires_the_payment_however_its_verdict_came(
    live: str, client: APIClient, came_by: str
) -> None:
    simulated_carrier(live, "parlayx")
    payment_id = create(client, OTHER, flow="pin")
    payment = lost_pin_check(payment_id)
    taken_at = Payment.objects.get(pk=payment.pk).outcome_unknown_since
    assert taken_at is not None
    verdict = CarrierResult.failed(ErrorCode.PIN_EXPIRED, "PIN_EXPIRED", "the PIN expired")
    if came_by == "the check's answer":
        carrier_flow.record_pin_verdict(payment_id=payment.pk, verdict=verdict, taken_at=taken_at)
    else:
        carrier_flow.apply_pin_result(payment_id=payment.pk, result=verdict)
    payment.refresh_from_db()
    assert (payment.status, payment.outcome_unknown_since, payment.resolve_attempts) == (
        PaymentStatus.EXPIRED,
        None,
        0,
    )
    assert payment.history.get(to_status=PaymentStatus.EXPIRED).actor == "carrier:parlayx-gb"


def test_a_pin_the_carrier_cannot_check_now_is_answered_with_the_wait_it_asked_for(
    live: str, client: APIClient, clock: GatewayClock
) -> None:
    simulated_carrier(live, "camara", breaker_failure_threshold=1, breaker_reset_seconds=600)
    payment_id = create(client, OTHER, flow="pin")
    wait_for_status(payment_id, PaymentStatus.PIN_SENT)
    pin = last_pin("camara", OTHER)
    outage(live, "camara", True)
    first = client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json")
    outage(live, "camara", False)
    # The carrier answered 503 with Retry-After: 5 (and the failure opened the breaker for 600 s).
    assert first.status_code == 503, first.content
    assert (first["Retry-After"], first.json()["retry_after"]) == ("5", 5)
    action = client.get(f"/api/v1/payments/{payment_id}/").json()["next_action"]
    assert (action["type"], action["pin_error"]) == ("enter_pin", "carrier_unavailable")
    assert 1 <= action["retry_after_seconds"] <= 5  # what is left of the wait when the app reads it
    clock.advance(10)  # past the carrier's wait: the open breaker puts the next check off for its reset time
    second = client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json")
    assert second.status_code == 503, second.content
    assert (second["Retry-After"], second.json()["retry_after"]) == ("590", 590)
    action = client.get(f"/api/v1/payments/{payment_id}/").json()["next_action"]
    assert 500 <= action["retry_after_seconds"] <= 590
    assert Payment.objects.get(public_id=payment_id).pin_attempts == 0


def test_the_wait_between_checks_doubles_up_to_its_cap(live: str, client: APIClient, settings: Any) -> None:
    settings.OUTCOME_RESOLVE_AFTER_SECONDS = 30
    settings.OUTCOME_RESOLVE_MAX_INTERVAL_SECONDS = 200
    simulated_carrier(live, "camara")
    payment = Payment.objects.get(public_id=create(client, "+447400120005"))  # processing for ever
    assert payment.outcome_unknown_since is not None
    age(Payment, payment.pk)
    waits = []
    for _ in range(4):
        resolver.unknown_outcomes()
        payment.refresh_from_db()
        assert payment.next_resolve_at is not None
        waits.append(round((payment.next_resolve_at - timezone.now()).total_seconds() / 10) * 10)
        assert resolver.unknown_outcomes() == 0  # not due again before its time
        due_now(Payment, payment.pk)
    assert waits == [60, 120, 200, 200]
    assert payment.resolve_attempts == 4
    assert payment.status == PaymentStatus.CHARGING


def test_unknown_outcomes_are_counted_for_prometheus(live: str, client: APIClient) -> None:
    simulated_carrier(live, "camara")
    payment = Payment.objects.get(public_id=create(client, "+447400120005"))
    age(Payment, payment.pk, minutes=90)
    text = exposition()[0].decode()
    assert 'playpay_outcomes_unknown{carrier="camara-gb",operation="charge"} 1.0' in text
    oldest = next(line for line in text.splitlines() if line.startswith("playpay_outcome_unknown_oldest_seconds{"))
    assert float(oldest.rsplit(" ", 1)[1]) >= 90 * 60


def test_a_parlayx_charge_of_unknown_outcome_is_not_sent_again_where_the_gateway_may_not_deduplicate(
    live: str, client: APIClient, clock: GatewayClock, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OUTCOME_ALERT_AFTER_MINUTES = 60
    simulated_carrier(live, "parlayx")  # deduplicates_reference_code off, as by default
    outage(live, "parlayx", True)
    payment = Payment.objects.get(public_id=create(client, OTHER))
    assert (payment.status, payment.outcome_unknown_since is not None) == (PaymentStatus.CHARGING, True)
    outage(live, "parlayx", False)
    clock.advance(10)
    age(Payment, payment.pk, minutes=61)
    with caplog.at_level(logging.ERROR, logger="payments.services.resolver"):
        assert resolver.unknown_outcomes() == 1
        due_now(Payment, payment.pk)
        resolver.unknown_outcomes()
    payment.refresh_from_db()
    assert (payment.status, payment.outcome_unknown_since is not None) == (PaymentStatus.CHARGING, True)
    assert payment.resolve_attempts == 2
    assert len(simulator("parlayx").charges[OTHER]) == 0  # nothing was sent again
    alerts = _alerts(caplog)
    assert [(a.__dict__["operation"], a.__dict__["payment_id"]) for a in alerts] == [("charge", str(payment.public_id))]


def test_a_parlayx_charge_resent_and_refused_stays_unknown_and_is_never_failed(
    live: str, client: APIClient, clock: GatewayClock
) -> None:
    simulated_carrier(live, "parlayx", deduplicates_reference_code=True)
    declined = "+447400120002"  # the gateway answers POL1000 (insufficient credit)
    outage(live, "parlayx", True)
    payment = Payment.objects.get(public_id=create(client, declined))
    outage(live, "parlayx", False)
    clock.advance(10)
    age(Payment, payment.pk)
    assert resolver.unknown_outcomes() == 1
    payment.refresh_from_db()
    # The first request may have been charged: a refusal of the second proves nothing.
    assert (payment.status, payment.failure_code) == (PaymentStatus.CHARGING, "")
    assert payment.outcome_unknown_since is not None
    assert payment.next_attempt_at is None  # no new attempt (a new referenceCode) either
    assert len(simulator("parlayx").charges[declined]) == 0


# --- refunds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refund_answered_503_is_settled_by_the_resolver_and_refunded_once(
    live: str, client: APIClient, clock: GatewayClock, protocol: str
) -> None:
    simulated_carrier(live, protocol, supports_refund=True, **RESENDS.get(protocol, {}))
    payment = paid(client, protocol)
    outage(live, protocol, True)
    refund = refunds.request_refund(payment=payment, amount_minor=30, reason="not delivered", actor="staff:ops")
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert refund.outcome_unknown_since is not None
    assert refund.carrier_requested_at is not None
    outage(live, protocol, False)
    clock.advance(10)
    age(Refund, refund.pk, carrier_requested_at=timezone.now() - timedelta(minutes=10))
    assert resolver.unknown_outcomes() == 1
    wait_for(lambda: Refund.objects.get(pk=refund.pk).status == Refund.Status.SUCCEEDED, what="the refund")
    assert Refund.objects.get(pk=refund.pk).outcome_unknown_since is None
    assert LedgerEntry.objects.filter(refund=refund).count() == 1
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.PARTIALLY_REFUNDED
    if protocol == "aggregator":
        assert list(simulator(protocol).records[payment.carrier_reference]["refunds"]) == [str(refund.public_id)]


def test_a_parlayx_refund_of_unknown_outcome_waits_for_the_settlement_file_where_the_gateway_may_not_deduplicate(
    live: str, client: APIClient, clock: GatewayClock, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OUTCOME_ALERT_AFTER_MINUTES = 60
    simulated_carrier(live, "parlayx", supports_refund=True)
    payment = paid(client, "parlayx")
    outage(live, "parlayx", True)
    refund = refunds.request_refund(payment=payment, amount_minor=30, reason="not delivered", actor="staff:ops")
    outage(live, "parlayx", False)
    clock.advance(10)
    age(Refund, refund.pk, minutes=61, carrier_requested_at=timezone.now() - timedelta(minutes=61))
    with caplog.at_level(logging.ERROR, logger="payments.services.resolver"):
        assert resolver.unknown_outcomes() == 1
        due_now(Refund, refund.pk)
        resolver.unknown_outcomes()
    refund.refresh_from_db()
    assert (refund.status, refund.resolve_attempts) == (Refund.Status.PENDING, 2)
    assert refund.outcome_unknown_since is not None
    assert f"refund:{refund.public_id}" not in simulator("parlayx").records  # never sent again
    assert Payment.objects.get(pk=payment.pk).refunded_minor == 30  # still reserved
    alerts = _alerts(caplog)
    assert [(a.__dict__["operation"], a.__dict__["refund_id"]) for a in alerts] == [("refund", str(refund.public_id))]


def test_a_refund_refused_for_now_waits_as_long_as_the_carrier_asked(
    live: str, client: APIClient, clock: GatewayClock
) -> None:
    simulated_carrier(live, "aggregator", supports_refund=True)
    payment = paid(client, "aggregator")
    outage(live, "aggregator", True)
    refund = refunds.request_refund(payment=payment, amount_minor=30, reason="not delivered", actor="staff:ops")
    outage(live, "aggregator", False)
    age(Refund, refund.pk, carrier_requested_at=timezone.now() - timedelta(minutes=10))
    resolver.unknown_outcomes()  # within the aggregator's Retry-After (5 s): the check waits
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING
    assert refund.next_resolve_at is not None
    assert refund.next_resolve_at > timezone.now()
    clock.advance(6)
    due_now(Refund, refund.pk)
    resolver.unknown_outcomes()
    wait_for(lambda: Refund.objects.get(pk=refund.pk).status == Refund.Status.SUCCEEDED, what="the refund")


def test_a_refund_the_carrier_keeps_refusing_is_checked_less_often_and_reported_once(
    live: str, client: APIClient, clock: GatewayClock, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OUTCOME_ALERT_AFTER_MINUTES = 60
    simulated_carrier(live, "aggregator", supports_refund=True)
    payment = paid(client, "aggregator")
    outage(live, "aggregator", True)  # and it stays down
    refund = refunds.request_refund(payment=payment, amount_minor=30, reason="not delivered", actor="staff:ops")
    age(Refund, refund.pk, minutes=61, carrier_requested_at=timezone.now() - timedelta(minutes=61))
    waits = []
    with caplog.at_level(logging.ERROR, logger="payments.services.resolver"):
        for _ in range(3):
            clock.advance(10)  # past the aggregator's Retry-After each time
            due_now(Refund, refund.pk)
            resolver.unknown_outcomes()
            row = Refund.objects.get(pk=refund.pk)
            assert row.next_resolve_at is not None
            waits.append((row.next_resolve_at - timezone.now()).total_seconds())
    row = Refund.objects.get(pk=refund.pk)
    assert (row.status, row.resolve_attempts) == (Refund.Status.PENDING, 3)
    assert waits[0] < waits[1] < waits[2]
    alerts = _alerts(caplog)
    assert len(alerts) == 1
    assert (alerts[0].__dict__["operation"], alerts[0].__dict__["refund_id"]) == ("refund", str(refund.public_id))
    assert Refund.objects.get(pk=refund.pk).outcome_alerted_at is not None
    assert Payment.objects.get(pk=payment.pk).refunded_minor == 30  # still reserved while it is unknown


def _waiting_on_locks() -> int:
    """Sessions of this test database waiting for a lock held by another (fresh figures each call)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def test_a_refund_callback_racing_the_resolver_settles_it_once(live: str, client: APIClient) -> None:
    simulated_carrier(live, "aggregator", supports_refund=True)
    payment = Payment.objects.get(public_id=create(client, "+447400120013"))  # never called back
    age(Payment, payment.pk)
    resolver.unknown_outcomes()
    payment = wait_for_status(str(payment.public_id), PaymentStatus.SUCCEEDED)
    refund = refunds.request_refund(payment=payment, amount_minor=99, reason="not delivered", actor="app:game")
    refund.refresh_from_db()
    assert (refund.status, refund.carrier_requested_at is not None) == (Refund.Status.PENDING, True)
    age(Refund, refund.pk)
    callback = CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=refund.carrier_reference)
    start = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def together(work: Callable[[], None]) -> None:
        try:
            start.wait()
            work()
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(
            target=together, args=(lambda: refunds.record_refund_result(refund_id=refund.pk, result=callback),)
        ),
        threading.Thread(target=together, args=(lambda: refunds.resolve_refund(refund_id=refund.pk),)),
    ]
    # The callback and the resolver's check start together. The payment's row is held until both have
    # read the refund and wait for a lock, so that neither can settle it before the other has looked.
    with transaction.atomic():
        Payment.objects.select_for_update().get(pk=payment.pk)
        for thread in threads:
            thread.start()
        wait_for(lambda: _waiting_on_locks() >= 2 or bool(errors), what="both to wait on the rows' locks")
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    refund.refresh_from_db()
    assert (refund.status, refund.outcome_unknown_since) == (Refund.Status.SUCCEEDED, None)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND, payment=payment).count() == 1
    settled = Payment.objects.get(pk=payment.pk)
    assert (settled.refunded_minor, settled.status) == (99, PaymentStatus.REFUNDED)
    assert settled.history.filter(to_status=PaymentStatus.REFUNDED).count() == 1


def test_a_refund_settled_by_the_resolver_ignores_its_late_callback(live: str, client: APIClient) -> None:
    simulated_carrier(live, "aggregator", supports_refund=True)
    msisdn = "+447400120013"  # the aggregator never calls back for it
    payment = Payment.objects.get(public_id=create(client, msisdn))
    age(Payment, payment.pk)
    resolver.unknown_outcomes()
    payment = wait_for_status(str(payment.public_id), PaymentStatus.SUCCEEDED)
    refund = refunds.request_refund(payment=payment, amount_minor=99, reason="not delivered", actor="app:game")
    refund.refresh_from_db()
    assert (refund.status, refund.carrier_requested_at is not None) == (Refund.Status.PENDING, True)
    age(Refund, refund.pk)
    resolver.unknown_outcomes()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    refunds.record_refund_result(refund_id=refund.pk, result=CarrierResult(outcome=Outcome.FAILED))  # late, stale
    assert Refund.objects.get(pk=refund.pk).status == Refund.Status.SUCCEEDED
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND, payment=payment).count() == 1


# --- reversals -------------------------------------------------------------------------------------


def test_a_reversal_the_carrier_refuses_for_now_is_retried_on_the_schedule(
    live: str, client: APIClient, clock: GatewayClock
) -> None:
    simulated_carrier(live, "aggregator", supports_reversal=True)
    payment = paid(client, "aggregator")
    outage(live, "aggregator", True)
    reversal = refunds.request_reversal(payment=payment, reason="item not delivered", actor="staff:ops")
    reversal.refresh_from_db()
    assert (reversal.via_carrier, reversal.status) == (True, Reversal.Status.PENDING)
    assert reversal.outcome_unknown_since is not None
    outage(live, "aggregator", False)
    age(Reversal, reversal.pk)
    resolver.unknown_outcomes()  # within the Retry-After: the gateway holds the check back
    reversal.refresh_from_db()
    assert reversal.status == Reversal.Status.PENDING
    assert reversal.resolve_attempts == 1
    clock.advance(6)
    due_now(Reversal, reversal.pk)
    resolver.unknown_outcomes()  # the aggregator has no trace of it: sent again, and done
    done = Reversal.objects.get(pk=reversal.pk)
    assert (done.status, done.outcome_unknown_since) == (Reversal.Status.SUCCEEDED, None)
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.REVERSED
    # A duplicate task and a late check change nothing.
    refunds.execute_reversal(payment_id=payment.pk)
    refunds.resolve_reversal(reversal_id=reversal.pk)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REVERSAL, payment=payment).count() == 1


def test_a_reversal_whose_answer_was_lost_is_found_done_by_the_status_check(live: str, client: APIClient) -> None:
    simulated_carrier(live, "aggregator", supports_reversal=True)
    payment = paid(client, "aggregator")
    # The aggregator reversed it, but its answer never reached us.
    assert adapter_for(payment.carrier).reverse(charge_request(payment)).outcome == Outcome.SUCCEEDED
    reversal = Reversal.objects.create(payment=payment, reason="lost answer", requested_by="staff:ops")
    Reversal.objects.filter(pk=reversal.pk).update(carrier_requested_at=timezone.now())
    age(Reversal, reversal.pk)
    resolver.unknown_outcomes()
    reversal.refresh_from_db()
    assert reversal.status == Reversal.Status.SUCCEEDED
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.REVERSED


@pytest.mark.parametrize("protocol", ["camara", "parlayx"])
def test_a_reversal_where_the_carrier_has_none_is_paid_by_the_platform_and_never_unknown(
    live: str, client: APIClient, protocol: str
) -> None:
    simulated_carrier(live, protocol, supports_reversal=True)
    payment = paid(client, protocol)
    reversal = refunds.request_reversal(payment=payment, reason="item not delivered", actor="staff:ops")
    assert (reversal.via_carrier, reversal.status, reversal.outcome_unknown_since) == (
        False,
        Reversal.Status.SUCCEEDED,
        None,
    )


# --- the upgrade that started tracking refunds and reversals ---------------------------------------


def test_refunds_and_reversals_pending_before_the_upgrade_are_checked_not_reported_at_once_nor_sent_blindly(
    live: str, client: APIClient, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OUTCOME_ALERT_AFTER_MINUTES = 60
    simulated_carrier(live, "aggregator", supports_refund=True, supports_reversal=True)
    refunded, reversed_ = paid(client, "aggregator"), wait_for_status(create(client, OTHER), PaymentStatus.SUCCEEDED)
    # As left by the release before: no tracking; a reversal's request not recorded. The aggregator did reverse
    # the charge, but the answer was lost.
    assert adapter_for(reversed_.carrier).reverse(charge_request(reversed_)).outcome == Outcome.SUCCEEDED
    week_ago = timezone.now() - timedelta(days=7)
    refund = Refund.objects.create(
        payment=refunded, amount_minor=30, currency="GBP", reason="old", requested_by="staff:ops"
    )
    Payment.objects.filter(pk=refunded.pk).update(refunded_minor=30)
    Refund.objects.filter(pk=refund.pk).update(created_at=week_ago, carrier_requested_at=week_ago)
    reversal = Reversal.objects.create(payment=reversed_, reason="old", requested_by="staff:ops")
    Reversal.objects.filter(pk=reversal.pk).update(created_at=week_ago)

    upgrade = importlib.import_module("payments.migrations.0016_unknown_outcome_tracking")
    upgrade.track_pending(django_apps, None)

    refund.refresh_from_db()
    reversal.refresh_from_db()
    assert refund.outcome_unknown_since is not None
    assert refund.outcome_unknown_since > timezone.now() - timedelta(minutes=1)  # its clock starts now
    assert reversal.outcome_unknown_since == refund.outcome_unknown_since
    assert reversal.carrier_requested_at == week_ago  # taken as asked: to be checked, not sent again
    with caplog.at_level(logging.ERROR, logger="payments.services.resolver"):
        assert resolver.report_overdue() == 0
        age(Reversal, reversal.pk, minutes=1)
        resolver.unknown_outcomes()
    assert not [r for r in caplog.records if r.name == "payments.services.resolver"]
    reversal.refresh_from_db()
    assert reversal.status == Reversal.Status.SUCCEEDED  # found done by the check
    assert reversal.carrier_requested_at == week_ago  # never claimed for a new send
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REVERSAL, payment=reversed_).count() == 1
