"""A fake operator: CAMARA Carrier Billing v0.4, Carrier Billing Refund v0.3 and their OAuth2 token endpoint.

One client, `playpay`, authenticates with client_secret_basic (secret `camara-secret`) or with
private_key_jwt signed by the demo key (`demo_private_key_pem()`), or by a key registered with
`register_client_key`. The MSISDN's last four digits pick the scenario (core.SCENARIOS); how each
one renders in CAMARA codes is in docs/carriers/camara.md. Tokens, payments, codes and refunds are
the simulator's shared state (core.Records), so every process serving it is the same operator.
"""

import base64
import copy
import functools
import hmac
import json
import re
import secrets
import time
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_http_methods, require_POST

from playpay.money import UnknownCurrency, validate_currency
from sandbox.simulators import core
from sandbox.simulators.core import Decline, Simulator, json_body, simulator, simulator_view

NAME = "camara"
CLIENT_ID = "playpay"
CLIENT_SECRET = "camara-secret"  # noqa: S105 -- the simulator's published demo secret
# Records of registered client keys (public key PEM for private_key_jwt); a reset keeps them.
CLIENT_KEY = core.KEPT + "camara-client:"
DEMO_KEY = core.KEPT + "camara-demo-key"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_LIFETIME_SECONDS = 300
SCOPES = frozenset(
    {
        "carrier-billing:payments:create",
        "carrier-billing:payments:read",
        "carrier-billing:payments:write",
        "carrier-billing-refund:refunds:create",
        "carrier-billing-refund:refunds:read",
    }
)
TOKEN_TTL_SECONDS = 3600
# A prepared payment, and the code texted for it, lapse after this.
PREPARED_TTL_SECONDS = 300
MAX_CODE_ATTEMPTS = 3
# What a 503 (the simulator's outage) asks the client to wait.
RETRY_AFTER_SECONDS = 5
PAYMENT_EVENT = "org.camaraproject.carrier-billing.v0."
REFUND_EVENT = "org.camaraproject.carrier-billing-refund.v0."
_PHONE = re.compile(r"^\+[1-9][0-9]{4,14}$")

# How a decline is told: (HTTP status, code, message). Business denials share one code; the message says why.
DECLINES: dict[Decline, tuple[int, str, str]] = {
    Decline.INSUFFICIENT_FUNDS: (
        403,
        "CARRIER_BILLING.PAYMENT_DENIED",
        "Payment denied by business: insufficient balance.",
    ),
    Decline.USER_BARRED: (
        403,
        "CARRIER_BILLING.PAYMENT_DENIED",
        "Payment denied by business: the subscriber is barred from carrier billing.",
    ),
    Decline.SPENDING_LIMIT: (
        422,
        "CARRIER_BILLING.USER_AMOUNT_THRESHOLD_OVERPASSED",
        "Unathorized payment request. Accumulated user mobile payments overpass account amount threshold.",
    ),
    Decline.UNKNOWN_SUBSCRIBER: (404, "IDENTIFIER_NOT_FOUND", "Device identifier not found."),
}
# Two-step payments are reserved without a balance check; the balance is taken, or not, on confirm.
INSUFFICIENT_BALANCE_REASON = "Insufficient balance"


def demo_private_key_pem() -> str:
    """The demo RSA key of client `playpay`: configure the adapter with it. Made once, by whichever process
    needs it first, and the same for every process serving the simulator."""
    found = _sim().records.get(DEMO_KEY)
    if found is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        _sim().records.add(DEMO_KEY, {"private_key": pem})  # another process may have made it first
        found = _sim().records[DEMO_KEY]
    return str(found["private_key"])


@functools.cache
def _public_pem(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def register_client_key(client_id: str, public_key_pem: str) -> None:
    """Let `client_id` authenticate with private_key_jwt signed by the key of this public key."""
    _sim().records.put(CLIENT_KEY + client_id, {"public_key": public_key_pem})


def public_key_for(client_id: str) -> str | None:
    registered = _sim().records.get(CLIENT_KEY + client_id)
    if registered is not None:
        return str(registered["public_key"])
    return _public_pem(demo_private_key_pem()) if client_id == CLIENT_ID else None


def _sim() -> Simulator:
    return simulator(NAME)


def _stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"status": status, "code": code, "message": message}, status=status)


def _fault(sim: Simulator, msisdn: str) -> HttpResponse | None:
    """The number's transport fault; an outage is CAMARA's `503 UNAVAILABLE`, with the wait in `Retry-After`."""
    fault = sim.transport_fault(msisdn)
    if fault is not None and fault.status_code == 503:
        fault = _error(503, "UNAVAILABLE", "Service Unavailable.")
        fault["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return fault


def _oauth_error(status: int, error: str, description: str) -> JsonResponse:
    return JsonResponse({"error": error, "error_description": description}, status=status)


def _reply(sim: Simulator, msisdn: str, payload: Any, status: int = 200) -> HttpResponse:
    """The JSON answer, or a garbled one for the `malformed` scenario (the work is done all the same)."""
    if sim.malformed(msisdn):
        return HttpResponse(b'{"paymentId": "', status=status, content_type="application/json")
    return JsonResponse(payload, status=status, safe=False)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({key: value for key, value in record.items() if not key.startswith("_")})


# --- OAuth2 ---


def _basic_client(request: HttpRequest) -> str | JsonResponse:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return _oauth_error(401, "invalid_client", "client authentication is required")
    try:
        client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return _oauth_error(401, "invalid_client", "malformed Basic credentials")
    client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    if client_id != CLIENT_ID or not hmac.compare_digest(secret.encode(), CLIENT_SECRET.encode()):
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    return client_id


def _assertion_client(sim: Simulator, request: HttpRequest) -> str | JsonResponse:
    if request.POST.get("client_assertion_type") != ASSERTION_TYPE:
        return _oauth_error(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = request.POST.get("client_assertion", "")
    try:
        client_id = str(jwt.decode(assertion, options={"verify_signature": False}).get("iss", ""))
    except jwt.InvalidTokenError as exc:
        return _oauth_error(401, "invalid_client", f"unreadable client_assertion: {exc}")
    public_key = public_key_for(client_id)
    if public_key is None:
        return _oauth_error(401, "invalid_client", "unknown client")
    try:
        claims = jwt.decode(
            assertion,
            public_key,
            algorithms=["RS256"],
            audience=request.build_absolute_uri(request.path),
            issuer=client_id,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
    except jwt.InvalidTokenError as exc:
        return _oauth_error(401, "invalid_client", f"client_assertion rejected: {exc}")
    if claims["sub"] != client_id or request.POST.get("client_id", client_id) != client_id:
        return _oauth_error(401, "invalid_client", "iss, sub and client_id must be the client")
    if int(claims["exp"]) - int(claims["iat"]) > ASSERTION_MAX_LIFETIME_SECONDS:
        return _oauth_error(401, "invalid_client", f"assertion lifetime above {ASSERTION_MAX_LIFETIME_SECONDS} s")
    if not sim.records.add(f"jti:{claims['jti']}", {"expires_at": claims["exp"]}):
        return _oauth_error(401, "invalid_client", "client_assertion already used")
    return client_id


@simulator_view
@require_POST
def token(request: HttpRequest) -> HttpResponse:
    """OAuth2 client credentials (RFC 6749 §4.4) with client_secret_basic or private_key_jwt (RFC 7523)."""
    sim = _sim()
    fault = _fault(sim, "")
    if fault is not None:
        return fault
    if request.POST.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    if "client_assertion" in request.POST or "client_assertion_type" in request.POST:
        client_id = _assertion_client(sim, request)
    else:
        client_id = _basic_client(request)
    if isinstance(client_id, HttpResponse):
        return client_id
    scopes = request.POST.get("scope", "").split()
    if not scopes or set(scopes) - SCOPES:
        return _oauth_error(400, "invalid_scope", f"scope is required; known scopes: {' '.join(sorted(SCOPES))}")
    access_token = secrets.token_urlsafe(32)
    sim.records.put(
        f"token:{access_token}",
        {"client_id": client_id, "scopes": scopes, "expires_at": time.time() + TOKEN_TTL_SECONDS},
    )
    response = JsonResponse(
        {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL_SECONDS,
            "scope": " ".join(scopes),
        }
    )
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


def issued_tokens(sim: Simulator) -> int:
    return sim.records.count("token:")


def revoke_tokens(sim: Simulator) -> None:
    """Forget every access token issued (as a lost token store would): the next API call gets a 401."""
    sim.records.delete("token:")


def _authenticate(sim: Simulator, request: HttpRequest, scope: str) -> str | JsonResponse:
    """The client id behind the bearer token, or the CAMARA 401/403 answer."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    record = sim.records.get(f"token:{value.strip()}") if scheme.lower() == "bearer" and value else None
    if record is None or record["expires_at"] <= time.time():
        return _error(
            401, "UNAUTHENTICATED", "Request not authenticated due to missing, invalid, or expired credentials."
        )
    if scope not in record["scopes"]:
        return _error(403, "PERMISSION_DENIED", "Client does not have sufficient permissions to perform this action.")
    return str(record["client_id"])


# --- payments ---


def _amount(value: Any) -> Decimal | None:
    """A positive amount, a multiple of 0.001, as the spec allows; None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount >= Decimal("0.001") and amount % Decimal("0.001") == 0 else None


def _sink(body: dict[str, Any]) -> tuple[str, str] | JsonResponse:
    """(sink, bearer to present there), ("", "") without a sink, or the 400 answer."""
    sink = body.get("sink")
    if sink is None:
        return "", ""
    if not isinstance(sink, str) or not sink.startswith(("https://", "http://")):
        return _error(400, "INVALID_SINK", "sink not valid for the specified protocol")
    credential = body.get("sinkCredential")
    if not isinstance(credential, dict) or credential.get("credentialType") != "ACCESSTOKEN":
        return _error(400, "INVALID_CREDENTIAL", "Only Access token is supported")
    if credential.get("accessTokenType") != "bearer":
        return _error(400, "INVALID_TOKEN", "Only bearer token is supported")
    access_token, expires = credential.get("accessToken"), credential.get("accessTokenExpiresUtc")
    try:
        valid = isinstance(access_token, str) and bool(access_token) and bool(datetime.fromisoformat(str(expires)))
    except ValueError:
        valid = False
    if not valid:
        return _error(400, "INVALID_ARGUMENT", "Expected property is missing: sinkCredential.accessToken.")
    return sink, str(access_token)


def _transaction(body: Any) -> dict[str, Any] | JsonResponse:
    """The checked amountTransaction of a create or prepare body, or the 400/422 answer."""
    missing = "Expected property is missing: {}."
    if not isinstance(body, dict) or not isinstance(body.get("amountTransaction"), dict):
        return _error(400, "INVALID_ARGUMENT", missing.format("amountTransaction"))
    transaction: dict[str, Any] = body["amountTransaction"]
    payment_amount = transaction.get("paymentAmount")
    info = payment_amount.get("chargingInformation") if isinstance(payment_amount, dict) else None
    if not isinstance(info, dict) or not all(info.get(key) for key in ("amount", "currency", "description")):
        return _error(400, "INVALID_ARGUMENT", missing.format("paymentAmount.chargingInformation"))
    if not isinstance(transaction.get("referenceCode"), str) or not transaction["referenceCode"]:
        return _error(400, "INVALID_ARGUMENT", missing.format("referenceCode"))
    if _amount(info["amount"]) is None:
        return _error(
            400, "INVALID_ARGUMENT", "chargingInformation.amount must be a multiple of 0.001, at least 0.001."
        )
    try:
        validate_currency(str(info["currency"]))
    except UnknownCurrency:
        return _error(400, "INVALID_ARGUMENT", "Currency is unknown or not authorized.")
    phone = transaction.get("phoneNumber")
    # Our tokens are 2-legged: the number must come in the body.
    if not phone:
        return _error(422, "MISSING_IDENTIFIER", "The phone number cannot be identified.")
    if not isinstance(phone, str) or not _PHONE.match(phone):
        return _error(400, "INVALID_ARGUMENT", "phoneNumber must be in E.164 format.")
    return transaction


def _expire(record: dict[str, Any]) -> None:
    """A prepared payment not confirmed in time lapses (saved when the record is `locked`)."""
    if record["paymentStatus"] in ("pending_validation", "reserved") and time.time() > record["_expires_at"]:
        record["paymentStatus"] = "cancelled"
        record["_expired"] = True


def _notify(
    sim: Simulator, request: HttpRequest, record: dict[str, Any], event_type: str, data: dict[str, Any]
) -> None:
    """Post a CloudEvents notification to the record's sink, with the bearer it was given."""
    if not record.get("sink"):
        return
    event = {
        "id": str(uuid.uuid4()),
        "source": f"{request.scheme}://{request.get_host()}/simulators/{NAME}",
        "type": event_type,
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "time": _stamp(),
        "data": data,
    }
    headers = {"Content-Type": "application/cloudevents+json", "Authorization": f"Bearer {record['_sink_token']}"}
    sim.deliver(record["sink"], [(json.dumps(event).encode(), headers)], record["_msisdn"])


def _create(request: HttpRequest, *, one_step: bool) -> HttpResponse:
    sim = _sim()
    client_id = _authenticate(sim, request, "carrier-billing:payments:create")
    if isinstance(client_id, HttpResponse):
        return client_id
    body = json_body(request)
    transaction = _transaction(body)
    if isinstance(transaction, HttpResponse):
        return transaction
    sink = _sink(body)
    if isinstance(sink, HttpResponse):
        return sink
    msisdn = transaction["phoneNumber"]
    fault = _fault(sim, msisdn)
    if fault is not None:
        return fault
    correlator = transaction.get("clientCorrelator")
    reference_key = f"reference:{client_id}:{transaction['referenceCode']}"
    if correlator and f"correlator:{client_id}:{correlator}" in sim.records:
        return _error(400, "INVALID_ARGUMENT", "clientCorrelator already exist on server.")
    if not correlator and reference_key in sim.records:
        return _error(409, "ALREADY_EXISTS", "The resource that a client tried to create already exists.")
    scenario = sim.scenario(msisdn)
    # A one-step payment is the charge (one in the life of a number whose answer changes over it); a prepared
    # one is charged at its confirmation, and meets here only what the number's next charge would meet.
    decline = sim.charge_decline(msisdn) if one_step else sim.next_decline(msisdn)
    # On error no payment is created (and the clientCorrelator stays free).
    if decline is not None and (one_step or decline != Decline.INSUFFICIENT_FUNDS):
        return _error(*DECLINES[decline])

    payment_id = sim.new_id("cb")
    info = transaction["paymentAmount"]["chargingInformation"]
    record: dict[str, Any] = {
        "paymentId": payment_id,
        "paymentStatus": "processing",
        "paymentCreationDate": _stamp(),
        "amountTransaction": {
            **copy.deepcopy(transaction),
            "resourceURL": f"urn:payments:{payment_id}",
            "serverReferenceCode": f"{transaction['referenceCode']}-{payment_id}",
        },
        "_client": client_id,
        "_msisdn": msisdn,
        "_amount": _amount(info["amount"]),
        "_currency": str(info["currency"]).upper(),
        "_refunded": Decimal(0),
        "_one_step": one_step,
        "_sink_token": sink[1],
    }
    if sink[0]:
        record["sink"] = sink[0]
    reply_extra: dict[str, Any] = {}
    pin = ""
    # The keys are taken atomically: of two requests racing with one correlator (or, without one, one
    # referenceCode), on any processes, one creates the payment.
    if correlator and not sim.records.add(f"correlator:{client_id}:{correlator}", {"paymentId": payment_id}):
        return _error(400, "INVALID_ARGUMENT", "clientCorrelator already exist on server.")
    if correlator:
        sim.records.put(reference_key, {"paymentId": payment_id})
    elif not sim.records.add(reference_key, {"paymentId": payment_id}):
        return _error(409, "ALREADY_EXISTS", "The resource that a client tried to create already exists.")
    if one_step and not scenario.never_final:
        record["paymentStatus"] = "succeeded"
        record["paymentDate"] = _stamp()
    elif not one_step:
        pin = sim.new_pin()
        authorization_id = str(uuid.uuid4())
        record.update(
            paymentStatus="pending_validation",
            _pin=pin,
            _authorization_id=authorization_id,
            _attempts=0,
            _expires_at=time.time() + PREPARED_TTL_SECONDS,
        )
        reply_extra["validationInfo"] = {"action": "validate", "authorizationId": authorization_id}
    sim.records.put(f"payment:{payment_id}", record)
    if record["paymentStatus"] == "succeeded":
        sim.record_charge(msisdn, payment_id)
    reply = _public(record) | reply_extra
    if pin:
        sim.send_sms(msisdn, f"Your PlayPay code is {pin}")
    if record["paymentStatus"] == "succeeded":
        data = {"paymentId": payment_id, "status": "succeeded", "description": "Payment completed"}
        _notify(
            sim, request, record, PAYMENT_EVENT + "payment-completed", data | {"paymentDate": record["paymentDate"]}
        )
    return _reply(sim, msisdn, reply, 201)


def _locked_payment(sim: Simulator, payment_id: str) -> AbstractContextManager[dict[str, Any] | None]:
    return sim.records.locked(f"payment:{payment_id}")


def _owned(sim: Simulator, client_id: str, payment_id: str) -> dict[str, Any] | JsonResponse:
    record = sim.records.get(f"payment:{payment_id}")
    if record is None or record.get("_client") != client_id:
        return _error(404, "NOT_FOUND", "The specified resource is not found.")
    return record


def _list(sim: Simulator, request: HttpRequest, client_id: str) -> HttpResponse:
    fault = _fault(sim, "")
    if fault is not None:
        return fault
    try:
        page, per_page = int(request.GET.get("page", 1)), int(request.GET.get("perPage", 10))
    except ValueError:
        return _error(400, "INVALID_ARGUMENT", "page and perPage must be integers.")
    if page < 1 or not 1 <= per_page <= 100:
        return _error(400, "OUT_OF_RANGE", "Client specified an invalid range.")
    statuses = set(request.GET.getlist("paymentStatus"))
    found = []
    for record in sim.records.find("payment:", _client=client_id):
        _expire(record)
        if not statuses or record["paymentStatus"] in statuses:
            found.append(_public(record))
    found.sort(key=lambda payment: payment["paymentCreationDate"], reverse=request.GET.get("order", "desc") != "asc")
    response = JsonResponse(found[(page - 1) * per_page : page * per_page], safe=False)
    response["X-Total-Count"] = str(len(found))
    return response


@simulator_view
@require_http_methods(["GET", "POST"])
def payments(request: HttpRequest) -> HttpResponse:
    """POST: one-step payment (createPayment). GET: the client's payments (retrievePayments)."""
    if request.method == "POST":
        return _create(request, one_step=True)
    sim = _sim()
    client_id = _authenticate(sim, request, "carrier-billing:payments:read")
    if isinstance(client_id, HttpResponse):
        return client_id
    return _list(sim, request, client_id)


@simulator_view
@require_POST
def prepare(request: HttpRequest) -> HttpResponse:
    """Two-step, first step: reserve, and text the player a code to validate (preparePayment)."""
    return _create(request, one_step=False)


@simulator_view
@require_http_methods(["GET"])
def payment(request: HttpRequest, payment_id: str) -> HttpResponse:
    sim = _sim()
    client_id = _authenticate(sim, request, "carrier-billing:payments:read")
    if isinstance(client_id, HttpResponse):
        return client_id
    record = _owned(sim, client_id, payment_id)
    if isinstance(record, HttpResponse):
        return record
    fault = _fault(sim, record["_msisdn"])
    if fault is not None:
        return fault
    _expire(record)
    return _reply(sim, record["_msisdn"], _public(record))


def _write_target(
    request: HttpRequest, payment_id: str, *, phone_required: bool = False
) -> tuple[Simulator, dict[str, Any], Any] | HttpResponse:
    """Authentication, the payment, its transport fault and the JSON body of a validate/confirm/cancel.

    Confirm and cancel also carry the player's phone number (2-legged tokens), which must match.
    """
    sim = _sim()
    client_id = _authenticate(sim, request, "carrier-billing:payments:write")
    if isinstance(client_id, HttpResponse):
        return client_id
    record = _owned(sim, client_id, payment_id)
    if isinstance(record, HttpResponse):
        return record
    fault = _fault(sim, record["_msisdn"])
    if fault is not None:
        return fault
    body = json_body(request)
    if not isinstance(body, dict):
        return _error(400, "INVALID_ARGUMENT", "Client specified an invalid argument, request body or query param.")
    if phone_required:
        refused = _check_phone(record, body)
        if refused is not None:
            return refused
    return sim, record, body


def _check_phone(record: dict[str, Any], body: dict[str, Any]) -> JsonResponse | None:
    phone = body.get("phoneNumber")
    if not phone:
        return _error(422, "MISSING_IDENTIFIER", "The phone number cannot be identified.")
    if phone != record["_msisdn"]:
        return _error(400, "INVALID_ARGUMENT", "phoneNumber does not match the payment.")
    return None


@simulator_view
@require_POST
def validate(request: HttpRequest, payment_id: str) -> HttpResponse:
    """Check the code the player typed (validatePayment): 204, or INVALID_CODE until the attempts run out."""
    target = _write_target(request, payment_id)
    if isinstance(target, HttpResponse):
        return target
    sim, record, body = target
    authorization_id, code = body.get("authorizationId"), body.get("code")
    if not isinstance(authorization_id, str) or not isinstance(code, str):
        return _error(400, "INVALID_ARGUMENT", "Expected property is missing: authorizationId, code.")
    with _locked_payment(sim, payment_id) as current:
        if current is None:
            return _error(404, "NOT_FOUND", "The specified resource is not found.")
        record = current
        _expire(record)
        if record.get("_expired"):
            return _error(400, "CARRIER_BILLING.INVALID_AUTHORIZATION_ID", "Invalid authorizationId: the code expired.")
        if record.get("_attempts", 0) >= MAX_CODE_ATTEMPTS:
            return _error(
                400,
                "CARRIER_BILLING.VALIDATION_FAILED",
                "the maximum number of attempts have been consumed for this validation.",
            )
        if record["paymentStatus"] in ("reserved", "processing", "succeeded"):
            return _error(409, "ALREADY_EXISTS", "Payment already validated")
        if record["paymentStatus"] != "pending_validation" or not hmac.compare_digest(
            authorization_id.encode(), record["_authorization_id"].encode()
        ):
            return _error(400, "CARRIER_BILLING.INVALID_AUTHORIZATION_ID", "Invalid authorizationId.")
        if not hmac.compare_digest(code.encode(), record["_pin"].encode()):
            record["_attempts"] += 1
            if record["_attempts"] >= MAX_CODE_ATTEMPTS:
                record["paymentStatus"] = "denied"
                return _error(
                    400,
                    "CARRIER_BILLING.VALIDATION_FAILED",
                    "the maximum number of attempts have been consumed for this validation.",
                )
            return _error(400, "CARRIER_BILLING.INVALID_CODE", "Invalid code.")
        record["paymentStatus"] = "reserved"
    return HttpResponse(status=204)


@simulator_view
@require_POST
def confirm(request: HttpRequest, payment_id: str) -> HttpResponse:
    """Charge a reserved payment (confirmPayment): 202, the result by notification and GET."""
    target = _write_target(request, payment_id, phone_required=True)
    if isinstance(target, HttpResponse):
        return target
    sim, record, _body = target
    msisdn = record["_msisdn"]
    scenario = sim.scenario(msisdn)
    event: tuple[str, dict[str, Any]] | None = None
    # Under the payment's row lock: of two confirmations racing on any processes, one charges.
    with _locked_payment(sim, payment_id) as current:
        if current is None:
            return _error(404, "NOT_FOUND", "The specified resource is not found.")
        record = current
        _expire(record)
        status = record["paymentStatus"]
        if record.get("_confirmed") or record["_one_step"]:
            return _error(409, "CARRIER_BILLING.PAYMENT_CONFIRMED", "Payment has been confirmed.")
        if status == "cancelled":
            return _error(409, "CARRIER_BILLING.PAYMENT_CANCELLED", "Payment has been cancelled.")
        if status == "pending_validation":
            return _error(403, "CARRIER_BILLING.PAYMENT_DENIED", "Payment denied by business: not validated.")
        if status != "reserved":
            return _error(403, "CARRIER_BILLING.PAYMENT_DENIED", "Payment denied by business.")
        record["_confirmed"] = True
        if scenario.never_final:
            record["paymentStatus"] = "processing"
        elif sim.charge_decline(msisdn) is not None:
            # Only insufficient funds is left to meet here: the others refused the payment when it was prepared
            # (a number whose answer changed since meets it as a denial all the same).
            record["paymentStatus"] = "denied"
            data = {"paymentId": payment_id, "status": "failed", "description": "Payment denied"}
            event = ("payment-denied", data | {"denialReason": INSUFFICIENT_BALANCE_REASON})
        else:
            record["paymentStatus"] = "succeeded"
            record["paymentDate"] = _stamp()
            sim.record_charge(msisdn, payment_id)
            data = {"paymentId": payment_id, "status": "succeeded", "description": "Payment completed"}
            event = ("payment-completed", data | {"paymentDate": record["paymentDate"]})
    if event is not None:
        _notify(sim, request, record, PAYMENT_EVENT + event[0], event[1])
    return HttpResponse(status=202)


@simulator_view
@require_POST
def cancel(request: HttpRequest, payment_id: str) -> HttpResponse:
    """Release a prepared payment (cancelPayment)."""
    target = _write_target(request, payment_id, phone_required=True)
    if isinstance(target, HttpResponse):
        return target
    sim, record, _body = target
    with _locked_payment(sim, payment_id) as current:
        if current is None:
            return _error(404, "NOT_FOUND", "The specified resource is not found.")
        record = current
        _expire(record)
        if record.get("_confirmed") or record["_one_step"]:
            return _error(409, "CARRIER_BILLING.PAYMENT_CONFIRMED", "Payment has been confirmed.")
        if record["paymentStatus"] in ("cancelled", "denied"):
            return _error(409, "CARRIER_BILLING.PAYMENT_CANCELLED", "Payment has been cancelled.")
        record["paymentStatus"] = "cancelled"
    data = {"paymentId": payment_id, "status": "succeeded", "description": "Payment cancelled"}
    _notify(sim, request, record, PAYMENT_EVENT + "payment-cancelled", data)
    return HttpResponse(status=202)


# --- refunds ---


def _refund_amount(body: Any, payment: dict[str, Any]) -> tuple[str, dict[str, Any], Decimal | None] | JsonResponse:
    """(type, amountTransaction, amount or None for the rest) of a createRefund body, or the 400 answer."""
    if not isinstance(body, dict) or body.get("type") not in ("total", "partial"):
        return _error(400, "INVALID_ARGUMENT", "Expected property is missing: type.")
    transaction = body.get("amountTransaction")
    if not isinstance(transaction, dict) or not transaction.get("referenceCode"):
        return _error(400, "INVALID_ARGUMENT", "Expected property is missing: amountTransaction.referenceCode.")
    refund_amount = transaction.get("refundAmount")
    if not isinstance(refund_amount, dict):
        return _error(400, "INVALID_ARGUMENT", "Expected property is missing: refundAmount.")
    if body["type"] == "total":
        return "total", transaction, None
    info = refund_amount.get("chargingInformation")
    if not isinstance(info, dict) or not all(info.get(key) for key in ("amount", "currency", "description")):
        return _error(400, "INVALID_ARGUMENT", "Expected property is missing: refundAmount.chargingInformation.")
    amount = _amount(info["amount"])
    if amount is None:
        return _error(
            400, "INVALID_ARGUMENT", "chargingInformation.amount must be a multiple of 0.001, at least 0.001."
        )
    if str(info["currency"]).upper() != payment["_currency"]:
        return _error(400, "INVALID_ARGUMENT", "Currency is unknown or not authorized.")
    return "partial", transaction, amount


def _refund_target(
    request: HttpRequest, payment_id: str, scope: str
) -> tuple[Simulator, str, dict[str, Any]] | HttpResponse:
    sim = _sim()
    client_id = _authenticate(sim, request, scope)
    if isinstance(client_id, HttpResponse):
        return client_id
    record = _owned(sim, client_id, payment_id)
    if isinstance(record, HttpResponse):
        return record
    fault = _fault(sim, record["_msisdn"])
    if fault is not None:
        return fault
    return sim, client_id, record


@simulator_view
@require_http_methods(["GET", "POST"])
def refunds(request: HttpRequest, payment_id: str) -> HttpResponse:
    """POST: refund a succeeded payment in full or in part (createRefund). GET: its refunds."""
    scope = (
        "carrier-billing-refund:refunds:create" if request.method == "POST" else "carrier-billing-refund:refunds:read"
    )
    target = _refund_target(request, payment_id, scope)
    if isinstance(target, HttpResponse):
        return target
    sim, client_id, payment = target
    if request.method == "GET":
        return JsonResponse(
            [_public(record) for record in sim.records.find("refund:", _payment=payment_id)], safe=False
        )
    body = json_body(request)
    parsed = _refund_amount(body, payment)
    if isinstance(parsed, HttpResponse):
        return parsed
    refund_type, transaction, amount = parsed
    sink = _sink(body)
    if isinstance(sink, HttpResponse):
        return sink
    msisdn = payment["_msisdn"]
    correlator = transaction.get("clientCorrelator")
    # Under the payment's row lock: refunds racing on any processes never exceed what was paid.
    with _locked_payment(sim, payment_id) as current:
        if current is None:
            return _error(404, "NOT_FOUND", "The specified resource is not found.")
        payment = current
        if payment["paymentStatus"] != "succeeded":
            return _error(422, "CARRIER_BILLING_REFUND.INVALID_PAYMENT_STATUS", "Payment is not yet completed.")
        if correlator and f"refund-correlator:{client_id}:{correlator}" in sim.records:
            return _error(400, "INVALID_ARGUMENT", "clientCorrelator already exist on server.")
        remaining = payment["_amount"] - payment["_refunded"]
        amount = remaining if amount is None else amount
        if amount <= 0 or amount > remaining:
            return _error(422, "CARRIER_BILLING_REFUND.UNAUTHORIZED_AMOUNT", "Unauthorized amount requested.")
        refund_id = sim.new_id("rf")
        if correlator and not sim.records.add(f"refund-correlator:{client_id}:{correlator}", {"refundId": refund_id}):
            return _error(400, "INVALID_ARGUMENT", "clientCorrelator already exist on server.")
        never_final = sim.scenario(msisdn).never_final
        record: dict[str, Any] = {
            "refundId": refund_id,
            "refundStatus": "processing" if never_final else "succeeded",
            "refundCreationDate": _stamp(),
            "type": refund_type,
            "amountTransaction": copy.deepcopy(transaction),
            "_payment": payment_id,
            "_msisdn": msisdn,
            "_sink_token": sink[1],
        }
        if not never_final:
            record["refundDate"] = record["refundCreationDate"]
        if isinstance(body.get("reason"), str):
            record["reason"] = body["reason"]
        if sink[0]:
            record["sink"] = sink[0]
        payment["_refunded"] += amount
        sim.records.put(f"refund:{refund_id}", record)
        reply = _public(record)
    if not never_final:
        data = {
            "paymentId": payment_id,
            "refundId": refund_id,
            "status": "succeeded",
            "description": "Refund completed",
        }
        _notify(sim, request, record, REFUND_EVENT + "refund-completed", data | {"refundDate": record["refundDate"]})
    return _reply(sim, msisdn, reply, 201)


@simulator_view
@require_http_methods(["GET"])
def remaining_amount(request: HttpRequest, payment_id: str) -> HttpResponse:
    """What is left to refund of a payment (retrievePaymentRemainingAmount)."""
    target = _refund_target(request, payment_id, "carrier-billing-refund:refunds:read")
    if isinstance(target, HttpResponse):
        return target
    sim, _, payment = target
    remaining = payment["_amount"] - payment["_refunded"]
    return _reply(sim, payment["_msisdn"], {"amount": float(remaining), "currency": payment["_currency"]})


@simulator_view
@require_http_methods(["GET"])
def refund(request: HttpRequest, payment_id: str, refund_id: str) -> HttpResponse:
    target = _refund_target(request, payment_id, "carrier-billing-refund:refunds:read")
    if isinstance(target, HttpResponse):
        return target
    sim, _, payment = target
    record = sim.records.get(f"refund:{refund_id}")
    reply = _public(record) if record is not None and record["_payment"] == payment_id else None
    if reply is None:
        return _error(404, "NOT_FOUND", "The specified resource is not found.")
    return _reply(sim, payment["_msisdn"], reply)


_PAYMENTS = "carrier-billing/v0.4/payments"
_REFUNDS = "carrier-billing-refund/v0.3/payments/<str:payment_id>/refunds"
urlpatterns = [
    path("oauth2/token", token, name="camara-sim-token"),
    path(_PAYMENTS, payments, name="camara-sim-payments"),
    path(f"{_PAYMENTS}/prepare", prepare, name="camara-sim-prepare"),
    path(f"{_PAYMENTS}/<str:payment_id>", payment, name="camara-sim-payment"),
    path(f"{_PAYMENTS}/<str:payment_id>/validate", validate, name="camara-sim-validate"),
    path(f"{_PAYMENTS}/<str:payment_id>/confirm", confirm, name="camara-sim-confirm"),
    path(f"{_PAYMENTS}/<str:payment_id>/cancel", cancel, name="camara-sim-cancel"),
    path(_REFUNDS, refunds, name="camara-sim-refunds"),
    path(f"{_REFUNDS}/remaining-amount", remaining_amount, name="camara-sim-remaining-amount"),
    path(f"{_REFUNDS}/<str:refund_id>", refund, name="camara-sim-refund"),
]
