"""Subscriber counts: how many subscriptions stand in each status now, per app, carrier and plan, read from a few
hundred rows instead of counting every subscription (a million of them took 130 ms a dashboard poll).

On PostgreSQL the subscriptions table's triggers (`TRIGGERS`, installed by reporting's migration 0018) write each
change of these counts to `SubscriptionCountChange` in the transaction that makes it: a subscription inserted, one
deleted, or one whose status, app, carrier or plan changed (a renewal that leaves the status alone writes nothing).
Those rows are only ever inserted, so concurrent transactions never wait on each other for them. `fold` (the
periodic job, every minute) moves them into `SubscriptionCount` in one statement; `rollup_rows` reads both in one
statement, so its answer is the table's as of that statement whether or not a fold ran, and equal to counting
the rows. On SQLite (the embedded default) the triggers are not installed: its readers count the rows. Anything
that writes subscriptions with triggers off (a restore with `--disable-triggers`, `session_replication_role =
replica`) leaves the counts behind: `manage.py recount_subscribers` (`recount`) counts them again.

The fold also writes the subscriber base of each UTC day that began (`SubscriberDayCount`: the counts at its
midnight, for averages over a period such as ARPU), once the day is `SETTLE` old: the counts plus the changes made
before midnight. So that the counts hold no later change then, a change made since the next day to count began
waits in `SubscriptionCountChange` until that day is counted (readers add it meanwhile). A day counts the changes
of the transactions that began before it (`at`, the transaction's start on the database's clock, which the fold
reads too); one that began before midnight and committed more than `SETTLE` after it would be missing from that
day's count, not from the counts.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction

from carriers.models import Carrier
from playpay.replica import reporting_connection
from reporting.models import SubscriberCountState, SubscriberDayCount, SubscriptionCount, SubscriptionCountChange
from reporting.services.rollups import DAY, RollupQuery, floor_day
from subscriptions.models import Plan, Subscription
from tenants.models import App

SOURCE = "subscriptions"
_COUNTS = SubscriptionCount._meta.db_table
_CHANGES = SubscriptionCountChange._meta.db_table
_GRAIN = "app_id, carrier_id, plan_id, status"
# A day is counted this long after its midnight: a transaction that began before it has committed by then.
SETTLE = timedelta(minutes=5)

# One statement: the changes it deletes are the ones it adds (a change committed meanwhile waits for the next fold).
_FOLD = f"""
WITH moved AS (DELETE FROM {_CHANGES} WHERE at < %(before)s RETURNING {_GRAIN}, change),
folded AS (
    INSERT INTO {_COUNTS} AS c ({_GRAIN}, subscriptions)
    SELECT {_GRAIN}, SUM(change) FROM moved GROUP BY {_GRAIN}
    ON CONFLICT ({_GRAIN}) DO UPDATE SET subscriptions = c.subscriptions + EXCLUDED.subscriptions
)
SELECT COUNT(*) FROM moved"""  # noqa: S608


def _standing(*, made_before: str = "") -> str:
    """The subscriptions per grain, as rows (grain, n): the counts and the changes not folded into them yet (those
    made before `made_before`, an SQL expression, when given)."""
    made = f" WHERE at < {made_before}" if made_before else ""
    return (
        f"SELECT {_GRAIN}, subscriptions AS n FROM {_COUNTS} "  # noqa: S608
        f"UNION ALL SELECT {_GRAIN}, change FROM {_CHANGES}{made}"
    )


# The counts at a midnight: the counts (no change made since) and the changes made before it.
_DAY_COUNT = f"""
INSERT INTO {SubscriberDayCount._meta.db_table} (day, {_GRAIN}, subscriptions)
SELECT %(day)s, {_GRAIN}, SUM(n) FROM ({_standing(made_before="%(day)s")}) f
GROUP BY {_GRAIN} HAVING SUM(n) <> 0"""  # noqa: S608


def enabled() -> bool:
    return connection.vendor == "postgresql"


def fold(*, now: datetime | None = None) -> int:
    """Count the days that began (each once it is `SETTLE` old), then move the changes made before the next day to
    count into the counts; how many change rows it moved. Safe to run twice or at once (folds take turns on the
    counts' lock; readers are never held up). `now` is the database's clock unless a test gives one."""
    if not enabled():
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        # Self-exclusive, and beside readers: two folds at once would only wait on each other's rows.
        cursor.execute(f"LOCK TABLE {_COUNTS} IN SHARE ROW EXCLUSIVE MODE")
        if now is None:  # the clock the change rows' times come from, not this process's
            cursor.execute("SELECT statement_timestamp()")
            now = cursor.fetchone()[0]
        first = floor_day(now) + DAY  # the first midnight after the counts began
        state, _ = SubscriberCountState.objects.get_or_create(pk=1, defaults={"first_day": first, "next_day": first})
        while state.next_day + SETTLE <= now:
            cursor.execute(_DAY_COUNT, {"day": state.next_day})
            state.next_day += DAY
        state.save()
        cursor.execute(_FOLD, {"before": state.next_day})
        folded = cursor.fetchone()[0]
        cursor.execute(f"DELETE FROM {_COUNTS} WHERE subscriptions = 0")  # noqa: S608
    return int(folded)


def recount() -> int:
    """Count the subscriptions again and replace the counts (writers of subscriptions wait for it; readers do not);
    how many count rows there are now. The changes made since the next midnight to count stay where they are, for
    that day's count (the counts are the rows less them); the changes before it are replaced by the rows counted.
    The day counts already written stay."""
    if not enabled():
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        # The subscriptions first, as a TRUNCATE of them (whose trigger empties the counts) takes them.
        cursor.execute(f"LOCK TABLE {Subscription._meta.db_table} IN SHARE MODE")
        cursor.execute(f"LOCK TABLE {_COUNTS} IN SHARE ROW EXCLUSIVE MODE")
        state = SubscriberCountState.objects.filter(pk=1).first()
        pending = {"since": state.next_day if state else datetime.max.replace(tzinfo=UTC)}
        cursor.execute(f"DELETE FROM {_CHANGES} WHERE at < %(since)s", pending)  # noqa: S608
        cursor.execute(f"DELETE FROM {_COUNTS}")  # noqa: S608
        cursor.execute(
            f"INSERT INTO {_COUNTS} ({_GRAIN}, subscriptions) "  # noqa: S608
            f"SELECT {_GRAIN}, SUM(n) FROM ("
            f"SELECT {_GRAIN}, 1 AS n FROM {Subscription._meta.db_table} "
            f"UNION ALL SELECT {_GRAIN}, -change FROM {_CHANGES} WHERE at >= %(since)s"
            f") f GROUP BY {_GRAIN} HAVING SUM(n) <> 0",
            pending,
        )
        return int(cursor.rowcount)


def counted_days(since: datetime, until: datetime) -> tuple[int, datetime]:
    """How many of the midnights in [since, until) have their day count (none on SQLite), and the end of the part
    of the period they cover: a reader of the day counts reads them up to there, so that a fold counting the next
    day meanwhile adds none it did not count here."""
    state = SubscriberCountState.objects.filter(pk=1).first() if enabled() else None
    if state is None:
        return 0, since
    low, high = max(since, state.first_day), min(until, state.next_day)
    days = (floor_day(high - timedelta(microseconds=1)) - floor_day(low - timedelta(microseconds=1))) // DAY
    return max(0, days), max(since, high)


# --- Reading ---------------------------------------------------------------------------------------------

# The source's dimensions at the counts' grain: an expression over the counts `f`, the app `a`, carrier `c` and
# plan `p`. None of them is ever empty, so counting one counts subscriptions.
_DIMENSIONS = {
    "app": "a.name",
    "carrier": "c.slug",
    "country": "c.country_id",
    "plan": "p.code",
    "plan_period": "p.period",
    "status": "f.status",
}


def _answerable(query: RollupQuery) -> bool:
    """Counts of the subscriptions standing now (no period, no time bucket) by the dimensions above."""
    if not enabled() or query.source != SOURCE or query.since or query.until or query.bucket:
        return False
    fields = [field for _, field in query.group_by] + [field for field, _ in query.filters]
    if any(field not in _DIMENSIONS for field in fields):
        return False
    return all(
        aggregation == "count" and (not field or field in _DIMENSIONS) for _, aggregation, field in query.measures
    )


def rollup_rows(query: RollupQuery) -> list[dict[str, Any]] | None:
    """The query's rows, as counting the subscriptions gives them (keyed by output name, ordered by the
    dimensions), or None when the counts cannot answer it."""
    if not _answerable(query):
        return None
    group = [(name, _DIMENSIONS[field]) for name, field in query.group_by]
    select = [f"{expression} AS g{index}" for index, (_, expression) in enumerate(group)]
    select += [f"COALESCE(SUM(f.n), 0) AS m{index}" for index in range(len(query.measures))]
    params: dict[str, Any] = {}
    where = []
    for index, (field, values) in enumerate(query.filters):
        where.append(f"{_DIMENSIONS[field]} = ANY(%(flt{index})s)")
        params[f"flt{index}"] = list(values)
    keys = ", ".join(f"g{index}" for index in range(len(group)))
    sql = (
        f"SELECT {', '.join(select)} FROM ({_standing()}) f "  # noqa: S608
        f"JOIN {App._meta.db_table} a ON a.id = f.app_id "
        f"JOIN {Carrier._meta.db_table} c ON c.id = f.carrier_id "
        f"JOIN {Plan._meta.db_table} p ON p.id = f.plan_id"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        # A group whose subscriptions all left it has none: counting the rows gives no such group.
        + (f" GROUP BY {keys} HAVING SUM(f.n) <> 0 ORDER BY {keys}" if group else "")
    )
    with reporting_connection().cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    names = [name for name, _ in group] + [name for name, _, _ in query.measures]
    return [dict(zip(names, row, strict=True)) for row in rows]
