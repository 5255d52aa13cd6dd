"""Recording interactions. The guarantee: a record is written before the code that made it moves on.

`record` writes the (redacted) document to the journal store at once. If the store fails, the
document goes to the spool in the main database, in the same call, and the periodic
`drain_spool` job moves it to the store later; only if both fail is it logged at ERROR level,
with the document, for an operator to replay. Nothing is dropped silently.
"""

import logging
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from journal.models import JournalSpool, StaffAction
from journal.sanitize import sanitize
from journal.store import CORRELATION_FIELDS, journal_store
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
    when anything had to change), then redacted."""
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
        "kind": kind,
        "correlation": ids,
        "data": redact(data),
    }
    if changed:
        document["_sanitized"] = True
    return document


def record(kind: str, data: dict[str, Any], *, msisdn: str = "", **correlation: str) -> None:
    """Journal one interaction; see the module's guarantee."""
    if not settings.JOURNAL_ENABLED:
        return
    document = build(kind, data, msisdn=msisdn, **correlation)
    try:
        journal_store().write([document])
    except Exception as store_error:
        try:
            with transaction.atomic(using="default"):
                JournalSpool.objects.create(document=document, last_error=str(store_error)[:255])
        except Exception:
            logger.exception("journal record lost by both the store and the spool: %s", document)
            raise
        logger.warning("journal store failed (%s); record spooled", store_error)


def purge(*, before: datetime) -> int:
    """Drop every record older than `before` (retention); the only way records leave the journal."""
    return journal_store().purge(before=before)


def drain_spool(*, batch: int = 500) -> int:
    """Move spooled records to the journal store; returns how many were moved."""
    rows = list(JournalSpool.objects.order_by("id")[:batch])
    if not rows:
        return 0
    try:
        journal_store().write([row.document for row in rows])
    except Exception as exc:
        JournalSpool.objects.filter(pk__in=[row.pk for row in rows]).update(
            last_error=str(exc)[:255], attempts=F("attempts") + 1
        )
        return 0
    JournalSpool.objects.filter(pk__in=[row.pk for row in rows]).delete()
    return len(rows)


def record_staff_action(*, user: AbstractBaseUser, action: str, target: object, reason: str, outcome: str) -> None:
    object_type = type(target).__name__.lower()
    object_id = str(getattr(target, "public_id", None) or getattr(target, "pk", ""))
    StaffAction.objects.create(
        user_id=user.pk,
        action=action,
        object_type=object_type,
        object_id=object_id,
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
