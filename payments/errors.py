"""Payment domain errors; each has a stable `code` that the API returns as problem+json."""

from playpay.errors import DomainError


class PaymentError(DomainError):
    code = "payment_error"


class IllegalTransition(PaymentError):
    code = "illegal_transition"
    title = "The payment is not in a state that allows this"
    http_status = 409


class FlowNotSupported(PaymentError):
    code = "flow_not_supported"
    title = "The carrier does not support this payment flow"
    http_status = 422


class InvalidPin(PaymentError):
    code = "invalid_pin"
    title = "The PIN is not correct"
    http_status = 422


class PinExpired(PaymentError):
    code = "pin_expired"
    title = "The PIN has expired; start a new payment"
    http_status = 409


class IdempotencyKeyMissing(PaymentError):
    code = "idempotency_key_missing"
    title = "The Idempotency-Key header is required"
    http_status = 400


class IdempotencyKeyInvalid(PaymentError):
    code = "idempotency_key_invalid"
    title = "The Idempotency-Key header must be 1 to 255 printable ASCII characters"
    http_status = 400


class IdempotencyKeyReused(PaymentError):
    code = "idempotency_key_reused"
    title = "This Idempotency-Key was used with a different request"
    http_status = 422


class IdempotencyRequestInFlight(PaymentError):
    code = "idempotency_request_in_flight"
    title = "A request with this Idempotency-Key is still being processed; retry later"
    http_status = 409


class CarrierTemporarilyUnavailable(PaymentError):
    code = "carrier_unavailable"
    title = "The carrier cannot be reached right now; retry shortly"
    http_status = 503


class UnknownCarrier(PaymentError):
    code = "unknown_carrier"
    title = "No carrier has this slug"
    http_status = 404


class RefundExceedsCaptured(PaymentError):
    code = "refund_exceeds_captured"
    title = "The refund is more than what is left to refund"
    http_status = 422


class ReversalNotAllowed(PaymentError):
    code = "reversal_not_allowed"
    title = "This payment can no longer be reversed"
    http_status = 409


class ChargeNotInLedger(PaymentError):
    code = "charge_not_in_ledger"
    title = "This payment's charge is no longer in the ledger"
    http_status = 409


class PlayerBlocked(PaymentError):
    code = "player_blocked"
    title = "The app has blocked this player (phone number or user) from paying"
    http_status = 403
