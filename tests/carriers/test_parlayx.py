"""The Parlay X adapter against its simulator, over real SOAP on a loopback port."""

import hashlib
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zeep.exceptions
from lxml import etree

from carriers.adapters import parlayx
from carriers.adapters.base import CarrierConfig, CarrierResult, ChargeRequest, Outcome, RefundRequest
from carriers.adapters.parlayx import ParlayXAdapter
from carriers.errors import ErrorCode
from playpay.money import to_major
from sandbox.simulators import core
from sandbox.simulators import parlayx as simulator_module

OK = "+447400120001"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


@pytest.fixture
def sim(simulator_server: str) -> Iterator[core.Simulator]:
    simulator = core.simulator("parlayx")
    simulator.reset()
    # Longer than the adapter's read timeout, short enough to keep the suite fast.
    simulator.configure(timeout_seconds=1.2)
    yield simulator
    simulator.reset()


@pytest.fixture
def endpoint(simulator_server: str) -> str:
    return f"{simulator_server}/simulators/parlayx"


def make_adapter(
    endpoint: str, read_timeout: float = 1, *, deduplicates: bool = False, **credentials: Any
) -> ParlayXAdapter:
    config = CarrierConfig(
        slug="parlayx-test",
        endpoint=endpoint,
        credentials=credentials,
        connect_timeout=2,
        read_timeout=read_timeout,
        deduplicates_reference_code=deduplicates,
    )
    return ParlayXAdapter(config)


@pytest.fixture
def adapter(endpoint: str, sim: core.Simulator) -> ParlayXAdapter:
    return make_adapter(endpoint)


def charge_request(msisdn: str = OK, state: dict[str, Any] | None = None, **fields: Any) -> ChargeRequest:
    values: dict[str, Any] = {
        "payment_id": str(uuid.uuid4()),
        "msisdn": msisdn,
        "amount_minor": 150,
        "currency": "GBP",
        "price_point": "gem-pack",
        "description": "PlayPay: gem-pack",
        "state": state if state is not None else {"attempt": 1},
    }
    return ChargeRequest(**(values | fields))


def pin_from_inbox(sim: core.Simulator, msisdn: str) -> str:
    match = re.search(r"\b(\d{6})\b", sim.sms[msisdn][-1])
    assert match is not None
    return match.group(1)


def after_pin(request: ChargeRequest, result: CarrierResult) -> ChargeRequest:
    """The request as the payment services send it next: with the stored state and reference."""
    return ChargeRequest(
        payment_id=request.payment_id,
        msisdn=request.msisdn,
        amount_minor=request.amount_minor,
        currency=request.currency,
        price_point=request.price_point,
        description=request.description,
        carrier_reference=result.carrier_reference,
        state={**request.state, **result.state},
    )


def test_pin_flow_reserves_sends_a_pin_and_charges_the_reservation(adapter, sim, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    request = charge_request()
    started = adapter.send_pin(request)
    assert started.outcome == Outcome.PIN_SENT
    reservation = started.carrier_reference
    assert sim.records[reservation]["status"] == "reserved"
    assert sim.records[reservation]["amount"] == to_major(150, "GBP")
    assert sim.sms[OK][-1].startswith("Your PlayPay code is ")
    pin = pin_from_inbox(sim, OK)
    assert started.state["reservation"] == reservation
    assert pin not in repr(dict(started.state))
    assert pin not in caplog.text

    pending = after_pin(request, started)
    assert adapter.verify_pin(pending, pin=pin).outcome == Outcome.PIN_VERIFIED
    charged = adapter.charge(pending)

    assert charged.outcome == Outcome.SUCCEEDED
    assert charged.carrier_reference == reservation
    assert sim.records[reservation]["status"] == "charged"
    assert sim.charges[OK] == [reservation]


def test_a_wrong_pin_is_refused_without_asking_the_carrier() -> None:
    adapter = make_adapter("http://127.0.0.1:9/unused")
    salt = "00" * 16
    state = {"reservation": "rsv1", "pin_salt": salt, "pin_digest": parlayx.pin_digest("123456", salt)}

    assert adapter.verify_pin(charge_request(state=state), pin="123456").outcome == Outcome.PIN_VERIFIED
    refused = adapter.verify_pin(charge_request(state=state), pin="123457")

    assert (refused.outcome, refused.error_code) == (Outcome.FAILED, ErrorCode.INVALID_PIN)
    assert adapter.verify_pin(charge_request(), pin="123456").error_code == ErrorCode.INVALID_PIN


def test_a_failed_pin_sms_releases_the_reservation(adapter, sim, monkeypatch) -> None:
    def refuse(*args: Any) -> dict[str, str]:
        raise simulator_module.invalid("addresses")

    monkeypatch.setitem(simulator_module.SERVICES["sms/send"], "sendSms", refuse)

    result = adapter.send_pin(charge_request())

    assert result.outcome == Outcome.FAILED
    assert result.error_code == ErrorCode.UNKNOWN_SUBSCRIBER
    assert result.raw_code == "SVC0002"
    assert sim.records[result.carrier_reference]["status"] == "released"


def test_one_click_charges_the_amount(adapter, sim) -> None:
    request = charge_request()

    result = adapter.charge(request)

    assert result.outcome == Outcome.SUCCEEDED
    assert result.carrier_reference == f"{request.payment_id}-1"
    assert len(sim.charges[OK]) == 1


def test_a_repeated_charge_with_the_same_reference_code_charges_once(adapter, sim) -> None:
    request = charge_request()

    first, second = adapter.charge(request), adapter.charge(request)

    assert first.outcome == second.outcome == Outcome.SUCCEEDED
    assert len(sim.charges[OK]) == 1


def test_a_reservation_is_charged_only_once(adapter, sim) -> None:
    request = charge_request()
    pending = after_pin(request, adapter.send_pin(request))
    assert adapter.charge(pending).outcome == Outcome.SUCCEEDED

    again = adapter.charge(pending)

    assert again.error_code == ErrorCode.RESERVATION_EXPIRED
    assert again.raw_code == "SVC0002"
    assert again.raw_message == "Invalid input value for message part reservationIdentifier"
    assert len(sim.charges[OK]) == 1


# Each test with the live server costs a database flush, so the scenario tables are looped, not parametrized.
DECLINES = {
    "0002": (ErrorCode.INSUFFICIENT_FUNDS, "POL1000", "User has insufficient credit for transaction"),
    "0003": (ErrorCode.USER_BARRED, "POL1003", "The end user is barred from premium charging"),
    "0004": (
        ErrorCode.SPENDING_LIMIT,
        "POL1001",
        "The monthly operator charging limit for this user has been exceeded",
    ),
    "0006": (ErrorCode.UNKNOWN_SUBSCRIBER, "SVC0002", "Invalid input value for message part endUserIdentifier"),
}


def test_declines_map_to_standard_errors_keeping_the_raw_fault(adapter, sim) -> None:
    for suffix, expected in DECLINES.items():
        msisdn = "+44740012" + suffix

        one_click = adapter.charge(charge_request(msisdn))
        pin = adapter.send_pin(charge_request(msisdn))

        for result in (one_click, pin):
            assert result.outcome == Outcome.FAILED, suffix
            assert (result.error_code, result.raw_code, result.raw_message) == expected
            assert not result.transport_failed, suffix
        assert msisdn not in sim.charges
        assert msisdn not in sim.sms


def test_an_unknown_outcome_is_pending(endpoint, sim) -> None:
    adapter = make_adapter(endpoint, read_timeout=0.4)  # the simulator hangs for 1.2 s
    # 5xx, garbled XML, a timeout, and a charge that never gets an answer.
    for suffix, raw_code in {"0007": "HTTP_500", "0008": "MALFORMED", "0009": "TIMEOUT", "0005": "TIMEOUT"}.items():
        result = adapter.charge(charge_request("+44740012" + suffix))

        assert result.outcome == Outcome.PENDING, suffix
        assert result.raw_code == raw_code, suffix
        assert result.transport_failed, suffix
        assert not result.not_sent, suffix


def test_an_unreachable_carrier_fails_as_not_sent(sim) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = make_adapter(f"http://127.0.0.1:{port}/parlayx")

    result = adapter.charge(charge_request())

    assert result.outcome == Outcome.FAILED
    assert result.error_code == ErrorCode.CARRIER_UNAVAILABLE
    assert result.not_sent
    assert result.transport_failed


def test_cancel_releases_the_reservation(adapter, sim) -> None:
    request = charge_request()
    pending = after_pin(request, adapter.send_pin(request))

    cancelled = adapter.cancel(pending)

    assert cancelled.outcome == Outcome.SUCCEEDED
    assert sim.records[pending.carrier_reference]["status"] == "released"
    assert adapter.charge(pending).error_code == ErrorCode.RESERVATION_EXPIRED
    assert adapter.cancel(pending).outcome == Outcome.SUCCEEDED
    assert OK not in sim.charges


def test_refund_returns_the_amount(adapter, sim) -> None:
    charged = adapter.charge(request := charge_request())
    refund = RefundRequest(
        refund_id=str(uuid.uuid4()),
        payment_id=request.payment_id,
        carrier_reference=charged.carrier_reference,
        msisdn=OK,
        amount_minor=100,
        currency="GBP",
    )

    result = adapter.refund(refund)

    assert result.outcome == Outcome.SUCCEEDED
    assert sim.records[f"refund:{refund.refund_id}"]["amount"] == "1.00"


def test_status_is_left_to_reconciliation() -> None:
    result = make_adapter("http://127.0.0.1:9/unused").query_status(charge_request())

    assert result.outcome == Outcome.PENDING
    assert result.raw_code == "NO_STATUS_QUERY"
    assert not ParlayXAdapter.capabilities.status_query


def _refund_of(request: ChargeRequest, reference: str) -> RefundRequest:
    return RefundRequest(
        refund_id=str(uuid.uuid4()),
        payment_id=request.payment_id,
        carrier_reference=reference,
        msisdn=request.msisdn,
        amount_minor=100,
        currency="GBP",
    )


def test_an_unknown_outcome_is_not_sent_again_unless_the_gateway_deduplicates(endpoint, sim) -> None:
    adapter = make_adapter(endpoint)  # the default: referenceCode is not known to deduplicate
    request = charge_request()
    refund_request = _refund_of(request, "ref")

    charge, refund = adapter.resolve_charge(request), adapter.query_refund(refund_request)

    assert charge.outcome == refund.outcome == Outcome.PENDING
    assert charge.raw_code == refund.raw_code == "NO_STATUS_QUERY"
    assert len(sim.charges[OK]) == 0
    assert f"refund:{refund_request.refund_id}" not in sim.records


def test_where_the_gateway_deduplicates_the_same_request_is_sent_again_and_applied_once(endpoint, sim) -> None:
    adapter = make_adapter(endpoint, deduplicates=True)
    request = charge_request()
    assert adapter.charge(request).outcome == Outcome.SUCCEEDED
    refund = _refund_of(request, "ref")
    assert adapter.refund(refund).outcome == Outcome.SUCCEEDED

    assert adapter.resolve_charge(request).outcome == Outcome.SUCCEEDED
    assert adapter.query_refund(refund).outcome == Outcome.SUCCEEDED
    assert len(sim.charges[OK]) == 1
    assert sim.records[f"refund:{refund.refund_id}"]["amount"] == "1.00"


def test_a_refused_resend_leaves_the_outcome_unknown(endpoint, sim) -> None:
    adapter = make_adapter(endpoint, deduplicates=True)
    request = charge_request()
    pending = after_pin(request, adapter.send_pin(request))
    assert adapter.charge(pending).outcome == Outcome.SUCCEEDED  # its answer lost, say
    declined = charge_request("+447400120002")

    gone, refused = adapter.resolve_charge(pending), adapter.resolve_charge(declined)

    assert (gone.outcome, gone.raw_code, gone.error_code) == (Outcome.PENDING, "SVC0002", None)
    assert (refused.outcome, refused.raw_code, refused.error_code) == (Outcome.PENDING, "POL1000", None)
    assert len(sim.charges[OK]) == 1


def test_the_sp_header_authenticates_with_the_right_password(endpoint, sim) -> None:
    good = make_adapter(endpoint, sp_id="000201", sp_password="parlayx-secret", service_id="35000001")
    bad = make_adapter(endpoint, sp_id="000201", sp_password="wrong")

    assert good.charge(charge_request()).outcome == Outcome.SUCCEEDED
    refused = bad.charge(charge_request())

    assert (refused.error_code, refused.raw_code) == (ErrorCode.REJECTED, "SVC0901")
    assert len(sim.charges[OK]) == 1


def test_the_simulator_answers_spec_shaped_faults_to_v3_1_requests(endpoint, sim) -> None:
    namespace = "http://www.csapi.org/schema/parlayx/payment/amount_charging/v3_1/local"
    envelope = f"""<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:loc="{namespace}"><soapenv:Body>
        <loc:chargeAmount><loc:endUserIdentifier>tel:447400120002</loc:endUserIdentifier>
        <loc:charge><description>x</description><currency>GBP</currency><amount>1.50</amount></loc:charge>
        <loc:referenceCode>r-1</loc:referenceCode></loc:chargeAmount></soapenv:Body></soapenv:Envelope>"""

    response = httpx.post(
        f"{endpoint}/AmountChargingService/services/AmountCharging",
        content=envelope.encode(),
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
    )

    assert response.status_code == 500
    fault = etree.fromstring(response.content).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert fault is not None
    exception = fault.find("detail/{http://www.csapi.org/schema/parlayx/common/v2_1}PolicyException")
    assert exception is not None
    assert exception.findtext("messageId") == "POL1000"
    assert exception.findtext("text") == "User has insufficient credit for transaction"


def _fault(message_id: str, text: str, *variables: str, kind: str = "ServiceException") -> zeep.exceptions.Fault:
    detail = etree.Element("detail")
    element = etree.SubElement(detail, f"{{http://www.csapi.org/schema/parlayx/common/v2_1}}{kind}")
    etree.SubElement(element, "messageId").text = message_id
    etree.SubElement(element, "text").text = text
    for variable in variables:
        etree.SubElement(element, "variables").text = variable
    return zeep.exceptions.Fault(text, code="soapenv:Server", detail=detail)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (_fault("SVC0270", "Charge failed: insufficient balance"), ErrorCode.INSUFFICIENT_FUNDS),
        (_fault("SVC0270", "Charging operation failed, the charge was not applied"), ErrorCode.REJECTED),
        (
            _fault("POL0254", "The amount exceeds the operator limit", kind="PolicyException"),
            ErrorCode.PRICE_NOT_SUPPORTED,
        ),
        (_fault("SVC0002", "Invalid input value for message part %1", "referenceCode"), ErrorCode.REJECTED),
        (zeep.exceptions.Fault("POL1000", code="soapenv:Server"), ErrorCode.INSUFFICIENT_FUNDS),
    ],
    ids=["svc0270-hint", "svc0270", "pol0254", "svc0002-other", "code-in-faultstring"],
)
def test_faults_map_by_message_id_and_variables(fault, code) -> None:
    assert parlayx.fault_result(fault).error_code == code


def test_a_fault_without_a_parlay_x_code_leaves_the_outcome_unknown() -> None:
    result = parlayx.fault_result(zeep.exceptions.Fault("java.lang.NullPointerException", code="soapenv:Server"))

    assert result.outcome == Outcome.PENDING


def test_the_sp_password_is_the_md5_of_id_password_and_timestamp() -> None:
    endpoint = "http://127.0.0.1:9/unused"
    adapter = make_adapter(endpoint, sp_id="000201", sp_password="parlayx-secret")
    (header,) = adapter._soap_headers(OK)
    values = {etree.QName(child).localname: child.text for child in header}

    expected = hashlib.md5(f"000201parlayx-secret{values['timeStamp']}".encode(), usedforsecurity=False).hexdigest()
    assert values["spPassword"] == expected
    assert make_adapter(endpoint)._soap_headers(OK) == []


def test_the_soap_client_is_made_once_per_carrier_setup() -> None:
    config = make_adapter("http://127.0.0.1:9/unused").config

    first = parlayx.service_proxy(config, parlayx.AMOUNT_CHARGING)

    assert parlayx.service_proxy(config, parlayx.AMOUNT_CHARGING) is first
