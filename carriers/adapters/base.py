"""The one interface every carrier protocol implements, over small typed requests and results.

Adapters translate between these types and one wire protocol. They do I/O only:
no database access. Anything a protocol needs to remember between calls (an OTP
session, a reservation, a PIN digest) goes back in `CarrierResult.state`; the
payment services store it and pass it in again as `ChargeRequest.state`.
"""

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from carriers.errors import ErrorCode, NotificationRejected


class Outcome(StrEnum):
    PIN_SENT = "pin_sent"
    PIN_VERIFIED = "pin_verified"
    # The PIN was wrong but the carrier lets the player try again.
    PIN_REJECTED = "pin_rejected"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The carrier did not state an outcome (accepted for later, timed out, garbled reply):
    # never read as success or failure; resolved by a callback or a status query.
    PENDING = "pending"


@dataclass(frozen=True)
class Capabilities:
    pin: bool = True
    one_click: bool = True
    refund: bool = True
    reversal: bool = False
    status_query: bool = True
    # Results arrive by callback; a request is only ever "accepted".
    asynchronous: bool = False
    # The carrier holds a subscription's renewal schedule, charges each period itself and tells of it by
    # callback (`create_subscription`, `query_subscription`, `SubscriptionEvent`).
    managed_subscriptions: bool = False


@dataclass(frozen=True)
class CarrierConfig:
    slug: str
    endpoint: str
    credentials: Mapping[str, Any] = field(repr=False)
    connect_timeout: float
    read_timeout: float
    # Where the carrier posts its notifications for this carrier.
    notification_url: str = ""
    # The carrier confirmed that a repeated request reference (Parlay X's referenceCode) is the same
    # request: an unknown outcome may then be settled by sending the request again.
    deduplicates_reference_code: bool = False


@dataclass(frozen=True)
class ChargeRequest:
    payment_id: str
    msisdn: str
    amount_minor: int
    currency: str
    price_point: str
    description: str = ""
    carrier_reference: str = ""
    state: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CarrierResult:
    outcome: Outcome
    carrier_reference: str = ""
    error_code: ErrorCode | None = None
    raw_code: str = ""
    raw_message: str = ""
    # Protocol state to keep for the next call on this payment (merged into what is stored).
    state: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # The call failed in transport (unreachable, timeout, 5xx, garbled reply): counts against the breaker.
    transport_failed: bool = False
    # True when the request certainly did not reach the carrier, so sending it again is safe.
    not_sent: bool = False
    # Seconds the carrier asked us to wait before the next call (its 503/429 `Retry-After`), if it did.
    retry_after: float | None = None

    @property
    def failure(self) -> tuple[str, str]:
        """The (standard code, message) to record for a failed result; `rejected` when none was mapped."""
        return str(self.error_code or ErrorCode.REJECTED), (self.raw_message or self.raw_code)[:255]

    @classmethod
    def failed(cls, code: ErrorCode, raw_code: str = "", raw_message: str = "", **kwargs: Any) -> "CarrierResult":
        return cls(outcome=Outcome.FAILED, error_code=code, raw_code=raw_code, raw_message=raw_message, **kwargs)

    @classmethod
    def pending(cls, raw_code: str = "", raw_message: str = "", **kwargs: Any) -> "CarrierResult":
        return cls(outcome=Outcome.PENDING, raw_code=raw_code, raw_message=raw_message, **kwargs)


@dataclass(frozen=True)
class RefundRequest:
    refund_id: str
    payment_id: str
    carrier_reference: str
    msisdn: str
    amount_minor: int
    currency: str
    reason: str = ""
    state: Mapping[str, Any] = field(default_factory=dict, repr=False)


class NotificationKind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"
    SUBSCRIPTION = "subscription"
    SMS = "sms"  # an SMS a player sent to the service's number (STOP)


@dataclass(frozen=True)
class InboundSms:
    """An SMS a player sent to the service's number, pushed by the carrier: `msisdn` in E.164, `to` the number
    (short code) it was sent to."""

    msisdn: str
    text: str
    to: str = ""


@dataclass(frozen=True)
class SubscriptionCreateRequest:
    """A subscription whose renewals the carrier schedules and charges: its first period is paid (the opt-in),
    and period k (k >= 1) starts at `period_starts[k]`, counted from `anchor` by the carrier's calendar."""

    subscription_id: str
    msisdn: str
    amount_minor: int
    currency: str
    period: str  # daily, weekly, monthly
    anchor: str  # ISO 8601, UTC: the start of the first period
    description: str = ""


class SubscriptionEventKind(StrEnum):
    RENEWED = "renewed"
    RENEWAL_FAILED = "renewal_failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SubscriptionEvent:
    """What a carrier that manages a subscription tells of it: a period charged or declined, or the end."""

    event_id: str
    kind: SubscriptionEventKind
    subscription_reference: str
    # The period charged or declined (1: the first renewal), counted from the subscription's anchor.
    period_index: int | None = None
    charge_reference: str = ""
    amount_minor: int | None = None
    currency: str = ""
    error_code: ErrorCode | None = None
    raw_code: str = ""
    raw_message: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class CarrierSubscription:
    """A carrier's answer about a subscription it manages: `result` as any call's (SUCCEEDED when it answered),
    with the subscription's status there and every event the carrier told of it (so that a lost callback can be
    recorded from it)."""

    result: CarrierResult
    status: str = ""
    events: tuple[SubscriptionEvent, ...] = ()


@dataclass(frozen=True)
class Notification:
    """A carrier callback, verified and translated."""

    notification_id: str
    kind: NotificationKind
    outcome: Outcome
    carrier_reference: str = ""
    payment_id: str = ""
    refund_id: str = ""
    error_code: ErrorCode | None = None
    raw_code: str = ""
    raw_message: str = ""
    occurred_at: datetime | None = None
    # Set on a notification of kind SUBSCRIPTION.
    subscription_event: SubscriptionEvent | None = None
    # Set on a notification of kind SMS.
    sms: InboundSms | None = None

    @property
    def result(self) -> CarrierResult:
        """What the callback states, as the answer to the call it is about."""
        return CarrierResult(
            outcome=self.outcome,
            carrier_reference=self.carrier_reference,
            error_code=self.error_code,
            raw_code=self.raw_code,
            raw_message=self.raw_message,
        )


class CarrierAdapter(abc.ABC):
    """Translate PlayPay's standard requests to one carrier protocol and back.

    Every method returns a result rather than raising for carrier-side problems:
    declines become FAILED with a standard `ErrorCode`, transport problems become
    FAILED(carrier_unavailable, not_sent=True) when nothing reached the carrier and
    PENDING when the request may have been processed.
    """

    capabilities: Capabilities = Capabilities()
    # The HTTP status a notification is acknowledged with (CAMARA expects 204).
    notification_ack_status: int = 200

    def __init__(self, config: CarrierConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def send_pin(self, request: ChargeRequest) -> CarrierResult:
        """Start a PIN flow: the player gets a PIN by SMS. PIN_SENT, FAILED or PENDING."""

    @abc.abstractmethod
    def verify_pin(self, request: ChargeRequest, *, pin: str) -> CarrierResult:
        """Check the PIN the player typed. PIN_VERIFIED, FAILED (invalid_pin, pin_expired) or PENDING."""

    @abc.abstractmethod
    def charge(self, request: ChargeRequest) -> CarrierResult:
        """Charge the player's bill: one-click, or after a verified PIN. SUCCEEDED, FAILED or PENDING."""

    @abc.abstractmethod
    def query_status(self, request: ChargeRequest) -> CarrierResult:
        """Ask the carrier what became of a charge whose outcome is unknown."""

    # Settling an unknown outcome, the protocol's way (docs/carriers/*.md, "Unknown outcomes"): a status
    # query where the protocol has one, else the same request again where the carrier deduplicates it.
    # SUCCEEDED or FAILED settle it; FAILED with `not_sent` says the carrier never got the request (send
    # it again); PENDING leaves it unknown, to be checked again later.

    def resolve_charge(self, request: ChargeRequest) -> CarrierResult:
        """What became of a charge (or a PIN step) whose outcome is unknown: the status query by default."""
        return self.query_status(request)

    def query_refund(self, request: RefundRequest) -> CarrierResult:
        """What became of a refund whose outcome is unknown."""
        return CarrierResult.pending("NO_STATUS_QUERY", "this protocol cannot be asked about a refund")

    def query_reversal(self, request: ChargeRequest) -> CarrierResult:
        """What became of a reversal whose outcome is unknown."""
        return CarrierResult.pending("NO_STATUS_QUERY", "this protocol cannot be asked about a reversal")

    def check_connection(self) -> CarrierResult:
        """Does the carrier answer PlayPay on its protocol, and accept its credentials? Moves no money.

        Each protocol proves it its own way (a token, a SOAP operation, a signed ping): SUCCEEDED only
        when that proof came back, FAILED with the reason (`connection_check`) otherwise.
        """
        return CarrierResult.failed(ErrorCode.REJECTED, "NO_CHECK", "this protocol has no connection check")

    def cancel(self, request: ChargeRequest) -> CarrierResult:
        """Release what a started flow holds at the carrier (a reservation, a prepared payment)."""
        return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=request.carrier_reference)

    def refund(self, request: RefundRequest) -> CarrierResult:
        return CarrierResult.failed(ErrorCode.REJECTED, raw_message="this protocol has no refunds")

    def reverse(self, request: ChargeRequest) -> CarrierResult:
        return CarrierResult.failed(ErrorCode.REJECTED, raw_message="this protocol has no reversals")

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        raise NotificationRejected("unsupported", "this protocol sends no notifications")

    def create_subscription(self, request: SubscriptionCreateRequest) -> CarrierResult:
        """Hand a subscription's renewals to the carrier (`managed_subscriptions`): SUCCEEDED with the carrier's
        reference of it."""
        return CarrierResult.failed(ErrorCode.REJECTED, raw_message="this protocol manages no subscriptions")

    def cancel_subscription(self, reference: str) -> CarrierResult:
        """Stop a subscription the carrier manages: no period is charged after this. SUCCEEDED once it is."""
        return CarrierResult.failed(ErrorCode.REJECTED, raw_message="this protocol manages no subscriptions")

    def query_subscription(self, reference: str) -> CarrierSubscription:
        """What the carrier knows of a subscription it manages: its status and the events it told of."""
        return CarrierSubscription(CarrierResult.pending("NO_STATUS_QUERY", "this protocol manages no subscriptions"))


def connection_check(result: CarrierResult) -> CarrierResult:
    """A connection check's result states success or failure: an unknown outcome (timeout, 5xx, a garbled
    reply) is a failure to reach the carrier, whatever it would mean for a payment."""
    if result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED):
        return result
    code = ErrorCode.CARRIER_TIMEOUT if result.raw_code == "TIMEOUT" else ErrorCode.CARRIER_UNAVAILABLE
    return CarrierResult.failed(code, result.raw_code, result.raw_message, transport_failed=result.transport_failed)
