"""Idempotency keys, as Stripe and the IETF Idempotency-Key draft define them.

A key is claimed by a unique insert in the same transaction as the resource it
creates (`claim_key`, called by the creating service). The same key with the same
request replays the first response; with a different request it is refused (422);
while the first request is still running it is refused (409). Requests refused
before the claim (validation) leave no trace.

`run_idempotent` is the one way an endpoint runs a creating request under its key.
It is generic over the resource the request creates: the endpoint says how to
answer with one (`render`, called after the creating transaction has committed)
and how to read one back (`load`, for a request whose process died before it
stored its answer). A service whose resource cannot change at the commit may
render the answer before it and store it with the claim (`AnswerAtClaim`): one
statement and one commit fewer per request.

A key is kept IDEMPOTENCY_KEY_TTL_HOURS (`expired_before`), then its record is
purged and the key may be used again. A resource that keeps its key unique beyond
that frees it when a new request meets it (`release_expired_idempotency_key`): a
payment's key-table row when no record holds the key (it is released before the
new claim), a subscription's own key under the new request's claim.
"""

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from payments.errors import (
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyRequestInFlight,
)
from payments.models import IdempotencyRecord
from playpay.errors import DomainError
from playpay.inserts import insert_rows
from tenants.models import App

MAX_KEY_LENGTH = 255

Resource = TypeVar("Resource")


class KeyAlreadyClaimed(Exception):
    """Another request claimed the key between our lookup and our insert."""


@dataclass(frozen=True)
class IdempotencyKey:
    """An app's Idempotency-Key and the fingerprint of the request that came with it."""

    app: App
    key: str
    fingerprint: str


@dataclass(frozen=True)
class StoredResponse:
    """What a creating request answered: an HTTP status and a JSON-ready body."""

    status: int
    body: Any
    replayed: bool = False


# Given to `perform` by `run_idempotent`: renders the endpoint's answer for a resource that is final at its
# claim (nothing changes it at the commit), for the service to pass to `claim_key`.
AnswerAtClaim = Callable[[Resource], StoredResponse]


def parse_key(raw: str | None) -> str:
    if raw is None or raw == "":
        raise IdempotencyKeyMissing("Send an Idempotency-Key header, e.g. a UUID you generate per purchase.")
    if len(raw) > MAX_KEY_LENGTH or not raw.isascii() or not raw.isprintable():
        raise IdempotencyKeyInvalid()
    return raw


def fingerprint(*, method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_idempotent(
    key: IdempotencyKey,
    *,
    perform: Callable[[AnswerAtClaim[Resource]], Resource],
    render: Callable[[Resource], StoredResponse],
    load: Callable[[uuid.UUID], Resource],
) -> StoredResponse:
    """Create the resource with `perform` (which claims `key` in its transaction), or replay.

    The key is claimed inside `perform`; an earlier request with the key is looked up only
    when the claim (or a validation that a replay skips) fails, which keeps the common path short.
    `perform` is given an `AnswerAtClaim`; when it passed its answer to `claim_key`, that is the
    response, already stored.
    """
    answered: list[StoredResponse] = []

    def answer_at_claim(resource: Resource) -> StoredResponse:
        # The last answer is the committed one: a service that opens its transaction again renders again.
        answered.append(render(resource))
        return answered[-1]

    try:
        resource = perform(answer_at_claim)
    except KeyAlreadyClaimed:
        previous = _find_previous(key)
        if previous is None:  # the other request rolled back in between; the client may retry
            raise IdempotencyRequestInFlight(retry_after=1) from None
    except DomainError:
        previous = _find_previous(key)
        if previous is None:
            raise
    else:
        if answered:
            return answered[-1]
        response = render(resource)
        _complete_key(key, response)
        return response

    if previous.state == IdempotencyRecord.State.COMPLETED:
        return StoredResponse(status=previous.response_status or 200, body=previous.response_body, replayed=True)
    assert previous.resource_id is not None  # _find_previous returns only what can be answered
    response = render(load(previous.resource_id))
    _complete_key(key, response)
    return replace(response, replayed=True)


def claim_key(key: IdempotencyKey, *, resource_id: uuid.UUID, answer: StoredResponse | None = None) -> None:
    """Claim the key for a new resource. Call inside the transaction that creates the resource.

    On PostgreSQL a concurrent claim of the same key waits for ours to commit or roll back.
    `answer`: the response for good (from the `AnswerAtClaim`), stored with the claim; without it
    `run_idempotent` stores the response after the commit.
    """
    with key_claimed_once(key.key):
        insert_rows(claim_row(key, resource_id=resource_id, answer=answer))


@contextmanager
def key_claimed_once(key: str) -> Iterator[None]:
    """Around the insert of a key's claims (the request's record, a payment's key): KeyAlreadyClaimed when
    another request or payment of the app has the key (committed, or still running: on PostgreSQL the insert
    then waits for that transaction to end). No savepoint: the surrounding transaction is unusable after a
    refused claim, and the caller's atomic block rolls it back."""
    try:
        yield
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise KeyAlreadyClaimed(key) from exc
        raise


def claim_row(
    key: IdempotencyKey, *, resource_id: uuid.UUID, answer: StoredResponse | None = None
) -> IdempotencyRecord:
    """The claim `claim_key` inserts, not written yet: for a service that inserts it with its resource's other
    rows in one round trip, a taken key then raising IntegrityError (a unique violation) there."""
    completed: dict[str, Any] = {}
    if answer is not None:
        completed = {
            "state": IdempotencyRecord.State.COMPLETED,
            "response_status": answer.status,
            "response_body": answer.body,
            "completed_at": timezone.now(),
        }
    return IdempotencyRecord(
        app=key.app, key=key.key, fingerprint=key.fingerprint, resource_id=resource_id, **completed
    )


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether an insert failed on a unique constraint (rather than a check or foreign key)."""
    cause = exc.__cause__
    sqlstate = getattr(getattr(cause, "diag", None), "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate == "23505")  # PostgreSQL unique_violation
    return "UNIQUE constraint failed" in str(exc)  # SQLite


def _find_previous(key: IdempotencyKey) -> IdempotencyRecord | None:
    """The record of an earlier request with this key, if its response can be replayed.

    Returns None for a new key. Raises when the key was used for another request, or
    while the first request is still in flight. A record left in flight longer than
    IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS (its process died) is returned so that the
    caller can answer from the resource's current state.
    """
    record = IdempotencyRecord.objects.filter(app=key.app, key=key.key).first()
    if record is None:
        return None
    if record.fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was first used with a different request; use a new key for a new request."
        )
    if record.state == IdempotencyRecord.State.COMPLETED:
        return record
    stale_after = timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS)
    if record.resource_id is not None and record.created_at < timezone.now() - stale_after:
        return record
    raise IdempotencyRequestInFlight(retry_after=1)


def _complete_key(key: IdempotencyKey, response: StoredResponse) -> None:
    """Store the response of the request that claimed the key, for replays."""
    IdempotencyRecord.objects.filter(app=key.app, key=key.key).update(
        state=IdempotencyRecord.State.COMPLETED,
        response_status=response.status,
        response_body=response.body,
        completed_at=timezone.now(),
    )


def expired_before() -> datetime:
    """Keys claimed before this moment are expired (IDEMPOTENCY_KEY_TTL_HOURS): purged, free to be used again."""
    return timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)


def purge_expired_keys(*, batch_size: int = 5000) -> int:
    """Delete records older than IDEMPOTENCY_KEY_TTL_HOURS; returns how many were deleted."""
    cutoff = expired_before()
    deleted = 0
    while True:
        ids = list(IdempotencyRecord.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += IdempotencyRecord.objects.filter(id__in=ids).delete()[0]
