"""Recording interactions. The guarantee: a record is written before the code that made it moves on.

`record` writes the (redacted) document to the journal store at once. If the store fails, the
document goes, in the same call, to the spool (journal.spool): files on this host's disk, fsync'ed
before `record` returns, so that no database outage can take it. While records of this process wait
there, its new ones are spooled behind them, so none overtakes another. A drainer thread of the process,
and the periodic `drain_spool` job, ship them to the store once it is back. Only if the spool fails too
(a full or failing disk) is the record logged at ERROR level, with the document, for an operator to
replay, and the error raised. Nothing is dropped silently.

Nothing is stored twice either: each document gets its own id when built (`record_id`), and the store
writes a document whose id it holds as a no-op. So a record the store committed but whose acknowledgement
was lost (the connection cut before it came back), spooled and shipped again, or a spool segment shipped
again after its drainer died, is stored once: delivery to the store is at least once, storage exactly once.
"""

import logging
import uuid
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections, transaction
from django.utils import timezone

from journal.models import StaffAction
from journal.sanitize import sanitize
from journal.spool import Spool, spool_at
from journal.store import CORRELATION_FIELDS, journal_store
from playpay.ids import new_public_id
from playpay.redaction import msisdn_hash, redact

logger = logging.getLogger(__name__)


class Kind:
    API_REQUEST = "api_request"
    CARRIER_CALL = "carrier_call"
    CARRIER_CALLBACK = "carrier_callback"
    WEBHOOK = "webhook"  # was "app_notification" in records written before the rename
    STAFF_ACTION = "staff_action"


def new_request_id() -> str:
    return uuid.uuid4().hex


def build(kind: str, data: dict[str, Any], *, msisdn: str = "", **correlation: str) -> dict[str, Any]:
    """The document every backend stores: sanitized (see journal.sanitize; marked `"_sanitized": true`
    when anything had to change), then redacted; its `record_id` (a UUIDv7) is what makes a second write of
    it a no-op."""
    unknown = set(correlation) - set(CORRELATION_FIELDS)
    if unknown:
        raise ValueError(f"unknown correlation ids: {sorted(unknown)}")
    (ids, msisdn, data), changed = sanitize(
        ({name: str(value) for name, value in correlation.items() if value}, msisdn, data)
    )
    if msisdn:
        ids["msisdn_hash"] = msisdn_hash(msisdn)
    document = {
        "occurred_at": timezone.now().isoformat(),
        "record_id": str(new_public_id()),
        "kind": kind,
        "correlation": ids,
        "data": redact(data),
    }
    if changed:
        document["_sanitized"] = True
    return document


def journal_spool() -> Spool:
    return spool_at(Path(settings.JOURNAL_SPOOL_DIR))


def record(kind: str, data: dict[str, Any], *, msisdn: str = "", **correlation: str) -> None:
    """Journal one interaction; see the module's guarantee."""
    if not settings.JOURNAL_ENABLED:
        return
    document = build(kind, data, msisdn=msisdn, **correlation)
    spool = journal_spool()
    if not spool.holds_own_records():
        try:
            journal_store().write([document])
        except Exception as store_error:
            _spool(spool, document)
            logger.warning("journal store failed (%s); record spooled", store_error)
            return
        spool.drain_leftovers_in_background(_ship_in_background)
        return
    _spool(spool, document)


def _spool(spool: Spool, document: dict[str, Any]) -> None:
    try:
        spool.append([document])
    except Exception:
        logger.exception("journal record lost by both the store and the spool: %s", document)
        raise
    spool.drain_in_background(_ship_in_background)


def _ship(documents: list[dict[str, Any]]) -> None:
    """One spool segment to the store, all or nothing (a failed write is retried whole)."""
    sql = settings.JOURNAL_BACKEND == "sql"
    try:
        with transaction.atomic(using="journal") if sql else nullcontext():
            journal_store().write(documents)
    except Exception:
        if sql:
            connections["journal"].close()  # perhaps broken: the next try connects afresh
        raise


def _ship_in_background(documents: list[dict[str, Any]]) -> None:
    """As `_ship`, from a drainer thread, which keeps no connection between segments."""
    try:
        _ship(documents)
    finally:
        if settings.JOURNAL_BACKEND == "sql":
            connections["journal"].close()


def purge(*, before: datetime) -> int:
    """Drop every record older than `before` (retention); the only way records leave the journal."""
    return journal_store().purge(before=before)


def expire(*, now: datetime | None = None) -> int:
    """Retention per kind (settings.JOURNAL_TTL_DAYS, JOURNAL_TTL_DEFAULT_DAYS): drop every record past its
    kind's time; returns how many went. On PostgreSQL the months past every kind's time go as whole
    partitions, the rest row by row."""
    now = now or timezone.now()
    cutoffs = {kind: now - timedelta(days=days) for kind, days in settings.JOURNAL_TTL_DAYS.items()}
    return journal_store().expire(
        cutoffs=cutoffs, default_cutoff=now - timedelta(days=settings.JOURNAL_TTL_DEFAULT_DAYS)
    )


def drain_spool() -> int:
    """Move the records spooled on this host to the store; returns how many were moved."""
    spool = journal_spool()
    try:
        return spool.drain(_ship)
    except Exception as exc:
        logger.warning("journal spool not drained: the store refused (%s); its records wait on disk", exc)
        return 0


def record_staff_action(*, user: AbstractBaseUser, action: str, target: object, reason: str, outcome: str) -> None:
    object_type = type(target).__name__.lower()
    object_id = str(getattr(target, "public_id", None) or getattr(target, "pk", ""))
    StaffAction.objects.create(
        user_id=user.pk,
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_repr=str(target)[:200],
        reason=reason[:255],
        outcome=outcome[:255],
    )
    record(
        Kind.STAFF_ACTION,
        {
            "user": user.get_username(),
            "action": action,
            "object": f"{object_type}:{object_id}",
            "reason": reason,
            "outcome": outcome,
        },
        payment_id=object_id if object_type == "payment" else "",
        carrier=getattr(target, "slug", "") if object_type == "carrier" else "",
    )
