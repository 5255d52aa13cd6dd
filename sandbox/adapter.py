"""An in-process test carrier, like a payment provider's test mode; no network.

Test PIN: 1234. The MSISDN's last four digits choose the charge outcome:
0002 insufficient_funds, 0003 user_barred, 0004 spending_limit, 0005 no answer
(the charge stays pending); any other number succeeds. The numbers whose answer changes over a
subscription's life (0021-0024, `core.SCENARIOS`) answer as the simulators do: this carrier counts their
charges, and remembers each payment's answer, in the simulators' shared state.
"""

import hashlib

from carriers.adapters.base import CarrierAdapter, CarrierResult, ChargeRequest, Outcome
from carriers.errors import ErrorCode
from sandbox.simulators.core import SCENARIOS, Decline, simulator

TEST_PIN = "1234"
_DECLINES = {
    "0002": (ErrorCode.INSUFFICIENT_FUNDS, "Subscriber balance too low"),
    "0003": (ErrorCode.USER_BARRED, "Subscriber barred from premium billing"),
    "0004": (ErrorCode.SPENDING_LIMIT, "Monthly spending limit reached"),
}
_NO_ANSWER = "0005"
_LIFE_DECLINES = {
    Decline.INSUFFICIENT_FUNDS: _DECLINES["0002"],
    Decline.USER_BARRED: _DECLINES["0003"],
    Decline.SPENDING_LIMIT: _DECLINES["0004"],
    Decline.UNKNOWN_SUBSCRIBER: (ErrorCode.UNKNOWN_SUBSCRIBER, "Subscriber not known (ported out)"),
}
_ANSWERED = "sandbox-answer:"


def _over_life(request: ChargeRequest) -> Decline | None:
    """The answer to a charge of a number whose answer changes over its life: counted once per payment (asked
    again, or for its status, the payment gets the answer it had)."""
    sim = simulator("sandbox")
    key = _ANSWERED + request.payment_id
    known = sim.records.get(key)
    if known is None:
        sim.records.add(key, {"decline": sim.charge_decline(request.msisdn)})
        known = sim.records[key]
    return Decline(known["decline"]) if known["decline"] else None


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
        scenario = SCENARIOS.get(suffix)
        if scenario is not None and scenario.later and (decline := _over_life(request)) is not None:
            code, message = _LIFE_DECLINES[decline]
            return CarrierResult.failed(code, code.upper(), message, carrier_reference=reference)
        return CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference=reference)

    def query_status(self, request: ChargeRequest) -> CarrierResult:
        return self.charge(request) if request.msisdn[-4:] != _NO_ANSWER else CarrierResult.pending()

    def check_connection(self) -> CarrierResult:
        """The sandbox answers in this process, with no endpoint or credentials: the check is that it states
        the outcome of its test number (a charge of the approving number succeeds) as a payment would see it."""
        probe = ChargeRequest(
            payment_id="connection-check", msisdn="447400000001", amount_minor=1, currency="GBP", price_point="check"
        )
        answer = self.charge(probe)
        if answer.outcome != Outcome.SUCCEEDED:
            return CarrierResult.failed(
                ErrorCode.REJECTED, "SANDBOX", "the test carrier did not approve its test number"
            )
        return CarrierResult(
            outcome=Outcome.SUCCEEDED, raw_code="SANDBOX_OK", raw_message="in-process test carrier: no network needed"
        )
