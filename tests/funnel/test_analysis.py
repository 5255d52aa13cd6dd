"""Funnel analysis against hand-computed fixtures (windowFunnel semantics, default mode)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from funnel.models import FunnelEvent, Journey
from funnel.selectors import funnel_report, window_funnel
from tenants.models import App
from tests.conftest import StaffClient
from tests.factories import AppFactory

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
STEPS = ["open", "select", "pay"]
HOUR = timedelta(hours=1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def level(events: list[tuple[datetime, str]]) -> int:
    result = window_funnel(events, STEPS, HOUR)
    assert result is not None
    return result.level


def test_level_is_the_furthest_step_reached_in_order_within_the_window() -> None:
    assert level([(at(0), "open"), (at(5), "select"), (at(9), "pay")]) == 3
    assert level([(at(0), "open"), (at(5), "pay")]) == 1  # skipped a step
    assert level([(at(0), "select"), (at(5), "pay")]) == 0  # never entered


def test_window_edges() -> None:
    assert level([(at(0), "open"), (at(60), "select")]) == 2  # exactly the window
    assert level([(at(0), "open"), (at(60.01), "select")]) == 1  # just past it


def test_a_later_start_can_complete_where_an_earlier_one_runs_out_of_time() -> None:
    events = [(at(0), "open"), (at(30), "open"), (at(40), "select"), (at(75), "pay")]
    result = window_funnel(events, STEPS, HOUR)
    assert result is not None
    assert result.level == 3
    assert result.times == (at(30), at(40), at(75))


def test_an_exclusion_step_inside_the_window_leaves_the_journey_out() -> None:
    events = [(at(0), "open"), (at(5), "help_opened"), (at(6), "select")]
    assert window_funnel(events, STEPS, HOUR, exclusion="help_opened") is None
    late = [(at(0), "open"), (at(6), "select"), (at(90), "help_opened")]
    result = window_funnel(late, STEPS, HOUR, exclusion="help_opened")
    assert result is not None
    assert result.level == 2


def add(app: App, journey: str, steps: list[tuple[float, str]], carrier: str = "c1", code: str = "") -> None:
    Journey.objects.create(app=app, journey_id=journey, started_at=at(steps[0][0]), carrier=carrier)
    # Stored out of order on purpose: analysis orders by each event's own time.
    for n, (minutes, step) in reversed(list(enumerate(steps))):
        FunnelEvent.objects.create(
            app=app,
            journey_id=journey,
            event_id=f"{journey}-{n}",
            step=step,
            occurred_at=at(minutes),
            source="game",
            error_code=code if step == "charge_failed" else "",
        )


@pytest.mark.django_db
def test_report_counts_conversion_drop_off_timing_breakdown_and_failure_codes() -> None:
    app = AppFactory.create()
    add(app, "a", [(0, "open"), (2, "select"), (3, "pay")])
    add(app, "b", [(0, "open"), (4, "select"), (5, "charge_failed")], code="insufficient_funds")
    add(app, "c", [(0, "open"), (90, "select")], carrier="c2")  # outside the window
    add(app, "d", [(0, "open"), (1, "help"), (2, "select"), (3, "pay")], carrier="c2")  # excluded
    add(app, "e", [(10, "open"), (16, "select"), (18, "pay")], carrier="c2")
    report = funnel_report(
        steps=STEPS, window=HOUR, since=T0, until=T0 + timedelta(days=1), exclusion="help", breakdown="carrier"
    )
    assert [s.entered for s in report.steps] == [4, 3, 2]
    assert [s.drop_off for s in report.steps] == [0, 1, 1]
    assert report.steps[1].conversion_from_previous == pytest.approx(3 / 4)
    assert report.overall_conversion == pytest.approx(2 / 4)
    assert report.excluded == 1
    assert report.steps[1].median_seconds_from_previous == 240  # gaps 2, 4, 6 minutes
    assert report.steps[2].median_seconds_from_previous == 90  # gaps 1 and 2 minutes
    assert report.breakdown == {"c1": [2, 2, 1], "c2": [2, 1, 1]}
    assert report.failure_codes == {"insufficient_funds": 1}


@pytest.mark.django_db
def test_periods_compare_by_when_journeys_started() -> None:
    app = AppFactory.create()
    add(app, "early", [(0, "open"), (1, "select")])
    add(app, "late", [(60 * 24 + 5, "open")])
    first = funnel_report(steps=STEPS, window=HOUR, since=T0, until=T0 + timedelta(days=1))
    second = funnel_report(steps=STEPS, window=HOUR, since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    assert ([s.entered for s in first.steps], [s.entered for s in second.steps]) == ([1, 1, 0], [1, 0, 0])


@pytest.mark.django_db
def test_staff_see_the_funnel_report_and_export_it(staff_client: StaffClient) -> None:
    import io

    import openpyxl  # type: ignore[import-untyped]

    from funnel.models import FunnelDefinition

    app = AppFactory.create()
    add(app, "a", [(0, "open"), (2, "select"), (3, "pay")])
    add(app, "b", [(0, "open")])
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    client = staff_client("superuser")
    params = {"since": "2026-11-01", "until": "2026-11-01", "breakdown": "carrier"}
    page = client.get(f"/admin/funnel/funneldefinition/{definition.pk}/report/", params).content.decode()
    assert "2 journeys, overall conversion 50%" in page
    xlsx = client.get(f"/admin/funnel/funneldefinition/{definition.pk}/report/", {**params, "export": "xlsx"})
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx.getvalue())).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("period", "step", "entered")
    assert [(row[1], row[2]) for row in rows[1:]] == [("open", 2), ("select", 1), ("pay", 1)]


@pytest.mark.django_db
def test_hourly_rollups_give_the_same_counts_as_the_raw_events() -> None:
    from funnel.models import FunnelDefinition, FunnelRollup
    from funnel.rollups import refresh_rollups, rollup_counts

    app = AppFactory.create()
    add(app, "a", [(0, "open"), (2, "select"), (3, "pay")])
    add(app, "b", [(0, "open"), (4, "select")], carrier="c2")
    add(app, "c", [(70, "open"), (75, "select"), (140, "pay")], carrier="c2")  # next hour; pay is too late
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    day = (T0, T0 + timedelta(days=1))
    assert refresh_rollups(funnel=definition, since=day[0], until=day[1]) == 3  # (hour, carrier) cells
    raw = funnel_report(steps=STEPS, window=HOUR, since=day[0], until=day[1], breakdown="carrier")
    assert rollup_counts(funnel=definition, since=day[0], until=day[1]).reached == [s.entered for s in raw.steps]
    assert rollup_counts(funnel=definition, since=day[0], until=day[1], breakdown="carrier").groups == raw.breakdown
    # Recomputing replaces the rows instead of adding to them.
    refresh_rollups(funnel=definition, since=day[0], until=day[1])
    assert FunnelRollup.objects.count() == 3


def random_journeys(app: App, seed: int, count: int = 150) -> None:
    """Journeys of random events, at whole minutes (ties, window edges), stored in random order."""
    import random

    rng = random.Random(seed)
    rows = []
    for n in range(count):
        times = sorted(rng.randrange(0, 200) for _ in range(rng.randrange(0, 10)))
        if not times:
            continue
        Journey.objects.create(
            app=app, journey_id=f"r{n}", started_at=at(times[0]), carrier=rng.choice(["c1", "c2", ""])
        )
        for index, minutes in enumerate(times):
            step = rng.choice([*STEPS, *STEPS, "help", "other", "charge_failed"])
            rows.append(
                FunnelEvent(
                    app=app,
                    journey_id=f"r{n}",
                    event_id=f"r{n}-{index}",
                    step=step,
                    occurred_at=at(minutes),
                    source="game" if step != "charge_failed" else "platform",
                    error_code=rng.choice(["insufficient_funds", "barred", ""]) if step == "charge_failed" else "",
                )
            )
    rng.shuffle(rows)
    FunnelEvent.objects.bulk_create(rows)


@pytest.mark.django_db
@pytest.mark.postgres
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("exclusion", ["", "help"])
def test_the_database_computes_what_window_funnel_computes(seed: int, exclusion: str) -> None:
    from funnel.selectors import _python_counts, _sql_counts
    from funnel.sql import FunnelScope

    random_journeys(AppFactory.create(), seed)
    since, until = T0, T0 + timedelta(hours=2)  # journeys started later are left out
    for breakdown in (None, "carrier"):
        scope = FunnelScope(steps=STEPS, window=HOUR, since=since, until=until, exclusion=exclusion, app_id=None)
        in_sql = _sql_counts(scope, breakdown=breakdown)
        in_python = _python_counts(scope, breakdown=breakdown)
        assert in_sql == in_python
        assert in_sql.reached[0] > 0


@pytest.mark.django_db
@pytest.mark.postgres
@pytest.mark.parametrize("seed", [5, 6])
def test_rollups_computed_by_the_database_equal_those_computed_in_python(seed: int) -> None:
    from funnel.models import FunnelDefinition, FunnelRollup, FunnelRollupHour
    from funnel.rollups import _refresh_in_python, hour_range, refresh_rollups

    random_journeys(AppFactory.create(), seed)
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600, exclusion_step="help")

    def rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        cells = FunnelRollup.objects.order_by("hour", "carrier").values_list("hour", "carrier", "reached", "excluded")
        hours = FunnelRollupHour.objects.order_by("hour").values_list("hour", "gaps", "failures")
        return list(cells), list(hours)

    refresh_rollups(funnel=definition, since=T0, until=T0 + timedelta(hours=4))
    in_sql = rows()
    FunnelRollup.objects.all().delete()
    FunnelRollupHour.objects.all().delete()
    _refresh_in_python(definition, STEPS, HOUR, *hour_range(T0, T0 + timedelta(hours=4)))
    assert rows() == in_sql
    assert len(in_sql[1]) == 4  # every hour is marked computed, with journeys or not


@pytest.mark.django_db
def test_a_report_read_from_rollups_equals_the_one_from_events(staff_client: StaffClient) -> None:

    from funnel.models import FunnelDefinition
    from funnel.rollups import dashboard_report, refresh_rollups, rollups_cover

    random_journeys(AppFactory.create(), seed=7, count=300)
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600, exclusion_step="help")
    day = (T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1))
    for breakdown in (None, "carrier", "app"):
        from_events, source = dashboard_report(funnel=definition, since=day[0], until=day[1], breakdown=breakdown)
        assert source == "events"
        assert not rollups_cover(funnel=definition, since=day[0], until=day[1])
        refresh_rollups(funnel=definition, since=day[0], until=day[1])
        from_rollups, source = dashboard_report(funnel=definition, since=day[0], until=day[1], breakdown=breakdown)
        assert source == "rollups"
        # Times here are whole minutes, each alone in its histogram bucket: even percentiles are exact.
        assert from_rollups == from_events
        assert from_rollups.steps[2].median_seconds_from_previous is not None
        assert set(from_rollups.failure_codes) == {"insufficient_funds", "barred"}
        definition.save()  # unchanged: the rollups stay
        assert rollups_cover(funnel=definition, since=day[0], until=day[1])
        definition.window_seconds = 1800  # changed: they go
        definition.save()
        assert not rollups_cover(funnel=definition, since=day[0], until=day[1])
        definition.window_seconds = 3600
        definition.save()

    # The admin page says which it read; the numbers are the same.
    client = staff_client("superuser")
    url = f"/admin/funnel/funneldefinition/{definition.pk}/report/"
    params = {"since": "2026-11-01", "until": "2026-11-01", "breakdown": "carrier"}
    assert "From the raw events" in client.get(url, params).content.decode()
    raw_csv = client.get(url, {**params, "export": "csv"}).getvalue().decode()
    refresh_rollups(funnel=definition, since=day[0], until=day[1])
    assert "From the hourly rollups" in client.get(url, params).content.decode()
    assert client.get(url, {**params, "export": "csv"}).getvalue().decode() == raw_csv
    assert raw_csv.count("\n") == 1 + len(STEPS)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"since": "2026-11-02", "until": "2026-11-01"}, "The period ends before it starts."),
        (
            {
                "since": "2026-11-01",
                "until": "2026-11-01",
                "compare_since": "2026-10-09",
                "compare_until": "2026-10-01",
            },
            "The period ends before it starts.",
        ),
        (
            {"since": "2026-11-01", "until": "2026-11-01", "compare_since": "2026-10-01"},
            "Give both days of the period to compare, or neither.",
        ),
    ],
)
def test_a_funnel_period_that_cannot_be_counted_is_refused_in_words_and_nothing_is_counted(
    staff_client: StaffClient, params: dict[str, str], said: str
) -> None:
    from funnel.models import FunnelDefinition

    add(AppFactory.create(), "a", [(0, "open")])
    definition = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    page = staff_client("superuser").get(f"/admin/funnel/funneldefinition/{definition.pk}/report/", params)
    assert page.status_code == 200
    text = page.content.decode()
    assert text.count(said) == 1
    assert "journeys, overall conversion" not in text
