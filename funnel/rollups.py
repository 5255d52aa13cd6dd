"""Hourly funnel rollups: journeys by the hour they started and their breakdown values, per level.

Per funnel and hour, `FunnelRollup` rows count the journeys that reached each level per app,
carrier, country, price point and flow, and a `FunnelRollupHour` row keeps the histogram of the
times between steps and the error codes of the charges that failed in the hour, and marks the hour
as computed. A `FunnelRollupDay` row adds up a UTC day's hours (rebuilt whenever one of them is),
so that a period reads its whole days from one row each and only its edge hours from hour rows and
cells. The times between steps are kept in log-spaced buckets (`GAP_BUCKET_BOUNDS`, with each bucket's
sum of seconds): percentiles from rollups are exact below 64 s and within 1/32 above. A period whose
hours are all computed is read from these rows (`rollup_report`); dashboards do so, and fall back to
the raw events otherwise.

A journey's level depends on all its events (a chain may begin at any step-1 event and lasts up to
`window`), so the periodic job recomputes every hour whose journeys may still move: the last `window`
plus one hour, and the hours of the last MOVED_LOOKBACK whose journeys have events in that span,
replacing those rows. Older hours are computed once by `refresh_rollups`
(`manage.py refresh_funnel_rollups --days N`).

A period that runs into the current hour reads its complete hours from the rollups and the current
hour from the raw events (`dashboard_report`).
On PostgreSQL the database computes the rollups (`funnel.sql`), elsewhere Python does.
"""

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast, TruncHour
from django.utils import timezone

from funnel import partitions, sql
from funnel.models import FunnelDefinition, FunnelEvent, FunnelRollup, FunnelRollupDay, FunnelRollupHour, Journey
from funnel.selectors import (
    BREAKDOWNS,
    GAP_BUCKET_BOUNDS,
    UNKNOWN,
    FunnelCounts,
    FunnelReport,
    bucket_histogram,
    build_report,
    failure_codes,
    funnel_counts,
    funnel_report,
    gap_bucket,
    gap_seconds,
    journey_event_streams,
    sorted_codes,
    window_funnel,
)
from playpay.replica import reporting_connection

DIMENSIONS = ("app_id", "carrier", "country", "price_point", "flow")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# How far back the periodic job looks for journeys that moved (an event long after their start).
MOVED_LOOKBACK = timedelta(days=1)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_range(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The whole hours that cover [since, until)."""
    return _hour(since), _hour(until - timedelta(microseconds=1)) + HOUR


def refresh_rollups(*, funnel: FunnelDefinition, since: datetime, until: datetime) -> int:
    """Recompute the rollup rows of the hours in [since, until); returns how many rows now exist there."""
    since, until = hour_range(since, until)
    window = timedelta(seconds=funnel.window_seconds)
    steps = list(funnel.steps)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                sql.set_analysis_limits(cursor)  # for the deletes too
        FunnelRollup.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).delete()
        FunnelRollupHour.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).delete()
        if connection.vendor == "postgresql":
            scope = sql.FunnelScope(
                steps=steps,
                window=window,
                since=since,
                until=until,
                exclusion=funnel.exclusion_step,
                app_id=funnel.app_id,
            )
            statements, params = sql.rollup_statements(scope, funnel_id=funnel.pk, gap_bounds=GAP_BUCKET_BOUNDS)
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement, params)
        else:
            _refresh_in_python(funnel, steps, window, since, until)
        _merge_days(funnel, since, until)
        return FunnelRollup.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).count()


def _refresh_in_python(
    funnel: FunnelDefinition, steps: list[str], window: timedelta, since: datetime, until: datetime
) -> None:
    journeys = Journey.objects.filter(started_at__gte=since, started_at__lt=until)
    if funnel.app_id:
        journeys = journeys.filter(app_id=funnel.app_id)
    info = {(j["app_id"], j["journey_id"]): j for j in journeys.values("journey_id", "started_at", *DIMENSIONS)}
    scope = FunnelEvent.objects.filter(occurred_at__gte=since)
    if funnel.app_id:
        scope = scope.filter(app_id=funnel.app_id)
    events = {key: stream for key, stream in journey_event_streams(scope) if key in info}
    cells: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * (len(steps) + 1))
    # per hour, step and bucket: [journeys, seconds]
    gaps: dict[datetime, dict[int, dict[int, list[int]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: [0, 0]))
    )
    for key, journey in info.items():
        hour = _hour(journey["started_at"])
        result = window_funnel(events.get(key, []), steps, window, funnel.exclusion_step)
        cell = cells[(hour, *(journey[d] for d in DIMENSIONS))]
        if result is None:
            cell[len(steps)] += 1  # the last slot counts exclusions
            continue
        for level in range(result.level):
            cell[level] += 1
            if level:
                seconds = gap_seconds(result.times[level - 1], result.times[level])
                bucket = gaps[hour][level + 1][gap_bucket(seconds)]
                bucket[0] += 1
                bucket[1] += seconds
    FunnelRollup.objects.bulk_create(
        FunnelRollup(
            funnel=funnel,
            hour=hour,
            app_id=app_id,
            carrier=carrier,
            country=country,
            price_point=price_point,
            flow=flow,
            reached=counts[: len(steps)],
            excluded=counts[len(steps)],
        )
        for (hour, app_id, carrier, country, price_point, flow), counts in cells.items()
    )
    failed = FunnelEvent.objects.filter(step="charge_failed", occurred_at__gte=since, occurred_at__lt=until)
    if funnel.app_id:
        failed = failed.filter(app_id=funnel.app_id)
    failures: dict[datetime, Counter[str]] = defaultdict(Counter)
    for occurred_at, code in failed.exclude(error_code="").values_list("occurred_at", "error_code"):
        failures[_hour(occurred_at)][code] += 1
    hours = []
    hour = since
    while hour < until:
        histograms = {str(step): {str(b): n for b, n in sorted(c.items())} for step, c in sorted(gaps[hour].items())}
        hours.append(FunnelRollupHour(funnel=funnel, hour=hour, gaps=histograms, failures=dict(failures[hour])))
        hour += HOUR
    FunnelRollupHour.objects.bulk_create(hours)


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _merge_days(funnel: FunnelDefinition, since: datetime, until: datetime) -> None:
    """Rebuild the day rows of the days [since, until) touches from their hour rows and cells."""
    first, end = _day(since), _day(until - timedelta(microseconds=1)) + DAY
    steps = len(funnel.steps)
    days: dict[datetime, FunnelRollupDay] = {}

    def day_of(hour: datetime) -> FunnelRollupDay:
        day = _day(hour)
        if day not in days:
            days[day] = FunnelRollupDay(funnel=funnel, day=day, gaps={}, failures={}, reached={})
        return days[day]

    hours = FunnelRollupHour.objects.filter(funnel=funnel, hour__gte=first, hour__lt=end)
    for hour, gaps, failures in hours.values_list("hour", "gaps", "failures"):
        day = day_of(hour)
        add_gaps(day.gaps, gaps)
        for code, charges in failures.items():
            day.failures[code] = day.failures.get(code, 0) + charges
    cells = FunnelRollup.objects.filter(funnel=funnel, hour__gte=first, hour__lt=end)
    for hour, reached, excluded, *values in cells.values_list("hour", "reached", "excluded", *DIMENSIONS):
        day = day_of(hour)
        for dimension, value in zip(DIMENSIONS, values, strict=True):
            numbers = day.reached.setdefault(dimension, {}).setdefault(str(value), [0] * (steps + 1))
            _add(numbers, [*reached, excluded])
    FunnelRollupDay.objects.filter(funnel=funnel, day__gte=first, day__lt=end).delete()
    FunnelRollupDay.objects.bulk_create(days.values())


def add_gaps(total: dict[str, dict[str, list[int]]], gaps: dict[str, dict[str, list[int]]]) -> None:
    """Add rollup gap histograms ({step: {bucket: [journeys, seconds]}}) into `total`."""
    for step, buckets in gaps.items():
        into = total.setdefault(step, {})
        for bucket, (journeys, seconds) in buckets.items():
            counts = into.setdefault(bucket, [0, 0])
            counts[0] += journeys
            counts[1] += seconds


def _whole_days(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The UTC days inside [since, until), as [first, end) (empty when first >= end)."""
    first = _day(since)
    if first < since:
        first += DAY
    return first, max(first, _day(until))


def _period_rows(
    funnel: FunnelDefinition, since: datetime, until: datetime
) -> tuple[QuerySet[FunnelRollupDay], QuerySet[FunnelRollupHour], QuerySet[FunnelRollup]]:
    """The rollup rows a period is read from: the day rows of its whole UTC days, the hour rows and the
    cells of its other hours."""
    first, end = _whole_days(since, until)
    days = FunnelRollupDay.objects.filter(funnel=funnel, day__gte=first, day__lt=end)
    # Two index ranges, the hours before the first whole day and after the last one.
    edges = (
        Q(hour__gte=since, hour__lt=first) | Q(hour__gte=end, hour__lt=until)
        if first < end
        else Q(hour__gte=since, hour__lt=until)
    )
    hours = FunnelRollupHour.objects.filter(edges, funnel=funnel)
    cells = FunnelRollup.objects.filter(edges, funnel=funnel)
    return days, hours, cells


def day_levels(
    *, funnel_ids: list[int], since: datetime, until: datetime, column: str, values: list[str] | None, levels: int
) -> tuple[list[int | None], tuple[datetime, datetime]]:
    """Journeys that reached each of the first `levels` levels in the whole UTC days of [since, until), from the
    day rows: the cells of one breakdown `column` (one of DIMENSIONS) added up, only its `values` when given
    (None past a funnel's last step, as its cells have no such level). Also the whole days [first, end) read:
    the hours outside them are the caller's to read from the cells."""
    first, end = _whole_days(since, until)
    if connection.vendor != "postgresql":
        return _day_levels_in_python(funnel_ids, first, end, column, values, levels), (first, end)
    # A day's numbers are [journeys per level..., excluded]: a level is read only below the last one.
    sums = ", ".join(
        f"SUM(CASE WHEN {index} < jsonb_array_length(e.value) - 1 THEN (e.value->>{index})::bigint END)"
        for index in range(levels)
    )
    with reporting_connection().cursor() as cursor:  # a report's read: the replica's, when there is one
        cursor.execute(
            f"SELECT {sums} FROM {FunnelRollupDay._meta.db_table} d "  # noqa: S608 - our own table and numbers
            "CROSS JOIN LATERAL jsonb_each(d.reached -> %(column)s) e "
            "WHERE d.funnel_id = ANY(%(funnels)s) AND d.day >= %(first)s AND d.day < %(end)s "
            "AND (%(values)s::text[] IS NULL OR e.key = ANY(%(values)s::text[]))",
            {"column": column, "funnels": funnel_ids, "first": first, "end": end, "values": values},
        )
        row = cursor.fetchone()
    return [None if value is None else int(value) for value in row or [None] * levels], (first, end)


def _day_levels_in_python(
    funnel_ids: list[int], first: datetime, end: datetime, column: str, values: list[str] | None, levels: int
) -> list[int | None]:
    """`day_levels`' sums where the database has no JSON functions to add them (SQLite, the embedded default,
    whose day rows are few): the same rules, a level counted only below a cell's last number."""
    totals: list[int | None] = [None] * levels
    days = FunnelRollupDay.objects.filter(funnel_id__in=funnel_ids, day__gte=first, day__lt=end)
    for reached in days.values_list("reached", flat=True).iterator():
        for value, numbers in (reached.get(column) or {}).items():
            if values is not None and value not in values:
                continue
            for index in range(min(levels, len(numbers) - 1)):
                totals[index] = (totals[index] or 0) + int(numbers[index])
    return totals


def refresh_recent_rollups() -> int:
    """The periodic job: every funnel's hours that can still change."""
    now = timezone.now()
    partitions.analyze_partitions(since=now - MOVED_LOOKBACK)
    total = 0
    for funnel in FunnelDefinition.objects.all():
        since, _ = hour_range(now - timedelta(seconds=funnel.window_seconds) - HOUR, now)
        for first, last in _runs(moved_hours(funnel=funnel, since=since)):
            total += refresh_rollups(funnel=funnel, since=first, until=last + HOUR)
        total += refresh_rollups(funnel=funnel, since=since, until=now)
    return total


def moved_hours(*, funnel: FunnelDefinition, since: datetime) -> list[datetime]:
    """Hours before `since` (back to MOVED_LOOKBACK) when journeys started that have events of the
    funnel at or after `since`: their levels may have changed."""
    steps = [*funnel.steps, *([funnel.exclusion_step] if funnel.exclusion_step else [])]
    later = FunnelEvent.objects.filter(
        app_id=OuterRef("app_id"), journey_id=OuterRef("journey_id"), occurred_at__gte=since, step__in=steps
    )
    journeys = Journey.objects.filter(started_at__gte=since - MOVED_LOOKBACK, started_at__lt=since)
    if funnel.app_id:
        journeys = journeys.filter(app_id=funnel.app_id)
    hours = (
        journeys.filter(Exists(later)).annotate(hour=TruncHour("started_at", tzinfo=UTC)).values_list("hour", flat=True)
    )
    return sorted(set(hours))


def _runs(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive hours as (first, last) runs."""
    runs: list[tuple[datetime, datetime]] = []
    for hour in hours:
        if runs and hour - runs[-1][1] == HOUR:
            runs[-1] = (runs[-1][0], hour)
        else:
            runs.append((hour, hour))
    return runs


def rollups_cover(*, funnel: FunnelDefinition, since: datetime, until: datetime) -> bool:
    """Whether every hour of [since, until) that has begun is computed (later ones have no journeys yet)."""
    since, until = hour_range(since, min(until, timezone.now() + HOUR))
    if since >= until:
        return True
    expected = int((until - since) / HOUR)
    return FunnelRollupHour.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).count() == expected


def rollup_counts(
    *, funnel: FunnelDefinition, since: datetime, until: datetime, breakdown: str | None = None
) -> FunnelCounts:
    """The funnel's counts for journeys that started in the hours [since, until), from the rollups."""
    if breakdown is not None and breakdown not in BREAKDOWNS:
        raise ValueError(f"breakdown is one of {BREAKDOWNS}")
    steps = len(funnel.steps)
    days, hours, cells = _period_rows(funnel, since, until)
    by = "app_id" if breakdown in (None, "app") else breakdown
    # Per breakdown value: journeys per level reached, then exclusions.
    values: dict[str, list[int]] = defaultdict(lambda: [0] * (steps + 1))
    # The hours outside whole days, added up by the database: a few rows reach Python, not one per cell.
    sums = {f"level_{index}": Sum(Cast(KeyTransform(index, "reached"), BigIntegerField())) for index in range(steps)}
    for row in cells.values(by).order_by(by).annotate(excluded_journeys=Sum("excluded"), **sums):
        levels = [row[f"level_{index}"] or 0 for index in range(steps)]
        _add(values[str(row[by])], [*levels, row["excluded_journeys"]])
    for day in days.annotate(levels=KeyTransform(by, "reached")).values_list("levels", flat=True):
        for value, numbers in (day or {}).items():
            _add(values[value], numbers)
    counts = FunnelCounts(steps=steps)
    groups: dict[str, list[int]] = defaultdict(lambda: [0] * steps)
    for value, numbers in values.items():
        counts.excluded += numbers[steps]
        group = groups[value if breakdown == "app" else value or UNKNOWN]
        _add(counts.reached, numbers[:steps])
        _add(group, numbers[:steps])
    if breakdown is not None:
        counts.groups = {value: reached for value, reached in groups.items() if reached[0]}
    total: dict[str, dict[str, list[int]]] = {}
    for rows in (days, hours):
        for gaps in rows.values_list("gaps", flat=True):
            add_gaps(total, gaps)
    for step, histogram in total.items():
        counts.gaps[int(step) - 1] = bucket_histogram({int(b): (n, seconds) for b, (n, seconds) in histogram.items()})
    return counts


def _add(total: list[int], numbers: list[int]) -> None:
    for index, number in enumerate(numbers):
        total[index] += number


def rollup_report(
    *, funnel: FunnelDefinition, since: datetime, until: datetime, breakdown: str | None = None
) -> FunnelReport:
    """The funnel report of journeys that started in the hours [since, until), read from the rollups."""
    counts = rollup_counts(funnel=funnel, since=since, until=until, breakdown=breakdown)
    codes = rollup_failure_codes(funnel=funnel, since=since, until=until)
    return build_report(list(funnel.steps), counts, sorted_codes(codes))


def rollup_failure_codes(*, funnel: FunnelDefinition, since: datetime, until: datetime) -> Counter[str]:
    codes: Counter[str] = Counter()
    days, hours, _ = _period_rows(funnel, since, until)
    for rows in (days, hours):
        for failures in rows.values_list("failures", flat=True):
            codes.update(failures)
    return codes


def dashboard_report(
    *,
    funnel: FunnelDefinition,
    since: datetime,
    until: datetime,
    breakdown: str | None = None,
    timeout_ms: int | None = None,
) -> tuple[FunnelReport, str]:
    """The report dashboards show, and where it came from: ClickHouse when it is the analytics backend
    ("clickhouse"); else the rollups when they cover the period's complete hours (whole hours only), with
    the current hour, when the period runs into it, from the raw events ("rollups"); else the raw events
    ("events"). `timeout_ms` bounds the raw part (`ReportTimedOut`)."""
    steps, window = list(funnel.steps), timedelta(seconds=funnel.window_seconds)
    source = "clickhouse" if settings.ANALYTICS_BACKEND == "clickhouse" else "events"
    split = min(until, max(since, _hour(timezone.now())))  # rollups before, raw events from then on
    if (
        source == "events"
        and since == _hour(since)
        and until == _hour(until)
        and split > since
        and rollups_cover(funnel=funnel, since=since, until=split)
    ):
        counts = rollup_counts(funnel=funnel, since=since, until=split, breakdown=breakdown)
        codes = rollup_failure_codes(funnel=funnel, since=since, until=split)
        if split < until:
            counts.add(
                funnel_counts(
                    steps=steps,
                    window=window,
                    since=split,
                    until=until,
                    exclusion=funnel.exclusion_step,
                    app_id=funnel.app_id,
                    breakdown=breakdown,
                    timeout_ms=timeout_ms,
                )
            )
            codes.update(failure_codes(since=split, until=until, app_id=funnel.app_id))
        counts.groups = dict(sorted(counts.groups.items()))
        return build_report(steps, counts, sorted_codes(codes)), "rollups"
    report = funnel_report(
        steps=steps,
        window=window,
        since=since,
        until=until,
        exclusion=funnel.exclusion_step,
        app_id=funnel.app_id,
        breakdown=breakdown,
        timeout_ms=timeout_ms,
    )
    return report, source
