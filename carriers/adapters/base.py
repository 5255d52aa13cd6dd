"""The one interface every carrier protocol implements, over small typed requests and results."""

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from carriers.errors import ErrorCode


class Outcome(StrEnum):
    PIN_SENT = "pin_sent"
    PIN_VERIFIED = "pin_verified"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The carrier did not state an outcome: never read it as success or failure.
    PENDING = "pending"


@dataclass(frozen=True)
class CarrierConfig:
    slug: str
    endpoint: str
    credentials: dict[str, Any] = field(repr=False)
    connect_timeout: float
    read_timeout: float


@dataclass(frozen=True)
class ChargeRequest:
    payment_id: str
    msisdn: str
    amount_minor: int
    currency: str
    price_point: str
    description: str = ""


@dataclass(frozen=True)
class CarrierResult:
    outcome: Outcome
    carrier_reference: str = ""
    error_code: ErrorCode | None = None
    raw_code: str = ""
    raw_message: str = ""


class CarrierAdapter(abc.ABC):
    """Translate PlayPay's standard requests to one carrier protocol and back."""

    def __init__(self, config: CarrierConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def send_pin(self, request: ChargeRequest) -> CarrierResult:
        """Start a PIN flow: the carrier texts the player a PIN. Outcome PIN_SENT or FAILED."""

    @abc.abstractmethod
    def verify_pin(self, request: ChargeRequest, *, carrier_reference: str, pin: str) -> CarrierResult:
        """Check the PIN the player typed. Outcome PIN_VERIFIED or FAILED (invalid_pin, pin_expired)."""

    @abc.abstractmethod
    def charge(self, request: ChargeRequest, *, carrier_reference: str = "") -> CarrierResult:
        """Charge the player's bill. SUCCEEDED, FAILED, or PENDING when the carrier did not say."""

    @abc.abstractmethod
    def query_status(self, *, carrier_reference: str) -> CarrierResult:
        """Ask the carrier what became of a charge."""
