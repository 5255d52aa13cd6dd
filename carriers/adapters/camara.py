"""CAMARA Carrier Billing v0.4 and Carrier Billing Refund v0.3: REST/JSON behind OAuth2 client credentials.

PIN flow: prepare (the operator texts the player a code) -> validate -> confirm, whose result
arrives as a CloudEvents notification to `sink` (or by GET). One-click: one-step create.
Credentials: `client_id` with `private_key` (RSA PEM, private_key_jwt as the CAMARA profile
requires) or `client_secret` (client_secret_basic); optional `token_url` and `scope`;
`notification_token`, the bearer the operator must present on its notifications.
The wire format and the error mapping are in docs/carriers/camara.md.
"""

import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt

from carriers.adapters.base import (
    Capabilities,
    CarrierAdapter,
    CarrierResult,
    ChargeRequest,
    Notification,
    NotificationKind,
    Outcome,
    RefundRequest,
    connection_check,
)
from carriers.adapters.http import TransportFailure, client_for, guarded, json_body, send, with_retry_after
from carriers.errors import ErrorCode, NotificationRejected, NotificationSignatureInvalid
from playpay.money import to_major

API = "/carrier-billing/v0.4"
REFUND_API = "/carrier-billing-refund/v0.3"
DEFAULT_SCOPE = " ".join(
    (
        "carrier-billing:payments:create",
        "carrier-billing:payments:read",
        "carrier-billing:payments:write",
        "carrier-billing-refund:refunds:create",
        "carrier-billing-refund:refunds:read",
    )
)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The CAMARA profile caps a client assertion's lifetime (exp - iat) at 300 s.
ASSERTION_LIFETIME_SECONDS = 300
# A cached token is renewed this long before the operator says it expires.
TOKEN_RENEW_MARGIN_SECONDS = 30
FRESHNESS_SECONDS = 300
# How long the operator may use our notification token (sinkCredential.accessTokenExpiresUtc).
NOTIFICATION_TOKEN_VALIDITY = timedelta(days=30)
PAYMENT_EVENT = "org.camaraproject.carrier-billing.v0."
REFUND_EVENT = "org.camaraproject.carrier-billing-refund.v0."
DENIED = "CARRIER_BILLING.PAYMENT_DENIED"
# A one-click charge whose reply was lost is looked for among this many of the latest payments.
LOOKUP_PAGE_SIZE = 100
# A request older than this that is not among the operator's payments (or refunds) never reached it.
LOOKUP_SETTLE_SECONDS = 300
_X_CORRELATOR = re.compile(r"^[a-zA-Z0-9-]{1,55}$")

# CAMARA error code, and a word of its message where operators only tell more in words, -> PlayPay's code.
# For a code, the first entry whose word is in the message wins; the entry with no word is the default.
# Codes not listed are `rejected`.
ERRORS: dict[tuple[str, str], ErrorCode] = {
    (DENIED, "insufficient"): ErrorCode.INSUFFICIENT_FUNDS,
    (DENIED, "balance"): ErrorCode.INSUFFICIENT_FUNDS,
    (DENIED, "barred"): ErrorCode.USER_BARRED,
    (DENIED, "blocked"): ErrorCode.USER_BARRED,
    (DENIED, "threshold"): ErrorCode.SPENDING_LIMIT,
    (DENIED, "limit"): ErrorCode.SPENDING_LIMIT,
    (DENIED, ""): ErrorCode.REJECTED,
    ("CARRIER_BILLING.USER_AMOUNT_THRESHOLD_OVERPASSED", ""): ErrorCode.SPENDING_LIMIT,
    ("CARRIER_BILLING.AMOUNT_THRESHOLD_OVERPASSED", ""): ErrorCode.SPENDING_LIMIT,
    ("CARRIER_BILLING.UNAUTHORIZED_AMOUNT", ""): ErrorCode.PRICE_NOT_SUPPORTED,
    ("IDENTIFIER_NOT_FOUND", ""): ErrorCode.UNKNOWN_SUBSCRIBER,
    ("MISSING_IDENTIFIER", ""): ErrorCode.UNKNOWN_SUBSCRIBER,
    ("SERVICE_NOT_APPLICABLE", ""): ErrorCode.USER_BARRED,
    ("ALREADY_EXISTS", ""): ErrorCode.DUPLICATE,
    ("INVALID_ARGUMENT", "clientcorrelator already exist"): ErrorCode.DUPLICATE,
    ("INVALID_ARGUMENT", "currency"): ErrorCode.PRICE_NOT_SUPPORTED,
    ("INVALID_ARGUMENT", ""): ErrorCode.REJECTED,
    ("CARRIER_BILLING.INVALID_CODE", ""): ErrorCode.INVALID_PIN,
    ("CARRIER_BILLING.VALIDATION_FAILED", ""): ErrorCode.INVALID_PIN,
    ("CARRIER_BILLING.INVALID_AUTHORIZATION_ID", ""): ErrorCode.PIN_EXPIRED,
    ("CARRIER_BILLING.PAYMENT_CONFIRMED", ""): ErrorCode.DUPLICATE,
    ("CARRIER_BILLING.PAYMENT_CANCELLED", ""): ErrorCode.RESERVATION_EXPIRED,
    ("CARRIER_BILLING_REFUND.UNAUTHORIZED_AMOUNT", ""): ErrorCode.REJECTED,
    ("CARRIER_BILLING_REFUND.INVALID_PAYMENT_STATUS", ""): ErrorCode.REJECTED,
    ("TOO_MANY_REQUESTS", ""): ErrorCode.CARRIER_UNAVAILABLE,
    ("QUOTA_EXCEEDED", ""): ErrorCode.CARRIER_UNAVAILABLE,
    ("UNAUTHENTICATED", ""): ErrorCode.CARRIER_UNAVAILABLE,
    ("AUTHENTICATION_REQUIRED", ""): ErrorCode.CARRIER_UNAVAILABLE,
    ("HTTP_401", ""): ErrorCode.CARRIER_UNAVAILABLE,
    ("HTTP_429", ""): ErrorCode.CARRIER_UNAVAILABLE,
}

# paymentStatus (reply or GET) -> outcome; `denied` and `cancelled` fail as `rejected`.
PAYMENT_STATUSES: dict[str, Outcome] = {
    "succeeded": Outcome.SUCCEEDED,
    "denied": Outcome.FAILED,
    "cancelled": Outcome.FAILED,
    "processing": Outcome.PENDING,
    "reserved": Outcome.PENDING,
    "pending_validation": Outcome.PENDING,
}
REFUND_STATUSES: dict[str, Outcome] = {
    "succeeded": Outcome.SUCCEEDED,
    "processing": Outcome.PENDING,
    "denied": Outcome.FAILED,
}
# CloudEvents type -> what it says.
EVENTS: dict[str, tuple[NotificationKind, Outcome]] = {
    PAYMENT_EVENT + "payment-completed": (NotificationKind.PAYMENT, Outcome.SUCCEEDED),
    PAYMENT_EVENT + "payment-denied": (NotificationKind.PAYMENT, Outcome.FAILED),
    PAYMENT_EVENT + "payment-cancelled": (NotificationKind.PAYMENT, Outcome.FAILED),
    PAYMENT_EVENT + "payment-reserved": (NotificationKind.PAYMENT, Outcome.PENDING),
    PAYMENT_EVENT + "payment-pending-validation": (NotificationKind.PAYMENT, Outcome.PENDING),
    REFUND_EVENT + "refund-completed": (NotificationKind.REFUND, Outcome.SUCCEEDED),
    REFUND_EVENT + "refund-in-bill": (NotificationKind.REFUND, Outcome.SUCCEEDED),
    REFUND_EVENT + "refund-denied": (NotificationKind.REFUND, Outcome.FAILED),
}


def map_error(code: str, message: str = "") -> ErrorCode:
    lowered = message.lower()
    default = ErrorCode.REJECTED
    for (known, word), mapped in ERRORS.items():
        if known != code:
            continue
        if not word:
            default = mapped
        elif word in lowered:
            return mapped
    return default


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()


# Access tokens by (token_url, client_id), shared by every adapter instance of the process.
_TOKENS: dict[tuple[str, str], _Token] = {}
_TOKENS_LOCK = threading.Lock()


def forget_tokens() -> None:
    """Drop every cached access token (credential rotation, tests)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()


# OAuth 2.0 token errors (RFC 6749 §5.2) and statuses that mean the credentials, not the carrier, are wrong.
_CREDENTIALS_REFUSED = {
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "invalid_scope",
    "TOKEN_HTTP_401",
    "TOKEN_HTTP_403",
}


class _Refused(Exception):
    """The authorization server refused us a token: the API call was never made."""

    def __init__(self, result: CarrierResult) -> None:
        self.result = result
        super().__init__(result.raw_message)


def client_assertion(*, client_id: str, private_key: str, token_url: str, key_id: str = "") -> str:
    """A private_key_jwt client assertion (RFC 7523), RS256, valid ASSERTION_LIFETIME_SECONDS."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECONDS,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": key_id} if key_id else None)


def _object(response: httpx.Response) -> dict[str, Any]:
    data = json_body(response)
    if not isinstance(data, dict):
        raise TransportFailure(
            CarrierResult.pending(
                "MALFORMED", f"HTTP {response.status_code}: reply is not an object", transport_failed=True
            )
        )
    return data


def _refusal(response: httpx.Response, carrier_reference: str = "") -> CarrierResult:
    """A 4xx reply, `{status, code, message}`, as a failure with the code mapped and the raw one kept."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    status = response.status_code
    code = str(body.get("code") or f"HTTP_{status}")
    message = str(body.get("message") or response.reason_phrase)
    # A 401 (after a fresh token) or a 429 means the request was not processed.
    not_sent = status in (401, 429)
    refused = CarrierResult.failed(
        map_error(code, message), code, message, not_sent=not_sent, carrier_reference=carrier_reference
    )
    return with_retry_after(refused, status, response.headers)


def _never_received(request_state: Mapping[str, Any], found: list[Any], page_size: int | None) -> bool:
    """Whether a request not found among `found` certainly never reached the operator.

    It must be LOOKUP_SETTLE_SECONDS old (`state["asked_at"]`, when our call was made), and the list must
    reach back before it: a page that is not full holds everything; a full one, down to its oldest entry.
    """
    try:
        asked_at = datetime.fromisoformat(str(request_state.get("asked_at") or ""))
    except ValueError:
        return False
    if asked_at.tzinfo is None or (datetime.now(UTC) - asked_at).total_seconds() < LOOKUP_SETTLE_SECONDS:
        return False
    if page_size is None or len(found) < page_size:
        return True
    dates = []
    for item in found:
        created = item.get("paymentCreationDate") if isinstance(item, dict) else None
        try:
            dates.append(datetime.fromisoformat(str(created).replace("Z", "+00:00")))
        except ValueError:
            return False
    oldest = min(dates, default=None)
    return (
        oldest is not None and oldest.tzinfo is not None and (asked_at - oldest).total_seconds() > LOOKUP_SETTLE_SECONDS
    )


def _never_received_result(what: str) -> CarrierResult:
    return CarrierResult.failed(
        ErrorCode.CARRIER_UNAVAILABLE, "NOT_FOUND", f"the operator has no such {what}: never received", not_sent=True
    )


def _payment_result(data: Mapping[str, Any], carrier_reference: str = "") -> CarrierResult:
    status = str(data.get("paymentStatus", ""))
    reference = str(data.get("paymentId") or carrier_reference)
    outcome = PAYMENT_STATUSES.get(status)
    if outcome is None:
        return CarrierResult.pending(f"STATUS_{status.upper()}", "unknown paymentStatus", carrier_reference=reference)
    if outcome == Outcome.FAILED:
        return CarrierResult.failed(map_error(DENIED), status, f"payment {status}", carrier_reference=reference)
    return CarrierResult(outcome=outcome, carrier_reference=reference, raw_code=status)


def _refund_result(data: Mapping[str, Any]) -> CarrierResult:
    status = str(data.get("refundStatus", ""))
    reference = str(data.get("refundId") or "")
    outcome = REFUND_STATUSES.get(status)
    if outcome is None:
        return CarrierResult.pending(f"STATUS_{status.upper()}", "unknown refundStatus", carrier_reference=reference)
    if outcome == Outcome.FAILED:
        return CarrierResult.failed(ErrorCode.REJECTED, status, "refund denied", carrier_reference=reference)
    return CarrierResult(outcome=outcome, carrier_reference=reference, raw_code=status)


def _msisdn(request: ChargeRequest) -> str:
    return request.msisdn if request.msisdn.startswith("+") else "+" + request.msisdn


class CamaraAdapter(CarrierAdapter):
    capabilities = Capabilities(
        pin=True, one_click=True, refund=True, reversal=False, status_query=True, asynchronous=False
    )

    # --- OAuth2 ---

    @property
    def token_url(self) -> str:
        return str(self.config.credentials.get("token_url") or self.config.endpoint.rstrip("/") + "/oauth2/token")

    def check_connection(self) -> CarrierResult:
        """Fetch a new access token: proves the authorization server answers and accepts the credentials."""
        self._drop_token()
        try:
            with client_for(self.config) as client:
                self._token(client)
        except _Refused as refused:
            result = refused.result
            if result.raw_code in _CREDENTIALS_REFUSED:
                return CarrierResult.failed(
                    ErrorCode.REJECTED, result.raw_code, f"the carrier refused the credentials: {result.raw_message}"
                )
            return connection_check(result)
        return CarrierResult(outcome=Outcome.SUCCEEDED, raw_code="TOKEN_OK", raw_message="access token issued")

    def _token_key(self) -> tuple[str, str]:
        return (self.token_url, str(self.config.credentials.get("client_id", "")))

    def _token(self, client: httpx.Client) -> str:
        key = self._token_key()
        with _TOKENS_LOCK:
            cached = _TOKENS.get(key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached.value
        token = self._request_token(client)
        with _TOKENS_LOCK:
            _TOKENS[key] = token
        return token.value

    def _drop_token(self) -> None:
        with _TOKENS_LOCK:
            _TOKENS.pop(self._token_key(), None)

    def _request_token(self, client: httpx.Client) -> _Token:
        credentials = self.config.credentials
        client_id = str(credentials.get("client_id", ""))
        form = {"grant_type": "client_credentials", "scope": str(credentials.get("scope") or DEFAULT_SCOPE)}
        auth: tuple[str, str] | None = None
        if credentials.get("private_key"):
            form["client_id"] = client_id
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = client_assertion(
                client_id=client_id,
                private_key=str(credentials["private_key"]),
                token_url=self.token_url,
                key_id=str(credentials.get("key_id", "")),
            )
        else:
            auth = (client_id, str(credentials.get("client_secret", "")))
        try:
            response = send(client, "POST", self.token_url, data=form, auth=auth)
            data = json_body(response) if response.status_code == 200 else None
        except TransportFailure as failure:
            # Whatever went wrong, no payment request was made.
            raise _Refused(
                CarrierResult.failed(
                    ErrorCode.CARRIER_UNAVAILABLE,
                    f"TOKEN_{failure.result.raw_code}",
                    failure.result.raw_message,
                    not_sent=True,
                    transport_failed=True,
                )
            ) from failure
        if not isinstance(data, dict) or not data.get("access_token"):
            try:
                error = response.json()
            except ValueError:
                error = {}
            error = error if isinstance(error, dict) else {}
            raise _Refused(
                CarrierResult.failed(
                    ErrorCode.CARRIER_UNAVAILABLE,
                    str(error.get("error") or f"TOKEN_HTTP_{response.status_code}"),
                    str(error.get("error_description") or "the authorization server issued no access token"),
                    not_sent=True,
                )
            )
        lifetime = float(data.get("expires_in") or 300)
        margin = min(TOKEN_RENEW_MARGIN_SECONDS, lifetime / 10)
        return _Token(value=str(data["access_token"]), expires_at=time.monotonic() + lifetime - margin)

    def _api(
        self, client: httpx.Client, method: str, path: str, *, payload: Any = None, correlator: str = "", **kwargs: Any
    ) -> httpx.Response:
        """One API call with a bearer token; on 401 the token is renewed and the call made once more."""
        headers = {"x-correlator": correlator} if _X_CORRELATOR.match(correlator) else {}
        headers["Authorization"] = f"Bearer {self._token(client)}"
        response = send(client, method, path, json=payload, headers=headers, **kwargs)
        if response.status_code == 401:
            # Revoked or expired early: a 401 means nothing was processed, so once more is safe.
            self._drop_token()
            headers["Authorization"] = f"Bearer {self._token(client)}"
            response = send(client, method, path, json=payload, headers=headers, **kwargs)
        return response

    def _run(self, call: Callable[[httpx.Client], CarrierResult]) -> CarrierResult:
        """Run a call with a client; token refusals and transport failures become their results."""

        def run() -> CarrierResult:
            try:
                with client_for(self.config) as client:
                    return call(client)
            except _Refused as refused:
                return refused.result

        return guarded(run)

    # --- requests ---

    def _payment_body(self, request: ChargeRequest, client_correlator: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "amountTransaction": {
                "phoneNumber": _msisdn(request),
                "clientCorrelator": client_correlator,
                "referenceCode": request.payment_id,
                "paymentAmount": {
                    "chargingInformation": {
                        "amount": float(to_major(request.amount_minor, request.currency)),
                        "currency": request.currency,
                        "description": request.description or request.price_point,
                    }
                },
            }
        }
        body.update(self._sink())
        return body

    def _sink(self) -> dict[str, Any]:
        token = str(self.config.credentials.get("notification_token") or "")
        if not self.config.notification_url or not token:
            return {}
        expires = (datetime.now(UTC) + NOTIFICATION_TOKEN_VALIDITY).isoformat(timespec="seconds")
        return {
            "sink": self.config.notification_url,
            "sinkCredential": {
                "credentialType": "ACCESSTOKEN",
                "accessToken": token,
                "accessTokenExpiresUtc": expires.replace("+00:00", "Z"),
                "accessTokenType": "bearer",
            },
        }

    def send_pin(self, request: ChargeRequest) -> CarrierResult:
        # A prepared payment moves no money, and one whose reply was lost cannot be continued (its
        # authorizationId is only in that reply): a PIN sent again needs a new clientCorrelator.
        correlator = f"{request.payment_id}-{request.state.get('attempt', 0)}-{secrets.token_hex(3)}"

        def call(client: httpx.Client) -> CarrierResult:
            body = self._payment_body(request, correlator)
            response = self._api(client, "POST", f"{API}/payments/prepare", payload=body, correlator=request.payment_id)
            if response.status_code not in (200, 201):
                return _refusal(response)
            data = _object(response)
            reference = str(data.get("paymentId") or "")
            status = str(data.get("paymentStatus", ""))
            info = data.get("validationInfo")
            info = info if isinstance(info, dict) else {}
            if not reference:
                return CarrierResult.pending("MALFORMED", "the reply has no paymentId", transport_failed=True)
            if status == "pending_validation" and info.get("action") == "validate" and info.get("authorizationId"):
                return CarrierResult(
                    outcome=Outcome.PIN_SENT,
                    carrier_reference=reference,
                    raw_code=status,
                    state={"authorization_id": str(info["authorizationId"])},
                )
            if status in ("processing", "denied", "cancelled", ""):
                return _payment_result(data)
            # `reserved` without a code, or a validation page (`open`): not a PIN the player can type.
            return CarrierResult.failed(
                ErrorCode.REJECTED,
                status.upper(),
                f"the operator asked for validation {info.get('action') or 'none'!r}, not a code",
                carrier_reference=reference,
            )

        return self._run(call)

    def verify_pin(self, request: ChargeRequest, *, pin: str) -> CarrierResult:
        reference = request.carrier_reference
        authorization_id = str(request.state.get("authorization_id") or "")
        if not reference or not authorization_id:
            return CarrierResult.failed(ErrorCode.REJECTED, "NO_PREPARED_PAYMENT", "no prepared payment to validate")

        def call(client: httpx.Client) -> CarrierResult:
            body = {"authorizationId": authorization_id, "code": pin}
            response = self._api(
                client, "POST", f"{API}/payments/{reference}/validate", payload=body, correlator=request.payment_id
            )
            if response.status_code in (200, 204):
                return CarrierResult(outcome=Outcome.PIN_VERIFIED, carrier_reference=reference)
            refused = _refusal(response, reference)
            if refused.raw_code == "ALREADY_EXISTS":
                # "Payment already validated": the code was right, only the earlier reply was lost.
                return CarrierResult(
                    outcome=Outcome.PIN_VERIFIED, carrier_reference=reference, raw_code=refused.raw_code
                )
            return refused

        return self._run(call)

    def charge(self, request: ChargeRequest) -> CarrierResult:
        if request.carrier_reference and request.state.get("authorization_id"):
            return self._confirm(request)
        correlator = f"{request.payment_id}-{request.state.get('attempt', 0)}"

        def call(client: httpx.Client) -> CarrierResult:
            body = self._payment_body(request, correlator)
            response = self._api(client, "POST", f"{API}/payments", payload=body, correlator=request.payment_id)
            if response.status_code not in (200, 201):
                return _refusal(response)
            return _payment_result(_object(response))

        return self._run(call)

    def _confirm(self, request: ChargeRequest) -> CarrierResult:
        reference = request.carrier_reference

        def call(client: httpx.Client) -> CarrierResult:
            path = f"{API}/payments/{reference}/confirm"
            response = self._api(client, "POST", path, payload={"phoneNumber": _msisdn(request)})
            if response.status_code == 202:
                # Accepted: the result comes by notification, or by GET.
                return CarrierResult.pending("ACCEPTED", "confirm accepted", carrier_reference=reference)
            if response.status_code == 200:
                return _payment_result(_object(response), reference)
            refused = _refusal(response, reference)
            if refused.raw_code == "CARRIER_BILLING.PAYMENT_CONFIRMED":
                # Confirmed before (a retry after a lost reply): what matters is what became of it.
                return self._status(client, reference)
            return refused

        return self._run(call)

    def _status(self, client: httpx.Client, reference: str) -> CarrierResult:
        response = self._api(client, "GET", f"{API}/payments/{reference}")
        if response.status_code != 200:
            return _refusal(response, reference)
        return _payment_result(_object(response), reference)

    def query_status(self, request: ChargeRequest) -> CarrierResult:
        if request.carrier_reference:
            return self._run(lambda client: self._status(client, request.carrier_reference))
        # A one-click charge whose reply was lost: look for it by its clientCorrelator.
        correlator = f"{request.payment_id}-{request.state.get('attempt', 0)}"

        def call(client: httpx.Client) -> CarrierResult:
            params = {"order": "desc", "perPage": LOOKUP_PAGE_SIZE}
            response = self._api(client, "GET", f"{API}/payments", params=params)
            if response.status_code != 200:
                return _refusal(response)
            payments = json_body(response)
            payments = payments if isinstance(payments, list) else []
            for payment in payments:
                transaction = payment.get("amountTransaction") if isinstance(payment, dict) else None
                if (
                    isinstance(transaction, dict)
                    and transaction.get("clientCorrelator") == correlator
                    and transaction.get("referenceCode") == request.payment_id
                ):
                    return _payment_result(payment)
            if _never_received(request.state, payments, LOOKUP_PAGE_SIZE):
                return _never_received_result("payment")
            return CarrierResult.pending("NO_REFERENCE", "no payment with this clientCorrelator among the latest")

        return self._run(call)

    def cancel(self, request: ChargeRequest) -> CarrierResult:
        reference = request.carrier_reference
        if not reference:
            return CarrierResult(outcome=Outcome.SUCCEEDED)

        def call(client: httpx.Client) -> CarrierResult:
            path = f"{API}/payments/{reference}/cancel"
            response = self._api(client, "POST", path, payload={"phoneNumber": _msisdn(request)})
            if response.status_code in (200, 202, 204):
                return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reference)
            refused = _refusal(response, reference)
            if refused.raw_code == "CARRIER_BILLING.PAYMENT_CANCELLED":
                return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reference, raw_code=refused.raw_code)
            return refused

        return self._run(call)

    def refund(self, request: RefundRequest) -> CarrierResult:
        """A `partial` refund of the given amount, or `total` when `state["total"]` says so."""
        total = bool(request.state.get("total"))
        refund_amount: dict[str, Any] = {}
        if not total:
            refund_amount["chargingInformation"] = {
                "amount": float(to_major(request.amount_minor, request.currency)),
                "currency": request.currency,
                "description": request.reason or "Refund",
            }
        body: dict[str, Any] = {
            "type": "total" if total else "partial",
            "amountTransaction": {
                "clientCorrelator": request.refund_id,
                "referenceCode": request.refund_id,
                "refundAmount": refund_amount,
            },
            **self._sink(),
        }
        if request.reason:
            body["reason"] = request.reason

        def call(client: httpx.Client) -> CarrierResult:
            path = f"{REFUND_API}/payments/{request.carrier_reference}/refunds"
            response = self._api(client, "POST", path, payload=body, correlator=request.refund_id)
            if response.status_code not in (200, 201):
                refused = _refusal(response)
                if refused.error_code == ErrorCode.DUPLICATE:
                    # Sent before (its reply was lost): what matters is what became of that one.
                    return self._find_refund(client, request)
                return refused
            return _refund_result(_object(response))

        return self._run(call)

    def _find_refund(self, client: httpx.Client, request: RefundRequest) -> CarrierResult:
        """The payment's refund with our clientCorrelator, from the operator's whole list of them."""
        base = f"{REFUND_API}/payments/{request.carrier_reference}/refunds"
        response = self._api(client, "GET", base, correlator=request.refund_id)
        if response.status_code != 200:
            return _refusal(response)
        refunds = json_body(response)
        refunds = refunds if isinstance(refunds, list) else []
        for refund in refunds:
            transaction = refund.get("amountTransaction") if isinstance(refund, dict) else None
            if isinstance(transaction, dict) and transaction.get("clientCorrelator") == request.refund_id:
                return _refund_result(refund)
        if _never_received(request.state, refunds, None):
            return _never_received_result("refund")
        return CarrierResult.pending("NO_REFERENCE", "no refund with this clientCorrelator yet")

    def query_refund(self, request: RefundRequest) -> CarrierResult:
        """GET the refund by its refundId; without one (the reply was lost), find it by its clientCorrelator
        among the payment's refunds, which the operator lists whole. Not there: never received."""
        refund_reference = str(request.state.get("refund_reference") or "")
        base = f"{REFUND_API}/payments/{request.carrier_reference}/refunds"

        def call(client: httpx.Client) -> CarrierResult:
            if not refund_reference:
                return self._find_refund(client, request)
            response = self._api(client, "GET", f"{base}/{refund_reference}", correlator=request.refund_id)
            if response.status_code != 200:
                return _refusal(response, refund_reference)
            return _refund_result(_object(response))

        return self._run(call)

    # --- notifications ---

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        """A CloudEvents notification, authenticated by the bearer we gave as sinkCredential."""
        expected = str(self.config.credentials.get("notification_token") or "")
        authorization = next((value for key, value in headers.items() if key.lower() == "authorization"), "")
        scheme, _, presented = authorization.partition(" ")
        if not expected:
            raise NotificationSignatureInvalid("no notification_token is configured for this carrier")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
            raise NotificationSignatureInvalid("missing or wrong bearer token")
        try:
            event = json.loads(body)
            event_id, event_type, data = str(event["id"]), str(event["type"]), event["data"]
            occurred_at = datetime.fromisoformat(str(event["time"]))
            if event.get("specversion") != "1.0" or not isinstance(data, dict) or occurred_at.tzinfo is None:
                raise ValueError("not a CloudEvents 1.0 event with data and a zoned time")
        except (ValueError, KeyError, TypeError) as exc:
            raise NotificationRejected("malformed", f"not a CAMARA CloudEvent: {exc}") from exc
        if abs((now - occurred_at).total_seconds()) > FRESHNESS_SECONDS:
            raise NotificationRejected("stale", f"event time is more than {FRESHNESS_SECONDS} s away from now")
        if event_type not in EVENTS:
            raise NotificationRejected("malformed", f"unknown event type {event_type!r}")
        kind, outcome = EVENTS[event_type]
        short_type = event_type.rsplit(".", 1)[1]
        message = str(data.get("denialReason") or data.get("description") or "")
        error_code = None
        if outcome == Outcome.FAILED:
            error_code = map_error(DENIED, message) if short_type == "payment-denied" else ErrorCode.REJECTED
        # A refund is known by the refundId the refund call returned; a payment by its paymentId.
        reference = data.get("refundId") if kind == NotificationKind.REFUND else data.get("paymentId")
        return Notification(
            notification_id=event_id,
            kind=kind,
            outcome=outcome,
            carrier_reference=str(reference or ""),
            error_code=error_code,
            raw_code=short_type,
            raw_message=message,
            occurred_at=occurred_at,
        )
