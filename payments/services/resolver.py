"""The resolver job: every unknown carrier outcome (charge, refund, reversal) is checked on a schedule
with a growing wait, and one unknown for too long is reported once, at ERROR.

Each check is a task on the carrier's queue (`resolve_payment`, `resolve_refund`, `resolve_reversal`):
a status query where the protocol has one, else the protocol's documented alternative (the table in
docs/operations.md, "Unknown outcomes"). The job counts the attempt and sets the next check before it
dispatches, so a lost or slow task is not sent again every minute and the wait grows all the same.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from payments.models import OutcomeTracking, Payment, Refund, Reversal
from payments.services import outcomes, refunds
from payments.services.carrier_flow import dispatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Kind:
    operation: str  # the label in logs and metrics
    model: type[OutcomeTracking]
    carrier_path: str  # the lookup from the row to its carrier's slug


KINDS = (
    _Kind("charge", Payment, "carrier__slug"),
    _Kind("refund", Refund, "payment__carrier__slug"),
    _Kind("reversal", Reversal, "payment__carrier__slug"),
)


def _unknown(kind: _Kind) -> QuerySet[Any]:
    rows: QuerySet[Any] = kind.model.objects.filter(outcome_unknown_since__isnull=False)  # type: ignore[attr-defined]
    if kind.model is not Payment:
        rows = rows.filter(status="pending")
    return rows


def _due(now: datetime) -> Q:
    first_check = Q(next_resolve_at__isnull=True, outcome_unknown_since__lte=now - outcomes.resolve_after())
    return Q(next_resolve_at__lte=now) | first_check


def unknown_outcomes(*, limit: int = 1000) -> int:
    """Dispatch a check of every unknown outcome that is due; report those unknown too long. Returns the
    number of checks dispatched."""
    now = timezone.now()
    count = 0
    for kind in KINDS:
        due = list(_unknown(kind).filter(_due(now)).order_by("pk").values_list("pk", flat=True)[:limit])
        count += sum(1 for pk in due if _dispatch_check(kind, pk, now))
    report_overdue(now=now)
    return count


def _dispatch_check(kind: _Kind, pk: int, now: datetime) -> bool:
    with transaction.atomic():
        # skip_locked: a row a worker is settling right now is checked on a later run.
        row = (
            _unknown(kind)
            .filter(_due(now), pk=pk)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("payment__carrier" if kind.model is not Payment else "carrier")
            .first()
        )
        if row is None:
            return False
        row.save(update_fields=outcomes.count_check(row, now=now))
        if isinstance(row, Payment):
            dispatch(row, "resolve_payment")
        else:
            refunds.dispatch_resolve(row)
    return True


def report_overdue(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Log, once each, the outcomes unknown for longer than OUTCOME_ALERT_AFTER_MINUTES. Returns how many."""
    now = now or timezone.now()
    cutoff = now - outcomes.alert_after()
    reported = 0
    for kind in KINDS:
        overdue = (
            _unknown(kind)
            .filter(outcome_unknown_since__lte=cutoff, outcome_alerted_at__isnull=True)
            .select_related("payment__carrier" if kind.model is not Payment else "carrier")
            .order_by("outcome_unknown_since")[:limit]
        )
        for row in overdue:
            # The conditional update is the "once": two jobs running together report it once.
            if not kind.model.objects.filter(pk=row.pk, outcome_alerted_at__isnull=True).update(  # type: ignore[attr-defined]
                outcome_alerted_at=now
            ):
                continue
            _log_overdue(kind.operation, row, now)
            reported += 1
    return reported


def _log_overdue(operation: str, row: OutcomeTracking, now: datetime) -> None:
    payment = row if isinstance(row, Payment) else row.payment  # type: ignore[attr-defined]
    since = row.outcome_unknown_since
    assert since is not None
    unknown_for = int((now - since).total_seconds())
    context: dict[str, object] = {
        "operation": operation,
        "carrier": payment.carrier.slug,
        "payment_id": str(payment.public_id),
        "status": str(row.status),  # type: ignore[attr-defined]
        "unknown_since": since.isoformat(),
        "unknown_for_seconds": unknown_for,
        "resolve_attempts": row.resolve_attempts,
        "next_check_at": row.next_resolve_at.isoformat() if row.next_resolve_at else "",
    }
    if isinstance(row, Refund):
        context["refund_id"] = str(row.public_id)
    logger.error(
        "%s of payment %s: the carrier has not stated the outcome for %d min (%d checks); see the runbook, "
        "'Unknown outcomes'",
        operation,
        payment.public_id,
        unknown_for // 60,
        row.resolve_attempts,
        extra=context,
    )


def unknown_by_carrier() -> Iterator[tuple[str, str, int, datetime]]:
    """(operation, carrier slug, how many, the oldest start) of the outcomes unknown now."""
    for kind in KINDS:
        rows = (
            _unknown(kind)
            .values(kind.carrier_path)
            .annotate(count=Count("pk"), oldest=Min("outcome_unknown_since"))
            .order_by()
        )
        for row in rows:
            yield kind.operation, row[kind.carrier_path], row["count"], row["oldest"]
