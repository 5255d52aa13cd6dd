"""An in-process test carrier, like a payment provider's test mode; no network.

Test PIN: 1234. The MSISDN's last four digits choose the charge outcome:
0002 insufficient_funds, 0003 user_barred, 0004 spending_limit, 0005 no answer
(the charge stays pending); any other number succeeds.
"""

import hashlib

from carriers.adapters.base import CarrierAdapter, CarrierResult, ChargeRequest, Outcome
from carriers.errors import ErrorCode

TEST_PIN = "1234"
_DECLINES = {
    "0002": (ErrorCode.INSUFFICIENT_FUNDS, "Subscriber balance too low"),
    "0003": (ErrorCode.USER_BARRED, "Subscriber barred from premium billing"),
    "0004": (ErrorCode.SPENDING_LIMIT, "Monthly spending limit reached"),
}
_NO_ANSWER = "0005"


def _reference(request: ChargeRequest) -> str:
    return request.carrier_reference or "sbx_" + hashlib.sha256(request.payment_id.encode()).hexdigest()[:20]


class SandboxAdapter(CarrierAdapter):
    def send_pin(self, request: ChargeRequest) -> CarrierResult:
        return CarrierResult(outcome=Outcome.PIN_SENT, carrier_reference=_reference(request))

    def verify_pin(self, request: ChargeRequest, *, pin: str) -> CarrierResult:
        if pin != TEST_PIN:
            return CarrierResult.failed(ErrorCode.INVALID_PIN, "PIN_MISMATCH", "The PIN does not match")
        return CarrierResult(outcome=Outcome.PIN_VERIFIED, carrier_reference=_reference(request))

    def charge(self, request: ChargeRequest) -> CarrierResult:
        reference = _reference(request)
        suffix = request.msisdn[-4:]
        if suffix == _NO_ANSWER:
            return CarrierResult.pending(carrier_reference=reference)
        if suffix in _DECLINES:
            code, message = _DECLINES[suffix]
            return CarrierResult.failed(code, code.upper(), message, carrier_reference=reference)
        return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reference)

    def query_status(self, request: ChargeRequest) -> CarrierResult:
        return self.charge(request) if request.msisdn[-4:] != _NO_ANSWER else CarrierResult.pending()
