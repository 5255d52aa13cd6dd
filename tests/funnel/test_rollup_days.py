"""Rollups keep the times between steps in log-spaced buckets and add each day's hours up in a day row:
counts stay equal to the raw events', percentiles within the documented 1/32, whatever the period's edges."""

import contextlib
import io
import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from funnel.models import FunnelDefinition, FunnelEvent, FunnelRollup, FunnelRollupDay, FunnelRollupHour, Journey
from funnel.rollups import _refresh_in_python, hour_range, refresh_rollups, rollup_report
from funnel.selectors import (
    GAP_BUCKET_BOUNDS,
    FunnelReport,
    funnel_report,
    gap_bucket,
    gap_seconds,
    journey_event_streams,
    window_funnel,
)
from tenants.models import App
from tests.factories import AppFactory
from tests.processes import django

from .test_analysis import HOUR, STEPS, T0

DAY0 = T0.replace(hour=0)


def journeys_over_days(app: App, seed: int, days: int = 3, count: int = 400) -> None:
    """Journeys spread over `days` days with steps seconds apart (so buckets hold different times)."""
    rng = random.Random(seed)
    journeys, events = [], []
    for n in range(count):
        start = DAY0 + timedelta(seconds=rng.randrange(days * 86400))
        journeys.append(Journey(app=app, journey_id=f"d{n}", started_at=start, carrier=rng.choice(["c1", "c2", ""])))
        moment = start
        for index, step in enumerate(STEPS[: rng.randrange(1, len(STEPS) + 1)]):
            if index:  # as often under 64 s (single-second buckets) as above, some past the window
                moment += timedelta(seconds=rng.choice([rng.randrange(64), rng.randrange(64, 4000)]))
            events.append(
                FunnelEvent(
                    app=app, journey_id=f"d{n}", event_id=f"d{n}-{index}", step=step, occurred_at=moment, source="game"
                )
            )
        if rng.random() < 0.3:
            code = rng.choice(["insufficient_funds", "barred"])
            events.append(
                FunnelEvent(
                    app=app,
                    journey_id=f"d{n}",
                    event_id=f"d{n}-f",
                    step="charge_failed",
                    occurred_at=moment,
                    source="platform",
                    error_code=code,
                )
            )
    Journey.objects.bulk_create(journeys)
    FunnelEvent.objects.bulk_create(events)


def assert_within_precision(raw: FunnelReport, rolled: FunnelReport) -> None:
    assert [s.entered for s in rolled.steps] == [s.entered for s in raw.steps]
    assert (rolled.journeys, rolled.excluded, rolled.breakdown) == (raw.journeys, raw.excluded, raw.breakdown)
    assert rolled.failure_codes == raw.failure_codes
    for exact_step, approximate_step in zip(raw.steps, rolled.steps, strict=True):
        pairs = [
            (exact_step.median_seconds_from_previous, approximate_step.median_seconds_from_previous),
            (exact_step.p90_seconds_from_previous, approximate_step.p90_seconds_from_previous),
        ]
        for exact, approximate in pairs:
            if exact is None or exact < 64:
                assert approximate == exact
            else:
                assert approximate is not None
                assert abs(approximate - exact) < exact / 32


def test_gap_buckets_are_single_seconds_below_64_and_never_wider_than_a_32nd_of_their_times() -> None:
    for index, low in enumerate(GAP_BUCKET_BOUNDS[:-1]):
        width = GAP_BUCKET_BOUNDS[index + 1] - low
        assert width == 1 if low < 64 else width * 32 <= low
        assert gap_bucket(low) == gap_bucket(low + width - 1) == index + 1
    assert gap_bucket(0) == 1
    assert gap_bucket(10**9) == len(GAP_BUCKET_BOUNDS)  # past the last bound: the last bucket


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("since", "until"),
    [
        (DAY0, DAY0 + timedelta(days=3)),  # whole days only
        (DAY0 + timedelta(hours=5), DAY0 + timedelta(days=2, hours=7)),  # hours on both sides of a whole day
        (DAY0 + timedelta(hours=3), DAY0 + timedelta(hours=20)),  # inside one day
    ],
)
def test_a_report_from_rollups_has_the_raw_counts_and_percentiles_within_a_32nd(
    since: datetime, until: datetime
) -> None:
    journeys_over_days(AppFactory.create(), seed=3)
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=definition, since=DAY0, until=DAY0 + timedelta(days=3))
    assert FunnelRollupDay.objects.count() == 3
    for breakdown in (None, "carrier", "app"):
        raw = funnel_report(steps=STEPS, window=HOUR, since=since, until=until, breakdown=breakdown)
        assert raw.steps[2].entered > 20
        rolled = rollup_report(funnel=definition, since=since, until=until, breakdown=breakdown)
        assert_within_precision(raw, rolled)
        # Times of many different seconds: the buckets do round some percentile.
        assert any(
            (r.median_seconds_from_previous, r.p90_seconds_from_previous)
            != (a.median_seconds_from_previous, a.p90_seconds_from_previous)
            for r, a in zip(raw.steps, rolled.steps, strict=True)
        )


@pytest.mark.django_db
def test_refreshing_some_hours_rebuilds_their_day_row() -> None:
    app = AppFactory.create()
    journeys_over_days(app, seed=4, days=1, count=100)
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    day = (DAY0, DAY0 + timedelta(days=1))
    refresh_rollups(funnel=definition, since=day[0], until=day[1])
    # A late journey in the afternoon: only its hours are recomputed, the day row takes it in.
    Journey.objects.create(app=app, journey_id="late", started_at=DAY0 + timedelta(hours=15), carrier="c9")
    FunnelEvent.objects.create(
        app=app,
        journey_id="late",
        event_id="late-0",
        step=STEPS[0],
        occurred_at=DAY0 + timedelta(hours=15),
        source="game",
    )
    refresh_rollups(funnel=definition, since=DAY0 + timedelta(hours=15), until=DAY0 + timedelta(hours=16))
    assert FunnelRollupDay.objects.get().reached["carrier"]["c9"] == [1, 0, 0, 0]
    raw = funnel_report(steps=STEPS, window=HOUR, since=day[0], until=day[1], breakdown="carrier")
    assert_within_precision(raw, rollup_report(funnel=definition, since=day[0], until=day[1], breakdown="carrier"))
    # Changing what the funnel counts drops the day rows with the rest.
    definition.window_seconds = 60
    definition.save()
    assert not FunnelRollupDay.objects.exists()


@pytest.mark.django_db
@pytest.mark.postgres
def test_day_rows_computed_by_the_database_equal_those_computed_in_python() -> None:
    journeys_over_days(AppFactory.create(), seed=5, days=2, count=200)
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    period = (DAY0, DAY0 + timedelta(days=2))

    def rows() -> list[tuple[Any, ...]]:
        return list(FunnelRollupDay.objects.order_by("day").values_list("day", "gaps", "failures", "reached"))

    refresh_rollups(funnel=definition, since=period[0], until=period[1])
    in_sql = rows()
    for model in (FunnelRollup, FunnelRollupHour, FunnelRollupDay):
        model.objects.all().delete()
    _refresh_in_python(definition, STEPS, HOUR, *hour_range(*period))
    from funnel.rollups import _merge_days

    _merge_days(definition, *period)
    assert rows() == in_sql
    assert len(in_sql) == 2


def old_hour_gaps() -> dict[datetime, dict[str, dict[str, int]]]:
    """The histograms as rollups kept them before buckets: {step: {whole seconds: journeys}} per hour."""
    started = {(j.app_id, j.journey_id): j.started_at for j in Journey.objects.all()}
    gaps: dict[datetime, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for key, events in journey_event_streams(FunnelEvent.objects.all()):
        result = window_funnel(events, STEPS, HOUR)
        assert result is not None
        hour = started[key].replace(minute=0, second=0, microsecond=0)
        for level in range(1, result.level):
            gaps[hour][str(level + 1)][str(gap_seconds(result.times[level - 1], result.times[level]))] += 1
    return {hour: {step: dict(counts) for step, counts in steps.items()} for hour, steps in gaps.items()}


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_the_migration_converts_existing_rollups_to_what_a_refresh_computes() -> None:
    from django.db.migrations.executor import MigrationExecutor

    def migrate(target: str) -> None:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate([("funnel", target)])

    journeys_over_days(AppFactory.create(), seed=6, days=2, count=150)
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=definition, since=DAY0, until=DAY0 + timedelta(days=2))
    fields = ("funnel_id", "hour", "app_id", "carrier", "country", "price_point", "flow", "reached", "excluded")
    cells = list(FunnelRollup.objects.order_by("pk").values_list(*fields))
    hours = list(FunnelRollupHour.objects.order_by("hour").values_list("funnel_id", "hour", "gaps", "failures"))
    days = list(FunnelRollupDay.objects.order_by("day").values_list("funnel_id", "day", "gaps", "failures", "reached"))
    old_gaps = old_hour_gaps()
    try:
        migrate("0010_analytics_shipping")
        assert not FunnelRollupHour.objects.exists()  # going back drops the rollups
        with connection.cursor() as cursor:
            for cell in cells:
                cursor.execute(
                    "INSERT INTO funnel_funnelrollup (funnel_id, hour, app_id, carrier, country, price_point, flow,"
                    " reached, excluded, computed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, now())",
                    [*cell[:7], str(cell[7]), cell[8]],
                )
            for funnel_id, hour, _, failures in hours:
                cursor.execute(
                    "INSERT INTO funnel_funnelrolluphour (funnel_id, hour, gaps, failures, computed_at)"
                    " VALUES (%s, %s, %s::jsonb, %s::jsonb, now())",
                    [funnel_id, hour, json_text(old_gaps.get(hour, {})), json_text(failures)],
                )
        migrate("0011_rollup_days")
    finally:
        MigrationExecutor(connection).loader.build_graph()
        migrate_latest = MigrationExecutor(connection)
        migrate_latest.migrate(migrate_latest.loader.graph.leaf_nodes())
    assert list(FunnelRollupHour.objects.order_by("hour").values_list("funnel_id", "hour", "gaps", "failures")) == hours
    converted = FunnelRollupDay.objects.order_by("day").values_list("funnel_id", "day", "gaps", "failures", "reached")
    assert list(converted) == days


def json_text(value: Any) -> str:
    import json

    return json.dumps(value)


DAY_ROWS_SCRIPT = """
from datetime import datetime, timedelta, UTC
from funnel.models import FunnelDefinition, FunnelRollupDay
from funnel.rollups import day_levels
day = datetime(2026, 3, 2, tzinfo=UTC)
funnel = FunnelDefinition.objects.create(name="shop", steps=["open", "select", "pay"], window_seconds=3600)
other = FunnelDefinition.objects.create(name="other", steps=["open", "pay"], window_seconds=3600)
FunnelRollupDay.objects.create(funnel=funnel, day=day, reached={"carrier": {"ee": [5, 3, 1, 0], "o2": [2, 1, 0, 1]}})
FunnelRollupDay.objects.create(funnel=funnel, day=day + timedelta(days=1), reached={"carrier": {"ee": [4, 2, 2, 0]}})
FunnelRollupDay.objects.create(funnel=other, day=day, reached={"carrier": {"ee": [9, 9, 0]}})
period = {"since": day, "until": day + timedelta(days=2), "column": "carrier", "levels": 4}
print(day_levels(funnel_ids=[funnel.pk], values=None, **period)[0])
print(day_levels(funnel_ids=[funnel.pk], values=["ee"], **period)[0])
print(day_levels(funnel_ids=[funnel.pk, other.pk], values=None, **{**period, "levels": 2})[0])
"""


@pytest.mark.django_db
@pytest.mark.postgres
def test_day_rows_are_added_up_alike_on_postgresql_and_in_the_embedded_default(tmp_path: Path) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(DAY_ROWS_SCRIPT, {})  # noqa: S102 - our own script, run here on PostgreSQL as below on SQLite
    # Levels past a cell's last step are not counted; the last number of a cell (its exclusions) never is.
    assert printed.getvalue().splitlines() == ["[11, 6, 3, None]", "[9, 5, 3, None]", "[20, 15]"]
    env = {"PLAYPAY_VAR_DIR": str(tmp_path)}
    assert django(["migrate", "-v", "0"], env).returncode == 0
    embedded = django(["shell", "-c", DAY_ROWS_SCRIPT], env)
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.splitlines()[-3:] == printed.getvalue().splitlines()
