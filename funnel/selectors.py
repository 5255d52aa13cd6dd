"""Funnel analysis with the semantics of ClickHouse's `windowFunnel(window)` in its default mode.

For each journey, all its events are taken in time order, events at the same instant in step order
(as ClickHouse sorts them: one instant can satisfy consecutive steps). An event of step 1 starts a
chain; an event of step k+1 extends a chain that has reached step k if it happens no later than
`window` after that chain's first event. The journey's level is the highest step any chain
reaches. Repeated events are allowed; a step out of order simply does not extend a chain.
With an exclusion step, a journey that has it between the start of its best chain and that start
plus the window is left out of the funnel altogether.

On PostgreSQL the report is computed by the database (`funnel.sql`), elsewhere by `window_funnel`
over each journey's events, and with ANALYTICS_BACKEND=clickhouse by ClickHouse's own windowFunnel
over the shipped events (`funnel.analytics`); tests hold them equal. Times between steps are counted in whole
seconds (rounded down); the median and 90th percentile (nearest rank) from raw events are exact.
Rollups keep them in log-spaced buckets (`GAP_BUCKET_BOUNDS`), with each bucket's count and sum of
seconds: their percentiles are exact below 64 s and within 1/32 (3.2 %) of the raw ones above
(reports give them to a tenth of a second).
"""

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import OperationalError, connection
from django.db.models import Count, QuerySet

from funnel import partitions, sql
from funnel.analytics import clickhouse
from funnel.analytics import funnels as clickhouse_funnels
from funnel.models import FunnelEvent, Journey
from funnel.sql import FunnelScope
from playpay.parallel import Parts, in_one_snapshot

BREAKDOWNS = ("carrier", "country", "price_point", "flow", "app")


class ReportTimedOut(Exception):
    """The raw-event report took longer than it was given (the database, PostgreSQL or ClickHouse, stopped it)."""


@dataclass(frozen=True)
class JourneyResult:
    level: int
    # Time of each reached step in the best chain (index 0 = step 1).
    times: tuple[datetime, ...]


def window_funnel(
    events: Iterable[tuple[datetime, str]], steps: list[str], window: timedelta, exclusion: str = ""
) -> JourneyResult | None:
    """The level one journey reaches (None when excluded) from its (time, step) events, in any order."""
    chains: list[list[datetime]] = []  # each chain: the times of its steps so far
    excluded_at: list[datetime] = []
    position = {step: index for index, step in enumerate(steps)}
    for at, step in sorted(events, key=lambda event: (event[0], position.get(event[1], len(steps)))):
        if exclusion and step == exclusion:
            excluded_at.append(at)
        index = position.get(step)
        if index is None:
            continue
        if index == 0:
            chains.append([at])
            continue
        # Every chain waiting for this step takes it (each chain is one hypothesis of where the
        # journey began; windowFunnel keeps the latest start per level, which is the same).
        for chain in chains:
            if len(chain) == index and at - chain[0] <= window:
                chain.append(at)
    if not chains:
        return JourneyResult(level=0, times=())
    best = max(chains, key=lambda chain: (len(chain), chain[0]))
    if any(best[0] <= at <= best[0] + window for at in excluded_at):
        return None
    return JourneyResult(level=len(best), times=tuple(best))


@dataclass
class StepStats:
    step: str
    entered: int = 0
    conversion_from_previous: float | None = None
    drop_off: int = 0
    median_seconds_from_previous: float | None = None
    p90_seconds_from_previous: float | None = None


@dataclass
class FunnelReport:
    steps: list[StepStats]
    journeys: int
    excluded: int
    overall_conversion: float | None
    failure_codes: dict[str, int] = field(default_factory=dict)
    breakdown: dict[str, list[int]] = field(default_factory=dict)


def journey_event_streams(
    queryset: QuerySet[FunnelEvent],
) -> Iterator[tuple[tuple[int, str], list[tuple[datetime, str]]]]:
    current: tuple[int, str] | None = None
    batch: list[tuple[datetime, str]] = []
    rows = queryset.order_by("app_id", "journey_id", "occurred_at", "id").values_list(
        "app_id", "journey_id", "occurred_at", "step"
    )
    for app_id, journey_id, occurred_at, step in rows.iterator(chunk_size=5000):
        key = (app_id, journey_id)
        if key != current and current is not None:
            yield current, batch
            batch = []
        current = key
        batch.append((occurred_at, step))
    if current is not None:
        yield current, batch


UNKNOWN = "(unknown)"
SECOND = timedelta(seconds=1)


def gap_seconds(earlier: datetime, later: datetime) -> int:
    """Whole seconds from one step to the next, rounded down."""
    return (later - earlier) // SECOND


# Lower bounds (whole seconds) of the buckets rollups count times between steps in: one per second
# below 64 s, then 32 per doubling, so that a bucket is never wider than 1/32 of its lower bound (up to
# 2^25 s, 388 days; longer times share the last bucket). A fixed set, so that a period's histograms
# add up bucket by bucket whatever its length; `width_bucket(seconds, bounds)` in SQL, `gap_bucket` here.
GAP_BUCKET_BOUNDS: tuple[int, ...] = (
    *range(64),
    *(((32 + sub) << (exponent - 5)) for exponent in range(6, 25) for sub in range(32)),
)


def gap_bucket(seconds: int) -> int:
    """The 1-based bucket of a time between steps (as PostgreSQL's width_bucket numbers them)."""
    return bisect.bisect_right(GAP_BUCKET_BOUNDS, seconds)


def bucket_histogram(buckets: Mapping[int, tuple[int, int]]) -> Counter[float]:
    """{value: count} from {bucket: (count, sum of seconds)}: each bucket's journeys at its mean, which
    lies in the bucket, so a percentile read from it is within the bucket's width of the exact one."""
    histogram: Counter[float] = Counter()
    for count, seconds in buckets.values():
        if count:
            histogram[seconds / count] += count
    return histogram


def histogram_percentiles(histogram: Mapping[float, int]) -> tuple[float | None, float | None]:
    """(median, 90th percentile by nearest rank) of values given as {value: count}."""
    total = sum(histogram.values())
    if not total:
        return None, None
    ordered = sorted(histogram.items())

    def at(position: int) -> float:  # the value at a 0-based position in sorted order
        seen = 0
        for value, count in ordered:
            seen += count
            if position < seen:
                return value
        return ordered[-1][0]

    median = at(total // 2) if total % 2 else (at(total // 2 - 1) + at(total // 2)) / 2
    # To a tenth of a second: exact for whole seconds and their halves, as raw events give.
    return float(round(median, 1)), float(round(at(max(math.ceil(0.9 * total), 1) - 1), 1))


@dataclass
class FunnelCounts:
    """What a funnel report is made of, from raw events or from rollups."""

    steps: int
    # reached[k] = journeys (not excluded) that reached level k+1
    reached: list[int] = field(default_factory=list)
    excluded: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)
    # gaps[k] = {seconds from step k to step k+1: journeys}, for k = 1 .. steps-1 (key 0 unused): whole
    # seconds from raw events, a bucket's mean from rollups
    gaps: list[Counter[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reached = self.reached or [0] * self.steps
        self.gaps = self.gaps or [Counter() for _ in range(self.steps)]

    def add(self, other: "FunnelCounts") -> None:
        """Take in the counts of other journeys (another part of the period)."""
        for index, journeys in enumerate(other.reached):
            self.reached[index] += journeys
        self.excluded += other.excluded
        for value, reached in other.groups.items():
            counts = self.groups.setdefault(value, [0] * self.steps)
            for index, journeys in enumerate(reached):
                counts[index] += journeys
        for mine, theirs in zip(self.gaps, other.gaps, strict=True):
            mine.update(theirs)

    def add_group(self, value: str, level: int, journeys: int = 1) -> None:
        counts = self.groups.setdefault(value, [0] * self.steps)
        for index in range(level):
            counts[index] += journeys


def _python_counts(scope: FunnelScope, *, breakdown: str | None) -> FunnelCounts:
    steps, window, app_id = scope.steps, scope.window, scope.app_id
    journeys = Journey.objects.filter(started_at__gte=scope.since, started_at__lt=scope.until)
    if app_id is not None:
        journeys = journeys.filter(app_id=app_id)
    attributes = {
        (j["app_id"], j["journey_id"]): j
        for j in journeys.values("app_id", "journey_id", *(b for b in BREAKDOWNS if b != "app"))
    }
    # A journey's events are all at or after its start; any later one may begin a chain.
    events = FunnelEvent.objects.filter(occurred_at__gte=scope.since)
    if app_id is not None:
        events = events.filter(app_id=app_id)
    counts = FunnelCounts(steps=len(steps))
    for key, journey_events in journey_event_streams(events):
        if key not in attributes:
            continue
        result = window_funnel(journey_events, steps, window, scope.exclusion)
        if result is None:
            counts.excluded += 1
            continue
        for level in range(1, result.level + 1):
            counts.reached[level - 1] += 1
            if level > 1:
                counts.gaps[level - 1][gap_seconds(result.times[level - 2], result.times[level - 1])] += 1
        if breakdown is not None and result.level:
            value = str(key[0]) if breakdown == "app" else attributes[key][breakdown] or UNKNOWN
            counts.add_group(value, result.level)
    return counts


def _sql_counts(scope: FunnelScope, *, breakdown: str | None, timeout_ms: int | None = None) -> FunnelCounts:
    """The report's counts from the raw events: over FUNNEL_PARTS_FROM_HOURS or more, cut into FUNNEL_PARTS
    parts by journey, read at once on connections of their own (one core each) in one snapshot."""
    import psycopg

    period_hours = (scope.until - scope.since).total_seconds() / 3600
    count = max(settings.FUNNEL_PARTS, 1) if period_hours >= settings.FUNNEL_PARTS_FROM_HOURS else 1
    partitions.analyze_partitions(since=scope.since)

    def part(index: int) -> Callable[[Parts], list[tuple[str, str, int, int, int]]]:
        query, params = sql.report_query(replace(scope, part=index, parts=count), breakdown=breakdown)

        def run(shared: Parts) -> list[tuple[str, str, int, int, int]]:
            with connection.cursor() as cursor:
                sql.set_analysis_limits(cursor, timeout_ms=timeout_ms)
                sql.prefer_ordered_reads(cursor)
                shared.check()  # another part failed before this one's statement began
                cursor.execute(query, params)
                return list(cursor.fetchall())

        return run

    try:
        parts = in_one_snapshot([part(index) for index in range(count)])
    except OperationalError as error:
        if isinstance(error.__cause__, psycopg.errors.QueryCanceled):
            raise ReportTimedOut from error
        raise
    return _counts_of_rows(scope, itertools.chain.from_iterable(parts), breakdown=breakdown)


@contextmanager
def clickhouse_time_bound() -> Iterator[None]:
    """ClickHouse's errors for a statement stopped at its time bound, as ReportTimedOut (as PostgreSQL's)."""
    try:
        yield
    except Exception as error:
        if clickhouse.is_timeout(error):
            raise ReportTimedOut from error
        raise


def _clickhouse_counts(scope: FunnelScope, *, breakdown: str | None, timeout_ms: int | None = None) -> FunnelCounts:
    with clickhouse_time_bound():
        rows = clickhouse_funnels.report_rows(scope, breakdown=breakdown, timeout_ms=timeout_ms)
    return _counts_of_rows(scope, rows, breakdown=breakdown)


def _counts_of_rows(
    scope: FunnelScope, rows: Iterable[tuple[str, str, int, int, int]], *, breakdown: str | None
) -> FunnelCounts:
    counts = FunnelCounts(steps=len(scope.steps))
    for kind, group, level, value, journeys in rows:
        if kind == "gap":
            counts.gaps[level - 1][value] += journeys
        elif value:  # excluded
            counts.excluded += journeys
        else:
            for index in range(level):
                counts.reached[index] += journeys
            if breakdown is not None and level:
                counts.add_group(group or UNKNOWN, level, journeys)
    return counts


def funnel_counts(
    *,
    steps: list[str],
    window: timedelta,
    since: datetime,
    until: datetime,
    exclusion: str = "",
    app_id: int | None = None,
    breakdown: str | None = None,
    timeout_ms: int | None = None,
) -> FunnelCounts:
    """The funnel's counts from the raw events, computed by the database where it can; on PostgreSQL and
    ClickHouse `timeout_ms` bounds it (ReportTimedOut)."""
    if breakdown is not None and breakdown not in BREAKDOWNS:
        raise ValueError(f"breakdown is one of {BREAKDOWNS}")
    scope = FunnelScope(steps=steps, window=window, since=since, until=until, exclusion=exclusion, app_id=app_id)
    if settings.ANALYTICS_BACKEND == "clickhouse":
        return _clickhouse_counts(scope, breakdown=breakdown, timeout_ms=timeout_ms)
    if connection.vendor == "postgresql":
        return _sql_counts(scope, breakdown=breakdown, timeout_ms=timeout_ms)
    return _python_counts(scope, breakdown=breakdown)


def failure_codes(
    *, since: datetime, until: datetime, app_id: int | None = None, timeout_ms: int | None = None
) -> dict[str, int]:
    """Standard error codes of the charges that failed in [since, until), most frequent first; `timeout_ms`
    bounds the ClickHouse statement (ReportTimedOut), PostgreSQL's reads one index range."""
    if settings.ANALYTICS_BACKEND == "clickhouse":
        with clickhouse_time_bound():
            codes = clickhouse_funnels.failure_codes(since=since, until=until, app_id=app_id, timeout_ms=timeout_ms)
        return sorted_codes(codes)
    failed = FunnelEvent.objects.filter(step="charge_failed", occurred_at__gte=since, occurred_at__lt=until)
    if app_id is not None:
        failed = failed.filter(app_id=app_id)
    counted = failed.exclude(error_code="").values("error_code").annotate(failures=Count("pk")).order_by()
    return sorted_codes({row["error_code"]: row["failures"] for row in counted})


def sorted_codes(codes: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(codes.items(), key=lambda item: (-item[1], item[0])))


def build_report(steps: list[str], counts: FunnelCounts, codes: dict[str, int]) -> FunnelReport:
    stats = []
    for index, step in enumerate(steps):
        entered = counts.reached[index]
        previous = counts.reached[index - 1] if index else None
        stat = StepStats(step=step, entered=entered)
        if previous:
            stat.conversion_from_previous = entered / previous
            stat.drop_off = previous - entered
        stat.median_seconds_from_previous, stat.p90_seconds_from_previous = histogram_percentiles(counts.gaps[index])
        stats.append(stat)
    journeys = counts.reached[0] if steps else 0
    return FunnelReport(
        steps=stats,
        journeys=journeys,
        excluded=counts.excluded,
        overall_conversion=counts.reached[-1] / journeys if journeys else None,
        failure_codes=codes,
        breakdown=dict(sorted(counts.groups.items())),
    )


def funnel_report(
    *,
    steps: list[str],
    window: timedelta,
    since: datetime,
    until: datetime,
    exclusion: str = "",
    app_id: int | None = None,
    breakdown: str | None = None,
    timeout_ms: int | None = None,
) -> FunnelReport:
    """Entered, converted and timing per step for journeys that started in [since, until), from the raw events."""
    counts = funnel_counts(
        steps=steps,
        window=window,
        since=since,
        until=until,
        exclusion=exclusion,
        app_id=app_id,
        breakdown=breakdown,
        timeout_ms=timeout_ms,
    )
    return build_report(steps, counts, failure_codes(since=since, until=until, app_id=app_id, timeout_ms=timeout_ms))
