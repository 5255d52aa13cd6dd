"""Carrier-side domain errors and PlayPay's standard decline taxonomy."""

from enum import StrEnum

from playpay.errors import DomainError


class ErrorCode(StrEnum):
    """Every carrier error is mapped to one of these; the carrier's raw code is kept beside it."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    SPENDING_LIMIT = "spending_limit"
    USER_BARRED = "user_barred"
    INVALID_PIN = "invalid_pin"
    PIN_EXPIRED = "pin_expired"
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"
    PRICE_NOT_SUPPORTED = "price_not_supported"
    RESERVATION_EXPIRED = "reservation_expired"
    CARRIER_TIMEOUT = "carrier_timeout"
    CARRIER_UNAVAILABLE = "carrier_unavailable"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class InvalidMsisdn(DomainError):
    code = "invalid_msisdn"
    title = "The MSISDN is not a valid mobile number"
    http_status = 400


class CarrierNotResolved(DomainError):
    code = "carrier_not_resolved"
    title = "No active carrier could be determined for this number"
    http_status = 422


class CarrierNotReady(DomainError):
    code = "carrier_not_ready"
    title = "The carrier cannot take payments yet"
    http_status = 409


class CarrierNotFound(DomainError):
    code = "carrier_not_found"
    title = "No active carrier has this slug"
    http_status = 422


class CarrierCountryMismatch(DomainError):
    code = "carrier_country_mismatch"
    title = "The number does not belong to the carrier's country"
    http_status = 422


class ProtocolUnavailable(DomainError):
    code = "carrier_protocol_unavailable"
    title = "The carrier's protocol is not available in this deployment"
    http_status = 503


class PricePointNotFound(DomainError):
    code = "price_point_not_found"
    title = "The carrier has no active price point with this code"
    http_status = 422


class NotificationRejected(DomainError):
    """A carrier callback that is stale or cannot be read; it changes nothing."""

    code = "notification_rejected"
    title = "The notification is stale or cannot be read"
    http_status = 400

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason = reason


class NotificationSignatureInvalid(NotificationRejected):
    """A carrier callback whose signature or credentials do not verify."""

    code = "notification_signature_invalid"
    title = "The notification's signature or credentials do not verify"
    http_status = 401

    def __init__(self, detail: str) -> None:
        super().__init__("bad_signature", detail)
