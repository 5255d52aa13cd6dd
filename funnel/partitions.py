"""Monthly partitions of the funnel events table on PostgreSQL.

`funnel_funnelevent` is declared `PARTITION BY RANGE (occurred_at)` with one partition per calendar
month in UTC (`funnel_funnelevent_p2026_11` holds [2026-11-01, 2026-12-01)) and a DEFAULT partition
(`funnel_funnelevent_default`) that takes whatever no monthly partition covers, so no event is ever
refused for its timestamp. `ensure_partitions` (the periodic job *funnel: create event partitions*)
creates the coming months ahead of time and gives the months that landed in the default partition
a partition of their own, moving their rows out of it. Elsewhere (SQLite) all of this does nothing.

Planner statistics: a partition filled faster than autovacuum looks (a bulk load, a burst of
ingestion) has none, or ones that say it is nearly empty, and a report planned on them can take a
plan that is quadratic in the events. `analyze_partitions` analyses the partitions that are in that
state (never analysed, or changed by more than half since); funnel reports, the rollup job and the
partition job call it first. ANALYZE reads a sample (some 30,000 rows), whatever the partition's size.
"""

from datetime import UTC, date, datetime

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

TABLE = "funnel_funnelevent"
DEFAULT_PARTITION = f"{TABLE}_default"
MONTHS_AHEAD = 3
# A month that turns up in the default partition gets its own partition when it is no further back
# than this; rows from further back (a sender's clock gone wrong) stay in the default partition.
MONTHS_BACK = 24
# DDL here takes a short exclusive lock on the events table: give up rather than queue behind a long
# report (and hold up ingestion behind us); the next run tries again.
LOCK_TIMEOUT = "5s"
# A partition is analysed again when the rows changed since its last analysis are more than this share
# of the rows it had then (and more than ANALYZE_MIN_CHANGES).
ANALYZE_CHANGED_SHARE = 0.5
ANALYZE_MIN_CHANGES = 1000


def is_partitioned() -> bool:
    return connection.vendor == "postgresql"


def month_start(moment: datetime | date) -> date:
    return date(moment.year, moment.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def _months_between(first: date, last: date) -> int:
    return (last.year - first.year) * 12 + last.month - first.month


def partition_name(month: date) -> str:
    return f"{TABLE}_p{month.year:04d}_{month.month:02d}"


def _bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end_month = add_months(month, 1)
    return start, datetime(end_month.year, end_month.month, 1, tzinfo=UTC)


def partitions() -> list[str]:
    """Names of the events table's partitions (the default one included), sorted."""
    if not is_partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY 1",
            [TABLE],
        )
        return [row[0] for row in cursor.fetchall()]


def _default_months(cursor: CursorWrapper) -> list[date]:
    cursor.execute(
        f"SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date FROM {DEFAULT_PARTITION}"
    )
    return [row[0] for row in cursor.fetchall()]


def create_partition(cursor: CursorWrapper, month: date) -> None:
    """Create the month's partition; rows of that month already in the default partition move into it.

    Call inside a transaction that holds the events table's ACCESS EXCLUSIVE lock (as
    `ensure_partitions` does), so that no row for the month lands in the default partition meanwhile.
    """
    name = partition_name(month)
    start, end = _bounds(month)
    cursor.execute(
        f"SELECT 1 FROM {DEFAULT_PARTITION} WHERE occurred_at >= %s AND occurred_at < %s LIMIT 1", [start, end]
    )
    if cursor.fetchone() is None:
        cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)", [start, end])
        return
    # The month's rows are in the default partition: a new partition for them would overlap it. Move them
    # into a plain table of the same shape, then attach that (its indexes are built once, on attach).
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE occurred_at >= %s AND occurred_at < %s RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved",
        [start, end],
    )
    cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [start, end])


def ensure_partitions(
    *, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD, since: date | None = None
) -> list[str]:
    """Create the partitions of this month and the next `months_ahead` (and of every month from `since`),
    and of the recent months found in the default partition; returns the names of those it created
    (none when all exist)."""
    if not is_partitioned():
        return []
    this_month = month_start(now or timezone.now())
    existing = set(partitions())
    first = month_start(since) if since is not None and since < this_month else this_month
    wanted = {add_months(first, n) for n in range(_months_between(first, this_month) + months_ahead + 1)}
    with connection.cursor() as cursor:
        oldest = add_months(this_month, -MONTHS_BACK)
        wanted |= {
            month for month in _default_months(cursor) if oldest <= month <= add_months(this_month, months_ahead)
        }
    missing = sorted(month for month in wanted if partition_name(month) not in existing)
    if missing:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            for month in missing:
                create_partition(cursor, month)
    analyze_partitions()  # the ones rows were moved into, and any filled since the last run
    return [partition_name(month) for month in missing]


# Partitions with rows but no statistics, or changed by more than a share since their last analysis.
# reltuples is -1 until a partition is first analysed (or vacuumed); n_mod_since_analyze counts
# committed changes, reported by each backend within about a second.
STALE_PARTITIONS = """
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE i.inhparent = %s::regclass
  AND (c.relname = %s OR c.relname >= %s)
  AND (
    (c.reltuples < 0 AND pg_relation_size(c.oid) > 0)
    OR coalesce(s.n_mod_since_analyze, 0) > greatest(%s, c.reltuples * %s)
  )
ORDER BY 1
"""


def analyze_partitions(*, since: datetime | date | None = None) -> list[str]:
    """ANALYZE the events partitions (of months from `since` on, and the default one) whose statistics
    are missing or stale; returns their names."""
    if not is_partitioned():
        return []
    first = partition_name(month_start(since)) if since is not None else f"{TABLE}_p"
    with connection.cursor() as cursor:
        cursor.execute(STALE_PARTITIONS, [TABLE, DEFAULT_PARTITION, first, ANALYZE_MIN_CHANGES, ANALYZE_CHANGED_SHARE])
        stale = [row[0] for row in cursor.fetchall()]
        for name in stale:
            cursor.execute(f"ANALYZE {name}")
    return stale
