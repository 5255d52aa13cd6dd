"""Subscriber counts: the catalog's subscriptions standing now, answered from the counts the subscriptions table's
triggers keep, equal to counting the rows whatever changed them (the API, the engine, bulk updates, deletes) and
whether or not the fold ran; the fold moves changes once, beside concurrent writers and a second fold."""

import importlib
import io
import random
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from playpay.beat import schedule
from playpay.celery import app as celery_app
from reporting.models import (
    Dashboard,
    Dataset,
    SubscriberCountState,
    SubscriberDayCount,
    SubscriptionCount,
    SubscriptionCountChange,
)
from reporting.selectors import SUBSCRIBED, DashboardFilters, dashboard_data
from reporting.services import subscriber_counts
from reporting.services.datasets import DatasetQuery, run_query
from reporting.services.rollups import floor_day
from subscriptions.models import Plan, Subscription, SubscriptionStatus
from tests.concurrency import at_once
from tests.conftest import Shop
from tests.reporting.catalog import seed_subscription_datasets
from tests.subscriptions.conftest import Subs, make_plan

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

counts_0018 = importlib.import_module("reporting.migrations.0018_subscription_counts")
STATUSES = list(SubscriptionStatus.values)
BILLED = tuple(SUBSCRIBED)
# The catalog's names of the source's dimensions, and the rows' own lookups for counting by hand.
LOOKUPS = {
    "app": "app__name",
    "carrier": "carrier__slug",
    "country": "carrier__country_id",
    "plan": "plan__code",
    "plan_period": "plan__period",
    "status": "status",
}


@pytest.fixture
def dataset(db: Any) -> Dataset:
    seed_subscription_datasets()
    return Dataset.objects.get(slug="subscriptions")


@pytest.fixture
def world(make_shop: Callable[..., Shop]) -> list[Subs]:
    """Two shops on two carriers, each with a weekly and a monthly plan, 30 subscriptions each."""
    shops = []
    for prefix in ("4474", "4475"):
        shop = make_shop(prefix, supports_subscriptions=True)
        weekly, offer = make_plan(shop)
        monthly, _ = make_plan(shop, period="monthly", code="vip-monthly")
        subs = Subs(shop=shop, plan=weekly, offer=offer)
        created = subs.bulk_active(30, anchor=timezone.now() - timedelta(days=1))
        Subscription.objects.filter(pk__in=[s.pk for s in created[::3]]).update(plan=monthly)
        shops.append(subs)
    return shops


def by_hand(group_by: tuple[str, ...], filters: dict[str, tuple[str, ...]]) -> list[dict[str, Any]]:
    """Counting the rows, as the catalog's raw read does."""
    rows = Subscription.objects.all()
    for field, values in filters.items():
        rows = rows.filter(**{f"{LOOKUPS[field]}__in": values})
    if not group_by:
        return [{"subscriptions": rows.count()}]
    lookups = [LOOKUPS[field] for field in group_by]
    counted = rows.order_by().values(*lookups).annotate(n=Count("pk")).order_by(*lookups)
    return [{**{f: row[LOOKUPS[f]] for f in group_by}, "subscriptions": row["n"]} for row in counted]


def queries(world: list[Subs]) -> list[tuple[tuple[str, ...], dict[str, tuple[str, ...]]]]:
    first = world[0].shop
    return [
        ((), {}),
        (("status",), {}),
        (("carrier", "status"), {}),
        (("plan", "plan_period", "status"), {}),
        (("status",), {"app": (first.app.name,), "status": ("active", "past_due")}),
        (("app",), {"country": (first.carrier.country_id,), "plan": ("vip-monthly",)}),
        (("country", "status"), {"carrier": (first.carrier.slug, "no-such-carrier")}),
    ]


def assert_counts_are_the_rows(dataset: Dataset, world: list[Subs]) -> None:
    for group_by, filters in queries(world):
        result = run_query(dataset=dataset, query=DatasetQuery(("subscriptions",), group_by=group_by, filters=filters))
        assert result.read_from == "rollups", (group_by, filters)
        assert result.rows == by_hand(group_by, filters), (group_by, filters)


def shuffle_statuses(rng: random.Random, world: list[Subs]) -> None:
    """Changes as the product makes them: one by one (save), in bulk (update), deletes, new subscriptions, and
    moves between plans and apps."""
    ids = list(Subscription.objects.values_list("pk", flat=True))
    for pk in rng.sample(ids, 10):
        subscription = Subscription.objects.get(pk=pk)
        subscription.status = rng.choice(STATUSES)
        subscription.save()
    Subscription.objects.filter(pk__in=rng.sample(ids, 15)).update(status=rng.choice(STATUSES))
    Subscription.objects.filter(pk__in=rng.sample(ids, 5)).update(next_charge_at=timezone.now())  # counts as nothing
    Subscription.objects.filter(pk__in=rng.sample(ids, 4)).delete()
    target = rng.choice(world)
    target.bulk_active(rng.randint(1, 5), anchor=timezone.now())
    left = list(Subscription.objects.values_list("pk", flat=True))
    plans = list(Plan.objects.filter(app=target.shop.app).order_by("pk"))
    Subscription.objects.filter(pk__in=rng.sample(left, 3)).update(plan=rng.choice(plans), app=target.shop.app)


def test_the_counts_equal_the_rows_through_every_kind_of_change_folded_or_not(
    dataset: Dataset, world: list[Subs]
) -> None:
    rng = random.Random(20261206)
    assert_counts_are_the_rows(dataset, world)
    for round_ in range(6):
        shuffle_statuses(rng, world)
        assert SubscriptionCountChange.objects.exists()  # the changes wait for the fold...
        assert_counts_are_the_rows(dataset, world)  # ...and are counted meanwhile
        if round_ % 2:
            assert subscriber_counts.fold() > 0
            assert not SubscriptionCountChange.objects.exists()
            assert not SubscriptionCount.objects.filter(subscriptions=0).exists()
            assert_counts_are_the_rows(dataset, world)
    subscriber_counts.fold()
    assert subscriber_counts.fold() == 0  # nothing left: a second run moves nothing
    assert_counts_are_the_rows(dataset, world)


def test_a_renewal_that_leaves_the_status_alone_writes_no_change(world: list[Subs]) -> None:
    subscriber_counts.fold()
    subscription = Subscription.objects.first()
    assert subscription is not None
    subscription.period_index += 1
    subscription.next_charge_at = timezone.now() + timedelta(days=7)
    subscription.save()
    assert not SubscriptionCountChange.objects.exists()


def test_the_counts_of_subscriptions_there_before_are_filled_when_the_counts_come(
    dataset: Dataset, world: list[Subs]
) -> None:
    """Migration 0018 on a database that has subscriptions: the triggers and the counts arrive together."""
    with connection.schema_editor() as editor:
        counts_0018.uninstall(django_apps, editor)
    SubscriptionCount.objects.all().delete()
    SubscriptionCountChange.objects.all().delete()
    world[0].bulk_active(7, anchor=timezone.now())  # made while no trigger counted
    Subscription.objects.filter(pk__in=Subscription.objects.values("pk")[:5]).update(status="cancelled")
    with connection.schema_editor() as editor:
        counts_0018.install(django_apps, editor)
    assert_counts_are_the_rows(dataset, world)


def test_a_table_emptied_at_once_leaves_no_count_behind(dataset: Dataset, world: list[Subs]) -> None:
    subscriber_counts.fold()
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the test's own transaction has checks pending
        cursor.execute(f"TRUNCATE {Subscription._meta.db_table} CASCADE")
    assert not SubscriptionCount.objects.exists()
    assert not SubscriptionCountChange.objects.exists()
    result = run_query(dataset=dataset, query=DatasetQuery(("subscriptions",), group_by=("status",)))
    assert result.rows == []


def test_what_the_counts_cannot_answer_is_counted_from_the_rows(dataset: Dataset, world: list[Subs]) -> None:
    since = timezone.now() - timedelta(days=1)
    for query in (
        DatasetQuery(("players",), group_by=("status",)),  # distinct players
        DatasetQuery(("subscriptions",), group_by=("status",), since=since),  # opened in a period
    ):
        assert run_query(dataset=dataset, query=query).read_from == "rows"


@pytest.mark.django_db(transaction=True)
def test_writers_never_wait_on_each_other_for_the_counts_and_folds_take_turns(
    dataset: Dataset, world: list[Subs]
) -> None:
    """Two transactions moving subscriptions of the same app, carrier, plan and status: the second does not wait
    for the first to commit (no counter row is updated by them). Then folds run at once, each change folded once."""
    first, second = Subscription.objects.filter(plan=world[0].plan).values_list("pk", flat=True)[:2]
    with transaction.atomic():
        Subscription.objects.filter(pk=first).update(status="past_due")  # held open: its change row is not committed
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

        def other() -> None:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
                Subscription.objects.filter(pk=second).update(status="past_due")

        at_once(other, times=1)
    rng = random.Random(7)
    for _ in range(3):
        shuffle_statuses(rng, world)
    folded = at_once(subscriber_counts.fold, times=3)
    assert sum(folded) > 0
    assert not SubscriptionCountChange.objects.exists()
    assert_counts_are_the_rows(dataset, world)


def billed_by_status() -> dict[str, int]:
    return {row["status"]: row["subscriptions"] for row in by_hand(("status",), {"status": BILLED})}


def test_each_midnight_is_counted_as_it_stood_and_the_dashboards_arpu_averages_them(
    dataset: Dataset, world: list[Subs]
) -> None:
    """The day counts hold the subscriptions at each midnight (a change made just before it counts, one made just
    after does not), written once the day is five minutes old, and the dashboard's ARPU divides by their average."""
    midnight = floor_day(timezone.now()) - timedelta(days=3)
    SubscriptionCountChange.objects.update(at=midnight - timedelta(hours=2))  # the world was made before it
    subscriber_counts.fold(now=midnight - timedelta(hours=1))
    ids = list(Subscription.objects.order_by("pk").values_list("pk", flat=True))
    Subscription.objects.filter(pk__in=ids[:5]).update(status="past_due")
    SubscriptionCountChange.objects.update(at=midnight - timedelta(minutes=1))
    at_midnight = billed_by_status()
    Subscription.objects.filter(pk__in=ids[5:8]).update(status="cancelled")
    SubscriptionCountChange.objects.filter(at__gt=midnight).update(at=midnight + timedelta(minutes=1))

    assert subscriber_counts.fold(now=midnight + timedelta(minutes=2)) == 10  # the day is not counted yet...
    assert SubscriptionCountChange.objects.count() == 6  # ...so the changes made after midnight wait for it
    assert not SubscriberDayCount.objects.exists()
    assert_counts_are_the_rows(dataset, world)
    subscriber_counts.recount()  # counted again meanwhile: the changes since midnight still wait for its count
    assert SubscriptionCountChange.objects.count() == 6
    assert_counts_are_the_rows(dataset, world)

    subscriber_counts.fold(now=midnight + timedelta(minutes=10))
    assert not SubscriptionCountChange.objects.exists()
    counted = SubscriberDayCount.objects.filter(day=midnight, status__in=BILLED).values("status")
    assert {row["status"]: row["n"] for row in counted.annotate(n=Sum("subscriptions"))} == at_midnight
    around = (midnight - timedelta(hours=1), midnight + timedelta(hours=1))
    assert subscriber_counts.counted_days(*around) == (1, midnight + timedelta(hours=1))
    after = (midnight + timedelta(minutes=1), midnight + timedelta(days=3))
    assert subscriber_counts.counted_days(*after) == (0, midnight + timedelta(days=1))  # the next one is not counted

    now = midnight + timedelta(days=2, hours=1)
    subscriber_counts.fold(now=now)  # the two days since, counted as they stand now
    assert subscriber_counts.fold(now=now) == 0
    assert SubscriberDayCount.objects.values("day").distinct().count() == 3
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    arpu = dashboard_data(dashboard=dashboard, filters=DashboardFilters(period="7d"), now=now)["subscriptions"]["arpu"]
    billed_now = sum(billed_by_status().values())
    assert arpu["days_counted"] == 3
    assert arpu["average_subscribers"] == round((sum(at_midnight.values()) + 3 * billed_now) / 4, 1)


def test_counts_left_behind_by_writes_with_triggers_off_are_counted_again(dataset: Dataset, world: list[Subs]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")  # as a restore without triggers writes
        Subscription.objects.filter(pk__in=Subscription.objects.values("pk")[:7]).update(status="expired")
        cursor.execute("SET LOCAL session_replication_role = origin")
    stale = run_query(dataset=dataset, query=DatasetQuery(("subscriptions",), group_by=("status",)))
    assert stale.rows != by_hand(("status",), {})
    out = io.StringIO()
    call_command("recount_subscribers", stdout=out)
    assert "subscriber count rows" in out.getvalue()
    assert not SubscriptionCountChange.objects.exists()
    assert_counts_are_the_rows(dataset, world)


def test_a_change_is_dated_by_the_start_of_its_transaction_on_the_databases_clock(world: list[Subs]) -> None:
    """All the changes of one transaction fall on the same side of a midnight: the one it began on."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now(), statement_timestamp()")
        began, later = cursor.fetchone()
    assert later > began  # the test's transaction began before this statement
    Subscription.objects.filter(pk=Subscription.objects.order_by("pk").values("pk")[:1]).update(status="past_due")
    assert set(SubscriptionCountChange.objects.values_list("at", flat=True)) == {began}


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_the_folds_beat_entry_runs_on_a_celery_worker_through_the_broker(dataset: Dataset, world: list[Subs]) -> None:
    """The production topology: beat sends the entry's task to the broker, a worker folds."""
    schedule(django_apps, counts_0018.ENTRIES)  # a transactional test's tables start empty
    entry = PeriodicTask.objects.get(task="reporting.tasks.fold_subscriber_counts")
    assert entry.enabled
    assert entry.interval is not None
    assert (entry.interval.every, entry.interval.period) == (1, "minutes")
    assert SubscriptionCountChange.objects.exists()
    queue = f"test-fold-{uuid.uuid4().hex[:8]}"  # a queue of its own: nothing left on the default one runs first
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        celery_app.send_task(entry.task, queue=queue)  # as beat sends it when the entry is due
        deadline = time.monotonic() + 30
        while SubscriptionCountChange.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not SubscriptionCountChange.objects.exists()
    assert SubscriberCountState.objects.exists()
    assert_counts_are_the_rows(dataset, world)
