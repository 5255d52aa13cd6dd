"""Per-carrier resilience: circuit breaker and rate limit, shared through the cache."""

from datetime import UTC, datetime
from typing import Any

import pytest

from carriers.adapters.base import CarrierResult, Outcome
from carriers.adapters.http import retry_after_seconds
from carriers.errors import ErrorCode
from carriers.gateway import Breaker, CarrierBusy, call_carrier
from tests.conftest import GatewayClock
from tests.factories import CarrierFactory

pytestmark = pytest.mark.django_db

OK = CarrierResult(outcome=Outcome.SUCCEEDED)
DECLINED = CarrierResult.failed(ErrorCode.INSUFFICIENT_FUNDS, "LOW", "no credit")
UNREACHABLE = CarrierResult.failed(ErrorCode.CARRIER_UNAVAILABLE, "CONNECT", "", not_sent=True, transport_failed=True)
TIMEOUT = CarrierResult.pending("TIMEOUT", "", transport_failed=True)


def answer(result: CarrierResult) -> Any:
    return lambda adapter: result


def test_breaker_opens_after_consecutive_transport_failures_and_lets_one_trial_through(clock: GatewayClock) -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=3, breaker_reset_seconds=30)
    for _ in range(3):
        call_carrier(carrier, answer(UNREACHABLE))
    assert Breaker(carrier).state() == "open"
    clock.advance(29.9)
    with pytest.raises(CarrierBusy, match="breaker") as busy:
        call_carrier(carrier, answer(OK))
    assert busy.value.retry_after == 1.0  # 0.1 s left, rounded up to the least a client is told to wait
    clock.advance(0.1)
    assert Breaker(carrier).state() == "half_open"
    assert call_carrier(carrier, answer(OK)) == OK  # the trial call succeeds: closed again
    assert Breaker(carrier).state() == "closed"


def test_a_failed_trial_opens_the_breaker_for_another_period(clock: GatewayClock) -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=2, breaker_reset_seconds=30)
    for _ in range(2):
        call_carrier(carrier, answer(TIMEOUT))
    clock.advance(30)
    assert call_carrier(carrier, answer(UNREACHABLE)) == UNREACHABLE  # the trial
    assert Breaker(carrier).state() == "open"
    clock.advance(29)
    with pytest.raises(CarrierBusy, match="breaker"):
        call_carrier(carrier, answer(OK))
    clock.advance(1)
    assert call_carrier(carrier, answer(OK)) == OK


def test_a_half_open_breaker_lets_one_trial_call_through_at_a_time(clock: GatewayClock) -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=1, breaker_reset_seconds=30)
    call_carrier(carrier, answer(UNREACHABLE))
    clock.advance(30)
    assert Breaker(carrier).allow()  # one worker's trial call, still on its way
    with pytest.raises(CarrierBusy, match="breaker"):
        call_carrier(carrier, answer(OK))


@pytest.mark.parametrize("run", ["first", "second"])
def test_breaker_state_does_not_outlive_a_test(run: str) -> None:
    """Whichever of the two runs second finds the breaker of the same carrier closed (the cache is cleared)."""
    carrier = CarrierFactory.create(slug="one-carrier", breaker_failure_threshold=1, breaker_reset_seconds=600)
    assert Breaker(carrier).state() == "closed"
    call_carrier(carrier, answer(TIMEOUT))
    assert Breaker(carrier).state() == "open"


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


def test_calls_over_the_carriers_rate_limit_must_wait(clock: GatewayClock) -> None:
    carrier = CarrierFactory.create(rate_limit_per_second=3)
    for _ in range(3):
        call_carrier(carrier, answer(OK))
    clock.advance(0.99)
    with pytest.raises(CarrierBusy, match="rate limit"):
        call_carrier(carrier, answer(OK))
    clock.advance(0.01)  # the next second
    assert call_carrier(carrier, answer(OK)) == OK


def test_a_carriers_retry_after_holds_back_every_call_to_it_until_then(clock: GatewayClock) -> None:
    carrier = CarrierFactory.create(breaker_failure_threshold=10)
    busy = CarrierResult.pending("HTTP_503", "", transport_failed=True, retry_after=20.0)
    call_carrier(carrier, answer(busy))
    clock.advance(19)
    with pytest.raises(CarrierBusy, match="Retry-After") as waiting:
        call_carrier(carrier, answer(OK))
    assert waiting.value.retry_after == pytest.approx(1.0)
    other = CarrierFactory.create()
    assert call_carrier(other, answer(OK)) == OK  # another carrier is not held back
    clock.advance(1)
    assert call_carrier(carrier, answer(OK)) == OK


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # an HTTP date, 30 s after "now"
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: at once
        ("99999", 3600.0),  # capped
        ("soon", None),
        ("", None),
        ("-5", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert retry_after_seconds(header, now=now) == seconds
