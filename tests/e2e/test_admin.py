"""Staff work in the admin through a real browser: signing in, refunding a payment, downloading an export."""

import csv
import io
import re
from typing import Any

import pytest
from playwright.sync_api import Page, Response, expect

from journal.models import StaffAction
from payments.models import Payment, Refund
from tests.e2e.conftest import Game

# The live server answers from another thread: it sees only what the test commits.
pytestmark = pytest.mark.django_db(transaction=True)


def test_staff_sign_in_through_the_login_form_and_see_the_styled_admin(
    page: Page, live_server: Any, staff_user: Any, sign_in: Any
) -> None:
    static: list[Response] = []
    page.on("response", lambda response: static.append(response) if "/static/" in response.url else None)

    sign_in(page, staff_user)

    expect(page).to_have_url(f"{live_server.url}/admin/")
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    expect(page.locator("tr.model-payment").get_by_role("link", name="Payments")).to_be_visible()
    expect(page.locator('#nav-sidebar a[href="/admin/payments/payment/"]').first).to_contain_text("Payments")
    stylesheets = [r for r in static if r.url.endswith("/static/unfold/css/styles.css")]
    assert stylesheets, "the admin page loaded no stylesheet from the live server"
    assert all(r.status == 200 for r in static), [(r.url, r.status) for r in static if r.status != 200]


def test_a_wrong_password_is_refused_and_does_not_sign_in(page: Page, live_server: Any, staff_user: Any) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(staff_user.get_username())
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()

    expect(page.get_by_text("Please enter the correct username and password")).to_be_visible()
    page.goto(f"{live_server.url}/admin/payments/payment/")
    expect(page).to_have_url(f"{live_server.url}/admin/login/?next=/admin/payments/payment/")


def test_staff_refund_part_of_a_payment_from_the_admin_screens(admin_page: Page, live_server: Any, game: Game) -> None:
    paid = game.pay("order-refund-1")
    assert paid["status"] == "succeeded"
    payment = Payment.objects.get(public_id=paid["id"])
    amount = payment.amount_minor
    change_url = f"{live_server.url}/admin/payments/payment/{payment.pk}/change/"
    opened = re.compile(re.escape(change_url))  # with the list's filters after it

    # Find the payment as support would, and open it.
    admin_page.goto(f"{live_server.url}/admin/payments/payment/")
    admin_page.locator("#searchbar").fill(paid["id"])
    admin_page.locator("#searchbar").press("Enter")
    expect(admin_page).to_have_url(opened)  # the one payment found opens
    expect(admin_page.locator("div.field-status")).to_contain_text("Succeeded")

    # Back on the list, the refund action leads to a confirmation page that says what will happen.
    admin_page.go_back()
    admin_page.locator("tr", has_text=paid["id"]).locator("input.action-select").check()
    admin_page.locator("select[name=action]").select_option(label="Refund selected payments…")
    admin_page.get_by_role("button", name="Run").click()
    expect(admin_page.get_by_role("heading", name="Refund payments").first).to_be_visible()
    expect(admin_page.locator("tr", has_text=paid["id"])).to_contain_text("refund")
    admin_page.get_by_label("Amount minor").fill("40")
    admin_page.get_by_label("Reason").fill("Player charged twice for one item")
    admin_page.get_by_role("button", name="Refund payments").click()

    # The admin capitalises a message's first letter, which may be the id's.
    expect(admin_page.get_by_text(f"{paid['id']}: refund of 40 GBP: succeeded", exact=False)).to_be_visible()

    # The payment's page tells the story: new status, the refund, the staff action.
    admin_page.goto(change_url)
    expect(admin_page.locator("div.field-status")).to_contain_text("Partially Refunded")
    refunds = admin_page.locator("#refunds-group")
    expect(refunds).to_contain_text("Player charged twice for one item")
    expect(refunds).to_contain_text("40")
    expect(admin_page.locator(".field-staff_actions")).to_contain_text("ops-e2e")

    payment.refresh_from_db()
    assert payment.status == "partially_refunded"
    assert payment.refunded_minor == 40
    refund = Refund.objects.get(payment=payment)
    assert (refund.amount_minor, refund.status, refund.reason) == (40, "succeeded", "Player charged twice for one item")
    assert refund.requested_by == "staff:ops-e2e"
    assert StaffAction.objects.get(object_id=paid["id"]).action == "refund"
    assert amount > 40  # a partial refund: the rest stays refundable


def test_finance_download_a_transactions_export_from_the_browser(
    admin_page: Page, live_server: Any, game: Game
) -> None:
    first = game.pay("order-export-1")
    second = game.pay("order-export-2", user_ref="player-2")

    admin_page.goto(f"{live_server.url}/admin/reporting/exportjob/")
    admin_page.locator("a.addlink").click()
    expect(admin_page.get_by_role("heading", name="Export for finance").first).to_be_visible()
    admin_page.get_by_label("What").select_option("transactions")
    admin_page.get_by_label("Format").select_option("csv")
    with admin_page.expect_download() as download_info:
        admin_page.get_by_role("button", name="Download now").click()
    download = download_info.value

    assert download.suggested_filename.endswith(".csv")
    path = download.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    exported = {tuple(sorted(row.values())) for row in rows}
    assert len(rows) == 2
    for paid in (first, second):
        assert any(paid["id"] in values for values in exported), f"{paid['id']} is not in the export"
