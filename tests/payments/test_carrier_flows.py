"""Payments end to end: API -> carrier queue -> adapter -> simulator over HTTP -> callback -> state."""

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from carriers.models import Carrier
from payments.models import CarrierNotification, Payment, PaymentStatus, Refund
from payments.services import carrier_flow, resolver
from sandbox.simulators.core import simulator
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True)]


def create(client: APIClient, msisdn: str, *, key: str = "k1", **body: Any) -> str:
    payload = {"user_ref": "player-1", "msisdn": msisdn, "price_point": "gems-100", **body}
    response = client.post("/api/v1/payments/", payload, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def confirm(client: APIClient, payment_id: str, pin: str) -> Any:
    return client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json")


class TestAggregator:
    protocol = "aggregator"

    def test_pin_flow_succeeds(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400123456")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT)
        response = confirm(client, payment_id, last_pin(self.protocol, "+447400123456"))
        assert response.status_code == 202  # asynchronous: the verdict comes by callback
        assert response.json()["next_action"]["type"] == "wait"
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        assert [h.to_status for h in payment.history.all()][-3:] == ["pin_verified", "charging", "succeeded"]
        assert simulator(self.protocol).charges["+447400123456"] == [payment.carrier_reference]

    def test_one_click_flow_succeeds(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400123456", flow="one_click")
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        assert payment.outcome_unknown_since is None

    def test_wrong_pin_lets_the_player_try_again(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400123456")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT)
        assert confirm(client, payment_id, "000000").status_code == 202
        wait_for(lambda: Payment.objects.get(public_id=payment_id).pin_attempts == 1, what="the wrong PIN to count")
        body = client.get(f"/api/v1/payments/{payment_id}/").json()
        assert body["next_action"] == {
            "type": "enter_pin",
            "expires_at": body["next_action"]["expires_at"],
            "attempts_remaining": 2,
            "pin_error": "invalid_pin",
        }
        confirm(client, payment_id, last_pin(self.protocol, "+447400123456"))
        wait_for_status(payment_id, PaymentStatus.SUCCEEDED)

    @pytest.mark.parametrize(
        ("msisdn", "code"),
        [
            ("+447400120002", "insufficient_funds"),
            ("+447400120003", "user_barred"),
            ("+447400120004", "spending_limit"),
            ("+447400120006", "unknown_subscriber"),
        ],
    )
    def test_declines_fail_with_the_standard_code(self, live: str, client: APIClient, msisdn: str, code: str) -> None:
        simulated_carrier(live, self.protocol)
        payment = wait_for_status(create(client, msisdn, flow="one_click"), PaymentStatus.FAILED)
        assert payment.failure_code == code
        assert simulator(self.protocol).charges.get(msisdn, []) == []

    def test_duplicate_callbacks_change_nothing(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400120011", flow="one_click")
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        wait_for(lambda: len(simulator(self.protocol).callbacks_sent) >= 4, what="the duplicate callbacks")
        assert payment.history.filter(to_status=PaymentStatus.SUCCEEDED).count() == 1
        assert CarrierNotification.objects.filter(carrier__slug="aggregator-gb").count() == 2

    def test_a_late_pending_never_overwrites_succeeded(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400120012", flow="one_click")
        wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        wait_for(lambda: CarrierNotification.objects.count() == 2, what="both callbacks")
        late = CarrierNotification.objects.get(outcome="pending")
        assert late.result.startswith("ignored")
        assert Payment.objects.get(public_id=payment_id).status == PaymentStatus.SUCCEEDED

    def test_a_callback_that_never_comes_is_resolved_by_the_status_job(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400120013", flow="one_click")
        payment = Payment.objects.get(public_id=payment_id)
        assert payment.status == PaymentStatus.CHARGING
        assert payment.outcome_unknown_since is not None
        Payment.objects.filter(pk=payment.pk).update(outcome_unknown_since=timezone.now() - timedelta(minutes=5))
        assert resolver.unknown_outcomes() == 1  # the periodic job; the query runs in-process here
        assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.SUCCEEDED

    def test_a_tampered_callback_is_rejected_and_changes_nothing(self, live: str, client: APIClient) -> None:
        simulated_carrier(live, self.protocol)
        payment_id = create(client, "+447400120013", flow="one_click")  # its own callbacks never come
        payment = Payment.objects.get(public_id=payment_id)
        from sandbox.simulators.aggregator import _event

        body, headers = _event("charge.succeeded", {"charge_id": payment.carrier_reference, "status": "succeeded"})
        tampered = body.replace(b"succeeded", b"succeeded ")
        url = f"{live}/api/v1/carriers/aggregator-gb/notifications/"
        assert httpx.post(url, content=tampered, headers=headers).status_code == 401
        stale_headers = {**headers, "X-Timestamp": str(int(headers["X-Timestamp"]) - 3600)}
        assert httpx.post(url, content=body, headers=stale_headers).status_code == 401  # signature covers the time
        assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.CHARGING
        assert not CarrierNotification.objects.exists()
        assert httpx.post(url, content=body, headers=headers).status_code == 200
        assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.SUCCEEDED


class TestKilledWorkers:
    """Work is never lost when a process dies at the worst moment."""

    def test_a_charge_left_by_a_killed_worker_is_resolved_by_the_scheduled_job(
        self, live: str, client: APIClient
    ) -> None:
        simulated_carrier(live, "aggregator")
        msisdn = "+447400120013"  # its callbacks never come
        payment = Payment.objects.get(public_id=create(client, msisdn, flow="one_click"))
        assert payment.status == PaymentStatus.CHARGING
        # As if the worker died after the aggregator accepted the charge, before recording its reference.
        Payment.objects.filter(pk=payment.pk).update(
            carrier_reference="", outcome_unknown_since=timezone.now() - timedelta(minutes=5)
        )
        resolver.unknown_outcomes()
        payment.refresh_from_db()
        assert payment.status == PaymentStatus.SUCCEEDED
        assert payment.carrier_reference  # found by our reference
        assert len(simulator("aggregator").charges[msisdn]) == 1  # charged once

    def test_a_worker_killed_before_reaching_the_carrier_leads_to_a_new_attempt(
        self, live: str, client: APIClient
    ) -> None:
        carrier = simulated_carrier(live, "aggregator")
        reachable = carrier.endpoint
        Carrier.objects.filter(pk=carrier.pk).update(endpoint="http://127.0.0.1:9")  # nothing listens there
        payment_id = create(client, "+447400123456", flow="one_click")
        payment = Payment.objects.get(public_id=payment_id)
        assert (payment.status, payment.charge_attempts) == (PaymentStatus.CHARGING, 1)
        assert payment.next_attempt_at is not None  # unreachable: retried later with backoff
        Carrier.objects.filter(pk=carrier.pk).update(endpoint=reachable)
        # As if a worker claimed attempt 2 and died before sending it.
        Payment.objects.filter(pk=payment.pk).update(
            charge_attempts=2, next_attempt_at=None, outcome_unknown_since=timezone.now() - timedelta(minutes=5)
        )
        resolver.unknown_outcomes()  # the aggregator never saw "<id>-2": safe to send again
        Payment.objects.filter(pk=payment.pk).update(next_attempt_at=timezone.now())
        carrier_flow.due_attempts()
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        assert payment.charge_attempts == 3
        assert len(simulator("aggregator").charges["+447400123456"]) == 1


@pytest.mark.parametrize("protocol", ["aggregator", "camara", "parlayx"])
class TestEveryProtocol:
    """The same payment behaviour on every wire protocol."""

    def test_pin_flow_succeeds(self, live: str, client: APIClient, protocol: str) -> None:
        simulated_carrier(live, protocol)
        payment_id = create(client, "+447400123456")
        wait_for_status(payment_id, PaymentStatus.PIN_SENT)
        pin = last_pin(protocol, "+447400123456")
        # Tasks run in-process at the commit here (the embedded default): a carrier that states its verdict
        # at once has it in the answer; an asynchronous one states it later, by callback.
        answered = confirm(client, payment_id, pin)
        assert answered.status_code == (202 if protocol == "aggregator" else 200), answered.content
        payment = wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        assert len(simulator(protocol).charges["+447400123456"]) == 1
        assert pin not in json.dumps(payment.carrier_data)  # the PIN itself is never stored
        assert payment.pin_ciphertext == ""  # not even encrypted, once checked

    def test_one_click_succeeds(self, live: str, client: APIClient, protocol: str) -> None:
        simulated_carrier(live, protocol)
        wait_for_status(create(client, "+447400123456", flow="one_click"), PaymentStatus.SUCCEEDED)
        assert len(simulator(protocol).charges["+447400123456"]) == 1

    @pytest.mark.parametrize(
        ("msisdn", "code"),
        [
            ("+447400120002", "insufficient_funds"),
            ("+447400120003", "user_barred"),
            ("+447400120004", "spending_limit"),
        ],
    )
    def test_declines_fail_with_the_standard_code(
        self, live: str, client: APIClient, protocol: str, msisdn: str, code: str
    ) -> None:
        simulated_carrier(live, protocol)
        payment = wait_for_status(create(client, msisdn, flow="one_click"), PaymentStatus.FAILED)
        assert payment.failure_code == code
        assert not simulator(protocol).charges.get(msisdn)

    @pytest.mark.parametrize("msisdn", ["+447400120007", "+447400120008", "+447400120009"])  # 5xx, garbled, timeout
    def test_an_unanswered_charge_stays_charging_and_is_never_guessed(
        self, live: str, client: APIClient, protocol: str, msisdn: str
    ) -> None:
        simulated_carrier(live, protocol)
        simulator(protocol).configure(timeout_seconds=1.5)  # longer than the carrier's 1 s read timeout
        payment = Payment.objects.get(public_id=create(client, msisdn, flow="one_click"))
        assert payment.status == PaymentStatus.CHARGING
        assert payment.outcome_unknown_since is not None
        assert payment.failure_code == ""

    def test_a_refund_goes_to_the_carrier(self, live: str, client: APIClient, protocol: str) -> None:
        simulated_carrier(live, protocol, supports_refund=True)
        payment_id = create(client, "+447400123456", flow="one_click")
        wait_for_status(payment_id, PaymentStatus.SUCCEEDED)
        response = client.post(
            f"/api/v1/payments/{payment_id}/refunds/",
            {"amount_minor": 30, "reason": "item not delivered"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="refund-1",
        )
        assert response.status_code == 201
        wait_for(lambda: Refund.objects.filter(status="succeeded").exists(), what="the carrier's refund")
        refund = Refund.objects.get()
        assert (refund.via_carrier, refund.amount_minor) == (True, 30)
        assert refund.carrier_reference
        assert refund.carrier_requested_at is not None
        assert Payment.objects.get(public_id=payment_id).status == PaymentStatus.PARTIALLY_REFUNDED

    def test_an_unreachable_carrier_is_retried_then_fails(self, live: str, client: APIClient, protocol: str) -> None:
        carrier = simulated_carrier(live, protocol, max_retries=2, retry_backoff_seconds=1)
        Carrier.objects.filter(pk=carrier.pk).update(endpoint="http://127.0.0.1:9")
        payment_id = create(client, "+447400123456", flow="one_click")
        for _ in range(2):
            Payment.objects.filter(public_id=payment_id).update(next_attempt_at=timezone.now())
            carrier_flow.due_attempts()
        payment = Payment.objects.get(public_id=payment_id)
        assert (payment.status, payment.failure_code, payment.charge_attempts) == ("failed", "carrier_unavailable", 2)
