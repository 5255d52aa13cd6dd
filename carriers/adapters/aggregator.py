"""A DCB aggregator API: REST/JSON, HMAC-SHA256-signed requests and callbacks, fully asynchronous.

Every request is only "accepted" (202); results arrive as signed callbacks, retried by the
aggregator until answered 2xx. The wire format is in docs/carriers/aggregator.md.
Credentials: `merchant_id`, `api_secret` (signs our requests), `callback_secret`
(signs theirs).
"""

import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from carriers.adapters.base import (
    Capabilities,
    CarrierAdapter,
    CarrierResult,
    CarrierSubscription,
    ChargeRequest,
    Notification,
    NotificationKind,
    Outcome,
    RefundRequest,
    SubscriptionCreateRequest,
    SubscriptionEvent,
    SubscriptionEventKind,
    connection_check,
)
from carriers.adapters.http import (
    TransportFailure,
    client_for,
    guarded,
    json_body,
    refused_check,
    send,
    with_retry_after,
)
from carriers.errors import ErrorCode, NotificationRejected, NotificationSignatureInvalid

FRESHNESS_SECONDS = 300

# The aggregator's reason codes, mapped to PlayPay's taxonomy.
REASONS: dict[str, ErrorCode] = {
    "INSUFFICIENT_BALANCE": ErrorCode.INSUFFICIENT_FUNDS,
    "SUBSCRIBER_BARRED": ErrorCode.USER_BARRED,
    "SPEND_LIMIT_REACHED": ErrorCode.SPENDING_LIMIT,
    "UNKNOWN_SUBSCRIBER": ErrorCode.UNKNOWN_SUBSCRIBER,
    "WRONG_PIN": ErrorCode.INVALID_PIN,
    "PIN_ATTEMPTS_EXCEEDED": ErrorCode.INVALID_PIN,
    "PIN_EXPIRED": ErrorCode.PIN_EXPIRED,
    "PRICE_NOT_SUPPORTED": ErrorCode.PRICE_NOT_SUPPORTED,
    "OPERATOR_TIMEOUT": ErrorCode.CARRIER_TIMEOUT,
    "OPERATOR_UNAVAILABLE": ErrorCode.CARRIER_UNAVAILABLE,
    "DUPLICATE_REFERENCE": ErrorCode.DUPLICATE,
}

# Charge status (from GET or a callback's data) -> outcome.
STATUSES: dict[str, Outcome] = {
    "accepted": Outcome.PENDING,
    "pin_sent": Outcome.PIN_SENT,
    "pin_submitted": Outcome.PENDING,
    "pin_rejected": Outcome.PIN_REJECTED,
    "succeeded": Outcome.SUCCEEDED,
    "failed": Outcome.FAILED,
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signed_headers(merchant_id: str, secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {
        "Content-Type": "application/json",
        "X-Merchant-Id": merchant_id,
        "X-Timestamp": timestamp,
        "X-Signature": sign(secret, timestamp, body),
    }


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise NotificationRejected unless the body is signed with `secret` within the freshness window."""
    lowered = {key.lower(): value for key, value in headers.items()}
    timestamp, signature = lowered.get("x-timestamp", ""), lowered.get("x-signature", "")
    if not timestamp.isdigit() or not signature:
        raise NotificationSignatureInvalid("X-Timestamp and X-Signature are required")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        raise NotificationSignatureInvalid("the signature does not match the body")
    if abs(now - int(timestamp)) > FRESHNESS_SECONDS:
        raise NotificationRejected("stale", f"timestamp is more than {FRESHNESS_SECONDS} s away from now")


def _result_from_charge(data: Mapping[str, Any]) -> CarrierResult:
    status = str(data.get("status", ""))
    outcome = STATUSES.get(status)
    if outcome is None:
        return CarrierResult.pending(f"STATUS_{status.upper()}", "unknown charge status")
    reason = str(data.get("reason_code") or "")
    return CarrierResult(
        outcome=outcome,
        carrier_reference=str(data.get("charge_id", "")),
        error_code=REASONS.get(reason, ErrorCode.REJECTED)
        if outcome in (Outcome.FAILED, Outcome.PIN_REJECTED)
        else None,
        raw_code=reason or status,
        raw_message=str(data.get("reason_message") or ""),
    )


def _never_seen(what: str) -> CarrierResult:
    return CarrierResult.failed(
        ErrorCode.CARRIER_UNAVAILABLE, "NOT_FOUND", f"the aggregator has no such {what}", not_sent=True
    )


# A charge's reversal_status -> outcome.
REVERSAL_STATUSES: dict[str, Outcome] = {
    "accepted": Outcome.PENDING,
    "succeeded": Outcome.SUCCEEDED,
    "failed": Outcome.FAILED,
}


def _reversal_result(data: Any, reference: str) -> CarrierResult:
    status = str(data.get("reversal_status", "")) if isinstance(data, dict) else ""
    outcome = REVERSAL_STATUSES.get(status)
    if outcome is None:
        return CarrierResult.pending(f"STATUS_{status.upper()}", "unknown reversal status", carrier_reference=reference)
    reason = str(data.get("reason_code") or "") if outcome == Outcome.FAILED else ""
    return CarrierResult(
        outcome=outcome,
        carrier_reference=reference,
        error_code=REASONS.get(reason, ErrorCode.REJECTED) if outcome == Outcome.FAILED else None,
        raw_code=reason or status,
    )


# A subscription event's type -> what it tells.
SUBSCRIPTION_EVENTS: dict[str, SubscriptionEventKind] = {
    "subscription.renewed": SubscriptionEventKind.RENEWED,
    "subscription.renewal_failed": SubscriptionEventKind.RENEWAL_FAILED,
    "subscription.cancelled": SubscriptionEventKind.CANCELLED,
}


# The highest period a subscription event may name (4,000 years of monthly periods): beyond any calendar.
MAX_PERIOD = 50_000


def subscription_event(event: Mapping[str, Any]) -> SubscriptionEvent:
    """An aggregator subscription event (a callback's body, or one of a subscription's `events`); raises
    NotificationRejected when it is not one."""
    try:
        kind = SUBSCRIPTION_EVENTS[str(event["type"])]
        data = dict(event["data"])
        event_id, reference = str(event["event_id"]), data["subscription_id"]
        if not isinstance(reference, str) or not reference:
            raise ValueError("subscription_id is the aggregator's id of the subscription")
        period = data.get("period")
        amount = data.get("amount")
        created = int(event["created"])
        if period is not None and (not isinstance(period, int) or not 1 <= period <= MAX_PERIOD):
            raise ValueError(f"period is an integer from 1 to {MAX_PERIOD}")
        if amount is not None and (not isinstance(amount, int) or amount <= 0):
            raise ValueError("amount is a positive integer")
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise NotificationRejected("malformed", f"not an aggregator subscription event: {exc}") from exc
    if kind != SubscriptionEventKind.CANCELLED and period is None:
        raise NotificationRejected("malformed", "a renewal event names its period")
    reason = str(data.get("reason_code") or "")
    return SubscriptionEvent(
        event_id=event_id,
        kind=kind,
        subscription_reference=reference,
        period_index=period,
        charge_reference=str(data.get("charge_id") or ""),
        amount_minor=amount,
        currency=str(data.get("currency") or ""),
        error_code=REASONS.get(reason, ErrorCode.REJECTED) if kind == SubscriptionEventKind.RENEWAL_FAILED else None,
        raw_code=reason,
        raw_message=str(data.get("reason_message") or ""),
        occurred_at=datetime.fromtimestamp(created, tz=UTC),
    )


def _merchant_reference(request: ChargeRequest) -> str:
    """Our reference of one charge attempt: the aggregator treats a repeat of it as the same charge."""
    return f"{request.payment_id}-{request.state.get('attempt', 0)}"


class AggregatorAdapter(CarrierAdapter):
    capabilities = Capabilities(
        pin=True,
        one_click=True,
        refund=True,
        reversal=True,
        status_query=True,
        asynchronous=True,
        managed_subscriptions=True,
    )

    def _post(self, path: str, payload: Mapping[str, Any]) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = signed_headers(self.config.credentials["merchant_id"], self.config.credentials["api_secret"], body)
        with client_for(self.config) as client:
            return send(client, "POST", path, content=body, headers=headers)

    def _accepted(self, response: httpx.Response, reference: str = "") -> CarrierResult:
        data = json_body(response)
        if not isinstance(data, dict):
            raise TransportFailure(CarrierResult.pending("MALFORMED", "reply is not an object", transport_failed=True))
        if response.status_code == 202:
            return CarrierResult(outcome=Outcome.PENDING, carrier_reference=str(data.get("charge_id") or reference))
        error = data.get("error")
        if not isinstance(error, dict):
            error = {}
        code = str(error.get("code", f"HTTP_{response.status_code}"))
        message = str(error.get("message", ""))
        if response.status_code == 429:
            refused = CarrierResult.failed(ErrorCode.CARRIER_UNAVAILABLE, code, message, not_sent=True)
            return with_retry_after(refused, 429, response.headers)
        return CarrierResult.failed(REASONS.get(code, ErrorCode.REJECTED), code, message, carrier_reference=reference)

    def _start(self, request: ChargeRequest, flow: str) -> CarrierResult:
        payload = {
            "merchant_reference": _merchant_reference(request),
            "msisdn": request.msisdn,
            "amount": request.amount_minor,
            "currency": request.currency,
            "description": request.description or request.price_point,
            "flow": flow,
            "callback_url": self.config.notification_url,
        }
        return guarded(lambda: self._accepted(self._post("/v1/charges", payload)))

    def send_pin(self, request: ChargeRequest) -> CarrierResult:
        return self._start(request, "pin")

    def verify_pin(self, request: ChargeRequest, *, pin: str) -> CarrierResult:
        reference = request.carrier_reference
        return guarded(lambda: self._accepted(self._post(f"/v1/charges/{reference}/pin", {"pin": pin}), reference))

    def charge(self, request: ChargeRequest) -> CarrierResult:
        return self._start(request, "one_click")

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        headers = signed_headers(self.config.credentials["merchant_id"], self.config.credentials["api_secret"], b"")
        with client_for(self.config) as client:
            response = send(client, "GET", path, headers=headers, params=params)
        return response.status_code, json_body(response)

    def query_status(self, request: ChargeRequest) -> CarrierResult:
        # Without a charge id (the acceptance was never recorded) look the charge up by our reference.
        if request.carrier_reference:
            path, params = f"/v1/charges/{request.carrier_reference}", None
        else:
            path, params = "/v1/charges", {"merchant_reference": _merchant_reference(request)}

        def call() -> CarrierResult:
            status, data = self._get(path, params)
            if status == 404:
                # The aggregator never saw this charge: it is safe to send it again.
                return _never_seen("charge")
            if not isinstance(data, dict):
                return CarrierResult.pending("MALFORMED", "reply is not an object", transport_failed=True)
            return _result_from_charge(data)

        return guarded(call)

    def query_refund(self, request: RefundRequest) -> CarrierResult:
        path = f"/v1/charges/{request.carrier_reference}/refunds/{request.refund_id}"

        def call() -> CarrierResult:
            status, data = self._get(path)
            if status == 404:
                return _never_seen("refund")
            if not isinstance(data, dict):
                return CarrierResult.pending("MALFORMED", "reply is not an object", transport_failed=True)
            result = _result_from_charge(data)
            return dataclasses.replace(result, carrier_reference=request.carrier_reference)

        return guarded(call)

    def reverse(self, request: ChargeRequest) -> CarrierResult:
        """Reversal is synchronous: `200 {"reversal_status": "succeeded"}`, or refused (`409`), or `429`."""
        path = f"/v1/charges/{request.carrier_reference}/reversal"

        def call() -> CarrierResult:
            response = self._post(path, {"reason": request.description})
            if response.status_code == 200:
                return _reversal_result(json_body(response), request.carrier_reference)
            return self._accepted(response, request.carrier_reference)

        return guarded(call)

    def query_reversal(self, request: ChargeRequest) -> CarrierResult:
        """The charge's `reversal_status`: none means the reversal never reached the aggregator."""

        def call() -> CarrierResult:
            status, data = self._get(f"/v1/charges/{request.carrier_reference}")
            if not isinstance(data, dict) or status != 200:
                return CarrierResult.pending("MALFORMED", f"HTTP {status}: no charge object", transport_failed=True)
            if not data.get("reversal_status"):
                return _never_seen("reversal")
            return _reversal_result(data, request.carrier_reference)

        return guarded(call)

    def check_connection(self) -> CarrierResult:
        """A signed ping (`GET /v1/ping`): the aggregator answers 200 with our merchant id only when the
        signature, made with our API secret, verifies."""

        def call() -> CarrierResult:
            merchant = str(self.config.credentials.get("merchant_id", ""))
            headers = signed_headers(merchant, str(self.config.credentials.get("api_secret", "")), b"")
            with client_for(self.config) as client:
                response = send(client, "GET", "/v1/ping", headers=headers)
            if response.status_code != 200:
                return refused_check(response)
            data = json_body(response)
            if not isinstance(data, dict) or data.get("merchant_id") != merchant:
                return CarrierResult.failed(
                    ErrorCode.REJECTED, "PING_MISMATCH", "the ping's answer does not name our merchant id"
                )
            return CarrierResult(
                outcome=Outcome.SUCCEEDED, raw_code="PING_OK", raw_message=f"signed ping of {merchant}"
            )

        return connection_check(guarded(call))

    def refund(self, request: RefundRequest) -> CarrierResult:
        payload = {"merchant_reference": request.refund_id, "amount": request.amount_minor, "reason": request.reason}
        path = f"/v1/charges/{request.carrier_reference}/refunds"
        return guarded(lambda: self._accepted(self._post(path, payload), request.carrier_reference))

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        verify_signature(self.config.credentials["callback_secret"], headers, body, now.timestamp())
        try:
            event = json.loads(body)
            event_type, data = str(event["type"]), dict(event["data"])
            event_id = str(event["event_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise NotificationRejected("malformed", f"not an aggregator event: {exc}") from exc
        if event_type.startswith("subscription."):
            return _subscription_notification(subscription_event(event))
        kind = NotificationKind.REFUND if event_type.startswith("refund.") else NotificationKind.PAYMENT
        result = _result_from_charge(data)
        return Notification(
            notification_id=event_id,
            kind=kind,
            outcome=result.outcome,
            carrier_reference=str(data.get("charge_id", "")),
            refund_id=str(data.get("merchant_reference", "")) if kind == NotificationKind.REFUND else "",
            error_code=result.error_code,
            raw_code=result.raw_code,
            raw_message=result.raw_message,
            occurred_at=datetime.fromtimestamp(int(event.get("created", now.timestamp())), tz=UTC),
        )

    def create_subscription(self, request: SubscriptionCreateRequest) -> CarrierResult:
        """`POST /v1/subscriptions`: the aggregator takes the schedule (201, or 200 for a repeat of our
        reference); it charges each period itself and tells of it by signed callback."""
        payload = {
            "merchant_reference": request.subscription_id,
            "msisdn": request.msisdn,
            "amount": request.amount_minor,
            "currency": request.currency,
            "period": request.period,
            "anchor": int(datetime.fromisoformat(request.anchor).timestamp()),
            "description": request.description,
            "callback_url": self.config.notification_url,
        }

        def call() -> CarrierResult:
            response = self._post("/v1/subscriptions", payload)
            data = json_body(response)
            if response.status_code in (200, 201) and isinstance(data, dict) and data.get("subscription_id"):
                return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=str(data["subscription_id"]))
            return self._accepted(response)

        return guarded(call)

    def cancel_subscription(self, reference: str) -> CarrierResult:
        """`POST /v1/subscriptions/<id>/cancel`: `200 {"status": "cancelled"}`, a repeat answered the same."""

        def call() -> CarrierResult:
            response = self._post(f"/v1/subscriptions/{reference}/cancel", {})
            data = json_body(response)
            if response.status_code == 200 and isinstance(data, dict) and data.get("status") == "cancelled":
                return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reference, raw_code="cancelled")
            return self._accepted(response, reference)

        return guarded(call)

    def query_subscription(self, reference: str) -> CarrierSubscription:
        """`GET /v1/subscriptions/<id>`: its status and every event the aggregator sent of it."""
        answers: list[CarrierSubscription] = []

        def call() -> CarrierResult:
            status, data = self._get(f"/v1/subscriptions/{reference}")
            if status == 404:
                return _never_seen("subscription")
            if status != 200 or not isinstance(data, dict) or not isinstance(data.get("events"), list):
                return CarrierResult.pending("MALFORMED", f"HTTP {status}: no subscription", transport_failed=True)
            try:
                events = tuple(subscription_event(event) for event in data["events"])
            except NotificationRejected as exc:
                return CarrierResult.pending("MALFORMED", str(exc), transport_failed=True)
            result = CarrierResult(
                outcome=Outcome.SUCCEEDED, carrier_reference=reference, raw_code=str(data.get("status"))
            )
            answers.append(CarrierSubscription(result, status=str(data.get("status", "")), events=events))
            return result

        result = guarded(call)
        return answers[0] if answers else CarrierSubscription(result)


def _subscription_notification(event: SubscriptionEvent) -> Notification:
    return Notification(
        notification_id=event.event_id,
        kind=NotificationKind.SUBSCRIPTION,
        outcome=Outcome.FAILED if event.kind == SubscriptionEventKind.RENEWAL_FAILED else Outcome.SUCCEEDED,
        carrier_reference=event.subscription_reference,
        error_code=event.error_code,
        raw_code=event.raw_code or str(event.kind),
        raw_message=event.raw_message,
        occurred_at=event.occurred_at,
        subscription_event=event,
    )
