"""Per-carrier resilience: circuit breaker, rate limit and health, shared through the cache."""

import time
from typing import Any

import pytest

from carriers.adapters.base import CarrierResult, Outcome
from carriers.errors import ErrorCode
from carriers.gateway import Breaker, CarrierBusy, call_carrier, refresh_health
from carriers.models import Carrier
from tests.factories import CarrierFactory

pytestmark = pytest.mark.django_db

OK = CarrierResult(outcome=Outcome.SUCCEEDED)
DECLINED = CarrierResult.failed(ErrorCode.INSUFFICIENT_FUNDS, "LOW", "no credit")
UNREACHABLE = CarrierResult.failed(ErrorCode.CARRIER_UNAVAILABLE, "CONNECT", "", not_sent=True, transport_failed=True)
TIMEOUT = CarrierResult.pending("TIMEOUT", "", transport_failed=True)


def answer(result: CarrierResult) -> Any:
    return lambda adapter: result


def test_breaker_opens_after_consecutive_transport_failures_and_lets_one_trial_through() -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=3, breaker_reset_seconds=1)
    for _ in range(3):
        call_carrier(carrier, answer(UNREACHABLE))
    assert Breaker(carrier).state() == "open"
    with pytest.raises(CarrierBusy, match="breaker"):
        call_carrier(carrier, answer(OK))
    time.sleep(1.05)
    assert Breaker(carrier).state() == "half_open"
    assert call_carrier(carrier, answer(OK)) == OK  # the trial call succeeds: closed again
    assert Breaker(carrier).state() == "closed"


def test_declines_do_not_count_against_the_breaker() -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=2)
    for _ in range(5):
        call_carrier(carrier, answer(DECLINED))
    assert Breaker(carrier).state() == "closed"


def test_a_success_resets_the_failure_count() -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=2)
    call_carrier(carrier, answer(TIMEOUT))
    call_carrier(carrier, answer(OK))
    call_carrier(carrier, answer(TIMEOUT))
    assert Breaker(carrier).state() == "closed"


def test_calls_over_the_carriers_rate_limit_must_wait() -> None:
    carrier = CarrierFactory.create(rate_limit_per_second=3)
    # Stay within one wall-clock second so the window does not roll over mid-test.
    time.sleep(1 - (time.time() % 1) + 0.01)
    for _ in range(3):
        call_carrier(carrier, answer(OK))
    with pytest.raises(CarrierBusy, match="rate limit"):
        call_carrier(carrier, answer(OK))


def test_health_summarises_recent_calls() -> None:
    carrier: Carrier = CarrierFactory.create()
    for result in (OK, OK, DECLINED, TIMEOUT, UNREACHABLE):
        call_carrier(carrier, answer(result))
    health = refresh_health(carrier)
    assert (health.calls, health.succeeded, health.declined, health.unknown, health.unreachable) == (5, 2, 1, 1, 1)
    assert health.success_rate_percent == 60
    assert health.breaker_state == "closed"
    assert health.avg_latency_ms is not None
