"""The reporting dashboard in a real browser: staff open it, watch a chart follow new payments without a
reload, filter it and export a dataset.

What these tests rely on from the dashboard: it is at /reporting/dashboard/ (staff only); each chart is an
element with a `data-chart` attribute (the revenue one's name contains "revenue"); `#data-as-of` shows the
time of the data; the filter form has the fields `period`, `app`, `country` and `carrier`; a link or button
whose name starts with "Export" downloads the data as CSV.
"""

import csv
import importlib
import io
import re
from typing import Any
from urllib.parse import unquote

import pytest
from playwright.sync_api import Page, Request, expect

from reporting.models import Dashboard, Dataset, DatasetField
from sandbox.adapter import TEST_PIN
from tests.conftest import MSISDN
from tests.e2e.conftest import Game
from tests.factories import CarrierFactory, CountryFactory
from tests.reporting.catalog import seed_subscription_datasets
from tests.subscriptions.conftest import make_plan

pytestmark = pytest.mark.django_db(transaction=True)

seed_module = importlib.import_module("reporting.migrations.0004_seed_catalog")


@pytest.fixture(autouse=True)
def overview_dashboard(transactional_db: Any) -> Dashboard:
    """Transactional tests start from empty tables: the catalog and dashboard the migration seeds are made again."""
    seed_module.seed_datasets(Dataset, DatasetField)
    seed_subscription_datasets()
    dashboard, _ = Dashboard.objects.get_or_create(
        slug="overview", defaults={"title": "Overview", "currency": "EUR", "refresh_seconds": 2}
    )
    return dashboard


DASHBOARD = "/reporting/dashboard/"
REVENUE = '[data-chart*="revenue"]'
# What a chart looks like now: the pixels of a canvas, the markup of anything else (SVG, HTML).
CHART_PICTURE = """(selector) => {
    const chart = document.querySelector(selector);
    if (!chart) return null;
    const canvas = chart.tagName === "CANVAS" ? chart : chart.querySelector("canvas");
    return canvas ? canvas.toDataURL() : chart.innerHTML;
}"""


def open_dashboard(page: Page) -> Page:
    page.goto(DASHBOARD)
    expect(page.locator("[data-chart]").first).to_be_visible()
    expect(page.locator("#data-as-of")).not_to_be_empty()
    return page


def choose(page: Page, name: str, value: str) -> None:
    field = page.locator(f'form [name="{name}"]').first
    if field.evaluate("element => element.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def test_the_dashboard_is_for_signed_in_staff_only(page: Page, live_server: Any) -> None:
    page.goto(DASHBOARD)
    expect(page).to_have_url(re.compile(r"/admin/login/\?next="))
    assert unquote(page.url).endswith(f"/admin/login/?next={DASHBOARD}")
    expect(page.get_by_label("Password")).to_be_visible()


def test_staff_open_the_dashboard_and_see_its_charts_drawn_from_this_server_only(
    admin_page: Page, live_server: Any, game: Game
) -> None:
    game.pay("order-dash-1")
    requests: list[Request] = []
    admin_page.on("request", lambda request: requests.append(request))

    open_dashboard(admin_page)

    expect(admin_page.locator(REVENUE)).to_be_visible()
    for name in ("period", "app", "country", "carrier"):
        expect(admin_page.locator(f'form [name="{name}"]').first).to_be_attached()
    # The chart library is vendored: nothing is fetched from another host.
    elsewhere = [r.url for r in requests if not r.url.startswith((live_server.url, "data:", "blob:"))]
    assert not elsewhere


def test_a_chart_follows_new_payments_without_a_page_reload(admin_page: Page, game: Game) -> None:
    game.pay("order-live-1")
    open_dashboard(admin_page)
    admin_page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    as_of = admin_page.locator("#data-as-of").inner_text()
    before = admin_page.evaluate(CHART_PICTURE, REVENUE)

    for number in range(2, 5):
        game.pay(f"order-live-{number}", user_ref=f"player-{number}")

    expect(admin_page.locator("#data-as-of")).not_to_have_text(as_of, timeout=30_000)
    admin_page.wait_for_function(f"(before) => ({CHART_PICTURE})({REVENUE!r}) !== before", arg=before, timeout=30_000)
    assert admin_page.evaluate("window.__sameDocument === true")


def test_a_filter_narrows_the_dashboard_and_stays_applied(admin_page: Page, game: Game) -> None:
    CarrierFactory.create(
        slug="movistar-es", country=CountryFactory.create(code="ES", name="Spain", currency="EUR", dialing_code="34")
    )
    game.pay("order-filter-1")
    open_dashboard(admin_page)
    before = admin_page.evaluate(CHART_PICTURE, REVENUE)

    # No payment is in Spain: the revenue chart must show something else than the one UK payment.
    choose(admin_page, "country", "ES")
    form = admin_page.locator('form:has([name="country"])').first
    submit = form.locator("[type=submit]")
    if submit.count():
        submit.first.click()

    expect(admin_page.locator('form [name="country"]').first).to_have_value("ES")
    admin_page.wait_for_function(f"(before) => ({CHART_PICTURE})({REVENUE!r}) !== before", arg=before, timeout=30_000)
    # The export follows the filter: once, however many times the page refreshed; and not once it is cleared.
    csv_link = admin_page.locator("#export-payments-csv")
    expect(csv_link).to_have_attribute("href", re.compile(r"f\.country=ES"))
    expect(admin_page.locator("#data-as-of")).not_to_have_text(
        admin_page.locator("#data-as-of").inner_text(), timeout=30_000
    )
    assert (csv_link.get_attribute("href") or "").count("f.country=") == 1
    choose(admin_page, "country", "")
    expect(csv_link).not_to_have_attribute("href", re.compile(r"f\.country="))


def test_staff_export_a_dataset_from_the_dashboard_as_csv(admin_page: Page, game: Game) -> None:
    paid = game.pay("order-dash-export-1")
    open_dashboard(admin_page)

    export = admin_page.get_by_role("link", name="Export").or_(admin_page.get_by_role("button", name="Export"))
    with admin_page.expect_download() as download_info:
        export.first.click()
    download = download_info.value

    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.reader(io.StringIO(download.path().read_text(encoding="utf-8-sig"))))
    assert len(rows) >= 2, rows  # a header and at least the payment's row
    # The one payment (99 minor units of GBP) is in it, in minor or major units.
    cells = {cell.strip() for row in rows[1:] for cell in row}
    assert cells & {str(paid["amount_minor"]), "0.99", "£0.99"}, rows


def test_filters_that_match_nothing_say_so_instead_of_drawing_empty_axes(admin_page: Page, game: Game) -> None:
    CountryFactory.create(code="ES", name="Spain", currency="EUR", dialing_code="34")
    CarrierFactory.create(slug="movistar-es", country_id="ES")  # Spain is offered by the filter form
    game.pay("order-nothing-1")
    open_dashboard(admin_page)
    expect(admin_page.locator("#no-data")).to_be_hidden()
    expect(admin_page.locator("#net-revenue")).not_to_have_text("…")

    choose(admin_page, "carrier", game.shop.carrier.slug)
    choose(admin_page, "country", "ES")
    expect(admin_page.locator("#no-data")).to_have_text(
        f"No data: these filters cannot match anything. The carrier {game.shop.carrier.slug} is in GB, not in ES."
    )
    expect(admin_page.locator(".panel:has([data-chart=revenue]) .no-data")).to_have_text("No data for these filters.")


def test_a_new_subscriber_shows_on_the_subscriptions_panel(admin_page: Page, live_server: Any, game: Game) -> None:
    carrier = game.shop.carrier
    carrier.supports_subscriptions = True
    carrier.save(update_fields=["supports_subscriptions"])
    plan, _ = make_plan(game.shop)
    body = {"user_ref": "player-7", "msisdn": MSISDN, "plan": plan.code}
    created = game.request("POST", "/api/v1/subscriptions/", json=body, headers={"Idempotency-Key": "sub-7"})
    assert created.status_code == 201, created.text
    confirmed = game.request("POST", f"/api/v1/subscriptions/{created.json()['id']}/confirm/", json={"pin": TEST_PIN})
    assert confirmed.json()["status"] == "active", confirmed.text

    open_dashboard(admin_page)
    panel = admin_page.locator("#subscriptions")
    expect(panel.locator("#subscribers-now")).to_have_text("1")
    expect(panel.locator("#subscribers-by-status")).to_have_text("1 active, 0 past due, 0 suspended")
    expect(panel.locator("#new-subscribers")).to_have_text("1")
    expect(panel.locator("#churned-subscribers")).to_have_text("0")
    expect(panel.locator("#recurring-by-currency")).to_contain_text("0.99")
    expect(panel.locator("#arpu-detail")).to_have_text("average base: 1 subscriber")
    expect(panel.locator("#subscriptions-error")).to_be_hidden()
