"""The CAMARA adapter against the CAMARA simulator, served by the live test server."""

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from carriers.adapters import camara as adapter_module
from carriers.adapters.base import (
    CarrierConfig,
    ChargeRequest,
    NotificationKind,
    Outcome,
    RefundRequest,
)
from carriers.adapters.camara import CamaraAdapter
from carriers.errors import ErrorCode, NotificationRejected
from sandbox.simulators import camara as camara_sim
from sandbox.simulators import core

NOTIFICATION_TOKEN = "sink-bearer-0123456789"
APPROVED = "+447400123456"


@dataclass
class Sink:
    """A tiny HTTP server standing in for PlayPay's notification endpoint."""

    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait_for(self, payment_id: str, timeout: float = 3.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for headers, body in list(self.received):
                if json.loads(body)["data"].get("paymentId") == payment_id:
                    return headers, body
            time.sleep(0.02)
        raise AssertionError(f"no notification for {payment_id}")


@pytest.fixture(scope="module")
def sink_server() -> Iterator[Sink]:
    sink = Sink(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            sink.received.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    sink.url = f"http://127.0.0.1:{server.server_port}/notifications"
    yield sink
    server.shutdown()
    server.server_close()


@pytest.fixture
def sink(sink_server: Sink) -> Sink:
    sink_server.received.clear()
    return sink_server


@pytest.fixture
def sim(simulator_server: str) -> Iterator[core.Simulator]:
    simulator = core.simulator("camara")
    simulator.reset()
    adapter_module.forget_tokens()
    yield simulator
    simulator.reset()
    adapter_module.forget_tokens()


@pytest.fixture
def config(simulator_server: str, sim: core.Simulator, sink: Sink) -> CarrierConfig:
    return CarrierConfig(
        slug="camara-test",
        endpoint=simulator_server + "/simulators/camara",
        credentials={
            "client_id": "playpay",
            "client_secret": "camara-secret",
            "notification_token": NOTIFICATION_TOKEN,
        },
        connect_timeout=2,
        read_timeout=1,
        notification_url=sink.url,
    )


@pytest.fixture
def adapter(config: CarrierConfig) -> CamaraAdapter:
    return CamaraAdapter(config)


@pytest.fixture
def offline_adapter() -> CamaraAdapter:
    """For what needs no operator: reading notifications."""
    return CamaraAdapter(
        CarrierConfig(
            slug="camara-test",
            endpoint="http://operator.invalid",
            credentials={"client_id": "playpay", "notification_token": NOTIFICATION_TOKEN},
            connect_timeout=2,
            read_timeout=1,
        )
    )


def charge_request(msisdn: str = APPROVED, payment_id: str = "pay-1", **changes: Any) -> ChargeRequest:
    return replace(
        ChargeRequest(payment_id=payment_id, msisdn=msisdn, amount_minor=499, currency="EUR", price_point="gems-100"),
        **changes,
    )


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def texted_pin(sim: core.Simulator, msisdn: str) -> str:
    match = re.search(r"code is (\d+)", sim.sms[msisdn][-1])
    assert match is not None
    return match.group(1)


def start_pin_flow(adapter: CamaraAdapter, msisdn: str = APPROVED) -> ChargeRequest:
    """Prepare a payment; return the request as the payment services would pass it on."""
    result = adapter.send_pin(charge_request(msisdn))
    assert result.outcome == Outcome.PIN_SENT, result
    return charge_request(msisdn, carrier_reference=result.carrier_reference, state=dict(result.state))


def validated(adapter: CamaraAdapter, sim: core.Simulator, msisdn: str = APPROVED) -> ChargeRequest:
    request = start_pin_flow(adapter, msisdn)
    assert adapter.verify_pin(request, pin=texted_pin(sim, msisdn)).outcome == Outcome.PIN_VERIFIED
    return request


def event_body(event_type: str = "payment-completed", *, at: datetime | None = None, **data: Any) -> bytes:
    return json.dumps(
        {
            "id": "evt-1",
            "source": "https://operator.example/",
            "type": f"org.camaraproject.carrier-billing.v0.{event_type}",
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "time": (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
            "data": {"paymentId": "cb-1", "status": "succeeded", "description": "Payment", **data},
        }
    ).encode()


BEARER = {"Authorization": f"Bearer {NOTIFICATION_TOKEN}", "Content-Type": "application/cloudevents+json"}


# --- PIN flow ---


def test_pin_flow_prepares_validates_and_confirms_then_the_charge_succeeds(
    adapter: CamaraAdapter, sim: core.Simulator, sink: Sink
) -> None:
    request = validated(adapter, sim)

    charged = adapter.charge(request)
    assert charged.outcome == Outcome.PENDING
    assert charged.carrier_reference == request.carrier_reference
    assert adapter.query_status(request).outcome == Outcome.SUCCEEDED
    assert sim.charges[APPROVED] == [request.carrier_reference]

    headers, body = sink.wait_for(request.carrier_reference)
    notification = adapter.parse_notification(headers=headers, body=body, now=datetime.now(UTC))
    assert (notification.kind, notification.outcome) == (NotificationKind.PAYMENT, Outcome.SUCCEEDED)
    assert notification.carrier_reference == request.carrier_reference
    assert eventually(lambda: {"url": sink.url, "status": 204, "attempt": 1} in sim.callbacks_sent)


def test_prepare_sends_the_camara_amount_transaction(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    request = start_pin_flow(adapter)

    record = sim.records[f"payment:{request.carrier_reference}"]
    transaction = record["amountTransaction"]
    assert transaction["referenceCode"] == "pay-1"
    assert transaction["clientCorrelator"].startswith("pay-1-0-")
    assert transaction["phoneNumber"] == APPROVED
    assert transaction["paymentAmount"]["chargingInformation"] == {
        "amount": 4.99,
        "currency": "EUR",
        "description": "gems-100",
    }
    assert record["sink"] == adapter.config.notification_url
    assert record["_sink_token"] == NOTIFICATION_TOKEN
    assert adapter.query_status(request).outcome == Outcome.PENDING


def test_amount_uses_the_currency_exponent(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    result = adapter.charge(charge_request(amount_minor=1500, currency="JPY"))

    record = sim.records[f"payment:{result.carrier_reference}"]
    assert record["amountTransaction"]["paymentAmount"]["chargingInformation"]["amount"] == 1500


def test_wrong_pin_is_invalid_pin_until_the_attempts_run_out(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    request = start_pin_flow(adapter)
    wrong = "0"  # the texted code has six digits

    first = adapter.verify_pin(request, pin=wrong)
    adapter.verify_pin(request, pin=wrong)
    last = adapter.verify_pin(request, pin=wrong)

    assert (first.error_code, first.raw_code) == (ErrorCode.INVALID_PIN, "CARRIER_BILLING.INVALID_CODE")
    assert (last.error_code, last.raw_code) == (ErrorCode.INVALID_PIN, "CARRIER_BILLING.VALIDATION_FAILED")
    assert adapter.verify_pin(request, pin=texted_pin(sim, APPROVED)).outcome == Outcome.FAILED


def test_a_pin_submitted_again_after_a_lost_reply_is_still_verified(
    adapter: CamaraAdapter, sim: core.Simulator
) -> None:
    request = validated(adapter, sim)

    again = adapter.verify_pin(request, pin=texted_pin(sim, APPROVED))

    assert (again.outcome, again.raw_code) == (Outcome.PIN_VERIFIED, "ALREADY_EXISTS")


def test_expired_pin_is_pin_expired(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    request = start_pin_flow(adapter)
    assert sim.records.update(f"payment:{request.carrier_reference}", _expires_at=time.time() - 1)

    result = adapter.verify_pin(request, pin=texted_pin(sim, APPROVED))

    assert (result.error_code, result.raw_code) == (ErrorCode.PIN_EXPIRED, "CARRIER_BILLING.INVALID_AUTHORIZATION_ID")


def test_a_repeated_confirm_charges_once_and_reads_the_outcome(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    request = validated(adapter, sim)
    adapter.charge(request)

    again = adapter.charge(request)

    assert again.outcome == Outcome.SUCCEEDED
    assert len(sim.charges[APPROVED]) == 1


def test_cancel_releases_a_prepared_payment(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    request = start_pin_flow(adapter)

    assert adapter.cancel(request).outcome == Outcome.SUCCEEDED
    assert adapter.cancel(request).outcome == Outcome.SUCCEEDED  # already cancelled
    status = adapter.query_status(request)
    assert (status.outcome, status.error_code, status.raw_code) == (Outcome.FAILED, ErrorCode.REJECTED, "cancelled")
    assert adapter.charge(request).error_code == ErrorCode.RESERVATION_EXPIRED


def test_barred_subscriber_gets_no_pin(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    result = adapter.send_pin(charge_request("+447400120003"))

    assert (result.error_code, result.raw_code) == (ErrorCode.USER_BARRED, "CARRIER_BILLING.PAYMENT_DENIED")
    assert not sim.sms["+447400120003"]


def test_insufficient_balance_on_confirm_is_told_by_notification(
    adapter: CamaraAdapter, sim: core.Simulator, sink: Sink
) -> None:
    request = validated(adapter, sim, "+447400120002")

    assert adapter.charge(request).outcome == Outcome.PENDING
    headers, body = sink.wait_for(request.carrier_reference)
    notification = adapter.parse_notification(headers=headers, body=body, now=datetime.now(UTC))

    assert (notification.outcome, notification.error_code) == (Outcome.FAILED, ErrorCode.INSUFFICIENT_FUNDS)
    assert notification.raw_code == "payment-denied"
    assert adapter.query_status(request).outcome == Outcome.FAILED
    assert not sim.charges["+447400120002"]


# --- one-click ---


def test_one_click_charge_succeeds_at_once(adapter: CamaraAdapter, sim: core.Simulator, sink: Sink) -> None:
    result = adapter.charge(charge_request())

    assert result.outcome == Outcome.SUCCEEDED
    assert sim.charges[APPROVED] == [result.carrier_reference]
    assert adapter.query_status(charge_request(carrier_reference=result.carrier_reference)).outcome == Outcome.SUCCEEDED
    sink.wait_for(result.carrier_reference)


@pytest.mark.parametrize(
    ("msisdn", "error_code", "raw_code"),
    [
        ("+447400120002", ErrorCode.INSUFFICIENT_FUNDS, "CARRIER_BILLING.PAYMENT_DENIED"),
        ("+447400120003", ErrorCode.USER_BARRED, "CARRIER_BILLING.PAYMENT_DENIED"),
        ("+447400120004", ErrorCode.SPENDING_LIMIT, "CARRIER_BILLING.USER_AMOUNT_THRESHOLD_OVERPASSED"),
        ("+447400120006", ErrorCode.UNKNOWN_SUBSCRIBER, "IDENTIFIER_NOT_FOUND"),
    ],
)
def test_declines_map_to_our_error_codes_and_keep_the_raw_code(
    adapter: CamaraAdapter, sim: core.Simulator, msisdn: str, error_code: ErrorCode, raw_code: str
) -> None:
    result = adapter.charge(charge_request(msisdn))

    assert (result.outcome, result.error_code, result.raw_code) == (Outcome.FAILED, error_code, raw_code)
    assert result.raw_message
    assert not result.not_sent
    assert not sim.charges[msisdn]


@pytest.mark.parametrize("msisdn", ["+447400120007", "+447400120008", "+447400120009"])
def test_server_error_garbled_reply_or_timeout_leave_the_outcome_unknown(
    config: CarrierConfig, sim: core.Simulator, msisdn: str
) -> None:
    sim.configure(timeout_seconds=0.8)
    adapter = CamaraAdapter(replace(config, read_timeout=0.4))

    result = adapter.charge(charge_request(msisdn))

    assert result.outcome == Outcome.PENDING
    assert result.transport_failed
    assert not result.not_sent


def test_unreachable_operator_is_unavailable_and_not_sent(config: CarrierConfig) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = CamaraAdapter(replace(config, endpoint=f"http://127.0.0.1:{port}"))

    result = adapter.charge(charge_request())

    assert (result.outcome, result.error_code) == (Outcome.FAILED, ErrorCode.CARRIER_UNAVAILABLE)
    assert result.not_sent
    assert result.transport_failed


def test_a_charge_that_never_completes_stays_pending(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    result = adapter.charge(charge_request("+447400120005"))

    assert (result.outcome, result.raw_code) == (Outcome.PENDING, "processing")
    assert adapter.query_status(charge_request(carrier_reference=result.carrier_reference)).outcome == Outcome.PENDING


def test_a_reused_client_correlator_does_not_charge_twice(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    first = adapter.charge(charge_request())
    second = adapter.charge(charge_request())

    assert first.outcome == Outcome.SUCCEEDED
    assert (second.error_code, second.raw_code) == (ErrorCode.DUPLICATE, "INVALID_ARGUMENT")
    assert "clientCorrelator" in second.raw_message
    assert len(sim.charges[APPROVED]) == 1
    assert adapter.charge(charge_request(state={"attempt": 1})).outcome == Outcome.SUCCEEDED


def test_a_lost_one_click_reply_is_found_by_its_client_correlator(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    garbled = adapter.charge(charge_request("+447400120008"))
    assert (garbled.outcome, garbled.carrier_reference) == (Outcome.PENDING, "")

    status = adapter.query_status(charge_request("+447400120008"))

    assert status.outcome == Outcome.SUCCEEDED
    assert status.carrier_reference == sim.charges["+447400120008"][0]
    assert adapter.query_status(charge_request(payment_id="never-sent")).outcome == Outcome.PENDING


# --- refunds ---


def test_partial_and_total_refunds(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    paid = adapter.charge(charge_request())
    refund = RefundRequest(
        refund_id="rf-1",
        payment_id="pay-1",
        carrier_reference=paid.carrier_reference,
        msisdn=APPROVED,
        amount_minor=199,
        currency="EUR",
        reason="Item not delivered",
    )

    partial = adapter.refund(refund)
    total = adapter.refund(replace(refund, refund_id="rf-2", state={"total": True}))
    nothing_left = adapter.refund(replace(refund, refund_id="rf-3"))

    assert partial.outcome == Outcome.SUCCEEDED
    assert partial.carrier_reference.startswith("rf")
    assert sim.records[f"refund:{total.carrier_reference}"]["type"] == "total"
    assert total.outcome == Outcome.SUCCEEDED
    assert (nothing_left.error_code, nothing_left.raw_code) == (
        ErrorCode.REJECTED,
        "CARRIER_BILLING_REFUND.UNAUTHORIZED_AMOUNT",
    )
    # The same refund id again (its reply was lost): the operator refuses the clientCorrelator, so the
    # adapter reads back the refund it names, and nothing is refunded twice.
    again = adapter.refund(refund)
    assert (again.outcome, again.carrier_reference) == (Outcome.SUCCEEDED, partial.carrier_reference)


# --- OAuth2 ---


def test_private_key_jwt_authenticates_with_the_registered_key(config: CarrierConfig, sim: core.Simulator) -> None:
    credentials = {"client_id": "playpay", "private_key": camara_sim.demo_private_key_pem()}
    adapter = CamaraAdapter(replace(config, credentials=credentials))

    assert adapter.charge(charge_request()).outcome == Outcome.SUCCEEDED


def test_private_key_jwt_signed_by_another_key_is_refused(config: CarrierConfig, sim: core.Simulator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    adapter = CamaraAdapter(replace(config, credentials={"client_id": "playpay", "private_key": other.decode()}))

    result = adapter.charge(charge_request())

    assert (result.error_code, result.raw_code) == (ErrorCode.CARRIER_UNAVAILABLE, "invalid_client")
    assert result.not_sent
    assert not sim.charges[APPROVED]


def test_wrong_client_secret_is_refused(config: CarrierConfig) -> None:
    credentials = {"client_id": "playpay", "client_secret": "guess"}

    result = CamaraAdapter(replace(config, credentials=credentials)).charge(charge_request())

    assert (result.error_code, result.raw_code, result.not_sent) == (
        ErrorCode.CARRIER_UNAVAILABLE,
        "invalid_client",
        True,
    )


def test_one_token_serves_many_calls(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    request = start_pin_flow(adapter)
    adapter.query_status(request)
    CamaraAdapter(adapter.config).query_status(request)

    assert camara_sim.issued_tokens(sim) == 1


def test_a_rejected_token_is_renewed_once(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    adapter.charge(charge_request(payment_id="pay-0"))
    camara_sim.revoke_tokens(sim)

    assert adapter.charge(charge_request()).outcome == Outcome.SUCCEEDED
    assert camara_sim.issued_tokens(sim) == 1  # the revoked one is gone, the renewed one is there


def test_the_api_refuses_calls_without_a_valid_token(config: CarrierConfig, sim: core.Simulator) -> None:
    response = httpx.get(config.endpoint + "/carrier-billing/v0.4/payments", headers={"Authorization": "Bearer nope"})

    assert response.status_code == 401
    assert response.json() == {
        "status": 401,
        "code": "UNAUTHENTICATED",
        "message": "Request not authenticated due to missing, invalid, or expired credentials.",
    }


def test_the_token_endpoint_requires_a_scope(config: CarrierConfig, sim: core.Simulator) -> None:
    response = httpx.post(
        config.endpoint + "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=("playpay", "camara-secret"),
    )

    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


# --- notifications ---


def test_notification_with_the_right_bearer_is_read(offline_adapter: CamaraAdapter) -> None:
    body = event_body("payment-denied", status="failed", denialReason="User is blocked due to pending debt")

    notification = offline_adapter.parse_notification(headers=BEARER, body=body, now=datetime.now(UTC))

    assert notification.notification_id == "evt-1"
    assert notification.carrier_reference == "cb-1"
    assert (notification.outcome, notification.error_code) == (Outcome.FAILED, ErrorCode.USER_BARRED)
    assert notification.raw_message == "User is blocked due to pending debt"


def test_refund_notification_is_of_kind_refund(offline_adapter: CamaraAdapter) -> None:
    body = json.loads(event_body(refundId="rf-9"))
    body["type"] = "org.camaraproject.carrier-billing-refund.v0.refund-completed"

    notification = offline_adapter.parse_notification(
        headers=BEARER, body=json.dumps(body).encode(), now=datetime.now(UTC)
    )

    assert (notification.kind, notification.outcome, notification.carrier_reference) == (
        NotificationKind.REFUND,
        Outcome.SUCCEEDED,
        "rf-9",
    )


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        # Bodies made when the test runs, not when it is collected (a long run would make them all stale).
        ({"Authorization": "Bearer wrong"}, lambda: event_body(), "bad_signature"),
        ({}, lambda: event_body(), "bad_signature"),
        (BEARER, lambda: event_body(at=datetime.now(UTC) - timedelta(minutes=10)), "stale"),
        (BEARER, lambda: b"{not json", "malformed"),
        (BEARER, lambda: event_body("payment-exploded"), "malformed"),
    ],
)
def test_notifications_that_fail_verification_are_rejected(
    offline_adapter: CamaraAdapter, headers: dict[str, str], body: Callable[[], bytes], reason: str
) -> None:
    # The body is made when the test runs: one made at collection goes stale in a long suite.
    with pytest.raises(NotificationRejected) as rejected:
        offline_adapter.parse_notification(headers=headers, body=body(), now=datetime.now(UTC))

    assert rejected.value.reason == reason


def test_an_outage_is_a_503_whose_retry_after_the_adapter_reports(adapter: CamaraAdapter, sim: core.Simulator) -> None:
    assert adapter.check_connection().outcome == Outcome.SUCCEEDED  # a token first: the outage stops that too
    outage = httpx.post(adapter.config.endpoint + "/_settings", json={"outage": True}, timeout=5)
    assert outage.status_code == 200
    result = adapter.charge(charge_request())
    assert (result.outcome, result.raw_code, result.transport_failed) == (Outcome.PENDING, "HTTP_503", True)
    assert result.retry_after == camara_sim.RETRY_AFTER_SECONDS
    assert not sim.charges[APPROVED]


def test_a_one_click_charge_never_received_is_told_apart_from_one_still_unknown(
    adapter: CamaraAdapter, sim: core.Simulator
) -> None:
    adapter.charge(charge_request(payment_id="pay-other"))  # the operator has other payments
    long_ago = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    just_now = datetime.now(UTC).isoformat()
    lost = adapter.query_status(charge_request(payment_id="pay-lost", state={"attempt": 1, "asked_at": long_ago}))
    assert (lost.outcome, lost.not_sent, lost.raw_code) == (Outcome.FAILED, True, "NOT_FOUND")
    recent = adapter.query_status(charge_request(payment_id="pay-lost", state={"attempt": 1, "asked_at": just_now}))
    assert (recent.outcome, recent.not_sent) == (Outcome.PENDING, False)  # it may still be on its way
    found = adapter.query_status(charge_request(payment_id="pay-other", state={"attempt": 0, "asked_at": long_ago}))
    assert found.outcome == Outcome.SUCCEEDED


def test_a_refund_whose_reply_was_lost_is_found_by_its_client_correlator(
    adapter: CamaraAdapter, sim: core.Simulator
) -> None:
    paid = adapter.charge(charge_request())
    refund = RefundRequest(
        refund_id="refund-1",
        payment_id="pay-1",
        carrier_reference=paid.carrier_reference,
        msisdn=APPROVED,
        amount_minor=100,
        currency="EUR",
        state={"asked_at": (datetime.now(UTC) - timedelta(minutes=10)).isoformat()},
    )
    assert (adapter.query_refund(refund).outcome, adapter.query_refund(refund).not_sent) == (Outcome.FAILED, True)
    done = adapter.refund(refund)
    assert done.outcome == Outcome.SUCCEEDED
    by_correlator = adapter.query_refund(refund)
    by_reference = adapter.query_refund(replace(refund, state={"refund_reference": done.carrier_reference}))
    assert by_correlator.outcome == by_reference.outcome == Outcome.SUCCEEDED
    assert by_correlator.carrier_reference == by_reference.carrier_reference == done.carrier_reference
