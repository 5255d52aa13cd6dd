"""Monthly partitions of the funnel events table on PostgreSQL (see playpay.partitions).

`funnel_funnelevent` is declared `PARTITION BY RANGE (occurred_at)`: `funnel_funnelevent_p2026_11` holds
[2026-11-01, 2026-12-01) and `funnel_funnelevent_default` whatever no monthly partition covers. The
periodic job *create partitions ahead* creates the coming months and moves the months that landed in the
default partition into partitions of their own. Elsewhere (SQLite) all of this does nothing.

Planner statistics: `analyze_partitions` analyses the partitions filled faster than autovacuum looks (never
analysed, or changed by more than half since; `PartitionedTable.analyze_stale`); funnel reports, the rollup
job and the partition job call it first.
"""

from datetime import date, datetime
from typing import Any

from playpay.partitions import MONTHS_AHEAD, PartitionedTable, add_months, month_start, register

__all__ = ["MONTHS_AHEAD", "add_months", "month_start"]

EVENTS = register(PartitionedTable(table="funnel_funnelevent", column="occurred_at"))
TABLE = EVENTS.table
DEFAULT_PARTITION = EVENTS.default_partition


def is_partitioned() -> bool:
    return EVENTS.is_partitioned()


def partition_name(month: date) -> str:
    return EVENTS.partition_name(month)


def partitions() -> list[str]:
    """Names of the events table's partitions (the default one included), sorted."""
    return EVENTS.partitions()


def create_partition(cursor: Any, month: date) -> None:
    EVENTS.create_partition(cursor, month)


def analyze_partitions(*, since: datetime | date | None = None) -> list[str]:
    """ANALYZE the events partitions (of months from `since` on, and the default one) whose statistics are
    missing or stale; returns their names."""
    return EVENTS.analyze_stale(since=since)


def ensure_partitions(
    *, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD, since: date | None = None
) -> list[str]:
    """Create the partitions of this month and the next `months_ahead` (and of every month from `since`),
    and of the recent months found in the default partition; returns the names of those created."""
    return EVENTS.ensure(now=now, months_ahead=months_ahead, since=since)
