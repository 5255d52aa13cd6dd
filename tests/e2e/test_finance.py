"""Finance in a real browser: the per-carrier settlement report, on the page and downloaded, equals the ledger."""

import io
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from openpyxl import load_workbook  # type: ignore[import-untyped]
from playwright.sync_api import Page, expect

from payments.figures import account_kind
from payments.models import LedgerLine, Refund
from playpay.money import format_money
from tests.e2e.conftest import STAFF_PASSWORD, Game

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def finance_page(page: Page, sign_in: Callable[[Page, Any], Page]) -> Page:
    """A browser page with a member of the finance role signed in (the rights reporting gives it)."""
    finance, _ = Group.objects.get_or_create(name="finance")
    finance.permissions.add(
        Permission.objects.get(content_type__app_label="payments", codename="view_ledgerline"),
        Permission.objects.get(content_type__app_label="reporting", codename="view_settlementfile"),
    )
    user = get_user_model().objects.create_user("finance-e2e", "finance-e2e@example.com", STAFF_PASSWORD, is_staff=True)
    user.groups.add(finance)
    return sign_in(page, user)


def carrier_lines() -> dict[str, int]:
    """The ledger's carrier accounts of the carrier's payments, summed line by line."""
    sums: dict[str, int] = defaultdict(int)
    for line in LedgerLine.objects.all():
        sums[account_kind(line.account)] += line.amount_minor
    return sums


def test_finance_downloads_the_settlement_report_and_its_figures_equal_the_ledger(
    finance_page: Page, live_server: Any, game: Game
) -> None:
    paid = game.pay("order-settle-1")
    game.pay("order-settle-2", user_ref="player-2")
    refund = game.request(
        "POST",
        f"/api/v1/payments/{paid['id']}/refunds/",
        json={"amount_minor": 40, "reason": "charged twice"},
        headers={"Idempotency-Key": "refund-settle-1"},
    )
    assert refund.status_code in (200, 201, 202), refund.text
    today = datetime.now(UTC).date().isoformat()
    ledger = carrier_lines()
    currency = game.shop.price_point.currency

    finance_page.goto(f"{live_server.url}/admin/reporting/settlementfile/")
    # From the settlement files (the list's action, or the sidebar: both lead to the report).
    finance_page.get_by_role("link", name="Settlement report per carrier").first.click()
    finance_page.get_by_label("Date from").fill(today)
    finance_page.get_by_label("Date to").fill(today)
    finance_page.get_by_role("button", name="Show").click()

    row = finance_page.locator("#settlement-report tbody tr").filter(has_text=game.shop.carrier.slug)
    gross = ledger["carrier_receivable"] + ledger["carrier_share"]
    expect(row.locator("td.gross")).to_have_text(format_money(gross, currency))
    expect(row.locator("td.net_due")).to_have_text(format_money(ledger["carrier_receivable"], currency))
    expect(row.locator("td.carrier_share")).to_have_text(format_money(ledger["carrier_share"], currency))
    expect(row.locator("td.tax")).to_have_text(format_money(-ledger.get("tax_payable", 0), currency))

    finance_page.get_by_label("Format").select_option("xlsx")
    with finance_page.expect_download() as download_info:
        finance_page.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == f"playpay_settlement_{today}-{today}.xlsx"
    sheet = load_workbook(io.BytesIO(download.path().read_bytes())).worksheets[0]
    rows = [[cell.value for cell in cells] for cells in sheet.iter_rows()]
    report = dict(zip(rows[0], rows[1], strict=True))
    assert len(rows) == 2
    assert (report["carrier"], report["currency"], report["payments"]) == (game.shop.carrier.slug, currency, 2)
    assert report["gross_minor"] == gross
    assert report["net_due_minor"] == ledger["carrier_receivable"]
    assert report["carrier_share_minor"] == ledger["carrier_share"]
    # A refund the carrier paid back lowers what it collected; one the platform paid does not.
    paid_back = 40 if Refund.objects.get().via_carrier else 0
    assert report["gross_minor"] == game.shop.price_point.amount_minor * 2 - paid_back
