"""Hourly funnel rollups: journeys by the hour they started and their breakdown values, per level.

A journey's level depends on events up to one window after its start, so the job recomputes
every hour whose journeys may still move (the last `window` plus one hour), replacing those rows.
"""

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from funnel.models import FunnelDefinition, FunnelEvent, FunnelRollup, Journey
from funnel.selectors import journey_event_streams, window_funnel

DIMENSIONS = ("app_id", "carrier", "country", "price_point", "flow")


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def refresh_rollups(*, funnel: FunnelDefinition, since: datetime, until: datetime) -> int:
    """Recompute the rollup rows of the hours in [since, until); returns how many rows now exist there."""
    since, until = _hour(since), _hour(until - timedelta(microseconds=1)) + timedelta(hours=1)
    window = timedelta(seconds=funnel.window_seconds)
    steps = list(funnel.steps)
    journeys = Journey.objects.filter(started_at__gte=since, started_at__lt=until)
    if funnel.app_id:
        journeys = journeys.filter(app_id=funnel.app_id)
    info = {(j["app_id"], j["journey_id"]): j for j in journeys.values("journey_id", "started_at", *DIMENSIONS)}
    scope = FunnelEvent.objects.filter(occurred_at__gte=since, occurred_at__lt=until + window)
    if funnel.app_id:
        scope = scope.filter(app_id=funnel.app_id)
    events = {key: stream for key, stream in journey_event_streams(scope) if key in info}
    cells: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * (len(steps) + 1))
    for key, journey in info.items():
        result = window_funnel(events.get(key, []), steps, window, funnel.exclusion_step)
        cell = cells[(_hour(journey["started_at"]), *(journey[d] for d in DIMENSIONS))]
        if result is None:
            cell[len(steps)] += 1  # the last slot counts exclusions
            continue
        for level in range(result.level):
            cell[level] += 1
    with transaction.atomic():
        FunnelRollup.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until).delete()
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
    return len(cells)


def refresh_recent_rollups() -> int:
    """The periodic job: every funnel's hours that can still change."""
    now = timezone.now()
    total = 0
    for funnel in FunnelDefinition.objects.all():
        total += refresh_rollups(
            funnel=funnel, since=now - timedelta(seconds=funnel.window_seconds) - timedelta(hours=1), until=now
        )
    return total


def rollup_reached(
    *, funnel: FunnelDefinition, since: datetime, until: datetime, by: str | None = None
) -> dict[str, list[int]]:
    """Journeys per level from the rollups, in total ("all") or per value of `by` (a dimension)."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0] * len(funnel.steps))
    for row in FunnelRollup.objects.filter(funnel=funnel, hour__gte=since, hour__lt=until):
        key = "all" if by is None else str(getattr(row, "app_id" if by == "app" else by))
        for level, count in enumerate(row.reached):
            totals[key][level] += count
    return dict(totals)
