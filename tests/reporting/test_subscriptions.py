"""Subscriptions on the dashboard and in the catalog: subscribers now, new and churned ones, recurring revenue,
renewal success per carrier and ARPU, each compared with a count made by hand from the tables.

The subscriptions are made as a game makes them (the API, the PIN, the renewal engine on the sandbox carrier);
the engine's clock is the test's, the rows' times are the wall clock's, so everything is in the last 24 hours.
"""

import importlib
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import Count, Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from playpay.money import format_money
from reporting.catalog import validate_dataset_field, validate_dataset_source
from reporting.models import Dashboard, Dataset, DatasetField
from reporting.selectors import DashboardFilters, dashboard_data
from reporting.services import subscriber_counts
from reporting.services.datasets import DatasetQuery, run_query
from reporting.services.rollups import floor_day
from sandbox.demo import seed_demo_datasets
from subscriptions.models import PlanOffer, Subscription, SubscriptionCharge, SubscriptionStatusChange
from subscriptions.services.state_machine import BILLED_STATUSES, FINAL_STATUSES
from tests.conftest import MSISDN, Shop, StaffClient
from tests.factories import PricePointFactory
from tests.reporting.catalog import SUBSCRIPTION_DATASETS, seed_subscription_datasets
from tests.subscriptions.conftest import Subs, make_plan

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

catalog_0004 = importlib.import_module("reporting.migrations.0004_seed_catalog")
BROKE, BARRED = MSISDN[:-4] + "0002", MSISDN[:-4] + "0003"  # the sandbox carrier's insufficient funds, barred


@pytest.fixture
def overview(db: Any) -> Dashboard:
    catalog_0004.seed_datasets(Dataset, DatasetField)
    seed_subscription_datasets()
    seed_demo_datasets()
    Dataset.objects.filter(slug="fx-rates").update(
        api_payload={"rates": [{"date": "2026-03-02", "base": "EUR", "quote": "GBP", "rate": "0.8000"}]}
    )
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    dashboard.groups.set(Group.objects.filter(name__in=["operations", "finance"]))
    return dashboard


def subs_on(make_shop: Callable[..., Shop], prefix: str, amount_minor: int) -> Subs:
    shop = make_shop(prefix, supports_subscriptions=True, insufficient_funds_retry_minutes="")
    plan, offer = make_plan(shop)
    price = PricePointFactory.create(carrier=shop.carrier, code=f"vip-{amount_minor}", amount_minor=amount_minor)
    PlanOffer.objects.filter(pk=offer.pk).update(price_point=price)
    return Subs(shop=shop, plan=plan, offer=PlanOffer.objects.get(pk=offer.pk))


@pytest.fixture
def subscribed(overview: Dashboard, make_shop: Callable[..., Shop]) -> tuple[Subs, Subs]:
    """Two carriers: on the first, a renewed subscriber, one past due, one barred (expired), one renewed then
    cancelled, an opt-in never confirmed and one cancelled before it; on the second, one renewed subscriber."""
    first, second = subs_on(make_shop, "4474", 99), subs_on(make_shop, "4475", 249)
    renewed, broke, barred, leaving = (first.active(f"a{n}", user_ref=f"player-{n}") for n in range(4))
    first.subscribe("a4", user_ref="player-4")  # never confirmed
    gone = first.subscribe("a5", user_ref="player-5").json()["id"]
    assert first.cancel(gone, at_period_end=False, reason="changed their mind").status_code == 200
    other = second.active("b0", user_ref="player-9", msisdn="+447500123456")
    Subscription.objects.filter(pk=broke.pk).update(msisdn=BROKE)
    Subscription.objects.filter(pk=barred.pk).update(msisdn=BARRED)
    ends = [s.current_period_end for s in (renewed, broke, barred, leaving, other) if s.current_period_end]
    first.renew(max(ends))  # every due period of both carriers
    leaving_id = str(leaving.public_id)
    assert first.cancel(leaving_id, at_period_end=False, reason="too expensive").status_code == 200
    statuses = dict(Subscription.objects.values_list("user_ref", "status"))
    assert statuses == {
        "player-0": "active",
        "player-1": "past_due",
        "player-2": "expired",
        "player-3": "cancelled",
        "player-4": "pending_opt_in",
        "player-5": "cancelled",
        "player-9": "active",
    }
    return first, second


def charges_in(since: datetime, **where: Any) -> list[SubscriptionCharge]:
    return list(SubscriptionCharge.objects.filter(created_at__gte=since, **where).select_related("subscription"))


def amount(charge: SubscriptionCharge) -> int:
    assert charge.payment is not None
    return charge.payment.amount_minor


def test_the_subscriptions_tile_counts_what_the_tables_hold(subscribed: tuple[Subs, Subs], overview: Dashboard) -> None:
    first, _ = subscribed
    now = timezone.now()
    since = now - timedelta(hours=24)
    tile = dashboard_data(dashboard=overview, filters=DashboardFilters(period="24h"), now=now)["subscriptions"]

    billed, final = ("active", "past_due", "suspended"), ("cancelled", "expired")
    standing = dict(Subscription.objects.filter(status__in=billed).values_list("status").annotate(n=Count("id")))
    assert tile["subscribers"] == {
        "active": standing.get("active", 0),
        "past_due": standing.get("past_due", 0),
        "suspended": standing.get("suspended", 0),
        "total": sum(standing.values()),
    }
    changes = SubscriptionStatusChange.objects.filter(created_at__gte=since, created_at__lt=now)
    new = changes.filter(from_status="pending_opt_in", to_status="active").count()
    churned = changes.filter(from_status__in=billed, to_status__in=final)
    assert (tile["total_new_subscribers"], sum(tile["new_subscribers"])) == (new, new)
    assert (tile["total_churned_subscribers"], sum(tile["churned_subscribers"])) == (churned.count(),) * 2
    assert tile["total_cancelled_subscribers"] == churned.filter(to_status="cancelled").count()
    assert tile["total_expired_subscribers"] == churned.filter(to_status="expired").count()
    # A cancelled opt-in is no subscriber lost; the barred one and the one who cancelled are.
    assert (new, churned.count()) == (5, 2)

    paid = charges_in(since, outcome="succeeded")
    revenue = sum(amount(charge) for charge in paid)
    assert tile["revenue"]["by_currency"] == [{"currency": "GBP", "amount_minor": revenue, "exponent": 2}]
    assert revenue == 4 * 99 + 2 * 99 + 2 * 249  # opt-ins, renewals of the first carrier, and of the second
    in_euros = (Decimal(revenue) / Decimal("0.8")).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    assert tile["revenue"]["total_minor"] == int(in_euros)
    assert sum(m or 0 for m in tile["revenue"]["amount_minor"]) == pytest.approx(int(in_euros), abs=2)

    renewals: dict[int, list[str]] = {}
    # A period counts where its first attempt is: decided once that attempt is, renewed once any attempt succeeded.
    first_tries: dict[int, list[SubscriptionCharge]] = {}
    for charge in charges_in(since, kind="renewal", outcome__in=("pending", "succeeded", "failed")):
        renewals.setdefault(charge.subscription.carrier_id, []).append(charge.outcome)
        if charge.attempt == 1:
            first_tries.setdefault(charge.subscription.carrier_id, []).append(charge)
    slugs = {c.pk: c.slug for c in (s.carrier for s in Subscription.objects.select_related("carrier"))}

    def decided(carrier: int) -> int:
        return sum(1 for charge in first_tries[carrier] if charge.outcome != "pending")

    charged = set(SubscriptionCharge.objects.filter(outcome="succeeded").values_list("subscription_id", "period_index"))

    def renewed(carrier: int) -> int:
        return sum(1 for charge in first_tries[carrier] if (charge.subscription_id, charge.period_index) in charged)

    expected = {
        slugs[carrier]: {
            "carrier": slugs[carrier],
            "attempts": len(outcomes),
            "charged": outcomes.count("succeeded"),
            "failed": outcomes.count("failed"),
            "attempt_success_rate": outcomes.count("succeeded") / (len(outcomes) - outcomes.count("pending")),
            "periods_decided": decided(carrier),
            "periods_renewed": renewed(carrier),
            "success_rate": renewed(carrier) / decided(carrier),
        }
        for carrier, outcomes in renewals.items()
    }
    assert {row["carrier"]: row for row in tile["renewals"]} == expected
    assert len(tile["renewals"]) == len(expected) == 2
    first_carrier = first.shop.carrier.slug
    assert expected[first_carrier]["success_rate"] == 0.5  # renewed twice, declined once, barred once

    # No midnight of the period has its day count yet (the counts began with this test): the base is the billed now.
    billed_now = Subscription.objects.filter(status__in=BILLED_STATUSES).count()
    assert tile["arpu"]["days_counted"] == 0
    assert tile["arpu"]["average_subscribers"] == billed_now == 3
    assert tile["arpu"]["amount"] == format_money(tile["arpu"]["amount_minor"], "EUR")
    assert tile["arpu"]["amount_minor"] == int((in_euros / billed_now).quantize(Decimal(1), ROUND_HALF_EVEN))


def test_the_tile_follows_the_dashboards_carrier_filter(
    subscribed: tuple[Subs, Subs], overview: Dashboard, staff_client: StaffClient
) -> None:
    _, second = subscribed
    slug = second.shop.carrier.slug
    response = staff_client("finance").get(f"/reporting/dashboards/overview/data.json?period=24h&carrier={slug}")
    assert response.status_code == 200
    tile = response.json()["subscriptions"]
    on_carrier = Subscription.objects.filter(carrier__slug=slug)
    assert tile["subscribers"]["total"] == on_carrier.filter(status__in=BILLED_STATUSES).count() == 1
    assert tile["total_new_subscribers"] == on_carrier.filter(anchor_at__isnull=False).count() == 1
    assert tile["total_churned_subscribers"] == 0
    paid = SubscriptionCharge.objects.filter(subscription__carrier__slug=slug, outcome="succeeded")
    assert tile["revenue"]["by_currency"][0]["amount_minor"] == sum(amount(c) for c in paid) == 2 * 249
    assert [r["carrier"] for r in tile["renewals"]] == [slug]


def test_the_catalog_answers_renewals_per_carrier_and_kind_as_the_charges_table(
    subscribed: tuple[Subs, Subs], staff_client: StaffClient
) -> None:
    response = staff_client("finance").get(
        "/reporting/datasets/subscription-charges/query.json"
        "?measures=charges,charged,revenue_minor,paying_subscribers&group_by=carrier,kind"
    )
    assert response.status_code == 200, response.content
    rows = {(row["carrier"], row["kind"]): row for row in response.json()["rows"]}
    by_hand: dict[tuple[str, str], dict[str, Any]] = {}
    for charge in SubscriptionCharge.objects.select_related("subscription__carrier"):
        row = by_hand.setdefault(
            (charge.subscription.carrier.slug, charge.kind),
            {"charges": 0, "charged": 0, "revenue_minor": 0, "payers": set()},
        )
        row["charges"] += 1
        if charge.outcome == "succeeded":
            row["charged"] += 1
            row["revenue_minor"] += amount(charge)
            row["payers"].add(charge.subscription_id)
    assert set(rows) == set(by_hand)
    for key, row in by_hand.items():
        assert (rows[key]["charges"], rows[key]["charged"], rows[key]["revenue_minor"], rows[key]["currency"]) == (
            row["charges"],
            row["charged"],
            row["revenue_minor"],
            "GBP",
        )
        assert rows[key]["paying_subscribers"] == len(row["payers"])


def test_subscribers_per_status_and_churn_per_status_change_come_from_the_catalog(
    subscribed: tuple[Subs, Subs],
) -> None:
    subscriptions = Dataset.objects.get(slug="subscriptions")
    result = run_query(dataset=subscriptions, query=DatasetQuery(measures=("subscriptions",), group_by=("status",)))
    assert {row["status"]: row["subscriptions"] for row in result.rows} == dict(
        Subscription.objects.values_list("status").annotate(n=Count("id"))
    )
    changes = Dataset.objects.get(slug="subscription-changes")
    query = DatasetQuery(measures=("new_subscribers", "churned_subscribers"), group_by=("to_status",))
    by_status = {row["to_status"]: row for row in run_query(dataset=changes, query=query).rows}
    history = SubscriptionStatusChange.objects
    for status, row in by_status.items():
        assert (
            row["new_subscribers"]
            == history.filter(to_status=status, from_status="pending_opt_in").filter(to_status="active").count()
        )
        assert (
            row["churned_subscribers"]
            == history.filter(
                Q(to_status=status), from_status__in=BILLED_STATUSES, to_status__in=FINAL_STATUSES
            ).count()
        )


def test_a_charge_reads_its_payment_in_its_own_month(subscribed: tuple[Subs, Subs]) -> None:
    """The charges' payments are joined on their month too: PostgreSQL reads one month's partition per charge."""
    dataset = Dataset.objects.get(slug="subscription-charges")
    with CaptureQueriesContext(connection) as queries:
        run_query(dataset=dataset, query=DatasetQuery(measures=("revenue_minor",)))
    (select,) = [q["sql"] for q in queries.captured_queries if "subscriptions_subscriptioncharge" in q["sql"]]
    assert 'charged."created_at" = ("subscriptions_subscriptioncharge"."payment_created_at")' in select


def test_without_its_datasets_the_tile_says_which_is_missing(overview: Dashboard) -> None:
    Dataset.objects.filter(slug="subscription-charges").delete()
    tile = dashboard_data(dashboard=overview, filters=DashboardFilters())["subscriptions"]
    assert tile == {"error": "The dashboard reads the dataset 'subscription-charges', which is not in the catalog."}


@pytest.mark.parametrize("slug", SUBSCRIPTION_DATASETS)
def test_every_field_of_the_seeded_subscription_datasets_answers(
    slug: str, subscribed: tuple[Subs, Subs], overview: Dashboard
) -> None:
    tomorrow = floor_day(timezone.now()) + timedelta(days=1)
    subscriber_counts.fold(now=tomorrow - timedelta(hours=1))
    subscriber_counts.fold(now=tomorrow + timedelta(hours=1))  # the subscriber base at tomorrow's midnight
    dataset = Dataset.objects.get(slug=slug)
    validate_dataset_source(dataset)
    fields = list(dataset.fields.all())
    for field in fields:
        validate_dataset_field(dataset, field)
    measures = tuple(f.name for f in fields if f.role == "measure")
    for dimension in [f.name for f in fields if f.role == "dimension"]:
        rows = run_query(dataset=dataset, query=DatasetQuery(measures=measures, group_by=(dimension,))).rows
        assert rows
        assert all(row[dimension] is not None for row in rows if dimension != "failure_code")


def test_a_missed_period_is_no_renewal_attempt_and_no_revenue(
    subscribed: tuple[Subs, Subs], overview: Dashboard
) -> None:
    def renewals() -> tuple[dict[str, tuple[int, int]], Any, Any]:
        tile = dashboard_data(dashboard=overview, filters=DashboardFilters(period="24h"), now=timezone.now())
        subs = tile["subscriptions"]
        by_carrier = {r["carrier"]: (r["attempts"], r["periods_decided"]) for r in subs["renewals"]}
        return by_carrier, subs["revenue"]["by_currency"], subs["arpu"]["amount_minor"]

    before = renewals()
    subscription = Subscription.objects.filter(status="active").first()
    assert subscription is not None
    SubscriptionCharge.objects.create(
        subscription=subscription, kind="renewal", period_index=90, outcome="missed", settled_at=timezone.now()
    )
    assert renewals() == before
