"""Parlay X simulator: Payment AmountCharging and ReserveAmountCharging (3GPP TS 29.199-6) and SendSms
(TS 29.199-4), SOAP 1.1; charges, reservations and refunds are the simulator's shared state (core.Records).

Requests in the v2_1, v2_2 (SMS) or v3_1 `.../local` namespaces are accepted and dispatched on the body
element's local name; answers use the request's namespace, faults the common v2_1 one. The MSISDN's last
four digits pick the scenario (`core.SCENARIOS`): declines become the faults in `DECLINES`, transport
faults come from `core`, and `never_final` makes a charge hang past the client's timeout, uncharged. A number
whose answer changes over its life counts each chargeAmount and reserveAmount as one charge.

It models a gateway that deduplicates referenceCode (the spec does not promise it; a carrier says so with
`Carrier.deduplicates_reference_code`): chargeAmount and refundAmount are idempotent by referenceCode, a
repeat for the same subscriber answers success and moves no money again. A reservation is charged at most
once, whichever processes the requests reach.
A Huawei RequestSOAPHeader, when sent, must carry spId 000201 and spPassword
MD5(spId + "parlayx-secret" + timeStamp); a wrong one is refused with SVC0901.

The test handset (`_player_sms`) sends an SMS to the service number, STOP say: the gateway pushes it to the
SP's notification endpoint as `notifySmsReception` (TS 29.199-4's SmsNotification), with HTTP Basic
credentials spId:password, in the background and retried like the other simulators' callbacks.
"""

import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path
from lxml import etree

from carriers.adapters.parlayx import SMS_NOTIFICATION_NS
from sandbox.simulators import core
from sandbox.simulators.core import Decline, Simulator, simulator_view

NAME = "parlayx"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
COMMON_NS = "http://www.csapi.org/schema/parlayx/common/v2_1"
SP_ID = "000201"
SP_PASSWORD = "parlayx-secret"  # noqa: S105 - the simulator's published test credential

_BODY_NS = re.compile(
    r"^http://www\.csapi\.org/schema/parlayx/"
    r"(?P<service>payment/amount_charging|payment/reserve_amount_charging|sms/send)/v(2_1|2_2|3_1)/local$"
)


@dataclass(frozen=True)
class Fault:
    """A Parlay X ServiceException or PolicyException."""

    kind: str
    message_id: str
    text: str
    variables: tuple[str, ...] = field(default=())

    @property
    def message(self) -> str:
        return re.sub(r"%(\d+)", lambda m: self._variable(int(m.group(1))) or m.group(0), self.text)

    def _variable(self, number: int) -> str:
        return self.variables[number - 1] if 0 < number <= len(self.variables) else ""


class Refused(Exception):
    """An operation answered with a fault."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        super().__init__(fault.message_id)


def invalid(part: str) -> Refused:
    return Refused(Fault("ServiceException", "SVC0002", "Invalid input value for message part %1", (part,)))


INVALID_CHARGE = Fault("ServiceException", "SVC0007", "Invalid charging information")
AUTH_FAILED = Fault("ServiceException", "SVC0901", "SP API level request authentication failed")
# POL1003 is PlayPay's pick in the third-party range (1000-9999) for a barred subscriber.
DECLINES: dict[Decline, Fault] = {
    Decline.INSUFFICIENT_FUNDS: Fault("PolicyException", "POL1000", "User has insufficient credit for transaction"),
    Decline.SPENDING_LIMIT: Fault(
        "PolicyException", "POL1001", "The %1 operator charging limit for this user has been exceeded", ("monthly",)
    ),
    Decline.USER_BARRED: Fault("PolicyException", "POL1003", "The end user is barred from premium charging"),
    Decline.UNKNOWN_SUBSCRIBER: invalid("endUserIdentifier").fault,
}


# -- reading requests ----------------------------------------------------------------------


def _text(operation: etree._Element, name: str, *, required: bool = True) -> str:
    value = (operation.findtext(f"{{*}}{name}") or "").strip()
    if required and not value:
        raise invalid(name)
    return value


def _msisdn(uri: str, part: str) -> str:
    digits = uri.strip().removeprefix("tel:").removeprefix("+")
    if not digits.isdigit():
        raise invalid(part)
    return "+" + digits


@dataclass(frozen=True)
class Charge:
    description: str
    currency: str
    amount: Decimal


def _charge(operation: etree._Element) -> Charge:
    element = operation.find("{*}charge")
    if element is None:
        raise invalid("charge")
    try:
        amount = Decimal((element.findtext("{*}amount") or "").strip())
    except InvalidOperation:
        # A tariff `code` instead of an amount is valid Parlay X, but this gateway prices by amount only.
        raise Refused(INVALID_CHARGE) from None
    if not amount.is_finite() or amount <= 0:
        raise Refused(INVALID_CHARGE)
    return Charge(
        description=(element.findtext("{*}description") or "").strip(),
        currency=(element.findtext("{*}currency") or "").strip().upper(),
        amount=amount,
    )


def _decline(sim: Simulator, msisdn: str, *, counts: bool = True) -> None:
    """Refuse a charge (or a reservation, which holds the funds) as the number's scenario says; each is one
    charge in the life of a number whose answer changes over it (more money on a reservation is not)."""
    decline = sim.charge_decline(msisdn) if counts else sim.next_decline(msisdn)
    if decline is not None:
        raise Refused(DECLINES[decline])


@contextmanager
def _reservation(sim: Simulator, operation: etree._Element) -> Iterator[tuple[str, dict[str, Any]]]:
    """The reservation named in the request, still holding funds, locked until the block ends (its changes are
    saved then); SVC0002 for an unknown or settled one."""
    identifier = _text(operation, "reservationIdentifier")
    with sim.records.locked(identifier) as record:
        if record is None or record.get("kind") != "reservation" or record["status"] != "reserved":
            raise invalid("reservationIdentifier")
        yield identifier, record


# -- operations: each returns the response's children, or raises Refused --------------------

Operation = Callable[[Simulator, etree._Element, str], dict[str, str]]


def charge_amount(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    charge = _charge(operation)
    reference = _text(operation, "referenceCode")
    done = sim.records.get(f"charge:{reference}")
    if done is not None:  # the same charge again: already applied once (and not a new charge of the number)
        if done["msisdn"] != msisdn:
            raise invalid("referenceCode")
        return {}
    _decline(sim, msisdn)
    record_id = sim.new_id("chg")
    record = {
        "kind": "charge",
        "id": record_id,
        "msisdn": msisdn,
        "amount": str(charge.amount),
        "currency": charge.currency,
    }
    # Taken atomically: of two requests with one referenceCode, on any processes, one charges.
    if sim.records.add(f"charge:{reference}", record):
        sim.record_charge(msisdn, record_id)
        return {}
    done = sim.records[f"charge:{reference}"]
    if done["msisdn"] != msisdn:
        raise invalid("referenceCode")
    return {}  # the same charge again: already applied once


def refund_amount(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    charge = _charge(operation)
    reference = _text(operation, "referenceCode")
    if sim.current_decline(msisdn) == Decline.UNKNOWN_SUBSCRIBER:
        raise Refused(DECLINES[Decline.UNKNOWN_SUBSCRIBER])
    record = {
        "kind": "refund",
        "id": sim.new_id("rfd"),
        "msisdn": msisdn,
        "amount": str(charge.amount),
        "currency": charge.currency,
    }
    if not sim.records.add(f"refund:{reference}", record):
        done = sim.records[f"refund:{reference}"]
        if done["msisdn"] != msisdn:
            raise invalid("referenceCode")
    return {}


def reserve_amount(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    charge = _charge(operation)
    _decline(sim, msisdn)
    identifier = sim.new_id("rsv")
    sim.records.put(
        identifier,
        {
            "kind": "reservation",
            "msisdn": msisdn,
            "amount": charge.amount,
            "currency": charge.currency,
            "status": "reserved",
        },
    )
    return {"result": identifier}


def reserve_additional_amount(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    charge = _charge(operation)
    _decline(sim, msisdn, counts=False)
    with _reservation(sim, operation) as (_identifier, record):
        if charge.currency and charge.currency != record["currency"]:
            raise Refused(INVALID_CHARGE)
        record["amount"] = Decimal(str(record["amount"])) + charge.amount
    return {}


def charge_reservation(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    charge = _charge(operation)
    _text(operation, "referenceCode")
    # Under the reservation's row lock: of two requests charging it, on any processes, one charges.
    with _reservation(sim, operation) as (identifier, record):
        held = Decimal(str(record["amount"]))
        if charge.amount > held or (charge.currency and charge.currency != record["currency"]):
            raise Refused(INVALID_CHARGE)
        record["status"] = "charged"
        record["charged"] = str(charge.amount)
        sim.record_charge(msisdn, identifier)
    return {}


def release_reservation(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    with _reservation(sim, operation) as (_identifier, record):
        record["status"] = "released"
    return {}


def send_sms(sim: Simulator, operation: etree._Element, msisdn: str) -> dict[str, str]:
    addresses = [_msisdn(item.text or "", "addresses") for item in operation.iterfind("{*}addresses")]
    message = operation.findtext("{*}message")
    if not addresses:
        raise invalid("addresses")
    if message is None:
        raise invalid("message")
    for address in addresses:
        if sim.current_decline(address) == Decline.UNKNOWN_SUBSCRIBER:
            raise invalid("addresses")
    for address in addresses:
        sim.send_sms(address, message)
    return {"result": sim.new_id("sms")}


SERVICES: dict[str, dict[str, Operation]] = {
    "payment/amount_charging": {"chargeAmount": charge_amount, "refundAmount": refund_amount},
    "payment/reserve_amount_charging": {
        "reserveAmount": reserve_amount,
        "reserveAdditionalAmount": reserve_additional_amount,
        "chargeReservation": charge_reservation,
        "releaseReservation": release_reservation,
    },
    "sms/send": {"sendSms": send_sms},
}
# Operations that take money: the ones `never_final` leaves without an answer.
CHARGES = frozenset({"chargeAmount", "chargeReservation"})


# -- SOAP ----------------------------------------------------------------------------------


def _reply(body_child: etree._Element, status: int = 200) -> HttpResponse:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(body_child)
    return HttpResponse(
        etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
        status=status,
        content_type="text/xml; charset=utf-8",
    )


def soap_fault(faultcode: str, faultstring: str, exception: Fault | None = None) -> HttpResponse:
    """A SOAP 1.1 fault (HTTP 500); a Parlay X exception goes in <detail> with unqualified children."""
    fault = etree.Element(f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = faultcode
    etree.SubElement(fault, "faultstring").text = faultstring
    if exception is not None:
        detail = etree.SubElement(fault, "detail")
        element = etree.SubElement(detail, f"{{{COMMON_NS}}}{exception.kind}", nsmap={"ns1": COMMON_NS})
        etree.SubElement(element, "messageId").text = exception.message_id
        etree.SubElement(element, "text").text = exception.text
        for variable in exception.variables:
            etree.SubElement(element, "variables").text = variable
    return _reply(fault, status=500)


def _answer(namespace: str, operation: str, children: dict[str, str]) -> HttpResponse:
    response = etree.Element(f"{{{namespace}}}{operation}Response", nsmap={"ns1": namespace})
    for name, value in children.items():
        etree.SubElement(response, f"{{{namespace}}}{name}").text = value
    return _reply(response)


def _garbled(namespace: str, operation: str) -> HttpResponse:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
        f'<soapenv:Body><ns1:{operation}Response xmlns:ns1="{namespace}"><ns1:res'
    )
    return HttpResponse(body.encode(), content_type="text/xml; charset=utf-8")


def _authenticated(envelope: etree._Element) -> bool:
    header = envelope.find(f"{{{SOAP_ENV}}}Header/{{*}}RequestSOAPHeader")
    if header is None:
        return True
    sp_id = (header.findtext("{*}spId") or "").strip()
    timestamp = (header.findtext("{*}timeStamp") or "").strip()
    password = (header.findtext("{*}spPassword") or "").strip().lower()
    expected = hashlib.md5((SP_ID + SP_PASSWORD + timestamp).encode(), usedforsecurity=False).hexdigest()
    return sp_id == SP_ID and hmac.compare_digest(password, expected)


def _subscriber(sim: Simulator, name: str, operation: etree._Element) -> str:
    """The MSISDN a request is about, which picks its scenario."""
    if name == "sendSms":
        first = operation.findtext("{*}addresses") or ""
        return _msisdn(first, "addresses")
    if operation.find("{*}endUserIdentifier") is not None:
        return _msisdn(operation.findtext("{*}endUserIdentifier") or "", "endUserIdentifier")
    record = sim.records.get(operation.findtext("{*}reservationIdentifier") or "")
    return str(record["msisdn"]) if record else ""


def handle(request: HttpRequest, service: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse("POST a SOAP 1.1 envelope", status=405, content_type="text/plain")
    sim = core.simulator(NAME)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        envelope = etree.fromstring(request.body, parser=parser)
    except etree.XMLSyntaxError:
        return soap_fault("soapenv:Client", "The request is not well-formed XML")
    operation = envelope.find(f"{{{SOAP_ENV}}}Body/*")
    if envelope.tag != f"{{{SOAP_ENV}}}Envelope" or operation is None:
        return soap_fault("soapenv:Client", "Not a SOAP 1.1 envelope with a body")
    qname = etree.QName(operation)
    matched = _BODY_NS.match(qname.namespace or "")
    handler = SERVICES[service].get(qname.localname) if matched and matched["service"] == service else None
    if handler is None:
        return soap_fault("soapenv:Client", f"No operation {qname.text} at this service")
    try:
        msisdn = _subscriber(sim, qname.localname, operation)
    except Refused as refused:
        return soap_fault("soapenv:Server", refused.fault.message, refused.fault)
    transport = sim.transport_fault(msisdn)
    if transport is not None:
        return transport
    if not _authenticated(envelope):
        return soap_fault("soapenv:Server", AUTH_FAILED.message, AUTH_FAILED)
    if qname.localname in CHARGES and sim.scenario(msisdn).never_final:
        time.sleep(sim.settings.timeout_seconds)
        return HttpResponse("Gateway Timeout", status=504, content_type="text/plain")
    try:
        children = handler(sim, operation, msisdn)
    except Refused as refused:
        return soap_fault("soapenv:Server", refused.fault.message, refused.fault)
    if sim.malformed(msisdn):
        return _garbled(qname.namespace or "", qname.localname)
    return _answer(qname.namespace or "", qname.localname, children)


@simulator_view
def amount_charging(request: HttpRequest) -> HttpResponse:
    return handle(request, "payment/amount_charging")


@simulator_view
def reserve_amount_charging(request: HttpRequest) -> HttpResponse:
    return handle(request, "payment/reserve_amount_charging")


@simulator_view
def send_sms_service(request: HttpRequest) -> HttpResponse:
    return handle(request, "sms/send")


def sms_reception(msisdn: str, text: str, to: str) -> tuple[bytes, dict[str, str]]:
    """The gateway's `notifySmsReception` of an SMS the player sent to `to`, and its headers: HTTP Basic with
    the SP's credentials, as the gateway is provisioned."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV, "loc": SMS_NOTIFICATION_NS})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    operation = etree.SubElement(body, f"{{{SMS_NOTIFICATION_NS}}}notifySmsReception")
    etree.SubElement(operation, f"{{{SMS_NOTIFICATION_NS}}}correlator").text = uuid.uuid4().hex
    message = etree.SubElement(operation, f"{{{SMS_NOTIFICATION_NS}}}message")
    for name, value in (
        ("message", text),
        ("senderAddress", f"tel:{msisdn}"),
        ("smsServiceActivationNumber", f"tel:{to}"),
        ("dateTime", datetime.now(UTC).isoformat()),
    ):
        etree.SubElement(message, f"{{{SMS_NOTIFICATION_NS}}}{name}").text = value
    basic = base64.b64encode(f"{SP_ID}:{SP_PASSWORD}".encode()).decode()
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""', "Authorization": f"Basic {basic}"}
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8"), headers


@simulator_view
def player_sms(request: HttpRequest) -> HttpResponse:
    """The test handset sends an SMS: POST JSON {"msisdn", "text", "to" (the service number), "notify_url" (the
    SP's notification endpoint the gateway is provisioned with)}; the gateway pushes it there in the
    background (`notifySmsReception`), retried until answered 2xx, per the number's callback scenario."""
    if request.method != "POST":
        return JsonResponse({"error": "POST {msisdn, text, to, notify_url}"}, status=405)
    body = core.json_body(request)
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body[k] for k in ("msisdn", "text")):
        return JsonResponse({"error": "msisdn and text are required strings"}, status=400)
    url = body.get("notify_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return JsonResponse({"error": "notify_url is the SP's http(s) notification endpoint"}, status=400)
    msisdn, text, to = body["msisdn"], body["text"][:160], str(body.get("to") or "84000")
    try:
        message = sms_reception(msisdn, text, to)
    except ValueError:  # a control character or a NUL: no XML message carries it
        return JsonResponse({"error": "msisdn, text and to must be text an XML message can carry"}, status=400)
    core.simulator(NAME).deliver(url, [message], msisdn)
    return JsonResponse({"sent": True, "msisdn": msisdn, "text": text, "to": to}, status=202)


urlpatterns: list[URLPattern] = [
    path("_player_sms", player_sms, name="parlayx-player-sms"),
    path("AmountChargingService/services/AmountCharging", amount_charging, name="parlayx-amount-charging"),
    path(
        "ReserveAmountChargingService/services/ReserveAmountCharging",
        reserve_amount_charging,
        name="parlayx-reserve-amount-charging",
    ),
    path("SendSmsService/services/SendSms", send_sms_service, name="parlayx-send-sms"),
]
