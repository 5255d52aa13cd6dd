"""Payment rollups: payments, refunds and reversals summed per UTC hour of creation, kept up to date, and
the one place that decides whether a catalog query can be answered from them.

`refresh_payment_rollups` (the periodic job, every minute) extends the rollups to the last whole hour and
recomputes every older hour in which a payment, refund or reversal changed since its last run: a payment's
status and refunded amount change long after it was created, so an hour is never final. Changes are found
through indexes the payment tables already have (payments' `(status, updated_at)`, refunds' payment key;
reversals are few and read whole), so the payment flow does no extra work for the rollups.

`rollup_rows` answers a query over the `payments`, `refunds` or `reversals` sources when its dimensions,
filters, measures and time bucket exist at the rollups' grain: whole hours the rollups cover are read from
them (whole UTC months and days from their monthly and daily rows, see `cover_hours`), and the rest of the
period (the current hour, the partial hours at the edges) from the raw tables, aggregated to the same grain
in the same statement, so answers are live and equal to raw ones. Anything
else (distinct players, price points, a time zone that is not a whole number of hours from UTC, SQLite)
returns None and the caller reads the raw tables.
"""

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from carriers.models import Carrier
from payments.models import Payment, PaymentStatus, PaymentStatusChange, Refund, Reversal
from playpay.replica import reading_reports, reporting_alias, reporting_connection
from reporting.catalog import CHARGED, NOT_CHARGED
from reporting.models import (
    DECISION_BOUNDS,
    DECISION_OVER,
    PaymentDayRollup,
    PaymentMonthRollup,
    PaymentRollup,
    RefundDayRollup,
    RefundMonthRollup,
    RefundRollup,
    ReversalDayRollup,
    ReversalMonthRollup,
    ReversalRollup,
    RollupState,
    SubscriptionChargeDayRollup,
    SubscriptionChargeMonthRollup,
    SubscriptionChargeRollup,
)
from subscriptions.models import Plan, Subscription, SubscriptionCharge
from tenants.models import App

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# A change is looked for this far before the previous run started: a transaction that stamped `updated_at`
# before that run read the table but committed after it is still found by the next one.
LOOK_BACK = timedelta(minutes=15)
# At most this much of history is added per run, so that the first build over years of payments is done in
# bounded steps (`manage.py refresh_payment_rollups` runs them all); until then readers use raw rows for the rest.
MAX_STEP = timedelta(days=31)
FINAL = [PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.EXPIRED]


@contextmanager
def reporting_statement(*, rollup_build: bool = False) -> Iterator[None]:
    """A transaction for reporting statements, on the replica when there is one (playpay.replica; a rollup
    build's on the primary): on PostgreSQL without JIT (its compile time dominated the
    dashboard's queries) and with REPORTING_WORK_MEM, so that aggregates and sorts stay in memory. Inside
    another one (a dashboard's answer reads every tile in one), the outer transaction's settings serve."""
    if _reporting.active and not rollup_build:
        yield
        return
    # A report reads the replica, when there is one (playpay.replica); a rollup build writes the primary.
    alias = DEFAULT_DB_ALIAS if rollup_build else reporting_alias()
    reads = nullcontext() if rollup_build else reading_reports()
    with transaction.atomic(using=alias), _active(), reads:
        if connections[alias].vendor == "postgresql":
            with connections[alias].cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
                cursor.execute("SELECT set_config('work_mem', %s, true)", [settings.REPORTING_WORK_MEM])
                if rollup_build:
                    timeout = str(settings.REPORTING_ROLLUP_STATEMENT_TIMEOUT_MS)
                    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
        yield


class _Reporting(threading.local):
    active = False


_reporting = _Reporting()


@contextmanager
def _active() -> Iterator[None]:
    outer, _reporting.active = _reporting.active, True
    try:
        yield
    finally:
        _reporting.active = outer


def floor_hour(moment: datetime) -> datetime:
    """The start of the hour `moment` falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    """The first hour that starts at or after `moment`."""
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


# --- The grain: one SELECT per kind, over the raw tables, used to build the rollups and to read the live edge ---


@dataclass(frozen=True)
class _Kind:
    rollup: type[Any]
    day_rollup: type[Any]  # the same columns, per whole UTC day
    month_rollup: type[Any]  # the same columns, per whole UTC month
    columns: tuple[str, ...]  # after hour, app_id, carrier_id; the same names in the rollup table
    dimensions: tuple[str, ...]  # those of `columns` that are dimensions (grouped by), the rest are totals
    count: str  # the column counting rows
    facts: str  # SELECT hour, app_id, carrier_id, *columns FROM {rows} ... GROUP BY ...
    table: str  # the rows counted, and their alias in `facts` and `period`
    alias: str
    period: str  # the condition on the rows' time, between the SQL expressions {since} and {until}


def _decision_histogram() -> str:
    parts = []
    above = ""  # the first bucket also takes a history row stamped before the payment (clock skew)
    for bound, column in DECISION_BOUNDS:
        parts.append(f"COUNT(*) FILTER (WHERE {above}d.ms < {bound * 1000}) AS {column}")
        above = f"d.ms >= {bound * 1000} AND "
    parts.append(f"COUNT(*) FILTER (WHERE {above.removesuffix(' AND ')}) AS {DECISION_OVER}")
    return ",\n    ".join(parts)


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)  # our own status names, never input


_PAYMENT = Payment._meta.db_table
_PAYMENT_FACTS = f"""
SELECT date_trunc('hour', p.created_at, 'UTC') AS hour, p.app_id, p.carrier_id, p.currency, p.status,
    p.failure_code, COUNT(*) AS payments, SUM(p.amount_minor) AS amount_minor,
    MIN(p.amount_minor) AS amount_min_minor, MAX(p.amount_minor) AS amount_max_minor,
    SUM(p.refunded_minor) AS refunded_minor, MIN(p.refunded_minor) AS refunded_min_minor,
    MAX(p.refunded_minor) AS refunded_max_minor, COALESCE(SUM(d.ms), 0) AS decision_ms,
    {_decision_histogram()}
FROM {{rows}}
LEFT JOIN LATERAL (
    SELECT ROUND(EXTRACT(EPOCH FROM MIN(h.created_at) - p.created_at) * 1000)::bigint AS ms
    FROM {PaymentStatusChange._meta.db_table} h
    WHERE h.payment_id = p.id AND h.payment_created_at = p.created_at AND h.to_status IN ({_quoted(FINAL)})
) d ON true
GROUP BY 1, 2, 3, 4, 5, 6"""
# Payments have no index on created_at alone; (app_id, created_at) serves a period once every app is named.
_PAYMENT_PERIOD = (
    f"p.app_id = ANY(ARRAY(SELECT id FROM {App._meta.db_table})) "
    "AND p.created_at >= {since} AND p.created_at < {until}"
)

# A refund or reversal names its payment by (id, month): the join reads one payment partition's key, not all.
_REFUND_FACTS = f"""
SELECT date_trunc('hour', r.created_at, 'UTC') AS hour, p.app_id, p.carrier_id, r.currency, r.status,
    COUNT(*) AS refunds, SUM(r.amount_minor) AS amount_minor, MIN(r.amount_minor) AS amount_min_minor,
    MAX(r.amount_minor) AS amount_max_minor
FROM {{rows}} JOIN {_PAYMENT} p ON p.id = r.payment_id AND p.created_at = r.payment_created_at
GROUP BY 1, 2, 3, 4, 5"""
# Refunds' (status, created_at) index serves a period once every status is named.
_REFUND_PERIOD = (
    f"r.status IN ({_quoted(list(Refund.Status.values))}) AND r.created_at >= {{since}} AND r.created_at < {{until}}"
)

_REVERSAL_FACTS = f"""
SELECT date_trunc('hour', v.created_at, 'UTC') AS hour, p.app_id, p.carrier_id, p.currency, v.status,
    COUNT(*) AS reversals, SUM(p.amount_minor) AS amount_minor, MIN(p.amount_minor) AS amount_min_minor,
    MAX(p.amount_minor) AS amount_max_minor
FROM {{rows}} JOIN {_PAYMENT} p ON p.id = v.payment_id AND p.created_at = v.payment_created_at
GROUP BY 1, 2, 3, 4, 5"""
_REVERSAL_PERIOD = "v.created_at >= {since} AND v.created_at < {until}"

_CHARGE = SubscriptionCharge._meta.db_table
_SUCCEEDED, _FAILED = SubscriptionCharge.Outcome.SUCCEEDED.value, SubscriptionCharge.Outcome.FAILED.value
# A charge's subscription gives its app, carrier and plan (which a subscription keeps for life; charges are never
# deleted, as payments are not); its payment (by id and month) its currency and amount (a period missed has none).
# A period is counted on its first attempt: decided, and renewed once any attempt at it succeeded (one success per
# period at most: the charges' unique index). Only a first attempt that failed is looked up: a retry follows a
# failure only, and a period missed or pending on its first attempt has no other. (The lookup is a LIMIT 1
# subquery: as an EXISTS the planner may hash every charge there is to answer a few.)
_CHARGE_FACTS = f"""
SELECT date_trunc('hour', sc.created_at, 'UTC') AS hour, s.app_id, s.carrier_id, s.plan_id, p.currency, sc.kind,
    sc.outcome, sc.failure_code, COUNT(*) AS charges, SUM(p.amount_minor) AS amount_minor,
    MIN(p.amount_minor) AS amount_min_minor, MAX(p.amount_minor) AS amount_max_minor,
    COUNT(*) FILTER (WHERE sc.attempt = 1 AND sc.outcome IN ('{_SUCCEEDED}', '{_FAILED}')) AS periods_decided,
    COUNT(*) FILTER (WHERE sc.attempt = 1 AND (sc.outcome = '{_SUCCEEDED}' OR sc.outcome = '{_FAILED}' AND (
        SELECT true FROM {_CHARGE} w
        WHERE w.subscription_id = sc.subscription_id AND w.period_index = sc.period_index AND w.outcome = '{_SUCCEEDED}'
        LIMIT 1
    ))) AS periods_renewed
FROM {{rows}}
JOIN {Subscription._meta.db_table} s ON s.id = sc.subscription_id
LEFT JOIN {_PAYMENT} p ON p.id = sc.payment_id AND p.created_at = sc.payment_created_at
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"""
_CHARGE_PERIOD = "sc.created_at >= {since} AND sc.created_at < {until}"

_MONEY = ("amount_minor", "amount_min_minor", "amount_max_minor")
KINDS: dict[str, _Kind] = {
    "payments": _Kind(
        PaymentRollup,
        PaymentDayRollup,
        PaymentMonthRollup,
        (
            "currency",
            "status",
            "failure_code",
            "payments",
            *_MONEY,
            "refunded_minor",
            "refunded_min_minor",
            "refunded_max_minor",
            "decision_ms",
            *(column for _, column in DECISION_BOUNDS),
            DECISION_OVER,
        ),
        ("currency", "status", "failure_code"),
        "payments",
        _PAYMENT_FACTS,
        _PAYMENT,
        "p",
        _PAYMENT_PERIOD,
    ),
    "refunds": _Kind(
        RefundRollup,
        RefundDayRollup,
        RefundMonthRollup,
        ("currency", "status", "refunds", *_MONEY),
        ("currency", "status"),
        "refunds",
        _REFUND_FACTS,
        Refund._meta.db_table,
        "r",
        _REFUND_PERIOD,
    ),
    "reversals": _Kind(
        ReversalRollup,
        ReversalDayRollup,
        ReversalMonthRollup,
        ("currency", "status", "reversals", *_MONEY),
        ("currency", "status"),
        "reversals",
        _REVERSAL_FACTS,
        Reversal._meta.db_table,
        "v",
        _REVERSAL_PERIOD,
    ),
    "subscription_charges": _Kind(
        SubscriptionChargeRollup,
        SubscriptionChargeDayRollup,
        SubscriptionChargeMonthRollup,
        (
            "plan_id",
            "currency",
            "kind",
            "outcome",
            "failure_code",
            "charges",
            *_MONEY,
            "periods_decided",
            "periods_renewed",
        ),
        ("plan_id", "currency", "kind", "outcome", "failure_code"),
        "charges",
        _CHARGE_FACTS,
        _CHARGE,
        "sc",
        _CHARGE_PERIOD,
    ),
}


def _facts(kind: _Kind, prefix: str, since: datetime | None, until: datetime | None) -> tuple[str, dict[str, Any]]:
    """The raw rows of [since, until) aggregated to the rollups' grain (no bound: open on that side)."""
    period = kind.period.format(since=f"%({prefix}_since)s", until=f"%({prefix}_until)s")
    params = {
        f"{prefix}_since": since or datetime.min.replace(tzinfo=UTC),
        f"{prefix}_until": until or datetime.max.replace(tzinfo=UTC),
    }
    return kind.facts.format(rows=f"(SELECT * FROM {kind.table} {kind.alias} WHERE {period}) {kind.alias}"), params


def _facts_of_hours(kind: _Kind, prefix: str, hours: list[datetime]) -> tuple[str, dict[str, Any]]:
    """The raw rows of the given hours (scattered over months: each read through its index on its own).

    OFFSET 0 keeps the hour's read a subquery run once per hour, with the hour's bounds as parameters (an
    index range, its month's partition only). Pulled up into a join, PostgreSQL read every row of the table
    and filtered them by the hours: at 10 M payments, the 718 hours of 1,041 old payments changed at once by
    the platform's jobs took the refresh past its 5-minute bound on every run, where reading the payments hour
    by hour takes 0.8 s."""
    period = kind.period.format(since="changed.start", until="changed.start + interval '1 hour'")
    rows = (
        f"unnest(%({prefix}_hours)s::timestamptz[]) AS changed(start) "
        f"CROSS JOIN LATERAL (SELECT * FROM {kind.table} {kind.alias} WHERE {period} OFFSET 0) {kind.alias}"
    )
    return kind.facts.format(rows=rows), {f"{prefix}_hours": hours}


# --- Refresh -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    covered_until: datetime | None
    hours: int  # hours recomputed (changed or new)

    def __str__(self) -> str:
        until = f"{self.covered_until:%Y-%m-%d %H}:00" if self.covered_until else "nothing yet"
        return f"{self.hours} hours recomputed, rollups until {until}"


def refresh_payment_rollups(*, now: datetime | None = None) -> RefreshResult:
    """Recompute the hours that changed since the last run and extend the rollups toward the current hour
    (at most MAX_STEP per run). Safe to run twice or concurrently: runs queue on the state row."""
    if connection.vendor != "postgresql":
        return RefreshResult(None, 0)  # the embedded default reads raw rows: small data, no rollups
    now = now or timezone.now()
    target = floor_hour(now)
    with reporting_statement(rollup_build=True):
        with connection.cursor() as cursor:
            # Row versions written by transactions not yet committed at this point may be missing from what
            # this run reads; the next run looks at every row version this snapshot does not see.
            cursor.execute("SELECT pg_current_snapshot()::text")
            snapshot = cursor.fetchone()[0]
        if not RollupState.objects.filter(pk=1).exists():
            defaults = {"covered_until": _first_hour(target), "checked_at": now, "checked_snapshot": snapshot}
            RollupState.objects.get_or_create(pk=1, defaults=defaults)
        state = RollupState.objects.select_for_update().get(pk=1)
        changed = _changed_hours(state, before=state.covered_until)
        extend_to = min(target, state.covered_until + MAX_STEP)
        _recompute(changed, state.covered_until, extend_to)
        days = days_touched(changed, state.covered_until, extend_to)
        _recompute_days(days)
        _recompute_months(months_touched(days, extend_to))
        new_hours = max(0, int((extend_to - state.covered_until) / HOUR))
        if new_hours > ANALYZE_AFTER_HOURS:
            _analyze()
        _catch_up_added_kinds(state, extend_to)
        state.covered_until = max(state.covered_until, extend_to)
        state.checked_at, state.checked_snapshot = now, snapshot
        state.save()
    return RefreshResult(state.covered_until, len(changed) + new_hours)


# After adding more hours than this in one run (a first build, a catch-up), the planner gets fresh statistics
# instead of waiting for autovacuum: estimates from an empty table make it sort to disk and join badly.
ANALYZE_AFTER_HOURS = 24


def _analyze() -> None:
    with connection.cursor() as cursor:
        for kind in KINDS.values():
            cursor.execute(f"ANALYZE {kind.rollup._meta.db_table}")
            cursor.execute(f"ANALYZE {kind.day_rollup._meta.db_table}")
            cursor.execute(f"ANALYZE {kind.month_rollup._meta.db_table}")


def _first_hour(default: datetime) -> datetime:
    """The hour of the oldest payment (refunds and reversals are never older than their payment)."""
    with connection.cursor() as cursor:
        cursor.execute(_OLDEST)
        oldest = cursor.fetchone()[0]
    return floor_hour(oldest) if oldest else default


# Per app through its (app_id, created_at) index: payments have no index on created_at alone.
_OLDEST = f"""
SELECT MIN(first.created_at) FROM {App._meta.db_table} a
CROSS JOIN LATERAL (
    SELECT p.created_at FROM {_PAYMENT} p WHERE p.app_id = a.id ORDER BY p.created_at LIMIT 1
) first"""

# A row version is new to the last run when the transaction that wrote it was not visible in that run's snapshot
# (rows carry 32-bit xids: the epoch is the current one, or the one before for xids above the current's).
# `updated_at` bounds the search through the (status, updated_at) index to LOOK_BACK before the last run.
_XID8 = (
    "((((pg_current_xact_id()::text::bigint >> 32) - CASE WHEN {alias}.xmin::text::bigint > "
    "(pg_current_xact_id()::text::bigint & 4294967295) THEN 1 ELSE 0 END) << 32) + {alias}.xmin::text::bigint)"
)
# A snapshot lists the other transactions running, not its own: what the refreshing transaction itself wrote
# (a test's, or a script's that changes payments and refreshes at once) is new as well.
NEW_SINCE_SNAPSHOT = (
    f"(NOT pg_visible_in_snapshot({_XID8}::text::xid8, %(snapshot)s::pg_snapshot) "
    "OR {alias}.xmin::text::bigint = (pg_current_xact_id()::text::bigint & 4294967295))"
)
_ALL_STATUSES = _quoted(list(PaymentStatus.values))
_CHANGED_HOURS = f"""
SELECT date_trunc('hour', p.created_at, 'UTC') FROM {_PAYMENT} p
WHERE p.status IN ({_ALL_STATUSES}) AND p.updated_at >= %(since)s AND p.created_at < %(before)s
    AND {NEW_SINCE_SNAPSHOT.format(alias="p")}
UNION
SELECT date_trunc('hour', r.created_at, 'UTC') FROM {_PAYMENT} p
JOIN {Refund._meta.db_table} r ON r.payment_id = p.id AND r.payment_created_at = p.created_at
WHERE p.status IN ({_ALL_STATUSES}) AND p.updated_at >= %(since)s AND r.created_at < %(before)s
    AND {NEW_SINCE_SNAPSHOT.format(alias="p")}
UNION
SELECT date_trunc('hour', v.created_at, 'UTC') FROM {Reversal._meta.db_table} v
WHERE (v.created_at >= %(since)s OR v.completed_at >= %(since)s) AND v.created_at < %(before)s
    AND {NEW_SINCE_SNAPSHOT.format(alias="v")}
UNION
SELECT date_trunc('hour', sc.created_at, 'UTC') FROM {_CHARGE} sc
WHERE (sc.created_at >= %(since)s OR sc.settled_at >= %(since)s) AND sc.created_at < %(before)s
    AND {NEW_SINCE_SNAPSHOT.format(alias="sc")}
UNION
SELECT date_trunc('hour', first.created_at, 'UTC') FROM {_CHARGE} sc
JOIN {_CHARGE} first
    ON first.subscription_id = sc.subscription_id AND first.period_index = sc.period_index AND first.attempt = 1
WHERE sc.attempt > 1 AND sc.outcome = '{_SUCCEEDED}' AND (sc.created_at >= %(since)s OR sc.settled_at >= %(since)s)
    AND first.created_at < %(before)s AND {NEW_SINCE_SNAPSHOT.format(alias="sc")}
ORDER BY 1"""


def _changed_hours(state: RollupState, *, before: datetime) -> list[datetime]:
    """Hours before `before` whose payments, refunds, reversals or subscription charges changed since the last run.

    Payments are found through their (status, updated_at) index (every status named); a refund that is
    requested, fails or succeeds always updates its payment, so refunds are found through their payment;
    a reversal does not always, so reversals are read themselves (one per reversed charge, a small table).
    Subscription charges are found through their created_at and settled_at indexes (a charge changes once, when
    it is settled); a retry that succeeded changes its period's first attempt's hour too (`periods_renewed`).
    """
    params: dict[str, Any] = {"since": state.checked_at - LOOK_BACK, "before": before}
    params["snapshot"] = state.checked_snapshot or "1:1:"  # none yet: every row version is new
    with connection.cursor() as cursor:
        cursor.execute(_CHANGED_HOURS, params)
        return [row[0] for row in cursor.fetchall()]


def _recompute(
    changed: list[datetime], since: datetime, until: datetime, *, kinds: Sequence[str] = tuple(KINDS)
) -> None:
    """Replace the rollup rows of the changed hours and of [since, until)."""
    with connection.cursor() as cursor:
        for name in kinds:
            kind = KINDS[name]
            table = kind.rollup._meta.db_table
            columns = ", ".join(("hour", "app_id", "carrier_id", *kind.columns))
            if changed:
                cursor.execute(f"DELETE FROM {table} WHERE hour = ANY(%s::timestamptz[])", [changed])
                facts, params = _facts_of_hours(kind, name, changed)
                cursor.execute(f"INSERT INTO {table} ({columns}) {facts}", params)
            if since < until:
                cursor.execute(f"DELETE FROM {table} WHERE hour >= %s AND hour < %s", [since, until])
                facts, params = _facts(kind, name, since, until)
                cursor.execute(f"INSERT INTO {table} ({columns}) {facts}", params)


DAY = timedelta(days=1)


def floor_day(moment: datetime) -> datetime:
    """The start of the UTC day `moment` falls in."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def days_touched(changed: list[datetime], since: datetime, until: datetime) -> list[datetime]:
    """The whole UTC days, all of whose hours are covered once `until` is, that changed or were completed."""
    days = {floor_day(hour) for hour in changed}
    day = floor_day(since)
    while day < until:
        days.add(day)
        day += DAY
    return sorted(day for day in days if day + DAY <= until)


def _floor_month(moment: datetime) -> datetime:
    return floor_day(moment).replace(day=1)


def next_month(month: datetime) -> datetime:
    """The start of the month after `month` (the start of a month)."""
    return month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)


def months_touched(days: list[datetime], until: datetime) -> list[datetime]:
    """The whole UTC months, all of whose days are covered once `until` is, that hold one of these days (a
    month is complete in the run that completes its last day)."""
    return sorted({month for month in map(_floor_month, days) if next_month(month) <= until})


def _recompute_days(days: list[datetime], *, kinds: Sequence[str] = tuple(KINDS)) -> None:
    """Replace the daily rows of these days by their hourly rows added up."""
    for kind in map(KINDS.__getitem__, kinds):
        _resum(kind, kind.rollup, kind.day_rollup, [(day, day + DAY) for day in days])


def _recompute_months(months: list[datetime], *, kinds: Sequence[str] = tuple(KINDS)) -> None:
    """Replace the monthly rows of these months by their daily rows added up."""
    for kind in map(KINDS.__getitem__, kinds):
        _resum(kind, kind.day_rollup, kind.month_rollup, [(month, next_month(month)) for month in months])


def _day_total(column: str) -> str:
    if column.endswith("_min_minor"):
        return f"MIN({column})"
    if column.endswith("_max_minor"):
        return f"MAX({column})"
    return f"SUM({column})"


def _resum(kind: _Kind, finer: type[Any], coarser: type[Any], spans: list[tuple[datetime, datetime]]) -> None:
    """Replace the `coarser` rows of each span [start, end) by the `finer` rows inside it added up."""
    if not spans:
        return
    table = coarser._meta.db_table
    dimensions = [c for c in kind.columns if c in kind.dimensions]
    totals = [_day_total(c) for c in kind.columns if c not in dimensions]
    keys = ", ".join(f"f.{c}" for c in dimensions)
    columns = ", ".join(
        ("hour", "app_id", "carrier_id", *dimensions, *(c for c in kind.columns if c not in dimensions))
    )
    starts, ends = [start for start, _ in spans], [end for _, end in spans]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE hour = ANY(%s::timestamptz[])", [starts])
        cursor.execute(
            f"INSERT INTO {table} ({columns}) "
            f"SELECT d.start, f.app_id, f.carrier_id, {keys}, {', '.join(totals)} "
            f"FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS d(start, stop) JOIN {finer._meta.db_table} f "
            "ON f.hour >= d.start AND f.hour < d.stop "
            f"GROUP BY d.start, f.app_id, f.carrier_id, {keys}",
            [starts, ends],
        )


def _catch_up_added_kinds(state: RollupState, extend_to: datetime) -> None:
    """Kinds added after the others were built (`RollupState.kinds_until`): one that had caught up moves on with the
    others (this run computed its new hours with theirs); one behind gets the next MAX_STEP of its history."""
    for name, until_text in list(state.kinds_until.items()):
        until = datetime.fromisoformat(until_text)
        if until >= state.covered_until:
            state.kinds_until[name] = max(until, extend_to).isoformat()
            continue
        step_to = min(until + MAX_STEP, state.covered_until)
        _recompute([], until, step_to, kinds=[name])
        days = days_touched([], until, step_to)
        _recompute_days(days, kinds=[name])
        _recompute_months(months_touched(days, step_to), kinds=[name])
        state.kinds_until[name] = step_to.isoformat()


def rollup_state() -> RollupState | None:
    return RollupState.objects.filter(pk=1).first()


# --- Reading ----------------------------------------------------------------------------------------

# What a source field is at the rollups' grain: a dimension (an expression over the rollup row `f`, its
# app `a` and carrier `c`), or a measure given by its per-row sum, non-null count, min and max.
_COMMON_DIMENSIONS = {
    "app": "a.name",
    "carrier": "c.slug",
    "country": "c.country_id",
    "currency": "f.currency",
}
_DIMENSIONS = {
    "payments": {**_COMMON_DIMENSIONS, "status": "f.status", "failure_code": "f.failure_code"},
    "refunds": {**_COMMON_DIMENSIONS, "status": "f.status"},
    "reversals": {**_COMMON_DIMENSIONS, "status": "f.status"},
    "subscription_charges": {
        **_COMMON_DIMENSIONS,
        "plan": "pl.code",
        "plan_period": "pl.period",
        "kind": "f.kind",
        "outcome": "f.outcome",
        "failure_code": "f.failure_code",
    },
}
# Dimensions that may be empty (a missed period has no payment, so no currency): a count of one is not of rows.
_MAY_BE_EMPTY = {"subscription_charges": {"currency"}}


@dataclass(frozen=True)
class _Measure:
    sum: str
    count: str
    min: str
    max: str


def _money(column: str, count: str, *, when: str = "") -> _Measure:
    low, high = f"f.{column.removesuffix('_minor')}_min_minor", f"f.{column.removesuffix('_minor')}_max_minor"
    if not when:
        return _Measure(f"f.{column}", count, low, high)
    return _Measure(
        f"CASE WHEN {when} THEN f.{column} END",
        f"CASE WHEN {when} THEN {count} ELSE 0 END",
        f"CASE WHEN {when} THEN {low} END",
        f"CASE WHEN {when} THEN {high} END",
    )


def _flag(when: str, count: str) -> _Measure:
    one = f"CASE WHEN {when} THEN 1 ELSE 0 END"
    return _Measure(f"CASE WHEN {when} THEN {count} ELSE 0 END", count, one, one)


def _outcome(yes: str, no: str, count: str) -> _Measure:
    """1 where `yes` holds, 0 where `no` does, empty otherwise (still undecided): its average is a success rate."""
    one = f"CASE WHEN {yes} THEN 1 WHEN {no} THEN 0 END"
    return _Measure(
        f"CASE WHEN {yes} THEN {count} WHEN {no} THEN 0 END",
        f"CASE WHEN {yes} OR {no} THEN {count} ELSE 0 END",
        one,
        one,
    )


def _tally(column: str, count: str) -> _Measure:
    """A 0-or-1 field the rollup rows keep summed in `column` (of their `count` rows)."""
    return _Measure(
        f"f.{column}",
        count,
        f"CASE WHEN f.{column} = {count} THEN 1 ELSE 0 END",
        f"CASE WHEN f.{column} > 0 THEN 1 ELSE 0 END",
    )


_IS_CHARGED = f"f.status IN ({_quoted(CHARGED)})"
_NOT_CHARGED = f"f.status IN ({_quoted(NOT_CHARGED)})"
_CHARGE_SUCCEEDED, _CHARGE_FAILED = f"f.outcome = '{_SUCCEEDED}'", f"f.outcome = '{_FAILED}'"
_MEASURES: dict[str, dict[str, _Measure]] = {
    "payments": {
        "amount_minor": _money("amount_minor", "f.payments"),
        "refunded_minor": _money("refunded_minor", "f.payments"),
        "charged_amount_minor": _money("amount_minor", "f.payments", when=_IS_CHARGED),
        "charged": _flag(_IS_CHARGED, "f.payments"),
        "failed": _flag(_NOT_CHARGED, "f.payments"),
        "charge_succeeded": _outcome(_IS_CHARGED, _NOT_CHARGED, "f.payments"),
    },
    "refunds": {
        "amount_minor": _money("amount_minor", "f.refunds"),
        "succeeded": _flag("f.status = 'succeeded'", "f.refunds"),
    },
    "reversals": {"amount_minor": _money("amount_minor", "f.reversals")},
    "subscription_charges": {
        "charged_amount_minor": _money("amount_minor", "f.charges", when=_CHARGE_SUCCEEDED),
        "succeeded": _flag(_CHARGE_SUCCEEDED, "f.charges"),
        "failed": _flag(_CHARGE_FAILED, "f.charges"),
        "charge_succeeded": _outcome(_CHARGE_SUCCEEDED, _CHARGE_FAILED, "f.charges"),
        "period_decided": _tally("periods_decided", "f.charges"),
        "period_renewed": _tally("periods_renewed", "f.charges"),
    },
}
# Fields that are never empty, so that counting them counts rows (their other aggregates are not offered).
_NEVER_EMPTY = {
    "payments": {"player", "failure_code"},
    "refunds": set(),
    "reversals": set(),
    "subscription_charges": {"subscription", "period_index", "attempt"},
}
# Rows read from a coarser tier can be subtracted again (`f.sign` = -1, see `cover_hours`): sums and counts carry the
# sign, a sum is empty when no row with a value is left (as a sum over no rows is), and min and max are only
# asked of queries read without subtraction.
_AGGREGATES = {
    "sum": "CASE WHEN SUM(f.sign * ({m.count})) <> 0 THEN SUM(f.sign * ({m.sum})) END",
    "count": "COALESCE(SUM(f.sign * ({m.count})), 0)",
    "avg": "SUM(f.sign * ({m.sum}))::numeric / NULLIF(SUM(f.sign * ({m.count})), 0)",
    "min": "MIN({m.min})",
    "max": "MAX({m.max})",
}


@dataclass(frozen=True)
class RollupQuery:
    """A catalog query in source field names: what `rollup_rows` needs to know of a dataset and its query."""

    source: str
    time_field: str
    group_by: tuple[tuple[str, str], ...]  # (output name, source field)
    filters: tuple[tuple[str, tuple[str, ...]], ...]  # (source field, allowed values)
    measures: tuple[tuple[str, str, str], ...]  # (output name, aggregation, source field or "" for rows)
    bucket: str | None
    zone: ZoneInfo
    since: datetime | None
    until: datetime | None


def _dimension(source: str, name: str) -> str | None:
    return _DIMENSIONS[source].get(name)


def _measure(source: str, aggregation: str, field: str) -> str | None:
    count = f"f.{KINDS[source].count}"
    if not field:
        return f"COALESCE(SUM(f.sign * {count}), 0)" if aggregation == "count" else None
    if field in _MEASURES[source]:
        template = _AGGREGATES.get(aggregation)
        return template.format(m=_MEASURES[source][field]) if template else None
    never_empty = _dimension(source, field) and field not in _MAY_BE_EMPTY.get(source, ())
    if aggregation == "count" and (never_empty or field in _NEVER_EMPTY[source]):
        return f"COALESCE(SUM(f.sign * {count}), 0)"
    return None


def _whole_hours_from_utc(zone: ZoneInfo, *moments: datetime) -> bool:
    """Whether buckets in `zone` start on UTC hours over the period (not so in India, Nepal, parts of Australia)."""
    return all(
        (offset := moment.astimezone(zone).utcoffset()) is not None and offset % HOUR == timedelta(0)
        for moment in moments
    )


def _answerable(query: RollupQuery) -> bool:
    """The one rule of what the rollups can answer; everything else is read raw."""
    if connection.vendor != "postgresql" or query.source not in KINDS or query.time_field != "created_at":
        return False
    if any(_dimension(query.source, field) is None for _, field in query.group_by):
        return False
    if any(_dimension(query.source, field) is None for field, _ in query.filters):
        return False
    if any(_measure(query.source, aggregation, field) is None for _, aggregation, field in query.measures):
        return False
    if query.bucket:
        now = timezone.now()
        return _whole_hours_from_utc(query.zone, query.since or now, query.until or now)
    return True


def rollup_rows(query: RollupQuery) -> list[dict[str, Any]] | None:
    """The query's rows from the rollups and the raw rows of the hours they do not cover yet, or None when
    the rollups cannot answer it (the caller then reads raw rows). Rows are keyed by output name, and
    `bucket` when bucketed, in the order the raw query gives them."""
    answers = rollup_rows_together([query])
    return answers[0] if answers is not None else None


def rollup_rows_together(queries: list[RollupQuery]) -> list[list[dict[str, Any]]] | None:
    """Each query's rows as `rollup_rows` gives them, from one statement that reads the rollups once (a dashboard
    asks several questions of one period), or None when the rollups cannot answer them all together: the
    queries must share their source, period, zone and filters, have one time bucket at most, and name their
    dimensions in the same order."""
    if not queries or not all(_answerable(query) for query in queries) or not _together(queries):
        return None
    state = rollup_state()
    if state is None:
        return None
    sql, params, layout = _statement(queries, state.covered_for(queries[0].source))
    with reporting_connection().cursor() as cursor:
        cursor.execute(sql, params)
        columns = [column.name for column in cursor.description or ()]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    if "grouping_set" not in columns:  # one grouping set (one query, or all grouped alike): every row is each's
        return [[{name: row[c] for c, name in names.items()} for row in rows] for _, names in layout]
    return [
        [{name: row[c] for c, name in names.items()} for row in rows if row["grouping_set"] == mask]
        for mask, names in layout
    ]


def _together(queries: list[RollupQuery]) -> bool:
    first = queries[0]
    same = ("source", "time_field", "filters", "zone", "since", "until")
    if any(getattr(query, name) != getattr(first, name) for query in queries for name in same):
        return False
    if len({query.bucket for query in queries if query.bucket}) > 1:
        return False
    # Each grouping set's rows are ordered by the dimensions in the order they first come in the queries.
    fields = list(dict.fromkeys(field for query in queries for _, field in query.group_by))
    return all(
        [fields.index(field) for _, field in query.group_by]
        == sorted(fields.index(field) for _, field in query.group_by)
        for query in queries
    )


def _pieces(
    since: datetime | None, until: datetime | None, covered_until: datetime
) -> tuple[tuple[datetime | None, datetime] | None, list[tuple[datetime | None, datetime | None]]]:
    """The whole covered hours of [since, until) read from rollups, and the rest read raw."""
    low = ceil_hour(since) if since else None
    high = covered_until if until is None else min(floor_hour(until), covered_until)
    if low is not None and high <= low:
        return None, [(since, until)]
    raw: list[tuple[datetime | None, datetime | None]] = []
    if since is not None and low is not None and since < low:
        raw.append((since, low))
    if until is None or high < until:
        raw.append((high, until))
    return (low, high), raw


def _first_rolled_hour(kind: _Kind) -> datetime:
    first = kind.rollup.objects.order_by("hour").values_list("hour", flat=True).first()
    return first or datetime.max.replace(tzinfo=UTC)


def truncate_to_bucket(moment: datetime, bucket: str, zone: ZoneInfo) -> datetime:
    """The start of the time bucket (hour, day, ISO week, month) that `moment` falls in, in `zone`."""
    local = moment.astimezone(zone)
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "day":
        return day
    if bucket == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def bucket_after(moment: datetime, bucket: str, zone: ZoneInfo) -> datetime:
    """The start of the bucket after the one `moment` falls in, in `zone` (days and months of any length)."""
    start = truncate_to_bucket(moment, bucket, zone)
    return truncate_to_bucket(start.astimezone(UTC) + _INTO_NEXT[bucket], bucket, zone)


# From a bucket's start, a time inside the next bucket whatever the length of a day (DST) or of a month.
_INTO_NEXT = {
    "hour": timedelta(hours=1),
    "day": timedelta(hours=36),
    "week": timedelta(days=7, hours=12),
    "month": timedelta(days=32),
}


@dataclass(frozen=True)
class _Piece:
    """Rollup rows of one tier over [start, end), counted `sign` times toward the bucket `at` falls in."""

    tier: str  # "month", "day" or "hour"
    start: datetime
    end: datetime
    sign: int
    at: datetime


_COARSER_TIERS = ("month", "day")


def _blocks(tier: str, low: datetime, high: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The whole UTC months or days that overlap [low, high)."""
    start = _floor_month(low) if tier == "month" else floor_day(low)
    while start < high:
        end = next_month(start) if tier == "month" else start + DAY
        yield start, end
        start = end


def cover_hours(
    low: datetime, high: datetime, *, sign: int, at: datetime, level: int, covered_until: datetime, subtract: bool
) -> list[_Piece]:
    """Pieces whose signed sum is exactly the hours [low, high): the coarsest complete blocks inside it, and,
    when `subtract`, also a block mostly inside it less its hours outside (a month row less two hours instead
    of thirty daily rows: a day or month in the viewer's zone is never a whole UTC one unless the zone is UTC)."""
    if low >= high:
        return []
    if level == len(_COARSER_TIERS):
        return [_Piece("hour", low, high, sign, at)]
    tier = _COARSER_TIERS[level]
    pieces: list[_Piece] = []
    finer = []  # the parts this tier leaves to the next finer one
    cursor = low
    for start, end in _blocks(tier, low, high):
        inner_low, inner_high = max(start, low), min(end, high)
        whole = (inner_low, inner_high) == (start, end)
        if end > covered_until or not (whole or (subtract and (inner_high - inner_low) * 2 > end - start)):
            continue
        finer.append((cursor, inner_low))
        cursor = inner_high
        pieces.append(_Piece(tier, start, end, sign, at))
        for outside_low, outside_high in ((start, inner_low), (inner_high, end)):
            pieces += cover_hours(
                outside_low,
                outside_high,
                sign=-sign,
                at=at,
                level=level + 1,
                covered_until=covered_until,
                subtract=subtract,
            )
    finer.append((cursor, high))
    for finer_low, finer_high in finer:
        pieces += cover_hours(
            finer_low, finer_high, sign=sign, at=at, level=level + 1, covered_until=covered_until, subtract=subtract
        )
    return pieces


def _plan_pieces(
    low: datetime, high: datetime, query: RollupQuery, covered_until: datetime, subtract: bool
) -> list[_Piece]:
    """[low, high) (whole covered hours) cut at the buckets of the viewer's zone, each part covered by tiers."""
    pieces: list[_Piece] = []
    low, high = low.astimezone(UTC), high.astimezone(UTC)
    while low < high:
        # in UTC: a moment is floored to a day or month on its own clock, and tiers are UTC days and months
        end = min(high, bucket_after(low, query.bucket, query.zone).astimezone(UTC)) if query.bucket else high
        pieces += cover_hours(low, end, sign=1, at=low, level=0, covered_until=covered_until, subtract=subtract)
        low = end
    return pieces


def _additive(query: RollupQuery) -> bool:
    """Whether every measure is a sum of per-row values (count, sum, average), so that rows can be subtracted."""
    return all(aggregation in ("count", "sum", "avg") for _, aggregation, _ in query.measures)


_NOT_READ = {"decision_ms", DECISION_OVER, *(column for _, column in DECISION_BOUNDS)}


def _statement(
    queries: list[RollupQuery], covered_until: datetime
) -> tuple[str, dict[str, Any], list[tuple[int, dict[str, str]]]]:
    """The statement that answers every one of `queries` (the same source, period, zone and filters; one time
    bucket at most) by reading the rollup rows once, its parameters, and for each query the grouping set of its
    rows (`GROUPING()` of the dimensions and bucket, 0 for a lone query) and the output name of each column it
    reads (positional aliases: a field's name need not be a valid SQL alias)."""
    query = next((q for q in queries if q.bucket), queries[0])  # the one whose buckets the pieces follow
    kind = KINDS[query.source]
    rolled, raw = _pieces(query.since, query.until, covered_until)
    # Only what dimensions and measures read: the decision-time histogram and the hour would widen every row.
    columns = ("app_id", "carrier_id", *(c for c in kind.columns if c not in _NOT_READ))
    # The dimensions of every query, in the order they first come; the bucket last.
    fields = list(dict.fromkeys(field for q in queries for _, field in q.group_by))
    # The rows read are added up per bucket and per value of what the statement groups or filters by, signs
    # applied, before the grouping sets: these then aggregate a few rows per group instead of every rollup row
    # of every day (a 90-day poll by week: ~46 k day rows, most of them apart only by their app). Each piece's
    # rows are added up as they are read, the pieces of a bucket together after.
    used = set(fields) | {field for field, _ in query.filters}
    ids = {
        "app_id": "app" in used,
        "carrier_id": bool(used & {"carrier", "country"}),
        "plan_id": bool(used & {"plan", "plan_period"}),
    }
    by = [c for c in columns if ids.get(c, c in kind.dimensions)]
    summed = [c for c in columns if c not in ids and c not in kind.dimensions]
    read = [*by, *summed]
    params: dict[str, Any] = {}
    parts = []
    # The bucket is computed once per piece of the plan and per raw hour, not for every rollup row: the time
    # zone conversion was a good part of the statement's time.
    bucket = "date_trunc(%(unit)s, {} AT TIME ZONE %(zone)s) AT TIME ZONE %(zone)s" if query.bucket else "{}"
    if query.bucket:
        params.update(unit=query.bucket, zone=query.zone.key)
    if rolled is not None:
        low, high = rolled
        subtract = all(_additive(q) for q in queries)
        pieces = _plan_pieces(low or _first_rolled_hour(kind), high, query, covered_until, subtract)
        tables = {"month": kind.month_rollup, "day": kind.day_rollup, "hour": kind.rollup}
        for tier, table in tables.items():
            mine = [piece for piece in pieces if piece.tier == tier]
            if not mine:
                continue
            params.update(
                {
                    f"{tier}_start": [piece.start for piece in mine],
                    f"{tier}_end": [piece.end for piece in mine],
                    f"{tier}_sign": [piece.sign for piece in mine],
                    f"{tier}_at": [piece.at for piece in mine],
                }
            )
            totals = ", ".join(f"{_total(c, signed=False)} AS {c}" for c in summed)
            group_by = f" GROUP BY {', '.join(by)}" if by else ""
            parts.append(
                f"SELECT s.at, s.sign, {', '.join(f'r.{column}' for column in read)} "
                f"FROM (SELECT start, stop, sign, {bucket.format('at')} AS at "
                f"FROM unnest(%({tier}_start)s::timestamptz[], %({tier}_end)s::timestamptz[], "
                f"%({tier}_sign)s::int[], %({tier}_at)s::timestamptz[]) AS u(start, stop, sign, at)) s "
                # The lateral read stays apart (it is grouped): one index range scan per piece. Joined plainly, the
                # planner cannot estimate ranges given as parameters and may read the whole table per piece.
                f"CROSS JOIN LATERAL (SELECT {', '.join(by)}{', ' if by else ''}{totals} "
                f"FROM {table._meta.db_table} f WHERE hour >= s.start AND hour < s.stop{group_by}) r"
            )
    if not raw and not parts:
        raw = [(covered_until, covered_until)]  # nothing to read; the statement still needs a source
    for index, (since, until) in enumerate(raw):
        facts, facts_params = _facts(kind, f"raw{index}", since, until)
        at = bucket.format("x.hour")
        parts.append(f"SELECT {at} AS at, 1 AS sign, {', '.join(f'x.{c}' for c in read)} FROM ({facts}) x")
        params.update(facts_params)
    keys = [f"g{index}" for index in range(len(fields))] + (["t_bucket"] if query.bucket else [])
    select = [f"{_dimension(query.source, field)} AS g{index}" for index, field in enumerate(fields)]
    if query.bucket:
        select.append("f.at AS t_bucket")
    sets: list[tuple[str, ...]] = []
    layout: list[tuple[int, dict[str, str]]] = []
    for number, q in enumerate(queries):
        grouped = tuple(f"g{fields.index(field)}" for _, field in q.group_by) + (("t_bucket",) if q.bucket else ())
        names = {f"g{fields.index(field)}": name for name, field in q.group_by}
        if q.bucket:
            names["t_bucket"] = "bucket"
        for index, (name, aggregation, field) in enumerate(q.measures):
            select.append(f"{_measure(q.source, aggregation, field)} AS m{number}_{index}")
            names[f"m{number}_{index}"] = name
        if grouped not in sets:
            sets.append(grouped)
        # GROUPING() has a bit per key, the first the highest, set where the row is not grouped by that key.
        layout.append((sum(1 << (len(keys) - 1 - i) for i, key in enumerate(keys) if key not in grouped), names))
    where = []
    for index, (field, values) in enumerate(query.filters):
        where.append(f"{_dimension(query.source, field)} = ANY(%(flt{index})s)")
        params[f"flt{index}"] = list(values)
    # Apps and carriers are joined only for their names or countries (every row has both, so no row is lost).
    joins = f"JOIN {App._meta.db_table} a ON a.id = f.app_id\n" if "app" in used else ""
    joins += f"JOIN {Carrier._meta.db_table} c ON c.id = f.carrier_id\n" if used & {"carrier", "country"} else ""
    joins += f"JOIN {Plan._meta.db_table} pl ON pl.id = f.plan_id\n" if used & {"plan", "plan_period"} else ""
    # A group whose rows were all subtracted again had no row in the period: the rows give no such group.
    having = f"SUM(f.sign * f.{kind.count}) <> 0"
    if len(sets) == 1:
        # One grouping set, possibly none (totals only): GROUPING() would have no argument.
        group = sets[0]
        tail = f"GROUP BY {', '.join(group)}\nHAVING {having}\nORDER BY {', '.join(group)}" if group else ""
    else:
        # GROUPING() and the sets name the expressions themselves: output names are not allowed in GROUPING().
        expression = {f"g{index}": _dimension(query.source, field) for index, field in enumerate(fields)}
        expression["t_bucket"] = "f.at"
        grouping = f"GROUPING({', '.join(str(expression[key]) for key in keys)})"
        select.append(f"{grouping} AS grouping_set")
        # A query without dimensions or bucket has its one row, as a total over no rows is.
        listed = ", ".join("(" + ", ".join(str(expression[key]) for key in keys_of_set) + ")" for keys_of_set in sets)
        tail = (
            f"GROUP BY GROUPING SETS ({listed})\n"
            f"HAVING {having} OR {grouping} = {(1 << len(keys)) - 1}\n"
            f"ORDER BY grouping_set, {', '.join(keys)}"
        )
    by_bucket = ", ".join(["at", *by])
    sql = (
        f"WITH f AS (SELECT {by_bucket}, 1 AS sign, {', '.join(f'{_total(c)} AS {c}' for c in summed)} "
        f"FROM ({' UNION ALL '.join(parts)}) AS f GROUP BY {by_bucket})\n"
        f"SELECT {', '.join(select)} FROM f\n" + joins + (f"WHERE {' AND '.join(where)}\n" if where else "") + tail
    )
    return sql, params, layout


def _total(column: str, *, signed: bool = True) -> str:
    """A column of rows `f` added up, with their signs when `signed`; a least or greatest value is only asked of
    rows read without subtraction (`_additive`)."""
    if column.endswith(("_min_minor", "_max_minor")):
        return f"{'MIN' if column.endswith('_min_minor') else 'MAX'}(f.{column})"
    return f"SUM(f.sign * f.{column})" if signed else f"SUM(f.{column})"


def catch_up_payment_rollups() -> Iterator[RefreshResult]:
    """Refresh until the rollups reach the current hour, one bounded step (one transaction) at a time."""
    while True:
        result = refresh_payment_rollups()
        yield result
        state = rollup_state()
        behind = state is not None and any(state.covered_for(kind) < state.covered_until for kind in state.kinds_until)
        if result.covered_until is None or (result.covered_until >= floor_hour(timezone.now()) and not behind):
            return


def forget_payment_rollups() -> None:
    """Drop every rollup row and the state: readers use raw rows until the next refresh rebuilds them."""
    with transaction.atomic():
        RollupState.objects.all().delete()
        for kind in KINDS.values():
            kind.rollup.objects.all().delete()
            kind.day_rollup.objects.all().delete()
            kind.month_rollup.objects.all().delete()
