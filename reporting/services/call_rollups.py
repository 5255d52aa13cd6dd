"""Carrier-call rollups: the journal's carrier calls summed per UTC hour, day and month, carrier, operation, outcome
and error code, in the main database, so that the dashboard's carrier tile and the catalog's carrier-calls
dataset read a few thousand rows over months instead of every call's JSON document.

`refresh_carrier_call_rollups` (the periodic job, every minute) adds the hours up to the last whole one and
recomputes every older hour that received records since its last run: the journal takes records late (its
spool ships them when the store is back) and may take one twice (at least once), so an hour is never final.
New records are found by id (ids grow as records are inserted) and by the journal's snapshot of the last run
(a transaction still open then, whose ids may be lower, is new too), never by their time.

`rollup_rows` answers a query over the `carrier_calls` source when its dimensions, filters and measures exist
at the rollups' grain and it has no time bucket: whole covered hours from the rollups (whole UTC months and
days from their rows), the rest of the period (the current hour, the partial hours at the edges, anything
older than the carrier calls' retention, which the journal's expiry removes) from the journal's records,
aggregated to the same grain and added in the same statement, so answers equal the journal's. Anything else,
the MongoDB journal and SQLite return None and the caller reads the journal.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from journal.services import Kind
from playpay.replica import reporting_connection
from reporting.catalog import JOURNAL_SOURCES
from reporting.models import CarrierCallRollup, CarrierCallRollupState
from reporting.services.rollups import (
    HOUR,
    MAX_STEP,
    NEW_SINCE_SNAPSHOT,
    RefreshResult,
    RollupQuery,
    ceil_hour,
    cover_hours,
    days_touched,
    floor_hour,
    months_touched,
    next_month,
    reporting_statement,
)

SOURCE = "carrier_calls"
JOURNAL = "journal"
# Ids below the newest seen at the last run that may still be new: taken by a transaction that was open then.
# A journal write is one short INSERT of at most a spool segment, so an open one holds the newest few ids.
ID_MARGIN = 100_000
DAY = timedelta(days=1)

_TABLE = CarrierCallRollup._meta.db_table
_DIMENSIONS = ("carrier", "operation", "outcome", "error_code")
_TOTALS = ("calls", "failed", "transport_failed", "latency_ms", "latency_calls", "latency_min_ms", "latency_max_ms")
_COLUMNS = (*_DIMENSIONS, *_TOTALS)
_TYPES = {"carrier": "text", "operation": "text", "outcome": "text", "error_code": "text"} | dict.fromkeys(
    _TOTALS, "bigint"
)


def _document_text(source_field: str) -> str:
    """The SQL text of a carrier-call field, as the journal store reads it (`journal.store._sql_text`)."""
    parts = JOURNAL_SOURCES[SOURCE].fields[source_field].path.split(".")
    if parts[0] == "correlation" and len(parts) == 2:
        return f"r.{parts[1]}"  # a column of its own
    return "r.document" + "".join(f"->'{part}'" for part in parts[:-1]) + f"->>'{parts[-1]}'"


def _flag(source_field: str) -> str:
    values = ", ".join(
        "'true'" if value is True else f"'{value}'"
        for value in JOURNAL_SOURCES[SOURCE].fields[source_field].flag_values
    )
    return f"COUNT(*) FILTER (WHERE {_document_text(source_field)} IN ({values}))"


# The journal's carrier calls of the ranges [start, stop) given as two arrays, at the rollups' grain.
_FACTS = f"""
SELECT date_trunc('hour', r.occurred_at, 'UTC') AS hour,
    {", ".join(f"{_document_text(d)} AS {d}" for d in _DIMENSIONS)},
    COUNT(*) AS calls, {_flag("failed")} AS failed, {_flag("transport_failed")} AS transport_failed,
    COALESCE(SUM(l.ms), 0) AS latency_ms, COUNT(l.ms) AS latency_calls, MIN(l.ms) AS latency_min_ms,
    MAX(l.ms) AS latency_max_ms
FROM unnest(%(starts)s::timestamptz[], %(stops)s::timestamptz[]) AS s(start, stop)
CROSS JOIN LATERAL (
    -- OFFSET 0: one index range scan (kind, time) per range, in the months it touches only
    SELECT * FROM journal_journalrecord r
    WHERE r.kind = '{Kind.CARRIER_CALL}' AND r.occurred_at >= s.start AND r.occurred_at < s.stop OFFSET 0
) r
CROSS JOIN LATERAL (SELECT ({_document_text("latency_ms")})::integer AS ms) l
GROUP BY 1, 2, 3, 4, 5"""

_CHANGED_HOURS = f"""
SELECT DISTINCT date_trunc('hour', r.occurred_at, 'UTC') FROM journal_journalrecord r
WHERE r.id > %(after_id)s AND r.kind = '{Kind.CARRIER_CALL}' AND r.occurred_at >= %(since)s
    AND r.occurred_at < %(before)s AND {NEW_SINCE_SNAPSHOT.format(alias="r")}
ORDER BY 1"""


def enabled() -> bool:
    """Rollups need the SQL journal on PostgreSQL (its ids and snapshots), and PostgreSQL for themselves."""
    return (
        settings.JOURNAL_BACKEND == "sql"
        and connection.vendor == "postgresql"
        and connections[JOURNAL].vendor == "postgresql"
    )


def retention_cutoff(now: datetime) -> datetime:
    """Carrier calls older than this are removed by the journal's expiry: they are read from the journal."""
    days = settings.JOURNAL_TTL_DAYS.get(Kind.CARRIER_CALL, settings.JOURNAL_TTL_DEFAULT_DAYS)
    return now - timedelta(days=days)


def _journal_rows(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with transaction.atomic(using=JOURNAL), connections[JOURNAL].cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")  # as every reporting statement (`reporting_statement`)
        cursor.execute("SELECT set_config('work_mem', %s, true)", [settings.REPORTING_WORK_MEM])
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _facts(ranges: list[tuple[datetime, datetime]]) -> list[tuple[Any, ...]]:
    if not ranges:
        return []
    return _journal_rows(_FACTS, {"starts": [start for start, _ in ranges], "stops": [stop for _, stop in ranges]})


def _as_arrays(rows: list[tuple[Any, ...]], first: int) -> dict[str, list[Any]]:
    """Columns `_COLUMNS` of the rows (from index `first`) as one array each, named a_<column>."""
    return {f"a_{name}": [row[first + index] for row in rows] for index, name in enumerate(_COLUMNS)}


def _unnest(*first: str) -> str:
    """The arrays of `_as_arrays` (after those of `first`, timestamps) as rows."""
    names = [*first, *_COLUMNS]
    arrays = ", ".join(f"%(a_{name})s::{_TYPES.get(name, 'timestamptz')}[]" for name in names)
    return f"unnest({arrays}) AS x({', '.join(names)})"


# --- Refresh -----------------------------------------------------------------------------------------


def refresh_carrier_call_rollups(*, now: datetime | None = None) -> RefreshResult:
    """Recompute the hours that received carrier calls since the last run and extend the rollups toward the
    current hour (at most MAX_STEP per run). Safe to run twice or concurrently: runs queue on the state row."""
    if not enabled():
        return RefreshResult(None, 0)
    now = now or timezone.now()
    target = floor_hour(now)
    with reporting_statement(rollup_build=True):
        # Taken before anything is read: what this run reads is at least what the snapshot sees.
        snapshot, newest = _journal_rows(
            "SELECT pg_current_snapshot()::text, (SELECT max(id) FROM journal_journalrecord)", {}
        )[0]
        if not CarrierCallRollupState.objects.filter(pk=1).exists():
            first = floor_hour(max(_oldest_call() or target, retention_cutoff(now)))
            defaults = {"covered_from": min(first, target), "covered_until": min(first, target)}
            CarrierCallRollupState.objects.get_or_create(pk=1, defaults=defaults)
        state = CarrierCallRollupState.objects.select_for_update().get(pk=1)
        changed: list[datetime] = []
        if state.covered_from < state.covered_until:
            params = {
                "after_id": max(0, state.last_id - ID_MARGIN),
                "since": state.covered_from,
                "before": state.covered_until,
                "snapshot": state.checked_snapshot or "1:1:",
            }
            changed = [row[0] for row in _journal_rows(_CHANGED_HOURS, params)]
        extend_to = min(target, state.covered_until + MAX_STEP)
        ranges = [(hour, hour + HOUR) for hour in changed]
        if state.covered_until < extend_to:
            ranges.append((state.covered_until, extend_to))
        _replace_hours(ranges, _facts(ranges))
        days = days_touched(changed, state.covered_until, extend_to)
        _resum("day", [(day, day + DAY) for day in days])
        _resum("month", [(month, next_month(month)) for month in months_touched(days, extend_to)])
        _forget_expired(retention_cutoff(now))
        new_hours = max(0, int((extend_to - state.covered_until) / HOUR))
        state.covered_until = max(state.covered_until, extend_to)
        state.last_id = max(state.last_id, newest or 0)
        state.checked_snapshot = snapshot
        state.save()
    return RefreshResult(state.covered_until, len(changed) + new_hours)


def _oldest_call() -> datetime | None:
    rows = _journal_rows(f"SELECT min(occurred_at) FROM journal_journalrecord WHERE kind = '{Kind.CARRIER_CALL}'", {})
    return rows[0][0] if rows else None


def _replace_hours(ranges: list[tuple[datetime, datetime]], facts: list[tuple[Any, ...]]) -> None:
    if not ranges:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {_TABLE} t USING unnest(%s::timestamptz[], %s::timestamptz[]) AS s(start, stop) "
            "WHERE t.tier = 'hour' AND t.start >= s.start AND t.start < s.stop",
            [[start for start, _ in ranges], [stop for _, stop in ranges]],
        )
        if facts:
            cursor.execute(
                f"INSERT INTO {_TABLE} (tier, start, {', '.join(_COLUMNS)}) SELECT 'hour', * FROM {_unnest('hour')}",
                {"a_hour": [row[0] for row in facts], **_as_arrays(facts, 1)},
            )


_FINER = {"day": "hour", "month": "day"}


def _resum(tier: str, spans: list[tuple[datetime, datetime]]) -> None:
    """Replace the `tier` rows of each span [start, end) by the finer tier's rows inside it added up."""
    if not spans:
        return
    totals = ", ".join(
        f"MIN({c})" if c.endswith("_min_ms") else f"MAX({c})" if c.endswith("_max_ms") else f"SUM({c})" for c in _TOTALS
    )
    dimensions = ", ".join(f"f.{d}" for d in _DIMENSIONS)
    starts, stops = [start for start, _ in spans], [stop for _, stop in spans]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_TABLE} WHERE tier = %s AND start = ANY(%s::timestamptz[])", [tier, starts])
        cursor.execute(
            f"INSERT INTO {_TABLE} (tier, start, {', '.join(_COLUMNS)}) "
            f"SELECT %s, d.start, {dimensions}, {totals} "
            "FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS d(start, stop) "
            f"JOIN {_TABLE} f ON f.tier = %s AND f.start >= d.start AND f.start < d.stop "
            f"GROUP BY d.start, {dimensions}",
            [tier, starts, stops, _FINER[tier]],
        )


def _forget_expired(cutoff: datetime) -> None:
    """Rows that end before the retention cutoff are never read again (that part is read from the journal)."""
    with connection.cursor() as cursor:
        for tier, length in (("hour", HOUR), ("day", DAY), ("month", timedelta(days=31))):
            cursor.execute(f"DELETE FROM {_TABLE} WHERE tier = %s AND start < %s", [tier, cutoff - length])


def catch_up_carrier_call_rollups() -> list[RefreshResult]:
    """Refresh until the rollups reach the current hour, one bounded step (one transaction) at a time."""
    results = []
    while True:
        result = refresh_carrier_call_rollups()
        results.append(result)
        if result.covered_until is None or result.covered_until >= floor_hour(timezone.now()):
            return results


def forget_carrier_call_rollups() -> None:
    """Drop every rollup row and the state: readers use the journal until the next refresh rebuilds them."""
    CarrierCallRollupState.objects.all().delete()
    CarrierCallRollup.objects.all().delete()


# --- Reading ------------------------------------------------------------------------------------------


_FLAGS = {"failed": "failed", "transport_failed": "transport_failed"}


def _measure(aggregation: str, field: str) -> str | None:
    """A measure over rollup rows `f`, as the journal computes it over records."""
    if aggregation == "count":
        if not field:
            return "COALESCE(SUM(f.calls), 0)"
        if field == "latency_ms":
            return "COALESCE(SUM(f.latency_calls), 0)"
        if field in _FLAGS:
            return "COALESCE(SUM(f.calls), 0)"  # a flag is 0 or 1 on every record
        if field in _DIMENSIONS:
            return f"COALESCE(SUM(CASE WHEN f.{field} IS NOT NULL THEN f.calls ELSE 0 END), 0)"
        return None
    if field in _FLAGS:
        column = _FLAGS[field]
        return {"sum": f"SUM(f.{column})", "avg": f"SUM(f.{column})::numeric / NULLIF(SUM(f.calls), 0)"}.get(
            aggregation
        )
    if field == "latency_ms":
        return {
            "sum": "CASE WHEN SUM(f.latency_calls) > 0 THEN SUM(f.latency_ms) END",
            "avg": "SUM(f.latency_ms)::numeric / NULLIF(SUM(f.latency_calls), 0)",
            "min": "MIN(f.latency_min_ms)",
            "max": "MAX(f.latency_max_ms)",
        }.get(aggregation)
    return None


def _answerable(query: RollupQuery) -> bool:
    if query.source != SOURCE or query.time_field != "occurred_at" or query.bucket or not enabled():
        return False
    if any(field not in _DIMENSIONS for _, field in query.group_by):
        return False
    if any(field not in _DIMENSIONS for field, _ in query.filters):
        return False
    return all(_measure(aggregation, field) is not None for _, aggregation, field in query.measures)


def rollup_rows(query: RollupQuery, *, now: datetime | None = None) -> list[dict[str, Any]] | None:
    """The query's rows from the rollups and the journal's records of the hours they do not cover, or None when
    the rollups cannot answer it (the caller then reads the journal)."""
    if not _answerable(query):
        return None
    state = CarrierCallRollupState.objects.filter(pk=1).first()
    if state is None:
        return None
    now = now or timezone.now()
    low = max(state.covered_from, ceil_hour(retention_cutoff(now)))
    if query.since is not None:
        low = max(low, ceil_hour(query.since))
    high = state.covered_until if query.until is None else min(state.covered_until, floor_hour(query.until))
    if high <= low:
        return None
    edges = [(query.since, low), (high, query.until)]
    ranges = [
        (start or datetime.min.replace(tzinfo=UTC), stop or datetime.max.replace(tzinfo=UTC))
        for start, stop in edges
        if start is None or stop is None or start < stop
    ]
    pieces = cover_hours(low, high, sign=1, at=low, level=0, covered_until=high, subtract=False)
    sql, params, names = _statement(query)
    params |= {
        "tiers": [piece.tier for piece in pieces],
        "starts": [piece.start for piece in pieces],
        "stops": [piece.end for piece in pieces],
        **_as_arrays([row[1:] for row in _facts(ranges)], 0),
    }
    with reporting_connection().cursor() as cursor:
        cursor.execute(sql, params)
        aliases = [names[column.name] for column in cursor.description or ()]
        return [dict(zip(aliases, row, strict=True)) for row in cursor.fetchall()]


def _statement(query: RollupQuery) -> tuple[str, dict[str, Any], dict[str, str]]:
    columns = ", ".join(_COLUMNS)
    select, group = [], []
    for index, (_, field) in enumerate(query.group_by):
        select.append(f"f.{field} AS g{index}")
        group.append(f"g{index}")
    for index, (_, aggregation, field) in enumerate(query.measures):
        select.append(f"{_measure(aggregation, field)} AS m{index}")
    params: dict[str, Any] = {}
    where = []
    for index, (field, values) in enumerate(query.filters):
        where.append(f"f.{field} = ANY(%(flt{index})s)")
        params[f"flt{index}"] = list(values)
    sql = (
        f"WITH f AS (SELECT r.* FROM unnest(%(tiers)s::text[], %(starts)s::timestamptz[], "
        "%(stops)s::timestamptz[]) AS s(tier, start, stop) "
        # One index range scan per piece (see the payment rollups' statement).
        f"CROSS JOIN LATERAL (SELECT {columns} FROM {_TABLE} WHERE tier = s.tier AND start >= s.start "
        "AND start < s.stop OFFSET 0) r "
        f"UNION ALL SELECT {columns} FROM {_unnest()})\n"
        f"SELECT {', '.join(select)} FROM f\n"
        + (f"WHERE {' AND '.join(where)}\n" if where else "")
        + (f"GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}" if group else "")
    )
    names = {f"g{i}": name for i, (name, _) in enumerate(query.group_by)}
    names |= {f"m{i}": name for i, (name, _, _) in enumerate(query.measures)}
    return sql, params, names
