"""The dashboard: who may open it, and that its numbers are the tables' numbers."""

import importlib
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db.models import Count, Sum
from django.test import Client
from django.utils import timezone

from payments.models import Payment, PaymentStatus, Refund, Reversal
from reporting.catalog import CHARGED, NOT_CHARGED
from reporting.models import AlertEvent, AlertRule, Dashboard, Dataset, DatasetField
from reporting.services.alerts import evaluate_alert_rules
from sandbox.demo import seed_demo_datasets
from tests.conftest import StaffClient
from tests.factories import CarrierFactory, CountryFactory
from tests.reporting.conftest import MakePayment

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")


@pytest.fixture
def overview(db: Any) -> Dashboard:
    """The migration's catalog and dashboard, and an FX dataset (the sandbox's demo one) with fixed rates."""
    seed_module.seed_datasets(Dataset, DatasetField)
    seed_demo_datasets()
    Dataset.objects.filter(slug="fx-rates").update(
        api_payload={
            "rates": [
                {"date": "2026-03-02", "base": "EUR", "quote": "GBP", "rate": "0.8000"},
                {"date": "2026-03-02", "base": "EUR", "quote": "JPY", "rate": "160"},
            ]
        }
    )
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    dashboard.groups.set(Group.objects.filter(name__in=["operations", "finance"]))
    return dashboard


def test_signed_out_visitors_are_sent_to_the_admin_login(overview: Dashboard) -> None:
    response = Client().get("/reporting/dashboards/overview/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")
    assert Client().get("/reporting/dashboards/overview/data.json").status_code == 401


def test_staff_without_the_dashboard_get_403(overview: Dashboard, staff_client: StaffClient) -> None:
    support = staff_client("support")
    assert support.get("/reporting/dashboards/overview/").status_code == 403
    assert support.get("/reporting/dashboards/overview/data.json").status_code == 403
    assert support.get("/reporting/dashboard/").status_code == 403


def test_staff_who_did_not_pass_the_second_factor_are_kept_out_as_in_the_admin(
    overview: Dashboard, settings: Any, staff_client: StaffClient
) -> None:
    settings.STAFF_2FA = True
    operations = staff_client("operations")  # signed in, no verified TOTP device
    assert operations.get("/admin/").status_code == 302
    page = operations.get("/reporting/dashboards/overview/")
    assert page.status_code == 302
    assert page["Location"].startswith("/admin/login/")
    assert operations.get("/reporting/dashboards/overview/data.json").status_code == 401
    assert operations.get("/reporting/datasets/payments/export.csv?measures=payments").status_code == 302


def test_members_of_a_dashboard_group_open_it_from_the_stable_url(
    overview: Dashboard, staff_client: StaffClient
) -> None:
    operations = staff_client("operations")
    response = operations.get("/reporting/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == "/reporting/dashboards/overview/"
    page = operations.get("/reporting/dashboards/overview/").content.decode()
    for marker in ('data-chart="revenue"', 'data-chart="funnel"', 'id="data-as-of"', 'name="carrier"'):
        assert marker in page
    assert "vendor/chartjs/chart.umd.min.js" in page
    assert 'href="/reporting/dashboards/overview/"' in operations.get("/admin/").content.decode()


def test_dashboard_numbers_match_the_tables(
    overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    now = timezone.now()
    gb = CarrierFactory.create(slug="gb-one")
    jp = CarrierFactory.create(slug="jp-one", country=CountryFactory.create(code="JP", currency="JPY"))
    make_payment(carrier=gb, created=now - timedelta(hours=2), amount_minor=499)
    make_payment(
        carrier=gb,
        created=now - timedelta(hours=1),
        amount_minor=199,
        status=PaymentStatus.REFUNDED,
        refunded_minor=199,
    )
    failed = make_payment(carrier=gb, created=now - timedelta(hours=1), status=PaymentStatus.FAILED)
    Payment.objects.filter(pk=failed.pk).update(failure_code="insufficient_funds")
    make_payment(carrier=gb, created=now - timedelta(hours=30), amount_minor=10_000)  # before the period
    make_payment(carrier=jp, created=now - timedelta(minutes=5), amount_minor=480, currency="JPY")
    reversed_one = make_payment(
        carrier=jp, created=now - timedelta(minutes=3), amount_minor=160, currency="JPY", status=PaymentStatus.REVERSED
    )
    refunded = Payment.objects.get(amount_minor=199)
    Refund.objects.create(
        payment=refunded, amount_minor=199, currency="GBP", reason="r", requested_by="staff:x", status="succeeded"
    )
    Reversal.objects.create(payment=reversed_one, reason="r", requested_by="staff:x", status="succeeded")

    response = staff_client("finance").get("/reporting/dashboards/overview/data.json?period=24h")
    assert response.status_code == 200
    data = response.json()

    in_period = Payment.objects.filter(created_at__gte=now - timedelta(hours=24))
    charged = in_period.filter(status__in=CHARGED)
    by_currency = {
        row["currency"]: row["total"] for row in charged.values("currency").annotate(total=Sum("amount_minor"))
    }
    assert {c["currency"]: c["amount_minor"] for c in data["revenue"]["by_currency"]} == by_currency
    assert data["revenue"]["total_payments"] == charged.count() == 4
    assert sum(data["revenue"]["payments"]) == charged.count()
    # 6.98 GBP at 0.80 per euro, 640 JPY at 160 per euro: 8.725 + 4.00 EUR
    expected = Decimal(by_currency["GBP"]) / 100 / Decimal("0.8") + Decimal(by_currency["JPY"]) / Decimal(160)
    assert data["revenue"]["total_minor"] == round(expected * 100) == 1272
    assert sum(m or 0 for m in data["revenue"]["amount_minor"]) == pytest.approx(data["revenue"]["total_minor"], abs=2)
    assert data["fx"]["rate_date"] == "2026-03-02"
    assert data["currency"] == "EUR"

    carriers_paid = sorted(set(in_period.values_list("carrier__slug", flat=True)))
    assert [row["carrier"] for row in data["carriers"]] == carriers_paid
    assert len(carriers_paid) >= 2
    for row in data["carriers"]:
        decided = in_period.filter(carrier__slug=row["carrier"], status__in=CHARGED + NOT_CHARGED)
        assert row["success_rate"] == pytest.approx(decided.filter(status__in=CHARGED).count() / decided.count())
        assert row["payments"] == in_period.filter(carrier__slug=row["carrier"]).count()
    codes = in_period.filter(status__in=NOT_CHARGED).values("failure_code").annotate(n=Count("id"))
    assert data["errors"] == [{"code": row["failure_code"], "count": row["n"]} for row in codes]
    assert data["refunds"]["total_refunds"] == Refund.objects.count() == 1
    assert data["refunds"]["total_reversals"] == 1
    assert data["refunds"]["refunded"]["by_currency"] == [{"currency": "GBP", "amount_minor": 199, "exponent": 2}]


def test_without_an_fx_dataset_the_dashboard_shows_amounts_per_currency_and_no_converted_total(
    overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    # A deployment whose catalog has no FX provider (production before staff add one).
    Dataset.objects.filter(source_kind="api").delete()
    now = timezone.now()
    make_payment(carrier=CarrierFactory.create(slug="gb-one"), created=now - timedelta(hours=1), amount_minor=499)
    jp = CarrierFactory.create(slug="jp-one", country=CountryFactory.create(code="JP", currency="JPY"))
    make_payment(carrier=jp, created=now - timedelta(minutes=5), amount_minor=480, currency="JPY")

    response = staff_client("finance").get("/reporting/dashboards/overview/data.json?period=24h")

    assert response.status_code == 200
    data = response.json()
    assert {c["currency"]: c["amount_minor"] for c in data["revenue"]["by_currency"]} == {"GBP": 499, "JPY": 480}
    assert data["revenue"]["total_minor"] is None
    assert data["revenue"]["missing_rates"] == ["GBP", "JPY"]
    assert data["fx"]["rate_date"] is None
    assert "fx-rates" in data["fx"]["error"]
    assert data["revenue"]["total_payments"] == 2


def test_filters_narrow_every_figure(overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient) -> None:
    now = timezone.now()
    gb, other = CarrierFactory.create(slug="gb-one"), CarrierFactory.create(slug="gb-two")
    make_payment(carrier=gb, created=now - timedelta(hours=1), amount_minor=100)
    make_payment(carrier=other, created=now - timedelta(hours=1), amount_minor=300)
    client = staff_client("finance")
    data = client.get("/reporting/dashboards/overview/data.json?carrier=gb-two").json()
    assert data["revenue"]["by_currency"] == [{"currency": "GBP", "amount_minor": 300, "exponent": 2}]
    assert [row["carrier"] for row in data["carriers"]] == ["gb-two"]
    bad = client.get("/reporting/dashboards/overview/data.json?period=forever")
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_dashboard_filters"


def test_a_rule_fires_once_shows_on_the_dashboard_and_resolves(
    overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    AlertRule.objects.all().delete()
    rule = AlertRule.objects.create(
        name="gb success",
        dataset=Dataset.objects.get(slug="payments"),
        measure="success_rate",
        group_by="carrier",
        comparison="lt",
        threshold=Decimal("0.8"),
        window_minutes=15,
        min_rows=3,
    )
    rule.full_clean()
    now = timezone.now()
    gb, quiet = CarrierFactory.create(slug="gb-one"), CarrierFactory.create(slug="gb-quiet")
    make_payment(carrier=gb, created=now - timedelta(minutes=5))
    for _ in range(2):
        make_payment(carrier=gb, created=now - timedelta(minutes=5), status=PaymentStatus.FAILED)
    make_payment(carrier=quiet, created=now - timedelta(minutes=5), status=PaymentStatus.FAILED)  # too few rows
    make_payment(carrier=gb, created=now - timedelta(hours=2))  # outside the window

    assert evaluate_alert_rules().fired == 1
    assert evaluate_alert_rules().fired == 0  # still firing: no second event
    event = AlertEvent.objects.get()
    assert (event.key, event.fired_value, event.resolved_at) == ("gb-one", Decimal("0.333333"), None)
    alerts = staff_client("operations").get("/reporting/dashboards/overview/data.json").json()["alerts"]
    assert [(a["rule"], a["key"], a["state"]) for a in alerts["open"]] == [("gb success", "gb-one", "firing")]

    for _ in range(7):
        make_payment(carrier=gb, created=timezone.now() - timedelta(minutes=1))
    assert evaluate_alert_rules().resolved == 1
    event.refresh_from_db()
    assert event.resolved_at is not None
    assert event.resolved_value == Decimal("0.8")


def test_an_alert_on_an_unknown_measure_is_refused(overview: Dashboard) -> None:
    rule = AlertRule(
        name="x", dataset=Dataset.objects.get(slug="payments"), measure="vibes", comparison="lt", threshold=1
    )
    with pytest.raises(ValidationError, match="Choose one of the dataset's measures"):
        rule.full_clean()


def test_an_alert_shows_its_ratio_as_the_dashboard_does_and_honours_the_carrier_filter(
    overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    AlertRule.objects.all().delete()
    AlertRule.objects.create(
        name="success",
        dataset=Dataset.objects.get(slug="payments"),
        measure="success_rate",
        group_by="carrier",
        comparison="lt",
        threshold=Decimal("0.8"),
        window_minutes=15,
        min_rows=3,
    )
    now = timezone.now()
    for slug, succeeded in (("gb-one", 9), ("gb-two", 9)):
        carrier = CarrierFactory.create(slug=slug)
        for _ in range(succeeded):
            make_payment(carrier=carrier, created=now - timedelta(minutes=5))
        for _ in range(4):
            make_payment(carrier=carrier, created=now - timedelta(minutes=5), status=PaymentStatus.FAILED)
    assert evaluate_alert_rules().fired == 2
    client = staff_client("operations")

    alerts = client.get("/reporting/dashboards/overview/data.json").json()["alerts"]["open"]
    assert {(a["key"], a["fired_value_text"]) for a in alerts} == {("gb-one", "69.2 %"), ("gb-two", "69.2 %")}
    assert alerts[0]["condition"] == "success_rate < 80.0 % over 15 min"
    one = client.get("/reporting/dashboards/overview/data.json?carrier=gb-two").json()["alerts"]["open"]
    assert [a["key"] for a in one] == ["gb-two"]


def test_net_revenue_is_revenue_less_what_was_paid_back(
    overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    now = timezone.now()
    gb = CarrierFactory.create(slug="gb-one")
    make_payment(carrier=gb, created=now - timedelta(hours=2), amount_minor=499)
    refunded = make_payment(
        carrier=gb, created=now - timedelta(hours=1), amount_minor=199, status=PaymentStatus.PARTIALLY_REFUNDED
    )
    Refund.objects.create(
        payment=refunded, amount_minor=50, currency="GBP", reason="r", requested_by="staff:x", status="succeeded"
    )
    data = staff_client("finance").get("/reporting/dashboards/overview/data.json?period=24h").json()
    assert data["net_revenue"]["by_currency"] == [{"currency": "GBP", "amount_minor": 499 + 199 - 50, "exponent": 2}]
    assert data["net_revenue"]["total_minor"] == round(Decimal(648) / Decimal("0.8"))  # in EUR at 0.80 GBP
    assert data["no_data"] == ""


def test_filters_that_cannot_match_say_so_instead_of_showing_empty_charts(
    overview: Dashboard, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    gb = CarrierFactory.create(slug="gb-one")
    CountryFactory.create(code="ES", name="Spain", currency="EUR")
    make_payment(carrier=gb, created=timezone.now() - timedelta(hours=1))
    client = staff_client("finance")
    data = client.get("/reporting/dashboards/overview/data.json?carrier=gb-one&country=ES").json()
    assert data["no_data"] == "No data: these filters cannot match anything. The carrier gb-one is in GB, not in ES."
    assert data["revenue"]["total_payments"] == 0
    quiet = client.get("/reporting/dashboards/overview/data.json?period=24h&app=nobody").json()
    assert quiet["no_data"] == "No data for this period and these filters."
