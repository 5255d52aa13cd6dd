"""Funnels agree with ClickHouse's windowFunnel (default mode, run in-process by chdb) whichever way they
are read: raw events in SQL, the Python oracle, hourly rollups. Also: a period that runs into the current
hour reads rollups, and freshly loaded events get planner statistics before a report plans on them."""

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from funnel.models import FunnelDefinition, FunnelEvent, Journey
from funnel.partitions import TABLE, create_partition, partition_name
from funnel.rollups import dashboard_report, refresh_rollups, rollup_report
from funnel.selectors import _python_counts, _sql_counts, funnel_report, window_funnel
from funnel.services import GameEvent, ingest_events
from funnel.sql import FunnelScope, report_query, set_analysis_limits
from playpay.parallel import runs_at_once
from tenants.models import App
from tests.conftest import StaffClient
from tests.factories import AppFactory
from tests.funnel.report_page import page_cut_short

STEPS = ["open", "select", "pay"]
HOUR = timedelta(hours=1)
DAY = datetime(2026, 11, 1, tzinfo=UTC)


def store(app: App, journey: str, events: list[tuple[datetime, str]], carrier: str = "c1") -> None:
    Journey.objects.create(app=app, journey_id=journey, started_at=min(at for at, _ in events), carrier=carrier)
    FunnelEvent.objects.bulk_create(
        FunnelEvent(app=app, journey_id=journey, event_id=f"{journey}-{n}", step=step, occurred_at=at, source="game")
        for n, (at, step) in enumerate(events)
    )


def chdb_levels(journeys: dict[str, list[tuple[datetime, str]]], window: timedelta) -> dict[str, int]:
    """Each journey's level by ClickHouse's windowFunnel over all its events (microsecond timestamps)."""
    import chdb

    rows = [  # the names are plain words: no quoting needed
        f"('{journey}', {int(at.timestamp() * 1_000_000)}, '{step}')"
        for journey, events in journeys.items()
        for at, step in events
    ]
    conditions = ", ".join(f"step = '{step}'" for step in STEPS)
    query = (  # test data only: plain words and numbers
        f"SELECT journey, windowFunnel({int(window.total_seconds() * 1_000_000)})(t, {conditions}) "  # noqa: S608
        f"FROM values('journey String, t UInt64, step String', {', '.join(rows)}) "
        "GROUP BY journey FORMAT JSONCompact"
    )
    return {journey: int(level) for journey, level in json.loads(str(chdb.query(query)))["data"]}


def reached(levels: list[int]) -> list[int]:
    return [sum(1 for level in levels if level >= k) for k in range(1, len(STEPS) + 1)]


@pytest.mark.django_db
@pytest.mark.postgres
def test_a_chain_that_ends_past_the_period_end_plus_the_window_counts_from_raw_events_rollups_and_clickhouse() -> None:
    # Started at 23:59 in the period; its chain begins at 00:29:50 and ends at 00:30:20, past
    # the period's end plus the 30-minute window (00:30).
    app = AppFactory.create()
    midnight = DAY + timedelta(days=1)
    events = [
        (midnight - timedelta(minutes=1), "open"),
        (midnight + timedelta(minutes=29, seconds=50), "open"),
        (midnight + timedelta(minutes=30, seconds=5), "select"),
        (midnight + timedelta(minutes=30, seconds=20), "pay"),
    ]
    store(app, "j", events)
    window = timedelta(minutes=30)
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=1800)
    raw = funnel_report(steps=STEPS, window=window, since=DAY, until=midnight)
    refresh_rollups(funnel=funnel, since=DAY, until=midnight)
    from_rollups = rollup_report(funnel=funnel, since=DAY, until=midnight)
    assert chdb_levels({"j": events}, window) == {"j": 3}
    assert [s.entered for s in raw.steps] == [s.entered for s in from_rollups.steps] == [1, 1, 1]
    assert raw == from_rollups
    assert raw.steps[2].median_seconds_from_previous == 15


def random_journeys(app: App, seed: int, count: int = 200) -> dict[str, list[tuple[datetime, str]]]:
    """Journeys of random events at whole minutes over 5 hours (ties, window edges, chains that begin
    hours after their journey), stored in random order."""
    import random

    rng = random.Random(seed)
    journeys: dict[str, list[tuple[datetime, str]]] = {}
    for n in range(count):
        first = rng.randrange(0, 180)
        events = [(DAY + timedelta(minutes=first), rng.choice(STEPS))]
        for _ in range(rng.randrange(0, 8)):
            minutes = first + rng.choice([rng.randrange(0, 30), rng.randrange(0, 120), rng.randrange(0, 300)])
            events.append((DAY + timedelta(minutes=minutes), rng.choice([*STEPS, *STEPS, "help"])))
        rng.shuffle(events)
        journeys[f"r{n}"] = events
        store(app, f"r{n}", events, carrier=rng.choice(["c1", "c2"]))
    return journeys


@pytest.mark.django_db
@pytest.mark.postgres
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_raw_events_rollups_and_the_oracle_equal_clickhouse_on_random_journeys(seed: int) -> None:
    journeys = random_journeys(AppFactory.create(), seed)
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    since, until = DAY, DAY + 2 * HOUR  # journeys run up to 5 hours past their start
    started = {journey for journey, events in journeys.items() if min(at for at, _ in events) < until}
    levels = chdb_levels({journey: journeys[journey] for journey in started}, HOUR)
    expected = reached(list(levels.values()))
    scope = FunnelScope(steps=STEPS, window=HOUR, since=since, until=until)
    assert _sql_counts(scope, breakdown=None).reached == expected
    assert _python_counts(scope, breakdown=None).reached == expected
    refresh_rollups(funnel=funnel, since=since, until=until)
    assert [s.entered for s in rollup_report(funnel=funnel, since=since, until=until).steps] == expected
    # Per journey too, not only in total.
    for journey in started:
        result = window_funnel(journeys[journey], STEPS, HOUR)
        assert result is not None
        assert result.level == levels[journey], journey


def counts_in_parts_and_whole(settings: Any, seed: int) -> tuple[Any, Any]:
    """The raw report's counts of random journeys (with a breakdown, gaps and an exclusion step) read in
    three parts by journey, and read whole."""
    random_journeys(AppFactory.create(), seed)
    scope = FunnelScope(steps=STEPS, window=HOUR, since=DAY, until=DAY + 2 * HOUR, exclusion="help")
    settings.FUNNEL_PARTS_FROM_HOURS = 1
    settings.FUNNEL_PARTS = 3
    for part in range(3):  # each part holds journeys of its own
        query, params = report_query(replace(scope, part=part, parts=3), breakdown="carrier")
        with transaction.atomic(), connection.cursor() as cursor:
            set_analysis_limits(cursor)
            cursor.execute(query, params)
            assert cursor.fetchall(), part
    parts = _sql_counts(scope, breakdown="carrier")
    settings.FUNNEL_PARTS = 1
    return parts, _sql_counts(scope, breakdown="carrier")


@pytest.mark.django_db
@pytest.mark.postgres
def test_a_raw_report_read_in_parts_by_journey_adds_up_to_the_whole(settings: Any) -> None:
    # Inside the test's transaction the parts run one after the other on its connection.
    parts, whole = counts_in_parts_and_whole(settings, seed=21)
    assert parts == whole
    assert (bool(whole.excluded), bool(whole.gaps[1]), set(whole.groups)) == (True, True, {"c1", "c2"})  # all read


@pytest.mark.django_db(transaction=True)  # the parts read committed rows, each on a connection of its own
@pytest.mark.postgres
def test_a_raw_report_read_in_parts_at_once_on_their_own_connections_adds_up_to_the_whole(settings: Any) -> None:
    assert runs_at_once()  # outside a transaction: the parts run at once (playpay.parallel)
    parts, whole = counts_in_parts_and_whole(settings, seed=22)
    assert parts == whole
    assert (bool(whole.excluded), bool(whole.gaps[1]), set(whole.groups)) == (True, True, {"c1", "c2"})


TIES = {
    "in step order": [(0, "open"), (0, "select"), (0, "pay")],
    "in reverse order": [(0, "pay"), (0, "select"), (0, "open")],
    "second step first": [(0, "select"), (0, "open")],
    "tie at the window edge": [(0, "open"), (60, "pay"), (60, "select")],
    "repeat after a tie": [(0, "select"), (0, "open"), (61, "pay"), (61, "open"), (61, "select")],
}


@pytest.mark.django_db
@pytest.mark.postgres
def test_events_at_the_same_instant_satisfy_consecutive_steps_whatever_their_arrival_order() -> None:
    app = AppFactory.create()
    journeys = {
        name: [(DAY + timedelta(minutes=minutes), step) for minutes, step in events] for name, events in TIES.items()
    }
    for name, events in journeys.items():
        store(app, name, events)  # stored (and given ids) in the order listed
    levels = chdb_levels(journeys, HOUR)
    assert levels == {
        "in step order": 3,
        "in reverse order": 3,
        "second step first": 2,
        "tie at the window edge": 3,
        "repeat after a tie": 3,
    }
    for name, events in journeys.items():
        result = window_funnel(events, STEPS, HOUR)
        assert result is not None
        assert result.level == levels[name], name
    scope = FunnelScope(steps=STEPS, window=HOUR, since=DAY, until=DAY + HOUR)
    assert _sql_counts(scope, breakdown=None).reached == reached(list(levels.values()))
    assert _python_counts(scope, breakdown=None) == _sql_counts(scope, breakdown=None)
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=funnel, since=DAY, until=DAY + HOUR)
    assert rollup_report(funnel=funnel, since=DAY, until=DAY + HOUR) == funnel_report(
        steps=STEPS, window=HOUR, since=DAY, until=DAY + HOUR
    )


@pytest.mark.django_db
def test_a_period_running_into_the_current_hour_reads_rollups_for_its_complete_hours() -> None:
    app = AppFactory.create()
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    since, until = this_hour - 3 * HOUR, this_hour + timedelta(days=1)
    store(app, "earlier", [(since + timedelta(minutes=5), "open"), (since + timedelta(minutes=9), "select")])
    store(app, "earlier-2", [(since + HOUR, "open")], carrier="c2")
    store(app, "now", [(this_hour, "open"), (this_hour, "select"), (this_hour, "pay")], carrier="c2")
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=funnel, since=since, until=this_hour)  # the complete hours
    for breakdown in (None, "carrier"):
        report, source = dashboard_report(funnel=funnel, since=since, until=until, breakdown=breakdown)
        assert source == "rollups"
        assert report == funnel_report(steps=STEPS, window=HOUR, since=since, until=until, breakdown=breakdown)
        assert [s.entered for s in report.steps] == [3, 2, 1]  # the current hour's journey included


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


def partition_stats(name: str) -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [name])
        return float(cursor.fetchone()[0])


@pytest.mark.django_db
@pytest.mark.postgres
def test_a_report_on_freshly_loaded_events_gets_statistics_and_a_plan_without_nested_loops() -> None:
    month = date(2019, 1, 1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        create_partition(cursor, month)
    app = AppFactory.create()
    start = datetime(2019, 1, 10, tzinfo=UTC)
    events = [
        GameEvent(
            event_id=f"e{n}-{k}",
            journey_id=f"j{n}",
            step=step,
            occurred_at=start + timedelta(minutes=n, seconds=k * 20),
        )
        for n in range(1500)
        for k, step in enumerate(STEPS[: 1 + n % 3])
    ]
    for batch in range(0, len(events), 1000):
        ingest_events(app=app, events=events[batch : batch + 1000])
    assert partition_stats(partition_name(month)) < 0  # never analysed

    scope = FunnelScope(steps=STEPS, window=HOUR, since=start, until=start + timedelta(days=2), exclusion="help")
    query, params = report_query(scope, breakdown="carrier")
    with transaction.atomic(), connection.cursor() as cursor:
        set_analysis_limits(cursor)
        cursor.execute("EXPLAIN (FORMAT JSON) " + query, params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    # A nested loop at most around a function call per row, never between sets of rows.
    for node in plan_nodes(plan[0]["Plan"]):
        if node["Node Type"] == "Nested Loop":
            assert Counter(child["Node Type"] for child in node["Plans"])["Function Scan"] == 1, node

    report = funnel_report(steps=STEPS, window=HOUR, since=start, until=start + timedelta(days=2))
    assert [s.entered for s in report.steps] == [1500, 1000, 500]
    assert partition_stats(partition_name(month)) == len(events)  # analysed before the report planned


@pytest.mark.django_db
@pytest.mark.postgres
def test_a_raw_report_too_slow_for_a_web_request_is_cut_short_and_the_page_says_why(
    staff_client: StaffClient, settings: Any
) -> None:
    app = AppFactory.create()
    for n in range(300):
        store(app, f"j{n}", [(DAY + timedelta(minutes=n), "open"), (DAY + timedelta(minutes=n + 1), "select")])
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    url = f"/admin/funnel/funneldefinition/{funnel.pk}/report/"
    params = {"since": "2026-11-01", "until": "2026-11-01"}
    # Planning alone takes longer than a millisecond: the database cancels the statement.
    page = page_cut_short(staff_client("superuser"), url, params, settings, journeys=300)
    assert "refresh_funnel_rollups" in page
    # Statements outside a web request keep their own, longer limit.
    report = funnel_report(steps=STEPS, window=HOUR, since=DAY, until=DAY + timedelta(days=1))
    assert report.journeys == 300


@pytest.mark.django_db
def test_the_periodic_job_recomputes_an_older_hour_whose_journey_got_a_new_chain() -> None:
    from funnel.rollups import refresh_recent_rollups, rollup_counts

    app = AppFactory.create()
    now = timezone.now()
    started = now - 3 * HOUR  # before the hours the job recomputes by default (the last window + 1 hour)
    store(app, "j", [(started, "open")])
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    hour = started.replace(minute=0, second=0, microsecond=0)
    refresh_rollups(funnel=funnel, since=hour, until=now)
    assert rollup_counts(funnel=funnel, since=hour, until=hour + HOUR).reached == [1, 0, 0]

    FunnelEvent.objects.bulk_create(
        FunnelEvent(app=app, journey_id="j", event_id=f"late-{n}", step=step, occurred_at=at, source="game")
        for n, (at, step) in enumerate([(now - timedelta(minutes=10), "open"), (now - timedelta(minutes=9), "select")])
    )
    refresh_recent_rollups()
    assert rollup_counts(funnel=funnel, since=hour, until=hour + HOUR).reached == [1, 1, 0]


@pytest.mark.django_db
def test_the_periodic_job_takes_in_no_event_past_its_bounds_until_their_hours_are_computed_again(
    staff_client: StaffClient,
) -> None:
    """The rule the rollups keep (docs/funnel.md): an event counts in them when it happens within
    MOVED_LOOKBACK of its journey's start and arrives within the window plus an hour of happening; the raw
    report counts any event at once, the rollups once `refresh_rollups` computes its journey's hour again."""
    from funnel.rollups import MOVED_LOOKBACK, refresh_recent_rollups, rollup_counts

    app = AppFactory.create()
    now = timezone.now()
    hour = (now - MOVED_LOOKBACK - 4 * HOUR).replace(minute=0, second=0, microsecond=0)
    store(app, "long", [(hour + timedelta(minutes=5), "open")])  # a new chain long after its start
    store(app, "late", [(hour + timedelta(minutes=10), "open")])  # an event that arrives late
    funnel = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=funnel, since=hour.replace(hour=0), until=now)  # whole days: the page reads them
    FunnelEvent.objects.bulk_create(
        [
            FunnelEvent(app=app, journey_id="long", event_id="l1", step="open", occurred_at=now, source="game"),
            FunnelEvent(app=app, journey_id="long", event_id="l2", step="select", occurred_at=now, source="game"),
            FunnelEvent(
                app=app, journey_id="late", event_id="t1", step="select", occurred_at=hour + HOUR, source="game"
            ),
        ]
    )
    refresh_recent_rollups()
    assert rollup_counts(funnel=funnel, since=hour, until=hour + HOUR).reached == [2, 0, 0]
    raw = funnel_report(steps=STEPS, window=HOUR, since=hour, until=hour + HOUR)
    assert [s.entered for s in raw.steps] == [2, 2, 0]
    page = staff_client("superuser").get(
        f"/admin/funnel/funneldefinition/{funnel.pk}/report/",
        {"since": f"{hour:%Y-%m-%d}", "until": f"{now:%Y-%m-%d}"},
    )
    assert "within 24 h of its journey" in page.content.decode()

    refresh_rollups(funnel=funnel, since=hour, until=hour + HOUR)
    assert rollup_counts(funnel=funnel, since=hour, until=hour + HOUR).reached == [2, 2, 0]
