"""Every outbound carrier call goes through here: rate limit, circuit breaker, metrics and the journal.

State lives in the cache (Redis in production), so it is shared by every worker of a carrier.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from django.core.cache import cache

from carriers.adapters import adapter_for
from carriers.adapters.base import CarrierAdapter, CarrierResult, Outcome
from carriers.models import Carrier
from journal.services import Kind, record
from playpay.metrics import CARRIER_CALL_ERRORS, CARRIER_CALL_SECONDS, CARRIER_CALLS, CARRIER_CALLS_DEFERRED
from playpay.redaction import mask_msisdn

logger = logging.getLogger(__name__)


def clock() -> float:
    """Wall-clock seconds (shared by every worker through the cache, so not a monotonic clock): the breaker's
    open period and the rate limit's one-second windows read it. Tests move it."""
    return time.time()


class CarrierBusy(Exception):
    """The carrier must not be called now (breaker open, rate limit, its own Retry-After); try again after
    `retry_after` s."""

    def __init__(self, reason: str, retry_after: float) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{reason}; retry in {retry_after:.1f} s")


@dataclass(frozen=True)
class Breaker:
    carrier: Carrier

    def _key(self, name: str) -> str:
        return f"carrier:{self.carrier.slug}:breaker:{name}"

    def state(self) -> str:
        open_until = cache.get(self._key("open_until"))
        if open_until is None:
            return "closed"
        return "open" if clock() < open_until else "half_open"

    def allow(self) -> bool:
        open_until = cache.get(self._key("open_until"))
        if open_until is None:
            return True
        if clock() < open_until:
            return False
        # Half-open: one trial call at a time.
        trial = bool(cache.add(self._key("trial"), 1, timeout=self.carrier.breaker_reset_seconds))
        if trial:
            logger.info("circuit breaker half-open: one trial call", extra={"carrier": self.carrier.slug})
        return trial

    def retry_after(self) -> float:
        open_until = cache.get(self._key("open_until"))
        return max((open_until or 0) - clock(), 1.0)

    def record_success(self) -> None:
        was_open = cache.get(self._key("open_until")) is not None
        cache.delete_many([self._key("failures"), self._key("open_until"), self._key("trial")])
        if was_open:
            logger.info("circuit breaker closed", extra={"carrier": self.carrier.slug})

    def record_failure(self) -> None:
        key = self._key("failures")
        failures = 1 if cache.add(key, 1, timeout=3600) else cache.incr(key)
        if failures >= self.carrier.breaker_failure_threshold:
            reset = self.carrier.breaker_reset_seconds
            open_until = cache.get(self._key("open_until"))
            cache.set(self._key("open_until"), clock() + reset, timeout=reset * 10)
            cache.delete(self._key("trial"))
            if open_until is None or clock() >= open_until:  # it was closed, or half-open: a change
                logger.warning(
                    "circuit breaker opened after %d consecutive transport failures; calls wait %d s",
                    failures,
                    reset,
                    extra={"carrier": self.carrier.slug, "failures": failures},
                )


def _wait_key(carrier: Carrier) -> str:
    return f"carrier:{carrier.slug}:retry_after_until"


def _asked_to_wait(carrier: Carrier) -> float:
    """Seconds left of the wait the carrier last asked for (its `Retry-After`); 0 when none."""
    until = cache.get(_wait_key(carrier))
    return max(float(until) - clock(), 0.0) if until is not None else 0.0


def _note_retry_after(carrier: Carrier, operation: str, seconds: float) -> None:
    """No call to the carrier, from any worker, before the time its 503/429 `Retry-After` named."""
    until = clock() + seconds
    cache.set(_wait_key(carrier), until, timeout=int(seconds) + 5)
    logger.info(
        "carrier asked to wait %.0f s (Retry-After) after %s",
        seconds,
        operation,
        extra={"carrier": carrier.slug, "operation": operation, "retry_after_seconds": seconds},
    )


def _take_rate_token(carrier: Carrier) -> bool:
    key = f"carrier:{carrier.slug}:rate:{int(clock())}"
    if cache.add(key, 1, timeout=5):
        return True
    return int(cache.incr(key)) <= carrier.rate_limit_per_second


def _kind(result: CarrierResult) -> str:
    if result.not_sent:
        return "unreachable"
    if result.transport_failed:
        return "unknown"
    if result.outcome == Outcome.FAILED:
        return "declined"
    return "succeeded"


def _defer(carrier: Carrier, operation: str, reason: str) -> None:
    CARRIER_CALLS_DEFERRED.labels(carrier=carrier.slug, reason=reason).inc()
    logger.info(
        "carrier call %s deferred (%s); it is retried later",
        operation,
        reason.replace("_", " "),
        extra={"carrier": carrier.slug, "operation": operation, "reason": reason},
    )


def _observe(carrier: Carrier, operation: str, result: CarrierResult, elapsed: float, request: Any) -> None:
    """Metrics of one call, and a warning when it failed in transport (a decline is no failure)."""
    kind = _kind(result)
    CARRIER_CALLS.labels(carrier=carrier.slug, operation=operation, result=kind).inc()
    CARRIER_CALL_SECONDS.labels(carrier=carrier.slug, operation=operation).observe(elapsed)
    if not result.transport_failed:
        return
    CARRIER_CALL_ERRORS.labels(carrier=carrier.slug, operation=operation, kind=kind).inc()
    msisdn = getattr(request, "msisdn", "")
    logger.warning(
        "carrier call %s failed: %s",
        operation,
        "not sent (carrier unreachable)" if result.not_sent else "outcome unknown (timeout or broken reply)",
        extra={
            "carrier": carrier.slug,
            "operation": operation,
            "outcome": kind,
            "latency_ms": int(elapsed * 1000),
            "error_code": str(result.error_code or ""),
            "raw_code": result.raw_code,
            "raw_message": result.raw_message[:255],
            "msisdn": mask_msisdn(msisdn) if isinstance(msisdn, str) and msisdn else "",
        },
    )


def call_carrier(
    carrier: Carrier,
    operation: Callable[[CarrierAdapter], CarrierResult],
    *,
    name: str = "",
    request: Any = None,
    payment_id: str = "",
) -> CarrierResult:
    """Run one adapter operation for `carrier`, or raise CarrierBusy when it must wait.

    Every call is journaled: operation `name`, the standard `request` (a dataclass), the result
    and the latency, correlated with the payment.
    """
    operation_name = name or "call"
    if (wait := _asked_to_wait(carrier)) > 0:
        _defer(carrier, operation_name, "retry_after")
        raise CarrierBusy("the carrier asked to wait (Retry-After)", wait)
    breaker = Breaker(carrier)
    if not breaker.allow():
        _defer(carrier, operation_name, "breaker_open")
        raise CarrierBusy("circuit breaker open", breaker.retry_after())
    if not _take_rate_token(carrier):
        _defer(carrier, operation_name, "rate_limit")
        raise CarrierBusy("carrier rate limit", 1.0)
    started = time.monotonic()
    try:
        result = operation(adapter_for(carrier))
    except Exception:
        CARRIER_CALL_ERRORS.labels(carrier=carrier.slug, operation=operation_name, kind="exception").inc()
        raise
    elapsed = time.monotonic() - started
    latency_ms = int(elapsed * 1000)
    _observe(carrier, operation_name, result, elapsed, request)
    _journal(carrier, name, request, result, latency_ms, payment_id)
    if result.transport_failed:
        breaker.record_failure()
    else:
        breaker.record_success()
    if result.retry_after:
        _note_retry_after(carrier, operation_name, result.retry_after)
    return result


def _journal(
    carrier: Carrier, name: str, request: Any, result: CarrierResult, latency_ms: int, payment_id: str
) -> None:
    sent = (
        {k: v for k, v in asdict(request).items() if k != "state"}
        if is_dataclass(request) and not isinstance(request, type)
        else {}
    )
    reply = {k: v for k, v in asdict(result).items() if k != "state"}
    record(
        Kind.CARRIER_CALL,
        {"operation": name, "protocol": carrier.protocol, "request": sent, "result": reply, "latency_ms": latency_ms},
        msisdn=str(sent.get("msisdn", "")),
        carrier=carrier.slug,
        payment_id=payment_id or str(sent.get("payment_id", "")),
        refund_id=str(sent.get("refund_id", "")),
        carrier_reference=result.carrier_reference or str(sent.get("carrier_reference", "")),
    )
