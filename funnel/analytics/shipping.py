"""Shipping to ClickHouse: new and changed rows of PostgreSQL (or SQLite) sent in batches, each source
from its durable mark (`AnalyticsShipment`), so that nothing is lost or left out across restarts.

One batch: read up to ANALYTICS_BATCH_ROWS rows after the mark, insert them into ClickHouse, then move
the mark past them. The mark moves only after ClickHouse has taken the batch; when the process dies (or
the database fails) between the two, the next run sends the same rows again, and ClickHouse drops the
repeat (see `funnel.analytics.clickhouse`): delivery is at least once, the stored result exactly once.

Funnel events are only ever added, so they go by id. Journeys and payments change, so they go by
(updated_at, id), and each change is sent again and replaces the older row in ClickHouse. A row is
shipped only once it is ANALYTICS_SETTLE_SECONDS old: ids and timestamps are taken when a transaction
writes, not when it commits, so a row committed late could otherwise fall behind a mark already past it.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Model, Q, QuerySet
from django.utils import timezone
from psycopg.types.datetime import TimestamptzLoader

from funnel.analytics import clickhouse
from funnel.models import AnalyticsShipment, FunnelEvent, Journey
from payments.models import Payment

logger = logging.getLogger(__name__)

# A run ships batches for at most this long, so that a scheduler tick is not held for hours while a
# new ClickHouse catches up; the next run goes on from the marks.
RUN_SECONDS = 50.0


@dataclass(frozen=True)
class Source:
    """One table of the main database and the ClickHouse table it is shipped to."""

    name: str
    model: type[Model]
    # (field read by the ORM, ClickHouse column), id first.
    columns: tuple[tuple[str, str], ...]
    # The time that orders the rows: append-only sources (by_id) go by id and wait for this time to
    # settle; the others go by (this time, id).
    time_field: str
    by_id: bool

    def read(self, mark: AnalyticsShipment, settled: datetime, limit: int) -> list[tuple[Any, ...]]:
        """Rows after the mark, in order, at most `limit`, written before `settled`."""
        fields = [field for field, _ in self.columns]
        rows: QuerySet[Any] = self.model._default_manager.all()
        if self.by_id:
            batch = _fetch(rows.filter(id__gt=mark.last_id).order_by("id").values_list(*fields)[:limit])
            # Ids are in write order, not commit order: stop at the first row too young to be sure that
            # every row before it is committed (one before it committed later would be passed over).
            at = fields.index(self.time_field)
            young = next((index for index, row in enumerate(batch) if row[at] >= settled), len(batch))
            return batch[:young]
        if mark.last_updated_at is not None:
            rows = rows.filter(
                Q(**{f"{self.time_field}__gt": mark.last_updated_at})
                | Q(**{self.time_field: mark.last_updated_at, "id__gt": mark.last_id})
            )
        rows = rows.filter(**{f"{self.time_field}__lt": settled}).order_by(self.time_field, "id")
        return _fetch(rows.values_list(*fields)[:limit])

    def order_time(self, row: tuple[Any, ...]) -> datetime:
        at: datetime = row[[field for field, _ in self.columns].index(self.time_field)]
        return at


def _fetch(rows: QuerySet[Any]) -> list[tuple[Any, ...]]:
    if connection.vendor != "postgresql":
        return list(rows)
    query, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        # Django's time zone loader costs some 10 µs a value, most of a batch's reading; psycopg's own gives
        # the same datetimes (aware, in the session's UTC).
        cursor.cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
        cursor.execute(query, params)
        fetched: list[tuple[Any, ...]] = cursor.fetchall()
        return fetched


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in names)


SOURCES = (
    Source(
        name="funnel_events",
        model=FunnelEvent,
        columns=_same(
            "id", "app_id", "journey_id", "event_id", "step", "occurred_at", "received_at", "source", "error_code"
        ),
        time_field="received_at",
        by_id=True,
    ),
    Source(
        name="funnel_journeys",
        model=Journey,
        columns=_same(
            "id", "app_id", "journey_id", "started_at", "carrier", "country", "price_point", "flow", "outcome",
            "updated_at",
        ),
        time_field="updated_at",
        by_id=False,
    ),
    Source(
        name="payments",
        model=Payment,
        columns=(
            *_same("id", "public_id", "app_id"),
            ("carrier__slug", "carrier"),
            ("carrier__country_id", "country"),
            ("price_point__code", "price_point"),
            *_same(
                "flow", "currency", "amount_minor", "refunded_minor", "status", "failure_code", "created_at",
                "updated_at",
            ),
        ),
        time_field="updated_at",
        by_id=False,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Shipped:
    source: str
    rows: int
    batches: int


def ship_batch(source: Source, *, batch_rows: int, settled: datetime) -> int:
    """Ship the next batch of one source; returns its rows (0: nothing new and settled)."""
    mark, _ = AnalyticsShipment.objects.get_or_create(source=source.name)
    rows = source.read(mark, settled, batch_rows)
    # A batch short of full took every settled row: all that was written before `settled` is shipped.
    caught_up = len(rows) < batch_rows
    if not rows:
        AnalyticsShipment.objects.filter(source=source.name).update(shipped_at=settled)
        return 0
    clickhouse.client().insert(
        source.name,
        list(zip(*rows, strict=True)),
        column_names=[column for _, column in source.columns],
        database=clickhouse.database(),
        column_oriented=True,
    )
    last = rows[-1]
    order_time = source.order_time(last)
    moved = AnalyticsShipment.objects.filter(
        source=source.name, last_id=mark.last_id, last_updated_at=mark.last_updated_at
    ).update(
        last_id=last[0],
        last_updated_at=None if source.by_id else order_time,
        rows=F("rows") + len(rows),
        shipped_at=settled if caught_up else F("shipped_at"),
        shipped_up_to=order_time,
    )
    if not moved:
        # Another run moved the mark meanwhile (it sent these rows too; ClickHouse keeps one copy).
        logger.info("analytics shipping of %s: mark moved by another run", source.name)
        return 0
    return len(rows)


def ship_to_clickhouse(*, batch_rows: int | None = None, run_seconds: float = RUN_SECONDS) -> list[Shipped]:
    """The periodic job: every source's rows written since its mark, in batches, each source for up to
    its share of `run_seconds`. Does nothing without CLICKHOUSE_URL."""
    if not clickhouse.is_configured():
        return []
    batch_rows = batch_rows or settings.ANALYTICS_BATCH_ROWS
    clickhouse.ensure_schema()
    shipped = []
    for source in SOURCES:
        deadline = time.monotonic() + run_seconds / len(SOURCES)
        rows = batches = 0
        while True:
            settled = timezone.now() - timedelta(seconds=settings.ANALYTICS_SETTLE_SECONDS)
            count = ship_batch(source, batch_rows=batch_rows, settled=settled)
            rows += count
            batches += 1 if count else 0
            if count < batch_rows or time.monotonic() >= deadline:
                break
        shipped.append(Shipped(source=source.name, rows=rows, batches=batches))
        logger.info(
            "analytics shipping of %s: %d rows in %d batches",
            source.name,
            rows,
            batches,
            extra={"source": source.name, "rows": rows, "batches": batches},
        )
    return shipped


def lag_seconds() -> list[tuple[dict[str, str], float]]:
    """Per source, how far ClickHouse may be behind: every row written longer ago than this is there."""
    now = timezone.now()
    marks = AnalyticsShipment.objects.filter(shipped_at__isnull=False).values_list("source", "shipped_at")
    return [({"source": name}, (now - shipped_at).total_seconds()) for name, shipped_at in marks if shipped_at]
