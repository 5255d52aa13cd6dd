"""Subscription-charge rollups: the catalog's subscription charges answer the same from the rollups as from the
rows (revenue, attempts, per-attempt and per-period success), before and after late changes (a charge settled, a
retry that renews its period days after its first attempt), and the dashboard's tile reads them."""

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from payments.models import Payment
from reporting.models import (
    Dataset,
    PaymentRollup,
    SubscriptionChargeDayRollup,
    SubscriptionChargeMonthRollup,
    SubscriptionChargeRollup,
)
from reporting.services import rollups
from reporting.services.datasets import DatasetQuery, run_query
from subscriptions.models import Plan, Subscription, SubscriptionCharge
from tests.conftest import Shop
from tests.factories import PaymentFactory
from tests.reporting.answers import ZONES, answers, assert_same, raw_answers
from tests.reporting.catalog import seed_subscription_datasets
from tests.subscriptions.conftest import Subs, make_plan

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

SLUG = "subscription-charges"
# The attempts at one period, oldest first: each but the last failed (a retry follows only a failure).
HISTORIES = [
    ["succeeded"],
    ["failed"],
    ["pending"],
    ["missed"],
    ["failed", "succeeded"],
    ["failed", "failed", "succeeded"],
    ["failed", "pending"],
    ["failed", "missed"],
]


@pytest.fixture
def catalog(db: Any) -> dict[str, Dataset]:
    seed_subscription_datasets()
    return {d.slug: d for d in Dataset.objects.prefetch_related("fields")}


@pytest.fixture
def world(make_shop: Callable[..., Shop]) -> list[Subs]:
    """Two apps on two carriers, each with a weekly and a monthly plan, 12 subscribers each."""
    shops = []
    for prefix in ("4474", "4475"):
        shop = make_shop(prefix, supports_subscriptions=True)
        plan, offer = make_plan(shop)
        make_plan(shop, period="monthly", code="vip-monthly")
        subs = Subs(shop=shop, plan=plan, offer=offer)
        subs.bulk_active(12, anchor=timezone.now() - timedelta(days=30))
        shops.append(subs)
    monthly = Plan.objects.filter(code="vip-monthly")
    for subscription in Subscription.objects.order_by("pk")[::3]:
        Subscription.objects.filter(pk=subscription.pk).update(plan=monthly.get(app=subscription.app_id))
    return shops


def _payment(subscription: Subscription, at: datetime, outcome: str, amount: int) -> Payment:
    status = {"succeeded": "succeeded", "failed": "failed", "pending": "charging"}[outcome]
    return PaymentFactory.create(
        app=subscription.app,
        carrier=subscription.carrier,
        price_point=subscription.price_point,
        amount_minor=amount,
        currency=subscription.currency,
        status=status,
        flow="one_click",
        failure_code="insufficient_funds" if outcome == "failed" else "",
        created_at=at,
    )


def charge(subscription: Subscription, period: int, attempt: int, outcome: str, at: datetime, amount: int) -> None:
    """One attempt at a period, made at `at` (a missed period has no payment)."""
    payment = None if outcome == "missed" else _payment(subscription, at, outcome, amount)
    row = SubscriptionCharge.objects.create(
        subscription=subscription,
        kind="opt_in" if period == 0 else "renewal",
        period_index=period,
        attempt=attempt,
        payment=payment,
        outcome=outcome,
        failure_code="insufficient_funds" if outcome == "failed" else "",
        settled_at=None if outcome == "pending" else at,
    )
    SubscriptionCharge.objects.filter(pk=row.pk).update(created_at=at)


def random_charges(rng: random.Random, now: datetime, days: int = 6) -> None:
    """Every subscriber's periods over the last `days` days, each with a random history of attempts a day apart
    at most (so that a period's retries fall in other hours and days than its first attempt)."""
    for subscription in Subscription.objects.order_by("pk"):
        amount = rng.choice([99, 249, 1000])
        for period in range(rng.randint(1, 3)):
            at = now - timedelta(seconds=rng.randrange(days * 24 * 3600))
            for attempt, outcome in enumerate(rng.choice(HISTORIES), start=1):
                charge(subscription, period, attempt, outcome, min(at, now - timedelta(seconds=1)), amount)
                at += timedelta(seconds=rng.randrange(600, 26 * 3600))


def random_queries(rng: random.Random, catalog: dict[str, Dataset], now: datetime) -> list[tuple[str, DatasetQuery]]:
    fields = list(catalog[SLUG].fields.all())
    dimensions = [f.name for f in fields if f.role == "dimension"]
    measures = [f.name for f in fields if f.role == "measure" and f.name != "paying_subscribers"]
    queries = []
    for _ in range(14):
        since = now - timedelta(seconds=rng.randrange(7 * 24 * 3600))
        until = rng.choice([now, since + timedelta(seconds=rng.randrange(1, 3 * 24 * 3600))])
        queries.append(
            (
                SLUG,
                DatasetQuery(
                    measures=tuple(rng.sample(measures, rng.randint(1, len(measures)))),
                    group_by=tuple(rng.sample(dimensions, rng.randint(0, 2))),
                    bucket=rng.choice([None, "hour", "day", "week"]),
                    filters=rng.choice(
                        [{}, {"kind": ("renewal",)}, {"outcome": ("succeeded", "failed")}, {"plan": ("vip-monthly",)}]
                    ),
                    since=since,
                    until=until,
                    timezone=rng.choice(ZONES[:-1]),
                ),
            )
        )
    return queries


@pytest.mark.parametrize("seed", [1, 2])
def test_rollup_answers_equal_the_answers_from_rows_on_random_charges(
    catalog: dict[str, Dataset], world: list[Subs], seed: int
) -> None:
    rng = random.Random(seed)
    now = timezone.now()
    random_charges(rng, now)
    list(rollups.catch_up_payment_rollups())
    assert SubscriptionChargeRollup.objects.exists()
    assert SubscriptionChargeDayRollup.objects.exists()
    queries = random_queries(rng, catalog, now)
    assert_same(answers(catalog, queries), raw_answers(catalog, queries))


def test_a_retry_that_renews_its_period_days_later_counts_on_the_first_attempt_after_the_next_refresh(
    catalog: dict[str, Dataset], world: list[Subs]
) -> None:
    now = timezone.now()
    subscription = Subscription.objects.order_by("pk").first()
    assert subscription is not None
    first_try = now - timedelta(days=3)
    charge(subscription, 1, 1, "failed", first_try, 99)
    Payment.objects.update(updated_at=first_try)  # as written then: only the retry's rows are new to the refresh
    list(rollups.catch_up_payment_rollups())
    query = DatasetQuery(
        measures=("periods_decided", "periods_renewed", "charges", "revenue_minor"),
        filters={"kind": ("renewal",)},
        since=first_try - timedelta(hours=2),
        until=first_try + timedelta(hours=2),
    )
    before = run_query(dataset=catalog[SLUG], query=query)
    assert before.read_from == "rollups"
    assert before.rows == [
        {"currency": "GBP", "periods_decided": 1, "periods_renewed": 0, "charges": 1, "revenue_minor": 0}
    ]

    charge(subscription, 1, 2, "pending", now - timedelta(minutes=5), 99)  # the retry, today
    retry = SubscriptionCharge.objects.get(subscription=subscription, period_index=1, attempt=2)
    retry.outcome, retry.settled_at = "succeeded", timezone.now()
    assert retry.payment_id is not None
    Payment.objects.filter(pk=retry.payment_id).update(status="succeeded")
    retry.save()
    assert run_query(dataset=catalog[SLUG], query=query).rows == before.rows  # not refreshed yet

    rollups.refresh_payment_rollups()
    after = run_query(dataset=catalog[SLUG], query=query)
    assert after.rows == [
        {"currency": "GBP", "periods_decided": 1, "periods_renewed": 1, "charges": 1, "revenue_minor": 0}
    ]
    today = DatasetQuery(measures=("charged", "revenue_minor"), since=now - timedelta(hours=1), until=now)
    assert run_query(dataset=catalog[SLUG], query=today).rows == [
        {"currency": "GBP", "charged": 1, "revenue_minor": 99}
    ]
    assert_same(answers(catalog, [(SLUG, query)]), raw_answers(catalog, [(SLUG, query)]))


def test_what_the_charge_rollups_cannot_answer_is_read_from_rows(
    catalog: dict[str, Dataset], world: list[Subs]
) -> None:
    since = timezone.now() - timedelta(days=2)
    for query in (
        DatasetQuery(measures=("paying_subscribers",), since=since),  # distinct subscriptions
        DatasetQuery(measures=("charges",), group_by=("currency",), since=since, timezone="Asia/Kolkata", bucket="day"),
    ):
        assert run_query(dataset=catalog[SLUG], query=query).read_from == "rows"


def test_a_period_renewed_is_counted_once_whatever_the_period_of_time(
    catalog: dict[str, Dataset], world: list[Subs]
) -> None:
    """Days and weeks add up: a period's first attempt is in one of them only, however many retries it took."""
    now = timezone.now()
    subscription = Subscription.objects.order_by("pk").first()
    assert subscription is not None
    start = now - timedelta(days=5)
    for attempt, outcome in enumerate(["failed", "failed", "succeeded"], start=1):
        charge(subscription, 1, attempt, outcome, start + timedelta(days=attempt), 2)
    list(rollups.catch_up_payment_rollups())
    by_day = DatasetQuery(
        measures=("periods_decided", "periods_renewed", "charges"),
        bucket="day",
        since=now - timedelta(days=7),
        until=now,
    )
    result = run_query(dataset=catalog[SLUG], query=by_day)
    assert result.read_from == "rollups"
    days = [row for row in result.rows if row["charges"]]
    assert [(row["periods_decided"], row["periods_renewed"], row["charges"]) for row in days] == [
        (1, 1, 1),  # the first attempt's day: the period, decided and renewed
        (0, 0, 1),  # the second attempt's
        (0, 0, 1),  # the third, which charged it
    ]
    assert days[0]["bucket"].date() == (start + timedelta(days=1)).date()


def test_a_kind_added_beside_built_rollups_is_built_by_the_refresh_in_steps_while_the_others_keep_theirs(
    catalog: dict[str, Dataset], world: list[Subs]
) -> None:
    """Reporting migration 0019 on a database whose payment rollups are built: the charges' start from their first
    hour and the refresh builds them a month a run; meanwhile their queries read the charges, and the payments'
    rollups are not computed again."""
    rng = random.Random(9)
    now = timezone.now()
    random_charges(rng, now, days=40)
    list(rollups.catch_up_payment_rollups())
    state = rollups.rollup_state()
    assert state is not None
    for table in (SubscriptionChargeRollup, SubscriptionChargeDayRollup, SubscriptionChargeMonthRollup):
        table.objects.all().delete()  # as before the kind existed
    first = SubscriptionCharge.objects.order_by("created_at").values_list("created_at", flat=True).first()
    assert first is not None
    state.kinds_until = {"subscription_charges": rollups.floor_hour(first).isoformat()}
    state.save()
    Payment.objects.update(updated_at=first)  # as written then: nothing changed since the rollups' last run
    payment_rows = sorted(PaymentRollup.objects.values_list("pk", flat=True))
    queries = random_queries(rng, catalog, now)
    before = answers(catalog, queries)  # read from the charges where the kind is not built yet

    rollups.refresh_payment_rollups()
    state = rollups.rollup_state()
    assert state is not None
    assert state.covered_for("subscription_charges") == rollups.floor_hour(first) + rollups.MAX_STEP  # one step
    assert sorted(PaymentRollup.objects.values_list("pk", flat=True)) == payment_rows  # theirs are kept
    assert [r.rows for r in answers(catalog, queries)] == [r.rows for r in before]

    list(rollups.catch_up_payment_rollups())
    state = rollups.rollup_state()
    assert state is not None
    assert state.covered_for("subscription_charges") == state.covered_until
    assert_same(answers(catalog, queries), raw_answers(catalog, queries))
