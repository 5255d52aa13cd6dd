"""Refunds and reversals from the admin: preview, reason, permission, audit."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from journal.models import StaffAction
from payments.errors import ReversalNotAllowed
from payments.models import Payment, PaymentStatus, Refund, RefundApproval, Reversal
from payments.services.refunds import request_reversal
from payments.services.staff import preview_operation
from tests.conftest import Shop, StaffClient

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/payments/payment/"


@pytest.fixture
def paid(shop: Shop) -> Payment:
    shop.carrier.country.vat_rate = Decimal("20")
    shop.carrier.country.save()
    return Payment.objects.get(public_id=shop.pay(flow="one_click")["id"])


def post_action(client: Client, action: str, payments: list[Payment], **form: Any) -> Any:
    data = {"action": action, "_selected_action": [p.pk for p in payments], **form}
    return client.post(CHANGELIST, data)


def test_operations_sees_exactly_what_a_refund_will_do_before_confirming(
    paid: Payment, staff_client: StaffClient
) -> None:
    operations = staff_client("operations")
    page = post_action(operations, "refund", [paid])
    assert page.status_code == 200
    text = page.content.decode()
    assert "This is exactly what will happen" in text
    assert "refund £0.99" in text
    assert Refund.objects.count() == 0  # nothing yet


def test_operations_can_refund_with_a_reason_and_it_is_recorded(
    paid: Payment, shop: Shop, staff_client: StaffClient
) -> None:
    operations = staff_client("operations")
    no_note = post_action(operations, "refund", [paid], confirm="yes", reason_code="customer_request", note="")
    assert no_note.status_code == 200  # a note is required
    assert Refund.objects.count() == 0
    with shop.after_commit(execute=True):
        response = post_action(
            operations, "refund", [paid], confirm="yes", reason_code="customer_request", note="player complaint #123"
        )
    assert response.status_code == 302
    paid.refresh_from_db()
    assert paid.status == PaymentStatus.REFUNDED
    refund = Refund.objects.get()
    reason = "customer request: player complaint #123"
    assert (refund.requested_by, refund.reason) == ("staff:operations", reason)
    action = StaffAction.objects.get()
    assert (action.action, action.object_id, action.reason) == ("refund", str(paid.public_id), reason)
    assert action.outcome.startswith("refund of £0.99")


def test_finance_cannot_refund_or_reverse(paid: Payment, staff_client: StaffClient) -> None:
    finance = staff_client("finance")
    changelist = finance.get(CHANGELIST).content.decode()
    assert 'value="refund"' not in changelist
    assert 'value="reverse"' not in changelist
    response = post_action(finance, "refund", [paid], confirm="yes", reason_code="other", note="try")
    assert Refund.objects.count() == 0
    assert response.status_code in (200, 302)
    paid.refresh_from_db()
    assert paid.status == PaymentStatus.SUCCEEDED


def test_support_is_read_only(paid: Payment, staff_client: StaffClient) -> None:
    support = staff_client("support")
    assert support.get(f"{CHANGELIST}{paid.pk}/change/").status_code == 200
    assert 'value="refund"' not in support.get(CHANGELIST).content.decode()
    assert support.get("/admin/carriers/carrier/add/").status_code == 403


def test_bulk_refund_previews_each_payment_and_refuses_what_cannot_be_refunded(
    paid: Payment, shop: Shop, staff_client: StaffClient
) -> None:
    pending = Payment.objects.get(public_id=shop.pay(key="other")["id"])  # waiting for its PIN
    operations = staff_client("operations")
    text = post_action(operations, "refund", [paid, pending]).content.decode()
    assert "not possible" in text
    assert "after a second person approves it" in text
    with shop.after_commit(execute=True):
        post_action(operations, "refund", [paid, pending], confirm="yes", reason_code="goodwill", note="outage")
    # A bulk refund waits for a second person; what cannot be refunded is refused at once.
    assert not Refund.objects.exists()
    assert RefundApproval.objects.get().payment_id == paid.pk
    assert StaffAction.objects.filter(outcome__startswith="refused").count() == 1


def test_the_payment_page_tells_the_whole_story(paid: Payment, shop: Shop, staff_client: StaffClient) -> None:
    operations = staff_client("operations")
    with shop.after_commit(execute=True):
        post_action(operations, "refund", [paid], confirm="yes", reason_code="goodwill", note="late", amount="0.30")
    page = operations.get(f"{CHANGELIST}{paid.pk}/change/").content.decode()
    for expected in ("succeeded", "partially_refunded", "platform_revenue", "goodwill", "refund #", "charge #"):
        assert expected in page, expected


def test_reversal_from_the_admin(paid: Payment, shop: Shop, staff_client: StaffClient) -> None:
    operations = staff_client("operations")
    with shop.after_commit(execute=True):
        post_action(operations, "reverse", [paid], confirm="yes", reason="item not delivered")
    paid.refresh_from_db()
    assert paid.status == PaymentStatus.REVERSED
    assert StaffAction.objects.get().action == "reverse"


@pytest.mark.django_db
def test_the_preview_refuses_what_the_service_would_refuse(paid: Payment, settings: Any) -> None:
    # Late for a reversal: the preview says so, as the reversal itself would.
    paid.history.filter(to_status="succeeded").update(
        created_at=timezone.now() - timedelta(hours=settings.REVERSAL_WINDOW_HOURS + 1)
    )
    late = preview_operation(Payment.objects.get(pk=paid.pk), "reverse")
    assert not late.allowed
    assert late.plan == f"Reversals are possible for {settings.REVERSAL_WINDOW_HOURS} hours after the charge."
    with pytest.raises(ReversalNotAllowed, match=late.plan):
        request_reversal(payment=paid, reason="late", actor="staff:test")
    # A payment being reversed cannot be refunded, in the preview as in the service.
    Reversal.objects.create(payment=paid, reason="pending", requested_by="staff:test")
    refund = preview_operation(Payment.objects.get(pk=paid.pk), "refund")
    assert not refund.allowed
    assert refund.plan == "This payment is being reversed."


def test_staff_find_payments_and_refunds_whose_carrier_outcome_is_unknown(
    paid: Payment, shop: Shop, staff_client: StaffClient
) -> None:
    unknown = Payment.objects.get(public_id=shop.pay("key-2", flow="one_click")["id"])
    since = timezone.now() - timedelta(hours=2)
    Payment.objects.filter(pk=unknown.pk).update(
        status=PaymentStatus.CHARGING, outcome_unknown_since=since, resolve_attempts=4, outcome_alerted_at=since
    )
    refund = Refund.objects.create(
        payment=paid, amount_minor=10, currency=paid.currency, reason="x", requested_by="staff:ops"
    )
    Refund.objects.filter(pk=refund.pk).update(outcome_unknown_since=since, resolve_attempts=3)
    support = staff_client("support")
    listed = support.get(CHANGELIST, {"outcome": "unknown"}).content.decode()
    assert str(unknown.public_id) in listed
    assert str(paid.public_id) not in listed
    assert str(unknown.public_id) in support.get(CHANGELIST, {"outcome": "alerted"}).content.decode()
    refunds_page = support.get("/admin/payments/refund/", {"outcome": "unknown"})
    assert refunds_page.status_code == 200
    assert str(refund.public_id) in refunds_page.content.decode()
    page = support.get(f"{CHANGELIST}{paid.pk}/change/").content.decode()
    assert "Outcome unknown since" in page
    assert "Next check" in page
    assert "Checks made" in page
