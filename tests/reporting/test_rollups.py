"""Payment rollups: the catalog's payments, refunds and reversals datasets answer the same from rollups as from
the rows, before and after late changes, and the dashboard reads them for its long periods."""

import importlib
import io
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from carriers.models import Carrier, PricePoint
from payments.models import Payment, PaymentStatus, PaymentStatusChange, Refund, Reversal
from playpay.celery import app as celery_app
from reporting.models import (
    DECISION_BOUNDS,
    DECISION_OVER,
    Dashboard,
    Dataset,
    DatasetField,
    PaymentDayRollup,
    PaymentMonthRollup,
    PaymentRollup,
    RollupState,
)
from reporting.services import rollups
from reporting.services.datasets import DatasetQuery, run_queries, run_query
from tenants.models import App
from tests.conftest import StaffClient
from tests.factories import AppFactory, CarrierFactory, CountryFactory, PaymentFactory, PricePointFactory
from tests.reporting.answers import ZONES, answers, assert_same, raw_answers

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")

STATUSES = list(PaymentStatus.values)
CODES = ["", "insufficient_funds", "blocked", "timeout"]


@pytest.fixture
def catalog(db: Any) -> dict[str, Dataset]:
    seed_module.seed_datasets(Dataset, DatasetField)
    return {d.slug: d for d in Dataset.objects.prefetch_related("fields")}


def _world() -> tuple[list[App], list[Carrier]]:
    apps = [AppFactory.create(name=f"game-{n}") for n in range(3)]
    de = CountryFactory.create(code="DE", name="Germany", currency="EUR", dialing_code="49")
    jp = CountryFactory.create(code="JP", name="Japan", currency="JPY", dialing_code="81")
    carriers = [
        CarrierFactory.create(slug="de-one", country=de),
        CarrierFactory.create(slug="de-two", country=de),
        CarrierFactory.create(slug="jp-one", country=jp),
    ]
    return apps, carriers


def random_payments(rng: random.Random, now: datetime, count: int = 160, days: int = 5) -> list[Payment]:
    """Payments over the last `days` days (quiet and busy hours, every status), some refunded, some reversed,
    some with the history of their decision."""
    apps, carriers = _world()
    price_points = {
        carrier.pk: [
            PricePointFactory.create(carrier=carrier, code=f"pp{n}", currency=carrier.country.currency)
            for n in range(2)
        ]
        for carrier in carriers
    }
    payments = []
    for _ in range(count):
        carrier = rng.choice(carriers)
        status = rng.choice(STATUSES)
        amount = rng.choice([2, 99, 499, 1000, 12_345])
        payment = PaymentFactory.create(
            app=rng.choice(apps),
            carrier=carrier,
            price_point=rng.choice(price_points[carrier.pk]),
            amount_minor=amount,
            currency=carrier.country.currency,
            status=status,
            flow=rng.choice(["pin", "one_click"]),
            user_ref=f"player-{rng.randrange(40)}",
            failure_code=rng.choice(CODES) if status in ("failed", "expired") else "",
            refunded_minor=amount if status == "refunded" else (amount // 2 if status == "partially_refunded" else 0),
            created_at=now - timedelta(seconds=rng.randrange(days * 24 * 3600)),
        )
        payments.append(payment)
        if status in ("refunded", "partially_refunded"):
            _refund(payment, payment.refunded_minor, rng)
        if status == "reversed":
            reversal = Reversal.objects.create(payment=payment, reason="r", requested_by="staff:x", status="succeeded")
            Reversal.objects.filter(pk=reversal.pk).update(created_at=payment.created_at + _later(rng))
        if status not in ("created", "pin_sent", "pin_verified", "charging"):
            decided = "succeeded" if status not in ("failed", "expired") else status
            change = PaymentStatusChange.objects.create(payment=payment, to_status=decided, actor="system")
            PaymentStatusChange.objects.filter(pk=change.pk).update(created_at=payment.created_at + _later(rng))
    return payments


def _later(rng: random.Random) -> timedelta:
    return timedelta(seconds=rng.choice([0.2, 3, 45, 400, 5000]))


def _refund(payment: Payment, amount: int, rng: random.Random, *, status: str = "succeeded") -> Refund:
    refund = Refund.objects.create(
        payment=payment,
        amount_minor=amount,
        currency=payment.currency,
        reason="r",
        requested_by="staff:x",
        status=rng.choice(["succeeded", "pending", "failed"]) if status == "random" else status,
    )
    Refund.objects.filter(pk=refund.pk).update(created_at=payment.created_at + _later(rng))
    return refund


def random_queries(
    rng: random.Random, catalog: dict[str, Dataset], now: datetime, days: int = 6, count: int = 12
) -> list[tuple[str, DatasetQuery]]:
    """Queries the rollups can answer: periods that start and end mid-hour, buckets in zones east and west."""
    queries = []
    for _ in range(count):
        slug = rng.choice(["payments", "refunds", "reversals"])
        dataset = catalog[slug]
        fields = list(dataset.fields.all())
        dimensions = [f.name for f in fields if f.role == "dimension" and f.name not in ("price_point", "flow")]
        measures = [f.name for f in fields if f.role == "measure" and f.name != "players"]
        since = now - timedelta(seconds=rng.randrange(days * 24 * 3600))
        until = rng.choice([now, since + timedelta(seconds=rng.randrange(1, days * 12 * 3600))])
        apps = list(App.objects.values_list("name", flat=True))
        queries.append(
            (
                slug,
                DatasetQuery(
                    measures=tuple(rng.sample(measures, rng.randint(1, len(measures)))),
                    group_by=tuple(rng.sample(dimensions, rng.randint(0, 2))),
                    bucket=rng.choice([None, "hour", "day", "week", "month"]),
                    filters=rng.choice([{}, {"app": tuple(rng.sample(apps, 2))}, {"country": ("DE",)}]),
                    since=since,
                    until=until,
                    timezone=rng.choice(ZONES[:-1]),
                ),
            )
        )
    return queries


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollup_answers_equal_the_answers_from_rows_on_random_payments(catalog: dict[str, Dataset], seed: int) -> None:
    rng = random.Random(seed)
    now = timezone.now()
    random_payments(rng, now)
    list(rollups.catch_up_payment_rollups())
    assert PaymentRollup.objects.exists()
    assert PaymentDayRollup.objects.exists()  # periods of whole days read those
    queries = random_queries(rng, catalog, now)
    assert_same(answers(catalog, queries), raw_answers(catalog, queries))


@pytest.mark.parametrize("seed", [4, 5])
def test_rollup_answers_equal_the_answers_from_rows_over_months_across_daylight_saving_changes(
    catalog: dict[str, Dataset], seed: int
) -> None:
    """Four months back from now span the autumn clock changes of Paris and New York (the spring ones when
    run in spring or summer). Sums and counts read whole UTC months from monthly rows less the hours they hold
    of another month in the viewer's zone; min and max only read blocks inside one bucket. Periods start and
    end mid-month and mid-hour."""
    rng = random.Random(seed)
    now = timezone.now()
    random_payments(rng, now, count=240, days=125)
    list(rollups.catch_up_payment_rollups())
    assert PaymentMonthRollup.objects.exists()
    payments = catalog["payments"]
    for name, aggregation in (("smallest_amount_minor", "min"), ("largest_refund_minor", "max")):
        source = "amount_minor" if aggregation == "min" else "refunded_minor"
        payments.fields.create(name=name, role="measure", source=source, data_type="money", aggregation=aggregation)
    catalog["payments"] = Dataset.objects.prefetch_related("fields").get(pk=payments.pk)
    dashboard = {
        "payments": ("revenue_minor", "charged_payments", "success_rate", "payments", "failed_payments"),
        "refunds": ("refunds", "amount_minor"),
        "reversals": ("reversals", "amount_minor"),
    }
    queries = random_queries(rng, catalog, now, days=130, count=10)
    for slug, bucket, zone, days, group_by in [
        ("payments", "month", "Europe/Paris", 120, ("currency",)),
        ("payments", "month", "America/New_York", 125, ("carrier", "status")),
        ("payments", "week", "Asia/Tokyo", 90, ("failure_code",)),
        ("payments", "day", "Europe/Paris", 60, ("app",)),
        ("payments", None, "UTC", 100, ("carrier",)),
        ("refunds", "month", "Europe/Paris", 110, ("currency",)),
        ("reversals", "month", "America/New_York", 115, ()),
    ]:
        for measures in (dashboard[slug], ("payments", "smallest_amount_minor", "largest_refund_minor")):
            if slug == "payments" or measures == dashboard[slug]:
                since, until = now - timedelta(days=days, minutes=7), now - timedelta(days=rng.choice([0, 9]))
                query = DatasetQuery(measures, group_by, bucket, since=since, until=until, timezone=zone)
                queries.append((slug, query))
    assert_same(answers(catalog, queries), raw_answers(catalog, queries))


def test_late_refunds_status_changes_and_reversals_show_after_the_next_refresh(catalog: dict[str, Dataset]) -> None:
    rng = random.Random(11)
    now = timezone.now()
    payments = random_payments(rng, now, count=80)
    list(rollups.catch_up_payment_rollups())
    query = DatasetQuery(
        measures=("payments", "charged_payments", "revenue_minor", "success_rate"),
        group_by=("status",),
        bucket="day",
        since=now - timedelta(days=6),
        until=now,
    )
    before = run_query(dataset=catalog["payments"], query=query)
    # Days after they were rolled up: a charge succeeds, a success is refunded in full, another is reversed.
    old = [p for p in payments if p.created_at < now - timedelta(days=1)]
    charging = next(p for p in old if p.status in ("created", "pin_sent", "pin_verified", "charging"))
    charging.status = PaymentStatus.SUCCEEDED
    charging.save()
    refunded, reversed_one = [p for p in old if p.status == PaymentStatus.SUCCEEDED][:2]
    _refund(refunded, refunded.amount_minor, rng, status="pending")
    refunded.refunded_minor = refunded.amount_minor
    refunded.status = PaymentStatus.REFUNDED
    refunded.save()
    reversal = Reversal.objects.create(payment=reversed_one, reason="r", requested_by="staff:x", status="failed")
    Reversal.objects.filter(pk=reversal.pk).update(
        created_at=reversed_one.created_at + timedelta(minutes=1), completed_at=timezone.now()
    )
    assert run_query(dataset=catalog["payments"], query=query).rows == before.rows  # not yet refreshed

    result = rollups.refresh_payment_rollups()
    assert result.hours >= 1
    queries = [
        ("payments", query),
        ("payments", DatasetQuery(measures=("payments",), group_by=("status", "carrier"), since=now - timedelta(7))),
        ("refunds", DatasetQuery(measures=("refunds", "amount_minor"), group_by=("status",), bucket="hour")),
        ("reversals", DatasetQuery(measures=("reversals", "amount_minor"), group_by=("status",), bucket="hour")),
    ]
    after = answers(catalog, queries)
    assert after[0].rows != before.rows
    assert_same(after, raw_answers(catalog, queries))


def test_the_current_hour_is_read_from_rows_and_is_live(catalog: dict[str, Dataset]) -> None:
    rng = random.Random(5)
    random_payments(rng, timezone.now(), count=20)
    list(rollups.catch_up_payment_rollups())
    query = DatasetQuery(measures=("payments",), since=timezone.now() - timedelta(days=30))
    before = run_query(dataset=catalog["payments"], query=query)
    PaymentFactory.create(app=App.objects.first(), price_point=PricePoint.objects.first())
    after = run_query(dataset=catalog["payments"], query=query)
    assert after.read_from == "rollups"
    assert after.rows[0]["payments"] == before.rows[0]["payments"] + 1


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.parametrize("kind", ["payments", "refunds", "reversals", "subscription_charges"])
def test_changed_hours_scattered_over_months_are_read_hour_by_hour(kind: str) -> None:
    # Pulled up into a join, PostgreSQL read every row of the table and filtered them by the hours: at 10 M
    # payments the one-minute refresh then ran past its bound on every run once a few hundred old hours changed.
    now = timezone.now()
    hours = [rollups.floor_hour(now - timedelta(days=days)) for days in (1, 40, 200)]
    facts, params = rollups._facts_of_hours(rollups.KINDS[kind], kind, hours)
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {facts}", params)
        plan = cursor.fetchone()[0][0]["Plan"]
    over_hours = [
        node
        for node in _plan_nodes(plan)
        if node["Node Type"] == "Nested Loop"
        and any(child.get("Function Name") == "unnest" for child in node.get("Plans", []))
    ]
    assert len(over_hours) == 1  # a loop over the hours...
    assert "Join Filter" not in over_hours[0]  # ...that does not filter what its inner side read...
    (inner,) = [child for child in over_hours[0]["Plans"] if child.get("Function Name") != "unnest"]
    table = rollups.KINDS[kind].table
    reads = [
        node
        for node in _plan_nodes(inner)
        if node.get("Relation Name") == table or node.get("Relation Name", "").startswith(f"{table}_")
    ]
    assert reads
    for read in reads:  # ...since each read of the table (each month's partition) is bounded by the hour
        bounds = " ".join(str(read.get(key, "")) for key in ("Index Cond", "Recheck Cond", "Filter"))
        assert "changed.start" in bounds, read


@pytest.mark.django_db(transaction=True)  # SET LOCAL lasts until the end of the outermost transaction
def test_reporting_statements_run_without_jit_and_with_their_own_work_mem(
    catalog: dict[str, Dataset], settings: Any
) -> None:
    settings.REPORTING_WORK_MEM = "77MB"
    random_payments(random.Random(6), timezone.now(), count=5)
    list(rollups.catch_up_payment_rollups())
    query = DatasetQuery(measures=("payments",), since=timezone.now() - timedelta(days=30))
    with CaptureQueriesContext(connection) as captured:
        assert run_query(dataset=catalog["payments"], query=query).read_from == "rollups"
    statements = [entry["sql"] for entry in captured.captured_queries]
    rollup_read = next(index for index, sql in enumerate(statements) if "reporting_paymentrollup" in sql)
    assert "SET LOCAL jit = off" in statements[:rollup_read]
    assert any("'work_mem'" in sql for sql in statements[:rollup_read])

    with rollups.reporting_statement(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit'), current_setting('work_mem')")
        assert cursor.fetchone() == ("off", "77MB")
    with connection.cursor() as cursor:  # for those statements only
        cursor.execute("SELECT current_setting('work_mem')")
        assert cursor.fetchone() != ("77MB",)


def test_what_the_rollups_cannot_answer_is_read_from_rows(catalog: dict[str, Dataset]) -> None:
    random_payments(random.Random(3), timezone.now(), count=20)
    list(rollups.catch_up_payment_rollups())
    since = timezone.now() - timedelta(days=3)
    payments = catalog["payments"]
    for query in (
        DatasetQuery(measures=("players",), since=since),  # distinct players: not additive
        DatasetQuery(measures=("payments",), group_by=("price_point",), since=since),
        DatasetQuery(measures=("payments",), filters={"flow": ("pin",)}, since=since),
        DatasetQuery(measures=("payments",), bucket="day", timezone="Asia/Kolkata", since=since),  # UTC+5:30
    ):
        assert run_query(dataset=payments, query=query).read_from == "rows"
    assert run_query(dataset=payments, query=DatasetQuery(measures=("payments",), since=since)).read_from == "rollups"


def test_the_decision_time_histogram_counts_each_decided_payment_once_in_its_bucket() -> None:
    rng = random.Random(8)
    payments = random_payments(rng, timezone.now(), count=60)
    list(rollups.catch_up_payment_rollups())
    columns = [column for _, column in DECISION_BOUNDS] + [DECISION_OVER]
    bounds = [bound for bound, _ in DECISION_BOUNDS] + [float("inf")]
    expected = dict.fromkeys(columns, 0)
    for change in PaymentStatusChange.objects.filter(payment__in=payments).select_related("payment"):
        seconds = (change.created_at - change.payment.created_at).total_seconds()
        expected[columns[next(i for i, bound in enumerate(bounds) if seconds < bound)]] += 1
    totals = {column: sum(PaymentRollup.objects.values_list(column, flat=True)) for column in columns}
    assert totals == expected
    assert sum(expected.values()) == PaymentStatusChange.objects.count() > 0


def test_the_refresh_job_is_scheduled_and_brings_the_rollups_to_the_last_whole_hour() -> None:
    entry = PeriodicTask.objects.get(name="reporting: refresh payment rollups")
    assert entry.enabled
    assert entry.interval is not None
    assert (entry.interval.every, entry.interval.period) == (1, "minutes")
    random_payments(random.Random(4), timezone.now(), count=10)
    celery_app.tasks[entry.task].apply().get()
    state = RollupState.objects.get()
    assert state.covered_until == timezone.now().replace(minute=0, second=0, microsecond=0)
    assert (
        PaymentRollup.objects.aggregate(n=Sum("payments"))["n"]
        == Payment.objects.filter(created_at__lt=state.covered_until).count()
    )


def test_a_first_build_over_months_goes_in_steps_and_the_command_finishes_it(catalog: dict[str, Dataset]) -> None:
    app, carrier = AppFactory.create(), CarrierFactory.create()
    price_point = PricePointFactory.create(carrier=carrier)
    now = timezone.now()
    for days in (400, 200, 30, 0):
        PaymentFactory.create(app=app, price_point=price_point, created_at=now - timedelta(days=days))
    first = rollups.refresh_payment_rollups()
    assert first.covered_until is not None
    assert first.covered_until < now - timedelta(days=300)
    query = DatasetQuery(measures=("payments",), since=now - timedelta(days=500))
    assert run_query(dataset=catalog["payments"], query=query).rows == [{"payments": 4}]  # the rest from rows
    call_command("refresh_payment_rollups", stdout=io.StringIO())
    assert RollupState.objects.get().covered_until == now.replace(minute=0, second=0, microsecond=0)
    assert run_query(dataset=catalog["payments"], query=query).rows == [{"payments": 4}]


@pytest.fixture
def overview(catalog: dict[str, Dataset]) -> Dashboard:
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    dashboard.groups.set(Group.objects.filter(name__in=["operations", "finance"]))
    return dashboard


@pytest.mark.parametrize(("period", "months"), [("12m", 12), ("18m", 18)])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_the_dashboard_shows_a_year_and_a_half_by_month_in_the_viewers_zone(
    overview: Dashboard, staff_client: StaffClient, period: str, months: int, zone: str
) -> None:
    app, carrier = AppFactory.create(name="game"), CarrierFactory.create(slug="de-one")
    price_point = PricePointFactory.create(carrier=carrier, currency="EUR", amount_minor=100)
    now = timezone.now()
    created = [now - timedelta(days=days, hours=hours) for days in (1, 40, 200, 340, 500) for hours in (0, 7)]
    for moment in created:
        PaymentFactory.create(
            app=app, price_point=price_point, currency="EUR", status=PaymentStatus.SUCCEEDED, created_at=moment
        )
    list(rollups.catch_up_payment_rollups())
    client = staff_client("finance")
    data = client.get(f"/reporting/dashboards/overview/data.json?period={period}&tz={zone}").json()

    since = datetime.fromisoformat(data["period"]["since"])
    labels = data["revenue"]["labels"]
    assert data["period"]["bucket"] == "month"
    assert months <= len(labels) <= months + 2
    starts = [datetime.fromisoformat(label) for label in labels]
    assert all(s.day == 1 and (s.hour, s.minute) == (0, 0) for s in (m.astimezone(ZoneInfo(zone)) for m in starts))
    expected = [0] * len(labels)
    for moment in created:
        if moment >= since:
            local = moment.astimezone(ZoneInfo(zone))
            expected[max(i for i, start in enumerate(starts) if start <= local)] += 1
    assert data["revenue"]["payments"] == expected
    assert sum(expected) == len([m for m in created if m >= since]) > 0
    assert data["revenue"]["by_currency"] == [{"currency": "EUR", "amount_minor": 100 * sum(expected), "exponent": 2}]
    assert data["carriers"][0]["payments"] == sum(expected)


@pytest.mark.parametrize(("zone", "bucket", "days"), [("Europe/Paris", "week", 90), ("America/New_York", "month", 125)])
def test_questions_read_together_answer_as_each_read_alone_and_as_the_rows(
    catalog: dict[str, Dataset], zone: str, bucket: str, days: int
) -> None:
    """The dashboard's questions of the payments read the rollups once (grouping sets over the pieces of the
    bucketed one): each answer equals the query's own, from the rollups and from the rows, across clock changes."""
    rng = random.Random(12)
    now = timezone.now()
    random_payments(rng, now, count=200, days=days)
    list(rollups.catch_up_payment_rollups())
    since = now - timedelta(days=days - 3, minutes=7)

    def ask(measures: tuple[str, ...], group_by: tuple[str, ...] = (), bucket: str | None = None) -> DatasetQuery:
        return DatasetQuery(measures, group_by, bucket, {"country": ("DE",)}, since=since, until=now, timezone=zone)

    queries = [
        ask(("revenue_minor", "charged_payments"), bucket=bucket),
        ask(("success_rate", "payments"), group_by=("carrier",)),
        ask(("failed_payments",), group_by=("failure_code",)),
        ask(("payments", "revenue_minor"), group_by=("currency", "app", "status")),
        ask(("payments",)),
    ]
    with CaptureQueriesContext(connection) as statements:
        together = run_queries(dataset=catalog["payments"], queries=queries)
    assert sum("GROUPING SETS" in statement["sql"] for statement in statements) == 1
    alone = answers(catalog, [("payments", query) for query in queries])
    assert [result.rows for result in together] == [result.rows for result in alone]
    assert_same(together, raw_answers(catalog, [("payments", query) for query in queries]))
    empty = [
        replace(query, since=now - timedelta(days=days + 30), until=now - timedelta(days=days + 20))
        for query in queries
    ]
    assert [result.rows for result in run_queries(dataset=catalog["payments"], queries=empty)][-1] == [{"payments": 0}]


def test_totals_asked_together_read_the_rollups_once_and_answer_as_each_alone(catalog: dict[str, Dataset]) -> None:
    """Questions with neither dimension nor bucket have one grouping set, the empty one: one plain aggregate."""
    rng = random.Random(5)
    now = timezone.now()
    random_payments(rng, now, count=60, days=3)
    list(rollups.catch_up_payment_rollups())
    since = now - timedelta(days=2, minutes=7)
    queries = [
        DatasetQuery(("payments", "failed_payments"), (), None, {}, since=since, until=now),
        DatasetQuery(("success_rate",), (), None, {}, since=since, until=now),
    ]
    with CaptureQueriesContext(connection) as statements:
        together = run_queries(dataset=catalog["payments"], queries=queries)
    assert sum(statement["sql"].startswith("WITH f AS") for statement in statements) == 1
    assert not any("GROUPING" in statement["sql"] for statement in statements)
    assert [result.rows for result in together] == [
        result.rows for result in answers(catalog, [("payments", query) for query in queries])
    ]
    assert together[0].rows[0]["payments"] > 0
    assert_same(together, raw_answers(catalog, [("payments", query) for query in queries]))
    empty = [replace(query, since=now - timedelta(days=40), until=now - timedelta(days=30)) for query in queries]
    totals = run_queries(dataset=catalog["payments"], queries=empty)
    assert [result.rows for result in totals] == [[{"payments": 0, "failed_payments": 0}], [{"success_rate": None}]]


def test_distinct_players_are_counted_within_their_app(catalog: dict[str, Dataset]) -> None:
    price_point = PricePointFactory.create()
    first, second = AppFactory.create(name="game-a"), AppFactory.create(name="game-b")
    for app, user_ref in ((first, "player-1"), (first, "player-1"), (second, "player-1"), (second, "player-2")):
        PaymentFactory.create(app=app, price_point=price_point, carrier=price_point.carrier, user_ref=user_ref)
    query = DatasetQuery(measures=("players",), since=timezone.now() - timedelta(days=1))
    assert run_query(dataset=catalog["payments"], query=query).rows[0]["players"] == 3  # not 2: two apps' player-1
