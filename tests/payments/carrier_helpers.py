"""Helpers for end-to-end payment tests against the carrier simulators over real HTTP."""

import re
import time
from collections.abc import Callable
from typing import Any

from carriers.models import Carrier, NumberPrefix, PricePoint
from payments.models import Payment
from sandbox.simulators.core import simulator
from tests.factories import CarrierFactory, CountryFactory

PROTOCOL_CREDENTIALS: dict[str, dict[str, str]] = {
    "camara": {"client_id": "playpay", "client_secret": "camara-secret", "notification_token": "sink-token-for-tests"},
    "parlayx": {"sp_id": "000201", "sp_password": "parlayx-secret", "sender_name": "PlayPay"},
    "aggregator": {
        "merchant_id": "playpay-demo",
        "api_secret": "aggregator-api-secret",
        "callback_secret": "aggregator-callback-secret",
    },
}


def simulated_carrier(live_url: str, protocol: str, *, prefix: str = "4474", **fields: Any) -> Carrier:
    """An active carrier of `protocol` whose endpoint is that protocol's simulator on the live server."""
    simulator(protocol).reset()
    carrier = CarrierFactory.create(
        slug=f"{protocol}-gb",
        country=CountryFactory.create(),
        protocol=protocol,
        endpoint=f"{live_url}/simulators/{protocol}",
        read_timeout_ms=1000,
        connect_timeout_ms=1000,
        **fields,
    )
    carrier.credentials = PROTOCOL_CREDENTIALS[protocol]
    carrier.save()
    NumberPrefix.objects.create(carrier=carrier, prefix=prefix)
    PricePoint.objects.create(
        carrier=carrier, code="gems-100", amount_minor=99, currency="GBP", carrier_payout_minor=69
    )
    return carrier


def wait_for(check: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_status(payment_id: str, *statuses: str, timeout: float = 10.0) -> Payment:
    def reached() -> bool:
        return Payment.objects.filter(public_id=payment_id, status__in=statuses).exists()

    try:
        wait_for(reached, timeout=timeout, what=f"payment {payment_id} to reach {statuses}")
    except AssertionError:
        current = Payment.objects.filter(public_id=payment_id).values_list("status", flat=True).first()
        raise AssertionError(f"payment {payment_id} is {current!r}, expected one of {statuses}") from None
    return Payment.objects.get(public_id=payment_id)


def last_pin(protocol: str, msisdn: str) -> str:
    wait_for(lambda: bool(simulator(protocol).sms.get(msisdn)), what=f"an SMS to {msisdn}")
    found = re.search(r"code is (\d+)", simulator(protocol).sms[msisdn][-1])
    assert found is not None, simulator(protocol).sms[msisdn][-1]
    return found.group(1)
