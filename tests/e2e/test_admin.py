"""Staff work in the admin through a real browser: signing in, refunding a payment, downloading an export."""

import csv
import io
import re
from importlib import import_module
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from playwright.sync_api import Browser, Page, Response, expect

from journal.models import StaffAction
from payments.models import Payment, Refund, RefundApproval
from tests.e2e.conftest import STAFF_PASSWORD, Game
from tests.factories import PricePointFactory

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


def operations_member(username: str) -> Any:
    """A member of operations with the role's rights as the migrations give them (a browser test's database is
    emptied between tests, the roles the migrations made with it)."""
    rights = [
        *import_module("payments.migrations.0010_staff_roles").ROLES["operations"],
        *(
            f"payments.{name}"
            for name in import_module("payments.migrations.0024_refund_approvals").GRANTS["operations"]
        ),
    ]
    group, _ = Group.objects.get_or_create(name="operations")
    for right in rights:
        app_label, codename = right.split(".")
        group.permissions.add(*Permission.objects.filter(content_type__app_label=app_label, codename=codename))
    missing = {"payments.refund_payment", "payments.approve_refund"} - {
        f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")
    }
    assert not missing, missing
    user = get_user_model().objects.create_user(username, f"{username}@example.com", STAFF_PASSWORD, is_staff=True)
    user.groups.add(group)
    return user


def test_operations_refund_three_pounds_of_a_nine_ninety_nine_payment_from_its_page(
    page: Page, live_server: Any, game: Game, sign_in: Any
) -> None:
    game.shop.price_point = PricePointFactory.create(carrier=game.shop.carrier, code="gems-1200", amount_minor=999)
    paid = game.pay("order-refund-1")
    assert paid["status"] == "succeeded"
    payment = Payment.objects.get(public_id=paid["id"])
    sign_in(page, operations_member("ops-e2e"))

    # Find the payment as support would: the one payment found opens, its header says what it is.
    page.goto(f"{live_server.url}/admin/payments/payment/")
    page.locator("#searchbar").fill(paid["id"])
    page.locator("#searchbar").press("Enter")
    expect(page).to_have_url(re.compile(re.escape(f"/admin/payments/payment/{payment.pk}/change/")))
    expect(page.locator(".pp-amount")).to_have_text("£9.99")
    expect(page.locator(".pp-badge")).to_contain_text("Succeeded")

    # The Refund button leads to the form: major units, the maximum, a reason code and a note.
    page.get_by_role("link", name="Refund", exact=True).click()
    expect(page.get_by_text("at most £9.99")).to_be_visible()
    page.get_by_label("Amount").fill("3.00")
    page.get_by_label("Reason").select_option(label="customer request")
    page.get_by_label("Note").fill("Player charged twice for one item")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("tr", has_text=paid["id"])).to_contain_text("refund £3.00")
    page.get_by_role("button", name="Refund payment").click()

    # The admin capitalises a message's first letter, which may be the id's.
    expect(page.get_by_text(f"{paid['id']}: refund of £3.00: succeeded", exact=False)).to_be_visible()
    expect(page.locator(".pp-badge")).to_contain_text("Partially Refunded")
    timeline = page.locator("table.pp-timeline")
    expect(timeline.locator('tr[data-kind="staff"]')).to_contain_text("refund of £3.00")
    expect(timeline).to_contain_text("customer request: Player charged twice for one item")

    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == ("partially_refunded", 300)
    refund = Refund.objects.get(payment=payment)
    assert (refund.amount_minor, refund.requested_by) == (300, "staff:ops-e2e")
    assert StaffAction.objects.get(object_id=paid["id"]).outcome.startswith("refund of £3.00")


def test_a_large_refund_waits_for_a_second_person_who_approves_it(
    page: Page, browser: Browser, live_server: Any, game: Game, sign_in: Any, settings: Any
) -> None:
    settings.REFUND_APPROVAL_ABOVE = {"GBP": "5"}
    game.shop.price_point = PricePointFactory.create(carrier=game.shop.carrier, code="gems-1200", amount_minor=999)
    paid = game.pay("order-refund-2")
    payment = Payment.objects.get(public_id=paid["id"])
    sign_in(page, operations_member("ops-asks"))
    page.goto(f"{live_server.url}/admin/payments/payment/{payment.pk}/refund/")
    page.get_by_label("Amount").fill("6")
    page.get_by_label("Reason").select_option(label="duplicate charge")
    page.get_by_label("Note").fill("Ticket 5521")
    page.get_by_role("button", name="Refund payment").click()
    expect(page.get_by_text(f"{paid['id']}: refund of £6.00 awaits a second person's approval")).to_be_visible()
    assert not Refund.objects.exists()

    # The requester sees it waiting, and cannot approve it.
    page.goto(f"{live_server.url}/admin/payments/refundapproval/")
    page.locator("tr", has_text="£6.00").get_by_role("link").first.click()
    expect(page.get_by_text("another person approves or rejects it")).to_be_visible()
    expect(page.get_by_role("button", name="Approve and refund")).to_have_count(0)

    # A second member of operations approves it; the refund runs.
    other = browser.new_context(base_url=live_server.url)
    approver = sign_in(other.new_page(), operations_member("ops-approves"))
    approver.goto(f"{live_server.url}/admin/payments/refundapproval/")
    approver.locator("tr", has_text="£6.00").get_by_role("link").first.click()
    approver.get_by_label("Reason").fill("Checked the duplicate in the carrier's file")
    approver.get_by_role("button", name="Approve and refund").click()
    expect(approver.get_by_text(f"{paid['id']}: refund of £6.00: succeeded")).to_be_visible()
    other.close()

    refund = Refund.objects.get(payment=payment)
    assert (refund.amount_minor, refund.requested_by) == (600, "staff:ops-approves")
    approval = RefundApproval.objects.get()
    assert approval.status == "approved"
    assert approval.requested_by.get_username() == "ops-asks"


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
