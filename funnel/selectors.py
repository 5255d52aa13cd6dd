"""Funnel analysis with the semantics of ClickHouse's `windowFunnel(window)` in its default mode.

For each journey, events are taken in time order (ties by arrival). An event of step 1 starts a
chain; an event of step k+1 extends a chain that has reached step k if it happens no later than
`window` after that chain's first event. The journey's level is the highest step any chain
reaches. Repeated events are allowed; a step out of order simply does not extend a chain.
With an exclusion step, a journey that has it between the start of its best chain and that start
plus the window is left out of the funnel altogether.
"""

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import QuerySet

from funnel.models import FunnelEvent, Journey

BREAKDOWNS = ("carrier", "country", "price_point", "flow", "app")


@dataclass(frozen=True)
class JourneyResult:
    level: int
    # Time of each reached step in the best chain (index 0 = step 1).
    times: tuple[datetime, ...]


def window_funnel(
    events: Iterable[tuple[datetime, str]], steps: list[str], window: timedelta, exclusion: str = ""
) -> JourneyResult | None:
    """The level one journey reaches (None when excluded); `events` are (time, step) in time order."""
    chains: list[list[datetime]] = []  # each chain: the times of its steps so far
    excluded_at: list[datetime] = []
    position = {step: index for index, step in enumerate(steps)}
    for at, step in events:
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


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def funnel_report(
    *,
    steps: list[str],
    window: timedelta,
    since: datetime,
    until: datetime,
    exclusion: str = "",
    app_id: int | None = None,
    breakdown: str | None = None,
) -> FunnelReport:
    """Entered, converted and timing per step for journeys that started in [since, until)."""
    if breakdown is not None and breakdown not in BREAKDOWNS:
        raise ValueError(f"breakdown is one of {BREAKDOWNS}")
    journeys = Journey.objects.filter(started_at__gte=since, started_at__lt=until)
    if app_id is not None:
        journeys = journeys.filter(app_id=app_id)
    attributes = {
        (j["app_id"], j["journey_id"]): j
        for j in journeys.values("app_id", "journey_id", *(b for b in BREAKDOWNS if b != "app"))
    }
    events = FunnelEvent.objects.filter(occurred_at__gte=since, occurred_at__lt=until + window)
    if app_id is not None:
        events = events.filter(app_id=app_id)
    reached = [0] * (len(steps) + 1)
    gaps: list[list[float]] = [[] for _ in steps]
    excluded = 0
    groups: dict[str, list[int]] = defaultdict(lambda: [0] * len(steps))
    for key, journey_events in journey_event_streams(events):
        if key not in attributes:
            continue
        result = window_funnel(journey_events, steps, window, exclusion)
        if result is None:
            excluded += 1
            continue
        for level in range(1, result.level + 1):
            reached[level] += 1
            if level > 1:
                gaps[level - 1].append((result.times[level - 1] - result.times[level - 2]).total_seconds())
        if breakdown is not None:
            value = str(key[0]) if breakdown == "app" else attributes[key][breakdown] or "(unknown)"
            for level in range(result.level):
                groups[value][level] += 1
    stats = []
    for index, step in enumerate(steps):
        entered = reached[index + 1]
        previous = reached[index] if index else None
        stat = StepStats(step=step, entered=entered)
        if previous:
            stat.conversion_from_previous = entered / previous
            stat.drop_off = previous - entered
        if gaps[index]:
            stat.median_seconds_from_previous = statistics.median(gaps[index])
            stat.p90_seconds_from_previous = _percentile(gaps[index], 0.9)
        stats.append(stat)
    codes = Counter(
        FunnelEvent.objects.filter(step="charge_failed", occurred_at__gte=since, occurred_at__lt=until + window)
        .exclude(error_code="")
        .values_list("error_code", flat=True)
    )
    return FunnelReport(
        steps=stats,
        journeys=reached[1],
        excluded=excluded,
        overall_conversion=reached[len(steps)] / reached[1] if reached[1] else None,
        failure_codes=dict(codes),
        breakdown=dict(groups),
    )
