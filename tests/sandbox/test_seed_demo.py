"""seed_demo: the demo carriers, app, funnel and the API datasets against the simulators."""

import io
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from carriers.models import Carrier, PricePoint
from funnel.models import FunnelDefinition
from reporting.models import Dashboard, Dataset
from reporting.selectors import fx_rates
from reporting.services.datasets import fetch_api_dataset
from sandbox.demo import seed_demo_datasets
from subscriptions.models import Plan, PlanOffer, downgrade_billing_allowed
from tenants.models import ApiKey, App

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_seed_demo_is_safe_to_run_twice_and_only_the_newest_key_works() -> None:
    # The migration seeds it; a transactional test before this one may have emptied the table.
    Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    first = run("seed_demo")
    second = run("seed_demo")
    keys = [line.split("=", 1)[1] for out in (first, second) for line in out.splitlines() if "PLAYPAY_API_KEY=" in line]
    demo = Carrier.objects.filter(
        slug__in=["sandbox-gb-alpha", "sandbox-gb-beta", "camara-gb", "aggregator-gb", "parlayx-es"], is_active=True
    )
    assert demo.count() == 5
    assert {carrier.protocol for carrier in demo} == {"sandbox", "camara", "aggregator", "parlayx"}
    assert demo.values("country").distinct().count() == 2
    assert all(carrier.has_credentials for carrier in demo if carrier.protocol != "sandbox")
    # And the plan's on four carriers, with its fallback price on the one that takes downgrade billing.
    assert PricePoint.objects.filter(carrier__in=demo).count() == 14 + 4 + 1
    # The demo plan, once, offered where subscriptions are taken: PIN, one-click, renewals charged by PlayPay or,
    # on the aggregator's carrier, by the aggregator on its own schedule.
    plan = Plan.objects.get(app__name="Demo Game", code="vip-daily")
    offered = set(plan.offers.values_list("carrier__slug", flat=True))
    assert offered == {"sandbox-gb-beta", "camara-gb", "parlayx-es", "aggregator-gb"}
    assert offered == set(demo.filter(supports_subscriptions=True).values_list("slug", flat=True))
    assert App.objects.filter(name="Demo Game").count() == 1
    assert ApiKey.objects.filter(app__name="Demo Game", revoked_at__isnull=True).count() == 1
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {keys[0]}")
    assert client.get("/api/v1/payments/").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {keys[1]}")
    assert client.get("/api/v1/payments/").status_code == 200
    assert "password:" in second
    funnel = FunnelDefinition.objects.get(name="Demo store purchase")
    assert funnel.steps[0] == "store_opened"
    assert funnel.steps[-1] == "charge_succeeded"
    assert Dashboard.objects.get(slug="overview").funnel == funnel


def _offers_and_prices() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
    offers = PlanOffer.objects.filter(plan__app__name="Demo Game").order_by("pk")
    prices = PricePoint.objects.order_by("pk")
    return (
        list(offers.values_list("pk", "carrier__slug", "price_point_id", "fallback_price_point_id")),
        list(prices.values_list("pk", "carrier_id", "code", "amount_minor", "currency", "is_active")),
        sorted(Carrier.objects.filter(supports_downgrade_billing=True).values_list("slug", flat=True)),
    )


def test_the_demo_plan_downgrades_on_one_sandbox_carrier_the_same_after_a_second_run() -> None:
    run("seed_demo")
    first = _offers_and_prices()
    run("seed_demo")
    assert _offers_and_prices() == first

    assert first[2] == ["sandbox-gb-beta"]
    offer = PlanOffer.objects.select_related("carrier", "price_point", "fallback_price_point").get(
        plan__app__name="Demo Game", plan__code="vip-daily", fallback_price_point__isnull=False
    )
    assert offer.carrier.slug == "sandbox-gb-beta"
    assert downgrade_billing_allowed(offer.carrier)
    regular, fallback = offer.price_point, offer.fallback_price_point
    assert fallback is not None
    assert fallback.is_active
    assert fallback.carrier == offer.carrier
    assert (fallback.currency, regular.currency) == ("GBP", "GBP")
    assert fallback.amount_minor < regular.amount_minor
    offer.full_clean()  # the operations' own rules for an offer's fallback price (subscriptions.models) hold


def test_seed_demo_offers_the_plan_on_the_aggregators_carrier_at_its_daily_price_without_fallback() -> None:
    run("seed_demo")

    offer = PlanOffer.objects.select_related("carrier", "price_point").get(
        plan__app__name="Demo Game", plan__code="vip-daily", carrier__slug="aggregator-gb"
    )
    assert offer.carrier.protocol == "aggregator"
    assert (offer.carrier.supports_subscriptions, offer.carrier.supports_pin, offer.carrier.supports_one_click) == (
        True,
        True,
        True,
    )
    assert (offer.price_point.code, offer.price_point.amount_minor, offer.price_point.currency) == (
        "vip-daily",
        49,
        "GBP",
    )
    assert offer.fallback_price_point is None  # the aggregator holds the renewals' price: it never downgrades
    offer.full_clean()


def test_seed_demo_creates_the_fx_and_balance_datasets_against_the_simulators(settings: Any) -> None:
    run("seed_demo")
    run("seed_demo")
    fx = Dataset.objects.get(slug="fx-rates")
    assert fx.source_kind == "api"
    assert fx.api_url == f"{settings.PUBLIC_BASE_URL}/simulators/fx/rates"
    assert fx.api_rows_path == "rates"
    assert set(fx.fields.values_list("name", flat=True)) == {"date", "base", "quote", "rate"}
    balance = Dataset.objects.get(slug="aggregator-balance")
    assert balance.api_url == f"{settings.PUBLIC_BASE_URL}/simulators/aggregator/v1/balance"
    assert set(balance.fields.values_list("name", flat=True)) == {"currency", "available_minor"}


@pytest.mark.django_db(transaction=True)
def test_the_demo_fx_dataset_reads_the_simulator_and_converts_for_the_dashboard(
    live_server: Any, settings: Any
) -> None:
    settings.PUBLIC_BASE_URL = live_server.url
    seed_demo_datasets()  # what seed_demo adds to the catalog (its carriers need the migrated countries)

    dataset = fetch_api_dataset(dataset_id=Dataset.objects.get(slug="fx-rates").pk)

    assert dataset.api_last_error == ""
    rates = fx_rates(Dataset.objects.prefetch_related("fields").get(slug="fx-rates"))
    assert rates.base == "EUR"
    assert rates.convert(850, "GBP", "EUR") == 1000
