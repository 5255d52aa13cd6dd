"""Hourly funnel rollups: journeys by the hour they started and their breakdown values, per level.

Per funnel and hour, `FunnelRollup` rows count the journeys that reached each level per app,
carrier, country, price point and flow, and a `FunnelRollupHour` row keeps the histogram of the
times between steps and the error codes of the charges that failed in the hour, and marks the hour
as computed. A period whose hours are all computed is read
from these rows (`rollup_report`); dashboards do so, and fall back to the raw events otherwise.

A journey's level depends on events up to one window after its start, so the periodic job recomputes
every hour whose journeys may still move (the last `window` plus one hour), replacing those rows.
Older hours are computed once by `refresh_rollups` (`manage.py refresh_funnel_rollups --days N`).
On PostgreSQL the database computes the rollups (`funnel.sql`), elsewhere Python does.
"""

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from funnel import sql
from funnel.models import FunnelDefinition, FunnelEvent, FunnelRollup, FunnelRollupHour, Journey
from funnel.selectors import (
    BREAKDOWNS,
    UNKNOWN,
    FunnelCounts,
    FunnelReport,
    build_report,
    funnel_report,
    gap_seconds,
    journey_event_streams,
    sorted_codes,
    window_funnel,
)

DIMENSIONS = ("app_id", "carrier", "country", "price_point", "flow")
HOUR = timedelta(hours=1)


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
            statements, params = sql.rollup_statements(scope, funnel_id=funnel.pk)
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement, params)
        else:
            _refresh_in_python(funnel, steps, window, since, until)
        return FunnelRollup.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).count()


def _refresh_in_python(
    funnel: FunnelDefinition, steps: list[str], window: timedelta, since: datetime, until: datetime
) -> None:
    journeys = Journey.objects.filter(started_at__gte=since, started_at__lt=until)
    if funnel.app_id:
        journeys = journeys.filter(app_id=funnel.app_id)
    info = {(j["app_id"], j["journey_id"]): j for j in journeys.values("journey_id", "started_at", *DIMENSIONS)}
    scope = FunnelEvent.objects.filter(occurred_at__gte=since, occurred_at__lt=until + window)
    if funnel.app_id:
        scope = scope.filter(app_id=funnel.app_id)
    events = {key: stream for key, stream in journey_event_streams(scope) if key in info}
    cells: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * (len(steps) + 1))
    gaps: dict[datetime, dict[int, Counter[int]]] = defaultdict(lambda: defaultdict(Counter))
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
                gaps[hour][level + 1][gap_seconds(result.times[level - 1], result.times[level])] += 1
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
        histograms = {str(step): {str(s): n for s, n in sorted(c.items())} for step, c in sorted(gaps[hour].items())}
        hours.append(FunnelRollupHour(funnel=funnel, hour=hour, gaps=histograms, failures=dict(failures[hour])))
        hour += HOUR
    FunnelRollupHour.objects.bulk_create(hours)


def refresh_recent_rollups() -> int:
    """The periodic job: every funnel's hours that can still change."""
    now = timezone.now()
    total = 0
    for funnel in FunnelDefinition.objects.all():
        total += refresh_rollups(funnel=funnel, since=now - timedelta(seconds=funnel.window_seconds) - HOUR, until=now)
    return total


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
    counts = FunnelCounts(steps=steps)
    by = "app_id" if breakdown in (None, "app") else breakdown
    rows = FunnelRollup.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).values_list(
        by, "reached", "excluded"
    )
    groups: dict[str, list[int]] = defaultdict(lambda: [0] * steps)
    for value, reached, excluded in rows.iterator(chunk_size=10_000):
        counts.excluded += excluded
        group = groups[str(value) if breakdown == "app" else value or UNKNOWN]
        for index, journeys in enumerate(reached):
            counts.reached[index] += journeys
            group[index] += journeys
    if breakdown is not None:
        counts.groups = {value: reached for value, reached in groups.items() if reached[0]}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql.ROLLUP_GAPS, {"funnel_id": funnel.pk, "since": since, "until": until})
            for step, seconds, journeys in cursor.fetchall():
                counts.gaps[step - 1][seconds] += journeys
    else:
        for gaps in FunnelRollupHour.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).values_list(
            "gaps", flat=True
        ):
            for step, histogram in gaps.items():
                for seconds, journeys in histogram.items():
                    counts.gaps[int(step) - 1][int(seconds)] += journeys
    return counts


def rollup_report(
    *, funnel: FunnelDefinition, since: datetime, until: datetime, breakdown: str | None = None
) -> FunnelReport:
    """The funnel report of journeys that started in the hours [since, until), read from the rollups."""
    counts = rollup_counts(funnel=funnel, since=since, until=until, breakdown=breakdown)
    codes: Counter[str] = Counter()
    hours = FunnelRollupHour.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until)
    for failures in hours.values_list("failures", flat=True):
        codes.update(failures)
    return build_report(list(funnel.steps), counts, sorted_codes(codes))


def dashboard_report(
    *, funnel: FunnelDefinition, since: datetime, until: datetime, breakdown: str | None = None
) -> tuple[FunnelReport, str]:
    """The report dashboards show, and where it came from: ClickHouse when it is the analytics backend,
    else the rollups when they cover the period (whole hours), else the raw events."""
    if settings.ANALYTICS_BACKEND == "clickhouse":
        source = "clickhouse"
    elif since == _hour(since) and until == _hour(until) and rollups_cover(funnel=funnel, since=since, until=until):
        return rollup_report(funnel=funnel, since=since, until=until, breakdown=breakdown), "rollups"
    else:
        source = "events"
    report = funnel_report(
        steps=list(funnel.steps),
        window=timedelta(seconds=funnel.window_seconds),
        since=since,
        until=until,
        exclusion=funnel.exclusion_step,
        app_id=funnel.app_id,
        breakdown=breakdown,
    )
    return report, source
