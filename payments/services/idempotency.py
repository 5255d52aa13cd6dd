"""Idempotency keys, as Stripe and the IETF Idempotency-Key draft define them.

A key is claimed by a unique insert in the same transaction as the resource it
creates. The same key with the same request replays the first response; with a
different request it is refused (422); while the first request is still running
it is refused (409). Requests refused before the claim (validation) leave no trace.
"""

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from payments.errors import (
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyRequestInFlight,
)
from payments.models import App, IdempotencyRecord

MAX_KEY_LENGTH = 255


class KeyAlreadyClaimed(Exception):
    """Another request claimed the key between our lookup and our insert."""


Response = tuple[int, Any]  # HTTP status and JSON body


@dataclass
class IdempotentRequest:
    app: App
    key: str
    fingerprint: str
    # How the API answers with the resource the request creates; set by the API layer.
    render: Callable[[Any], Response] | None = None
    # The response stored with the claim, when the resource was final at its creation.
    stored: Response | None = field(default=None, init=False)


def parse_key(raw: str | None) -> str:
    if raw is None or raw == "":
        raise IdempotencyKeyMissing("Send an Idempotency-Key header, e.g. a UUID you generate per purchase.")
    if len(raw) > MAX_KEY_LENGTH or not raw.isascii() or not raw.isprintable():
        raise IdempotencyKeyInvalid()
    return raw


def fingerprint(*, method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_previous(request: IdempotentRequest) -> IdempotencyRecord | None:
    """The record of an earlier request with this key, if its response can be replayed.

    Returns None for a new key. Raises when the key was used for another request, or
    while the first request is still in flight. A record left in flight longer than
    IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS (its process died) is returned so that the
    caller can answer from the resource's current state.
    """
    record = IdempotencyRecord.objects.filter(app=request.app, key=request.key).first()
    if record is None:
        return None
    if record.fingerprint != request.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was first used with a different request; use a new key for a new request."
        )
    if record.state == IdempotencyRecord.State.COMPLETED:
        return record
    stale_after = timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS)
    if record.resource_id is not None and record.created_at < timezone.now() - stale_after:
        return record
    raise IdempotencyRequestInFlight(retry_after=1)


def claim_key(request: IdempotentRequest, *, resource_id: uuid.UUID, final: Any = None) -> None:
    """Claim the key for a new resource. Call inside the transaction that creates the resource.

    On PostgreSQL a concurrent claim of the same key waits for ours to commit or roll back.
    `final` is the resource when what the API answers now is its answer for good (nothing
    changes it at the commit): the response is then stored with the claim, in the same
    transaction, instead of by `complete_key` after it.
    """
    state = IdempotencyRecord.State.IN_FLIGHT
    status: int | None = None
    body: Any = None
    if final is not None and request.render is not None:
        status, body = request.render(final)
        state = IdempotencyRecord.State.COMPLETED
    try:
        IdempotencyRecord.objects.create(
            app=request.app,
            key=request.key,
            fingerprint=request.fingerprint,
            resource_id=resource_id,
            state=state,
            response_status=status,
            response_body=body,
            completed_at=timezone.now() if status is not None else None,
        )
    except IntegrityError as exc:
        # The surrounding transaction is unusable now; the caller's atomic block rolls it back.
        raise KeyAlreadyClaimed(request.key) from exc
    if status is not None:
        request.stored = (status, body)


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether an insert failed on a unique constraint (rather than a check or foreign key)."""
    cause = exc.__cause__
    sqlstate = getattr(getattr(cause, "diag", None), "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate == "23505")  # PostgreSQL unique_violation
    return "UNIQUE constraint failed" in str(exc)  # SQLite


def complete_key(request: IdempotentRequest, *, status: int, body: Any) -> None:
    """Store the response of the request that claimed the key, for replays."""
    IdempotencyRecord.objects.filter(app=request.app, key=request.key).update(
        state=IdempotencyRecord.State.COMPLETED,
        response_status=status,
        response_body=body,
        completed_at=timezone.now(),
    )


def purge_expired_keys(*, batch_size: int = 5000) -> int:
    """Delete records older than IDEMPOTENCY_KEY_TTL_HOURS; returns how many were deleted."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted = 0
    while True:
        ids = list(IdempotencyRecord.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += IdempotencyRecord.objects.filter(id__in=ids).delete()[0]
