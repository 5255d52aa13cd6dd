"""HTTP for adapters: per-carrier timeouts, and transport failures turned into standard results."""

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from carriers.adapters.base import CarrierConfig, CarrierResult
from carriers.errors import ErrorCode

logger = logging.getLogger(__name__)

# A carrier's Retry-After is honoured up to this long; a longer (or broken) one would stall every call to it.
RETRY_AFTER_MAX_SECONDS = 3600.0


class TransportFailure(Exception):
    """The carrier could not be reached, or did not answer in time, or answered garbage."""

    def __init__(self, result: CarrierResult) -> None:
        self.result = result
        super().__init__(result.raw_message)


def client_for(config: CarrierConfig) -> httpx.Client:
    timeout = httpx.Timeout(connect=config.connect_timeout, read=config.read_timeout, write=10.0, pool=5.0)
    return httpx.Client(base_url=config.endpoint.rstrip("/"), timeout=timeout, follow_redirects=False)


def transport_failure(exc: Exception, *, sent: bool, timed_out: bool) -> TransportFailure:
    """The standard result of a request that failed in transport, whatever the HTTP library.

    A connection that was never made means nothing reached the carrier (`not_sent`), so a
    retry is safe. A timeout or broken reply after sending leaves the outcome unknown.
    """
    if not sent:
        return TransportFailure(
            CarrierResult.failed(
                ErrorCode.CARRIER_UNAVAILABLE,
                "CONNECT",
                str(exc) or type(exc).__name__,
                not_sent=True,
                transport_failed=True,
            )
        )
    if timed_out:
        return TransportFailure(
            CarrierResult.pending("TIMEOUT", f"no answer within the timeout ({exc})", transport_failed=True)
        )
    return TransportFailure(CarrierResult.pending("TRANSPORT", str(exc) or type(exc).__name__, transport_failed=True))


def server_error(status_code: int, text: str) -> TransportFailure:
    """An HTTP 5xx: the carrier may or may not have acted, so the outcome is unknown."""
    return TransportFailure(CarrierResult.pending(f"HTTP_{status_code}", text[:200], transport_failed=True))


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A `Retry-After` header (RFC 9110 §10.2.3: seconds, or an HTTP date) as seconds from now, at most
    RETRY_AFTER_MAX_SECONDS; None when absent or unreadable."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def with_retry_after(result: CarrierResult, status_code: int, headers: Any) -> CarrierResult:
    """`result` carrying the wait a 503 or 429 asked for in its `Retry-After` header."""
    if status_code not in (429, 503):
        return result
    seconds = retry_after_seconds(headers.get("Retry-After"))
    return result if seconds is None else dataclasses.replace(result, retry_after=seconds)


@contextmanager
def timed(method: str, url: str) -> Iterator[None]:
    """Log how long a request took, however it ended."""
    started = time.monotonic()
    try:
        yield
    finally:
        logger.debug("%s %s took %.1f ms", method, url, (time.monotonic() - started) * 1000)


def send(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send one request; raise TransportFailure with the standard result for transport problems."""
    try:
        with timed(method, url):
            response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        never_connected = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        raise transport_failure(
            exc, sent=not never_connected, timed_out=isinstance(exc, httpx.TimeoutException)
        ) from exc
    if response.status_code >= 500:
        failure = server_error(response.status_code, response.text or response.reason_phrase)
        raise TransportFailure(with_retry_after(failure.result, response.status_code, response.headers))
    return response


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON reply; a reply that is not JSON leaves the outcome unknown."""
    try:
        return response.json()
    except ValueError as exc:
        raise TransportFailure(
            CarrierResult.pending("MALFORMED", f"HTTP {response.status_code}: reply is not JSON", transport_failed=True)
        ) from exc


def guarded(call: Callable[[], CarrierResult]) -> CarrierResult:
    """Run an adapter call, turning TransportFailure into its result."""
    try:
        return call()
    except TransportFailure as failure:
        return failure.result


def refused_check(response: httpx.Response) -> CarrierResult:
    """A connection check the carrier answered with something other than its proof, as a failure that says
    what to fix."""
    status = response.status_code
    if status in (401, 403):
        reason = "the carrier refused the credentials"
    elif status == 404:
        reason = "nothing answers this check at the endpoint: is the endpoint URL the carrier's API base?"
    else:
        reason = "the carrier did not answer the check as its protocol does"
    detail = (response.text or response.reason_phrase)[:200]
    return CarrierResult.failed(ErrorCode.REJECTED, f"HTTP_{status}", f"{reason} ({detail})")
