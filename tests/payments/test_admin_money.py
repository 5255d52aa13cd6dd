"""Money as staff read and type it in the admin, the payment page, the refund form and four-eyes refunds."""

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from carriers.models import PricePoint
from journal.models import StaffAction
from payments.models import Payment, PaymentStatus, Refund, RefundApproval
from tests.conftest import Shop, StaffClient
from tests.factories import PricePointFactory

pytestmark = pytest.mark.django_db
PAYMENTS = "/admin/payments/payment/"
APPROVALS = "/admin/payments/refundapproval/"


def pay(shop: Shop, *, amount_minor: int, currency: str = "GBP", key: str = "key-1") -> Payment:
    price = PricePointFactory.create(
        carrier=shop.carrier,
        code=f"gems-{currency}-{amount_minor}",
        amount_minor=amount_minor,
        currency=currency,
        carrier_payout_minor=0,
    )
    return Payment.objects.get(public_id=shop.pay(key, flow="one_click", price_point=price.code)["id"])


def second_operator() -> Client:
    """Another member of operations: the second pair of eyes."""
    user = User.objects.create_user("operations-2", "ops2@example.com", "x-Pass-2024!", is_staff=True)
    user.groups.add(Group.objects.get(name="operations"))
    client = Client()
    client.force_login(user)
    return client


def refund_page(client: Client, payment: Payment, **form: Any) -> Any:
    return client.post(f"{PAYMENTS}{payment.pk}/refund/", form)


@pytest.mark.parametrize(
    ("amount_minor", "currency", "shown"),
    [(999, "GBP", "£9.99"), (100, "JPY", "¥100"), (1500, "KWD", "1.500 KWD")],
)
def test_amounts_are_shown_in_major_units_with_the_currency(
    shop: Shop, staff_client: StaffClient, amount_minor: int, currency: str, shown: str
) -> None:
    payment = pay(shop, amount_minor=amount_minor, currency=currency)
    operations = staff_client("operations")
    page = operations.get(f"{PAYMENTS}{payment.pk}/change/").content.decode()
    assert f'<div class="pp-amount">{shown}</div>' in page
    form = operations.get(f"{PAYMENTS}{payment.pk}/refund/").content.decode()
    assert f"at most {shown}" in form
    prices = operations.get("/admin/carriers/pricepoint/").content.decode()
    assert shown in prices
    assert str(payment.price_point) == f"gems-{currency}-{amount_minor} ({shown})"


def test_a_typed_amount_is_converted_exactly_and_the_message_and_staff_log_show_it(
    shop: Shop, staff_client: StaffClient
) -> None:
    payment = pay(shop, amount_minor=999)
    operations = staff_client("operations")
    with shop.after_commit(execute=True):
        response = refund_page(
            operations, payment, amount="3.00", reason_code="customer_request", note="#41", confirm="y"
        )
    assert response.status_code == 302
    assert Refund.objects.get().amount_minor == 300
    message = [str(m) for m in response.wsgi_request._messages]
    assert any("refund of £3.00" in text for text in message), message
    assert StaffAction.objects.get(action="refund").outcome.startswith("refund of £3.00")
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == (PaymentStatus.PARTIALLY_REFUNDED, 300)


@pytest.mark.parametrize(("typed", "currency"), [("3.001", "GBP"), ("0.5", "JPY"), ("1.0001", "KWD")])
def test_more_decimals_than_the_currency_has_are_refused_in_a_sentence(
    shop: Shop, staff_client: StaffClient, typed: str, currency: str
) -> None:
    payment = pay(shop, amount_minor=5000, currency=currency)
    page = refund_page(staff_client("operations"), payment, amount=typed, reason_code="goodwill", note="x", confirm="y")
    assert page.status_code == 200
    assert f"{currency} amounts have" in page.content.decode()
    assert not Refund.objects.exists()


def test_the_refund_preview_shows_the_amount_entered_not_the_whole_payment(
    shop: Shop, staff_client: StaffClient
) -> None:
    payment = pay(shop, amount_minor=999)
    page = refund_page(staff_client("operations"), payment, amount="3", reason_code="goodwill", note="x", preview="y")
    text = page.content.decode()
    assert "refund £3.00 " in text
    assert "refund £9.99" not in text
    assert not Refund.objects.exists()


def test_more_than_is_left_is_refused_with_the_formatted_maximum(shop: Shop, staff_client: StaffClient) -> None:
    payment = pay(shop, amount_minor=999)
    page = refund_page(staff_client("operations"), payment, amount="10", reason_code="goodwill", note="x", confirm="y")
    assert "At most £9.99 is left to refund." in page.content.decode()
    assert not Refund.objects.exists()


def test_the_payment_page_shows_the_actions_each_role_may_take_and_a_timeline_in_seconds(
    shop: Shop, staff_client: StaffClient
) -> None:
    shop.app.webhook_url = "https://game.example/hooks"
    shop.app.save()
    payment = pay(shop, amount_minor=999)
    operations = staff_client("operations").get(f"{PAYMENTS}{payment.pk}/change/").content.decode()
    for button in ("Refund", "Reverse", "Resend webhook"):
        assert f">{button}<" in operations, button
    assert f"{payment.created_at:%Y-%m-%d %H:%M:%S} UTC" in operations
    assert "created → charging" in operations
    assert "charging → succeeded" in operations
    assert "+447400123456" in operations  # operations read the whole number
    support = staff_client("support").get(f"{PAYMENTS}{payment.pk}/change/").content.decode()
    assert ">Refund<" not in support
    assert ">Reverse<" not in support
    assert "+447400123456" not in support
    assert staff_client("support").get(f"{PAYMENTS}{payment.pk}/refund/").status_code == 403


def test_a_large_refund_waits_for_a_second_person_who_is_not_the_requester(
    shop: Shop, staff_client: StaffClient, settings: Any
) -> None:
    settings.REFUND_APPROVAL_ABOVE = {"GBP": "5"}
    payment = pay(shop, amount_minor=999)
    requester = staff_client("operations")
    preview = refund_page(requester, payment, amount="6", reason_code="duplicate", note="x", preview="y")
    assert "after a second person approves it" in preview.content.decode()
    refund_page(requester, payment, amount="6", reason_code="duplicate", note="charged twice", confirm="y")
    approval = RefundApproval.objects.get()
    assert (approval.status, approval.amount_minor) == (RefundApproval.Status.PENDING, 600)
    assert not Refund.objects.exists()
    assert "£6.00" in requester.get(APPROVALS).content.decode()

    # The requester cannot approve their own refund.
    requester.post(f"{APPROVALS}{approval.pk}/decide/", {"decision": "approve", "reason": "fine"})
    approval.refresh_from_db()
    assert approval.status == RefundApproval.Status.PENDING
    assert not Refund.objects.exists()

    approver = second_operator()
    with shop.after_commit(execute=True):
        approver.post(f"{APPROVALS}{approval.pk}/decide/", {"decision": "approve", "reason": "checked the ticket"})
        approver.post(f"{APPROVALS}{approval.pk}/decide/", {"decision": "approve", "reason": "twice"})
    approval.refresh_from_db()
    assert approval.status == RefundApproval.Status.APPROVED
    assert approval.decided_by is not None
    assert approval.decided_by.username == "operations-2"
    refund = Refund.objects.get()  # once
    assert refund.amount_minor == 600
    assert refund.requested_by == "staff:operations-2"
    assert "asked by operations" in refund.reason
    assert StaffAction.objects.filter(action="refund_requested", object_id=str(payment.public_id)).exists()


def test_a_rejected_refund_changes_nothing(shop: Shop, staff_client: StaffClient, settings: Any) -> None:
    settings.REFUND_APPROVAL_ABOVE = {"GBP": "5"}
    payment = pay(shop, amount_minor=999)
    refund_page(staff_client("operations"), payment, reason_code="fraud", note="chargeback feared", confirm="y")
    approval = RefundApproval.objects.get()
    second_operator().post(f"{APPROVALS}{approval.pk}/decide/", {"decision": "reject", "reason": "not fraud"})
    approval.refresh_from_db()
    assert (approval.status, approval.decision_reason) == (RefundApproval.Status.REJECTED, "not fraud")
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == (PaymentStatus.SUCCEEDED, 0)
    assert not Refund.objects.exists()
    assert StaffAction.objects.get(action="refund_rejected").reason == "not fraud"


def test_only_those_with_the_permission_approve(shop: Shop, staff_client: StaffClient, settings: Any) -> None:
    settings.REFUND_APPROVAL_ABOVE = {"GBP": "5"}
    payment = pay(shop, amount_minor=999)
    refund_page(staff_client("operations"), payment, reason_code="goodwill", note="x", confirm="y")
    approval = RefundApproval.objects.get()
    response = staff_client("finance").post(f"{APPROVALS}{approval.pk}/decide/", {"decision": "approve", "reason": "x"})
    assert response.status_code == 403
    approval.refresh_from_db()
    assert approval.status == RefundApproval.Status.PENDING


def test_query_carrier_status_from_the_payment_page(shop: Shop, staff_client: StaffClient) -> None:
    payment = pay(shop, amount_minor=999)
    response = staff_client("operations").post(f"{PAYMENTS}{payment.pk}/query-status/")
    assert response.status_code == 302
    action = StaffAction.objects.get(action="query_status")
    assert action.outcome.startswith("the carrier says"), action.outcome


def price_point_form(shop: Shop, **changes: str) -> dict[str, str]:
    base = {"carrier": str(shop.carrier.pk), "code": "gems-1200", "currency": "GBP", "is_active": "on"}
    return {**base, "change_reason": "new bundle", **changes}


def test_a_price_point_is_typed_in_major_units_and_stored_exactly(shop: Shop, staff_client: StaffClient) -> None:
    operations = staff_client("operations")
    response = operations.post(
        "/admin/carriers/pricepoint/add/", price_point_form(shop, price="9.99", carrier_payout="6.90")
    )
    assert response.status_code == 302
    price = PricePoint.objects.get(code="gems-1200")
    assert (price.amount_minor, price.carrier_payout_minor) == (999, 690)
    page = operations.get(f"/admin/carriers/pricepoint/{price.pk}/change/").content.decode()
    assert 'value="9.99"' in page


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"price": "9.999"}, "GBP amounts have 2 decimals; 9.999 has more."),
        ({"price": "100", "currency": "JPY", "carrier_payout": "0.5"}, "JPY amounts have no decimals"),
        ({"price": "0.99", "carrier_payout": "1"}, "a carrier never pays out more than it charges"),
    ],
)
def test_a_price_point_amount_the_currency_cannot_hold_is_refused_on_its_field(
    shop: Shop, staff_client: StaffClient, changes: dict[str, str], error: str
) -> None:
    response = staff_client("operations").post("/admin/carriers/pricepoint/add/", price_point_form(shop, **changes))
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not PricePoint.objects.filter(code="gems-1200").exists()
