"""Carrier health, read from the one record of every carrier call: the journal.

The gateway journals each call (operation, result, latency). The reporting dashboard's carrier tile reads
the same records (through its carrier-call rollups, which answer as the journal does), with the fields
defined here, so the carrier page and the dashboard show the same figures for the same period.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from journal.services import Kind
from journal.store import DocumentField, JournalAggregate, journal_store

# What a carrier-call journal document says, field by field (reporting's `carrier_calls` source reads these).
CARRIER_CALL_FIELDS: dict[str, DocumentField] = {
    "carrier": DocumentField("correlation.carrier"),
    "operation": DocumentField("data.operation"),
    "protocol": DocumentField("data.protocol"),
    "outcome": DocumentField("data.result.outcome"),
    "error_code": DocumentField("data.result.error_code"),
    "latency_ms": DocumentField("data.latency_ms", cast="int"),
    "failed": DocumentField("data.result.outcome", flag_values=("failed",)),
    "transport_failed": DocumentField("data.result.transport_failed", flag_values=(True,)),
}

HISTORY_BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class CallFigures:
    """A carrier's calls in a period (or one bucket of it)."""

    calls: int = 0
    # The carrier answered no (a decline, a wrong PIN) or the call failed in transport.
    failed: int = 0
    # Unreachable, timed out, 5xx or garbled: the carrier's own trouble.
    transport_failed: int = 0
    avg_latency_ms: float | None = None
    max_latency_ms: int | None = None
    start: datetime | None = None

    @property
    def answered_percent(self) -> float | None:
        """Share of calls the carrier answered (approved or declined), not failed in transport."""
        return 100 * (self.calls - self.transport_failed) / self.calls if self.calls else None

    @property
    def calls_text(self) -> str:
        return f"{self.calls} call" if self.calls == 1 else f"{self.calls} calls"

    @property
    def latency(self) -> str:
        """Average latency for a person: "143 ms", or "—" when no call measured one."""
        return "—" if self.avg_latency_ms is None else f"{round(self.avg_latency_ms)} ms"

    @property
    def slowest(self) -> str:
        return "—" if self.max_latency_ms is None else f"{self.max_latency_ms} ms"


_MEASURES: dict[str, tuple[str, DocumentField | None]] = {
    "calls": ("count", None),
    "failed": ("sum", CARRIER_CALL_FIELDS["failed"]),
    "transport_failed": ("sum", CARRIER_CALL_FIELDS["transport_failed"]),
    "avg_latency_ms": ("avg", CARRIER_CALL_FIELDS["latency_ms"]),
    "max_latency_ms": ("max", CARRIER_CALL_FIELDS["latency_ms"]),
}


def _figures(row: dict[str, Any], start: datetime | None = None) -> CallFigures:
    average = row.get("avg_latency_ms")
    return CallFigures(
        calls=int(row.get("calls") or 0),
        failed=int(row.get("failed") or 0),
        transport_failed=int(row.get("transport_failed") or 0),
        avg_latency_ms=None if average is None else float(average),
        max_latency_ms=None if row.get("max_latency_ms") is None else int(row["max_latency_ms"]),
        start=start,
    )


def carrier_call_figures(*, carriers: Sequence[str], since: datetime, until: datetime) -> dict[str, CallFigures]:
    """Each carrier's (slug) calls in [since, until); a carrier without calls has zero figures."""
    rows = journal_store().aggregate(
        JournalAggregate(
            kind=Kind.CARRIER_CALL,
            since=since,
            until=until,
            filters={"carrier": (CARRIER_CALL_FIELDS["carrier"], list(carriers))},
            group={"carrier": CARRIER_CALL_FIELDS["carrier"]},
            measures=_MEASURES,
        )
    )
    found = {str(row["carrier"]): _figures(row) for row in rows}
    return {slug: found.get(slug, CallFigures()) for slug in carriers}


def carrier_call_history(*, carrier: str, since: datetime, until: datetime, bucket: str) -> list[CallFigures]:
    """A carrier's calls per UTC hour or day from the bucket holding `since` up to `until`, quiet ones as zero."""
    step = HISTORY_BUCKETS[bucket]
    rows = journal_store().aggregate(
        JournalAggregate(
            kind=Kind.CARRIER_CALL,
            since=since,
            until=until,
            filters={"carrier": (CARRIER_CALL_FIELDS["carrier"], [carrier])},
            bucket=bucket,
            measures=_MEASURES,
        )
    )
    found = {_naive(row["bucket"]): row for row in rows}
    start = since.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        start = start.replace(hour=0)
    history = []
    while start < until:
        history.append(_figures(found.get(_naive(start), {}), start))
        start += step
    return history


def _naive(moment: datetime) -> datetime:
    """A bucket's start as a key: the stores answer in UTC, aware or (SQLite) naive."""
    return moment.replace(tzinfo=None) if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)
