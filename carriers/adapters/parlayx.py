"""Parlay X 2.1 Payment (3GPP TS 29.199-6) and SendSms (TS 29.199-4) over SOAP 1.1, with zeep.

Parlay X is synchronous: a normal response means done, a SOAP fault means refused. It has no
PIN operation and no charge status query, so the PIN flow is built as DCB platforms on Parlay X
gateways build it: `reserveAmount` holds the funds, PlayPay sends its own PIN with `sendSms`,
and `chargeReservation` takes the money once the player typed the PIN back.

An outcome left unknown (timeout, 5xx, garbled reply) cannot be asked about. In the spec,
referenceCode identifies a request for reconciliation; it is no deduplication key, so sending the
request again could charge or refund twice. It therefore stays unknown, settled by the carrier's
settlement file, unless the carrier has confirmed that its gateway deduplicates referenceCode
(`CarrierConfig.deduplicates_reference_code`): then the same request is sent again, and whatever
refuses that resend leaves the outcome unknown, never failed.

The WSDL/XSD in `wsdl/` are loaded from disk, never from the network, once per process.
"""

import base64
import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import zeep
import zeep.exceptions
from lxml import etree
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from zeep.proxy import ServiceProxy
from zeep.wsdl import Document

from carriers.adapters.base import (
    Capabilities,
    CarrierAdapter,
    CarrierConfig,
    CarrierResult,
    ChargeRequest,
    InboundSms,
    Notification,
    NotificationKind,
    Outcome,
    RefundRequest,
    connection_check,
)
from carriers.adapters.http import TransportFailure, server_error, timed, transport_failure, with_retry_after
from carriers.errors import ErrorCode, NotificationRejected, NotificationSignatureInvalid
from playpay.money import to_major

logger = logging.getLogger(__name__)

WSDL_DIR = Path(__file__).parent / "wsdl"
HUAWEI_HEADER_NS = "http://www.huawei.com.cn/schema/common/v2_1"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"


@dataclasses.dataclass(frozen=True)
class _Answer:
    """What an operation answered (None for the empty responses)."""

    value: Any


@dataclasses.dataclass(frozen=True)
class _Service:
    """One Parlay X service: its WSDL, SOAP binding and path under the carrier's endpoint."""

    wsdl: str
    binding: str
    path: str


AMOUNT_CHARGING = _Service(
    "parlayx_payment_amount_charging_service_2_1.wsdl",
    "{http://www.csapi.org/wsdl/parlayx/payment/amount_charging/v2_1/service}AmountChargingBinding",
    "/AmountChargingService/services/AmountCharging",
)
RESERVE_AMOUNT_CHARGING = _Service(
    "parlayx_payment_reserve_amount_charging_service_2_1.wsdl",
    "{http://www.csapi.org/wsdl/parlayx/payment/reserve_amount_charging/v2_1/service}ReserveAmountChargingBinding",
    "/ReserveAmountChargingService/services/ReserveAmountCharging",
)
SEND_SMS = _Service(
    "parlayx_sms_send_service_2_2.wsdl",
    "{http://www.csapi.org/wsdl/parlayx/sms/send/v2_2/service}SendSmsBinding",
    "/SendSmsService/services/SendSms",
)

# Parlay X fault messageId -> PlayPay error. A key with a variable is used when the fault's first
# variable names it (SVC0002 "Invalid input value for message part %1" says which part was wrong).
# SVC/POL 0001-0199 are common, 0200-0999 Parlay X, 1000-9999 third-party (GSMA OneAPI, vendors).
FAULTS: dict[tuple[str, str | None], ErrorCode] = {
    ("SVC0001", None): ErrorCode.REJECTED,  # service error
    ("SVC0002", "endUserIdentifier"): ErrorCode.UNKNOWN_SUBSCRIBER,
    ("SVC0002", "addresses"): ErrorCode.UNKNOWN_SUBSCRIBER,
    ("SVC0002", "reservationIdentifier"): ErrorCode.RESERVATION_EXPIRED,
    ("SVC0002", None): ErrorCode.REJECTED,  # invalid input value
    ("SVC0007", None): ErrorCode.PRICE_NOT_SUPPORTED,  # invalid charging information
    ("SVC0270", None): ErrorCode.REJECTED,  # charge failed; refined from its text, see CHARGE_FAILED_HINTS
    ("SVC0901", None): ErrorCode.REJECTED,  # Huawei SDP: SP authentication / authorisation failed
    ("POL0001", None): ErrorCode.REJECTED,  # policy error
    ("POL0012", None): ErrorCode.REJECTED,  # too many description entries
    ("POL0253", None): ErrorCode.REJECTED,  # payment operation refused by user
    ("POL0254", None): ErrorCode.PRICE_NOT_SUPPORTED,  # amount exceeds the operator limit for a single charge
    ("POL0910", None): ErrorCode.PRICE_NOT_SUPPORTED,  # Huawei SDP: amount outside the permitted range
    ("POL1000", None): ErrorCode.INSUFFICIENT_FUNDS,  # user has insufficient credit
    ("POL1001", None): ErrorCode.SPENDING_LIMIT,  # the %1 operator charging limit has been exceeded
    ("POL1002", None): ErrorCode.REJECTED,  # charge too soon after the previous one
    # Third-party range; PlayPay's choice for "subscriber barred from premium charging" (the simulator uses it).
    ("POL1003", None): ErrorCode.USER_BARRED,
}
# Gateways that only know SVC0270 often say why in its text.
CHARGE_FAILED_HINTS: tuple[tuple[str, ErrorCode], ...] = (
    ("insufficient", ErrorCode.INSUFFICIENT_FUNDS),
    ("balance", ErrorCode.INSUFFICIENT_FUNDS),
    ("credit", ErrorCode.INSUFFICIENT_FUNDS),
    ("limit", ErrorCode.SPENDING_LIMIT),
    ("barred", ErrorCode.USER_BARRED),
    ("blacklist", ErrorCode.USER_BARRED),
    ("blocked", ErrorCode.USER_BARRED),
)
_FAULT_CODE = re.compile(r"^(SVC|POL)\d{4}$")
_PLACEHOLDER = re.compile(r"%(\d+)")

# The reservation a connection check asks to release: no gateway ever issued it.
CONNECTION_CHECK_RESERVATION = "playpay-connection-check"
PIN_LENGTH = 6
PIN_MESSAGE = "Your PlayPay code is {pin}"
# scrypt: a leaked state must not give the PIN back by trying all 10**6 of them in a moment.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether requests failed before the connection existed (so nothing was sent)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _envelope(content: bytes) -> etree._Element | None:
    """The SOAP message's root, parsed without entities, DTDs or the network; None when it is no XML."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        return etree.fromstring(content, parser=parser)
    except etree.XMLSyntaxError:
        return None


def _has_soap_fault(content: bytes) -> bool:
    root = _envelope(content)
    return root is not None and root.find(f"{{{SOAP_ENV_NS}}}Body/{{{SOAP_ENV_NS}}}Fault") is not None


# Parlay X Part 4 (SMS), the notification interface the gateway calls with an SMS a player sent to the service.
SMS_NOTIFICATION_NS = "http://www.csapi.org/schema/parlayx/sms/notification/v2_2/local"
_SENDER = re.compile(r"^(?:tel:)?\+?([1-9][0-9]{7,14})$")


def parse_sms_notification(body: bytes) -> InboundSms:
    """The player's number, text and service number of a `notifySmsReception` message."""
    root = _envelope(body)
    if root is None:
        raise NotificationRejected("malformed", "the body is not an XML SOAP envelope")
    operation = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{SMS_NOTIFICATION_NS}}}notifySmsReception")
    message = operation.find("{*}message") if operation is not None else None
    if message is None:
        raise NotificationRejected("unsupported", "only notifySmsReception (an SMS from a player) is read")
    sender = _SENDER.match((message.findtext("{*}senderAddress") or "").strip())
    if sender is None:
        raise NotificationRejected("malformed", "senderAddress is not a tel: URI of an E.164 number")
    text = (message.findtext("{*}message") or "").strip()
    to = (message.findtext("{*}smsServiceActivationNumber") or "").strip().removeprefix("tel:")
    return InboundSms(msisdn="+" + sender.group(1), text=text[:160], to=to[:32])


class _Transport(zeep.Transport):
    """zeep's requests transport, with per-carrier timeouts and transport failures as standard results.

    Transport failures become results as in `carriers.adapters.http.send`. It also replaces zeep's
    own `post`, which logs whole messages at DEBUG, and a sendSms message holds a PIN.
    """

    def __init__(self, config: CarrierConfig) -> None:
        super().__init__(operation_timeout=(config.connect_timeout, config.read_timeout))  # type: ignore[no-untyped-call]

    def post(self, address: str, message: bytes | str, headers: dict[str, str]) -> requests.Response:
        try:
            with timed("POST", address):
                response = self.session.post(address, data=message, headers=headers, timeout=self.operation_timeout)
        except requests.exceptions.RequestException as exc:
            never_connected = isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc)
            raise transport_failure(
                exc, sent=not never_connected, timed_out=isinstance(exc, requests.exceptions.Timeout)
            ) from exc
        # SOAP 1.1 answers faults with HTTP 500: only an error status without a SOAP fault is a transport failure.
        if response.status_code >= 400 and not _has_soap_fault(response.content):
            code, text = f"HTTP_{response.status_code}", response.text[:200] or response.reason
            if response.status_code >= 500:
                failure = server_error(response.status_code, text)
                raise TransportFailure(with_retry_after(failure.result, response.status_code, response.headers))
            # A 4xx without a fault is refused before the operation ran: retry later when it says so,
            # otherwise it is a configuration problem (wrong path, HTTP auth).
            if response.status_code in (408, 429):
                refused = CarrierResult.failed(
                    ErrorCode.CARRIER_UNAVAILABLE, code, text, not_sent=True, transport_failed=True
                )
                raise TransportFailure(with_retry_after(refused, response.status_code, response.headers))
            raise TransportFailure(CarrierResult.failed(ErrorCode.REJECTED, code, text))
        return response


_SETTINGS = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
_lock = threading.Lock()
_documents: dict[str, Document] = {}
_services: dict[tuple[str, str, float, float], ServiceProxy] = {}


def service_proxy(config: CarrierConfig, service: _Service) -> ServiceProxy:
    """The zeep service for a carrier; WSDLs are parsed once per process, clients made once per carrier setup."""
    address = config.endpoint.rstrip("/") + service.path
    key = (service.wsdl, address, config.connect_timeout, config.read_timeout)
    with _lock:
        proxy = _services.get(key)
        if proxy is None:
            document = _documents.get(service.wsdl)
            if document is None:
                # The files import one another by relative path only: nothing is fetched from the network.
                loader = zeep.Client(str(WSDL_DIR / service.wsdl), transport=zeep.Transport(), settings=_SETTINGS)
                document = _documents[service.wsdl] = loader.wsdl
            client = zeep.Client(document, transport=_Transport(config), settings=_SETTINGS)
            proxy = client.create_service(service.binding, address)
            _services[key] = proxy
    return proxy


def end_user(msisdn: str) -> str:
    return "tel:+" + msisdn.lstrip("+")


def fill_placeholders(text: str, variables: list[str]) -> str:
    """Parlay X fault text: %1, %2 ... are the variables in order."""

    def value(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        return variables[index] if 0 <= index < len(variables) else match.group(0)

    return _PLACEHOLDER.sub(value, text)


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def fault_result(fault: zeep.exceptions.Fault, **kwargs: Any) -> CarrierResult:
    """A SOAP fault as a result: FAILED with the mapped error, or PENDING when it is no Parlay X fault."""
    message_id, text, variables = "", "", []
    detail = fault.detail
    if detail is not None:
        for exception in detail:
            if _local(exception.tag) in ("ServiceException", "PolicyException"):
                message_id = (exception.findtext("{*}messageId") or "").strip()
                text = exception.findtext("{*}text") or ""
                variables = [(item.text or "").strip() for item in exception.iterfind("{*}variables")]
                break
    if not message_id:
        faultcode = str(fault.code or "").rpartition(":")[2].strip()
        faultstring = str(fault.message or "").strip()
        if _FAULT_CODE.match(faultcode):
            message_id, text = faultcode, faultstring
        elif _FAULT_CODE.match(faultstring):
            message_id = faultstring
    if not _FAULT_CODE.match(message_id):
        # A generic server fault (a crash in the gateway) says nothing about what was done.
        return CarrierResult.pending(
            str(fault.code or "FAULT"), str(fault.message or ""), transport_failed=True, **kwargs
        )
    message = fill_placeholders(text, variables)
    code = FAULTS.get((message_id, variables[0] if variables else None)) or FAULTS.get((message_id, None))
    if code is None:
        code = ErrorCode.REJECTED
    if message_id == "SVC0270":
        lowered = message.lower()
        code = next((hint for word, hint in CHARGE_FAILED_HINTS if word in lowered), code)
    return CarrierResult.failed(code, message_id, message, **kwargs)


def pin_digest(pin: str, salt: str) -> str:
    return hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def _left_to_settlement(operation: str, reference: str) -> CarrierResult:
    """An unknown outcome on a gateway not known to deduplicate referenceCode: nothing is sent again."""
    return CarrierResult.pending(
        "NO_STATUS_QUERY",
        f"Parlay X has no {operation} status query and this gateway is not known to deduplicate referenceCode: "
        "the settlement file settles it",
        carrier_reference=reference,
    )


def _resent(answer: CarrierResult) -> CarrierResult:
    """The answer to a request sent again to settle an unknown outcome. Success settles it; a refusal proves
    nothing (the first request may have been applied: a charged reservation is no longer held, a gateway
    may refuse a repeated referenceCode), so the outcome stays unknown."""
    if answer.outcome != Outcome.FAILED:
        return answer
    return CarrierResult.pending(
        answer.raw_code or str(answer.error_code or "REFUSED"),
        f"the request sent again was refused ({answer.error_code or answer.raw_code}): the first may have been "
        f"applied; the settlement file settles it. {answer.raw_message}".strip(),
        carrier_reference=answer.carrier_reference,
        transport_failed=answer.transport_failed,
        retry_after=answer.retry_after,
    )


class ParlayXAdapter(CarrierAdapter):
    """Credentials (all optional): `sp_id`, `sp_password`, `service_id` for the Huawei SDP
    RequestSOAPHeader (sent only when `sp_id` is set), `sender_name` for the PIN SMS."""

    capabilities = Capabilities(
        pin=True, one_click=True, refund=True, reversal=False, status_query=False, asynchronous=False
    )

    # -- SMS from players (STOP) -------------------------------------------------------------

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        """An SMS a player sent to the service's number, pushed by the gateway (`notifySmsReception`), with
        HTTP Basic authentication by the SP's own `sp_id` and `sp_password` (the gateway is provisioned with
        them and with this carrier's notification URL)."""
        self._check_basic_auth(headers)
        sms = parse_sms_notification(body)
        # Parlay X gives a message no id (the correlator is the SP's registration's, the same for every message;
        # dateTime is optional): the same bytes pushed again within the same 10 minutes (the gateway retries)
        # have the same digest and are applied once; the same text sent again later (a STOP after a new opt-in,
        # which takes a PIN) is new. A retry across the boundary is applied twice, which changes nothing.
        bucket = now.replace(minute=now.minute - now.minute % 10, second=0, microsecond=0)
        digest = hashlib.sha256(body + f"|{bucket:%Y-%m-%dT%H:%M}".encode()).hexdigest()[:40]
        return Notification(
            notification_id=f"sms:{digest}",
            kind=NotificationKind.SMS,
            outcome=Outcome.SUCCEEDED,
            raw_code="SMS",
            sms=sms,
        )

    def _check_basic_auth(self, headers: Mapping[str, str]) -> None:
        credentials: Mapping[str, Any] = self.config.credentials
        sp_id, password = str(credentials.get("sp_id") or ""), str(credentials.get("sp_password") or "")
        if not sp_id or not password:
            raise NotificationSignatureInvalid("this carrier has no sp_id and sp_password to check notifications by")
        scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            given = b""
        expected = f"{sp_id}:{password}".encode()
        if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
            raise NotificationSignatureInvalid("the notification's Basic credentials are not the SP's")

    # -- PIN flow -------------------------------------------------------------------------

    def send_pin(self, request: ChargeRequest) -> CarrierResult:
        reserved = self._call(
            RESERVE_AMOUNT_CHARGING,
            "reserveAmount",
            request.msisdn,
            endUserIdentifier=end_user(request.msisdn),
            charge=self._charging(request.amount_minor, request.currency, request.description or request.price_point),
        )
        if isinstance(reserved, CarrierResult):
            return reserved
        reservation = str(reserved.value or "").strip()
        if not reservation:
            return CarrierResult.pending("MALFORMED", "reserveAmount answered no reservation", transport_failed=True)
        pin = "".join(secrets.choice("0123456789") for _ in range(PIN_LENGTH))
        # The message states what the PIN agrees to (a subscription's price and period: the regulatory opt-in).
        message = PIN_MESSAGE.format(pin=pin) + (f" to confirm {request.description}" if request.description else "")
        sms: dict[str, Any] = {"addresses": [end_user(request.msisdn)], "message": message}
        if self.config.credentials.get("sender_name"):
            sms["senderName"] = str(self.config.credentials["sender_name"])
        sent = self._call(SEND_SMS, "sendSms", request.msisdn, **sms)
        if isinstance(sent, CarrierResult):
            return self._abandon(request, reservation, sent)
        salt = secrets.token_hex(16)
        return CarrierResult(
            outcome=Outcome.PIN_SENT,
            carrier_reference=reservation,
            state={"reservation": reservation, "pin_salt": salt, "pin_digest": pin_digest(pin, salt)},
        )

    def _abandon(self, request: ChargeRequest, reservation: str, sms_result: CarrierResult) -> CarrierResult:
        """The PIN SMS failed: release the funds held for it, and fail the flow."""
        released = self._release(request, reservation)
        if released.outcome != Outcome.SUCCEEDED:
            logger.warning(
                "Parlay X reservation of payment %s not released (%s); it lapses at the carrier",
                request.payment_id,
                released.raw_code,
            )
        return CarrierResult.failed(
            sms_result.error_code or ErrorCode.CARRIER_UNAVAILABLE,
            sms_result.raw_code,
            f"the PIN SMS was not sent: {sms_result.raw_message}",
            carrier_reference=reservation,
            transport_failed=sms_result.transport_failed,
        )

    def verify_pin(self, request: ChargeRequest, *, pin: str) -> CarrierResult:
        digest, salt = request.state.get("pin_digest"), request.state.get("pin_salt")
        if not isinstance(digest, str) or not isinstance(salt, str) or not digest or not salt:
            return CarrierResult.failed(ErrorCode.INVALID_PIN, "NO_PIN", "No PIN was sent for this payment")
        if not hmac.compare_digest(pin_digest(pin.strip(), salt), digest):
            return CarrierResult.failed(ErrorCode.INVALID_PIN, "PIN_MISMATCH", "The PIN does not match")
        return CarrierResult(outcome=Outcome.PIN_VERIFIED, carrier_reference=request.carrier_reference)

    # -- connection check -----------------------------------------------------------------

    def check_connection(self) -> CarrierResult:
        """`releaseReservation` of a reservation that cannot exist, a SOAP call of the WSDL that moves no money.

        Only a Parlay X ReserveAmountCharging service that ran the operation answers it with the fault
        SVC0002 about `reservationIdentifier`, after checking the SDP header's credentials (SVC0901 when
        they are wrong): that fault is the proof. A plain 404, another fault or a normal answer is not.
        """
        probe = f"{CONNECTION_CHECK_RESERVATION}-{secrets.token_hex(4)}"
        answer = self._call(
            RESERVE_AMOUNT_CHARGING, "releaseReservation", "", reference=probe, reservationIdentifier=probe
        )
        if not isinstance(answer, CarrierResult):
            return CarrierResult.failed(
                ErrorCode.REJECTED, "UNEXPECTED_ANSWER", "the gateway released a reservation that cannot exist"
            )
        if answer.raw_code == "SVC0002" and answer.error_code == ErrorCode.RESERVATION_EXPIRED:
            return CarrierResult(
                outcome=Outcome.SUCCEEDED,
                raw_code="SVC0002",
                raw_message="ReserveAmountCharging answered the probe (no such reservation)",
            )
        if answer.raw_code == "SVC0901":
            return CarrierResult.failed(
                ErrorCode.REJECTED, "SVC0901", f"the gateway refused the credentials: {answer.raw_message}"
            )
        if answer.outcome == Outcome.FAILED and answer.raw_code.startswith("HTTP_"):
            return dataclasses.replace(
                answer,
                raw_message=f"no Parlay X service at {RESERVE_AMOUNT_CHARGING.path} under the endpoint "
                f"({answer.raw_message})",
                carrier_reference="",
            )
        return connection_check(dataclasses.replace(answer, carrier_reference=""))

    # -- charging -------------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> CarrierResult:
        reference_code = f"{request.payment_id}-{request.state.get('attempt', 0)}"
        charge = self._charging(request.amount_minor, request.currency, request.description or request.price_point)
        reservation = request.state.get("reservation")
        if reservation:
            answer = self._call(
                RESERVE_AMOUNT_CHARGING,
                "chargeReservation",
                request.msisdn,
                reference=str(reservation),
                reservationIdentifier=str(reservation),
                charge=charge,
                referenceCode=reference_code,
            )
            reference = str(reservation)
        else:
            answer = self._call(
                AMOUNT_CHARGING,
                "chargeAmount",
                request.msisdn,
                reference=reference_code,
                endUserIdentifier=end_user(request.msisdn),
                charge=charge,
                referenceCode=reference_code,
            )
            reference = reference_code
        if isinstance(answer, CarrierResult):
            return answer
        return CarrierResult(
            outcome=Outcome.SUCCEEDED, carrier_reference=reference, state={"reference_code": reference_code}
        )

    def query_status(self, request: ChargeRequest) -> CarrierResult:
        return CarrierResult.pending(
            "NO_STATUS_QUERY",
            "Parlay X has no charge status query",
            carrier_reference=request.carrier_reference,
        )

    def resolve_charge(self, request: ChargeRequest) -> CarrierResult:
        """Where the gateway deduplicates referenceCode, send the same charge again: `chargeAmount` with the
        same referenceCode is the same charge, and a reservation is charged at most once. Otherwise, and
        whenever the resend is refused, the outcome stays unknown (see the module's docstring)."""
        if not self.config.deduplicates_reference_code:
            return _left_to_settlement("charge", request.carrier_reference)
        return _resent(self.charge(request))

    def query_refund(self, request: RefundRequest) -> CarrierResult:
        """As `resolve_charge`: the same `refundAmount` again, only where the gateway deduplicates it."""
        if not self.config.deduplicates_reference_code:
            return _left_to_settlement("refund", request.refund_id)
        return _resent(self.refund(request))

    def cancel(self, request: ChargeRequest) -> CarrierResult:
        reservation = request.state.get("reservation")
        if not reservation:
            return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=request.carrier_reference)
        return self._release(request, str(reservation))

    def _release(self, request: ChargeRequest, reservation: str) -> CarrierResult:
        answer = self._call(
            RESERVE_AMOUNT_CHARGING,
            "releaseReservation",
            request.msisdn,
            reference=reservation,
            reservationIdentifier=reservation,
        )
        if isinstance(answer, CarrierResult):
            if answer.error_code == ErrorCode.RESERVATION_EXPIRED:
                # Already released, lapsed or charged: nothing is held any more.
                return CarrierResult(
                    outcome=Outcome.SUCCEEDED,
                    carrier_reference=reservation,
                    raw_code=answer.raw_code,
                    raw_message=answer.raw_message,
                )
            return answer
        return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reservation)

    def refund(self, request: RefundRequest) -> CarrierResult:
        answer = self._call(
            AMOUNT_CHARGING,
            "refundAmount",
            request.msisdn,
            reference=request.refund_id,
            endUserIdentifier=end_user(request.msisdn),
            charge=self._charging(
                request.amount_minor, request.currency, request.reason or f"Refund of {request.payment_id}"
            ),
            referenceCode=request.refund_id,
        )
        if isinstance(answer, CarrierResult):
            return answer
        return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=request.refund_id)

    # -- SOAP -----------------------------------------------------------------------------

    @staticmethod
    def _charging(amount_minor: int, currency: str, description: str) -> dict[str, Any]:
        return {"description": description, "currency": currency, "amount": to_major(amount_minor, currency)}

    def _call(
        self, service: _Service, operation: str, msisdn: str, *, reference: str = "", **body: Any
    ) -> _Answer | CarrierResult:
        """Call one operation: its answer, or the result of its fault or transport failure.

        `reference` goes into the results (the reservation or reference code the call was about).
        """
        proxy = service_proxy(self.config, service)
        method: Callable[..., Any] = getattr(proxy, operation)
        headers = self._soap_headers(msisdn)
        started = time.monotonic()

        answer: _Answer | CarrierResult
        try:
            answer = _Answer(method(**body, _soapheaders=headers))
        except TransportFailure as failure:
            answer = dataclasses.replace(failure.result, carrier_reference=reference)
        except zeep.exceptions.Fault as fault:
            answer = fault_result(fault, carrier_reference=reference)
        except (
            zeep.exceptions.TransportError,
            zeep.exceptions.XMLSyntaxError,
            zeep.exceptions.XMLParseError,
            zeep.exceptions.UnexpectedElementError,
            etree.XMLSyntaxError,
        ) as exc:
            answer = CarrierResult.pending(
                "MALFORMED",
                f"unreadable SOAP reply: {str(exc)[:200]}",
                carrier_reference=reference,
                transport_failed=True,
            )
        logger.info(
            "Parlay X %s for %s: %s in %.0f ms",
            operation,
            self.config.slug,
            (answer.raw_code or answer.outcome) if isinstance(answer, CarrierResult) else "ok",
            (time.monotonic() - started) * 1000,
        )
        return answer

    def _soap_headers(self, msisdn: str) -> list[Any]:
        """The Huawei SDP RequestSOAPHeader (not Parlay X, but what deployed gateways require), if configured."""
        credentials: Mapping[str, Any] = self.config.credentials
        sp_id = str(credentials.get("sp_id") or "")
        if not sp_id:
            return []
        timestamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        password = str(credentials.get("sp_password") or "")
        # MD5 is what the gateway specifies for this digest; it is not used for our own security.
        digest = hashlib.md5((sp_id + password + timestamp).encode(), usedforsecurity=False).hexdigest()
        header = etree.Element(f"{{{HUAWEI_HEADER_NS}}}RequestSOAPHeader", nsmap={"v2": HUAWEI_HEADER_NS})
        fields = [("spId", sp_id), ("spPassword", digest)]
        if credentials.get("service_id"):
            fields.append(("serviceId", str(credentials["service_id"])))
        fields.append(("timeStamp", timestamp))
        if msisdn:  # a connection check is about no subscriber
            fields += [("OA", end_user(msisdn)), ("FA", end_user(msisdn))]
        for name, value in fields:
            etree.SubElement(header, f"{{{HUAWEI_HEADER_NS}}}{name}").text = value
        return [header]
