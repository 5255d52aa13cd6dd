"""A settlement file settles the charges and refunds of unknown outcome it shows collected, and nothing else."""

from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User

from carriers.adapters.base import CarrierResult, Outcome
from carriers.models import Carrier
from payments.models import LedgerEntry, Payment, PaymentStatus, Refund
from payments.services.carrier_flow import record_charge_result
from reporting.models import SettlementFile
from reporting.services.reconciliation import Category, import_settlement_file, reconcile_settlement_file
from tests.factories import CarrierFactory
from tests.reporting.conftest import MakePayment

pytestmark = pytest.mark.django_db

MAY_3 = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
MAY = {"period_from": date(2026, 5, 1), "period_to": date(2026, 5, 31)}
HEADER = "carrier_reference,amount_minor,currency,date"


def csv_file(*lines: str) -> bytes:
    return "\n".join([HEADER, *lines, ""]).encode()


@pytest.fixture
def carrier(db: Any) -> Carrier:
    return CarrierFactory.create(slug="parlay-uk")


@pytest.fixture
def finance_user(db: Any) -> User:
    return User.objects.create_user("finance-clerk", is_staff=True)


def upload(carrier: Carrier, user: User, content: bytes) -> SettlementFile:
    return import_settlement_file(carrier=carrier, name="may.csv", content=content, uploaded_by=user, **MAY)


def unknown_charge(make_payment: MakePayment, carrier: Carrier, reference: str) -> Payment:
    """A charge sent to the carrier whose answer never came: `charging`, its outcome unknown."""
    payment = make_payment(carrier=carrier, reference=reference, created=MAY_3, status=PaymentStatus.CHARGING)
    Payment.objects.filter(pk=payment.pk).update(outcome_unknown_since=MAY_3)
    return payment


def charged(make_payment: MakePayment, carrier: Carrier, reference: str) -> Payment:
    """A payment the carrier confirmed, with its charge posted."""
    payment = make_payment(carrier=carrier, reference=reference, created=MAY_3, status=PaymentStatus.CHARGING)
    record_charge_result(payment_id=payment.pk, result=CarrierResult(outcome=Outcome.SUCCEEDED))
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    return payment


def unknown_refund(payment: Payment, amount_minor: int) -> Refund:
    """A refund sent to the carrier whose answer never came: pending, its amount reserved on the payment."""
    Payment.objects.filter(pk=payment.pk).update(refunded_minor=payment.refunded_minor + amount_minor)
    return Refund.objects.create(
        payment=payment,
        amount_minor=amount_minor,
        currency=payment.currency,
        reason="not delivered",
        requested_by="staff:ops",
        carrier_requested_at=MAY_3,
        outcome_unknown_since=MAY_3,
    )


def test_a_charge_of_unknown_outcome_the_file_lists_succeeds_once(
    carrier: Carrier, finance_user: User, make_payment: MakePayment
) -> None:
    payment = unknown_charge(make_payment, carrier, "ref-1")
    content = csv_file("ref-1,99,GBP,2026-05-03")

    settlement_file = upload(carrier, finance_user, content)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.outcome_unknown_since is None
    assert LedgerEntry.objects.filter(payment=payment, kind=LedgerEntry.Kind.CHARGE).count() == 1
    change = payment.history.get(to_status=PaymentStatus.SUCCEEDED)
    assert change.actor == f"carrier:parlay-uk settlement file {settlement_file.pk} (staff:finance-clerk)"
    settlement_file.refresh_from_db()
    assert settlement_file.status == SettlementFile.Status.BALANCED
    assert settlement_file.matched == 1

    again = upload(carrier, finance_user, content)  # the same file a second time changes nothing

    assert LedgerEntry.objects.filter(payment=payment).count() == 1
    assert payment.history.filter(to_status=PaymentStatus.SUCCEEDED).count() == 1
    assert again.status == SettlementFile.Status.BALANCED


def test_a_charge_of_unknown_outcome_absent_from_the_file_or_for_another_amount_stays_unknown(
    carrier: Carrier, finance_user: User, make_payment: MakePayment
) -> None:
    absent = unknown_charge(make_payment, carrier, "ref-absent")
    other_amount = unknown_charge(make_payment, carrier, "ref-90")
    other_carrier = unknown_charge(make_payment, CarrierFactory.create(), "ref-elsewhere")
    listed = unknown_charge(make_payment, carrier, "ref-listed")

    settlement_file = upload(
        carrier,
        finance_user,
        csv_file("ref-90,90,GBP,2026-05-03", "ref-elsewhere,99,GBP,2026-05-03", "ref-listed,99,GBP,2026-05-03"),
    )

    for payment in (absent, other_amount, other_carrier):
        payment.refresh_from_db()
        assert payment.status == PaymentStatus.CHARGING
        assert payment.outcome_unknown_since == MAY_3
        assert not LedgerEntry.objects.filter(payment=payment).exists()
    assert Payment.objects.get(pk=listed.pk).status == PaymentStatus.SUCCEEDED
    categories = {
        row.carrier_reference: row.category for row in reconcile_settlement_file(settlement_file=settlement_file).rows
    }
    assert categories == {
        "ref-listed": Category.MATCHED,
        "ref-90": Category.AMOUNT_MISMATCH,
        "ref-elsewhere": Category.MISSING_ON_OUR_SIDE,
    }


def test_a_pending_refund_of_unknown_outcome_the_file_lists_refunded_succeeds(
    carrier: Carrier, finance_user: User, make_payment: MakePayment
) -> None:
    payment = charged(make_payment, carrier, "ref-r")
    refund = unknown_refund(payment, 30)
    content = csv_file("ref-r,99,GBP,2026-05-03", "ref-r,-30,GBP,2026-05-10")

    settlement_file = upload(carrier, finance_user, content)

    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.outcome_unknown_since is None
    assert LedgerEntry.objects.filter(refund=refund).count() == 1
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == (PaymentStatus.PARTIALLY_REFUNDED, 30)
    assert payment.history.get(to_status=PaymentStatus.PARTIALLY_REFUNDED).actor.startswith(
        f"carrier:parlay-uk settlement file {settlement_file.pk} "
    )
    settlement_file.refresh_from_db()
    assert settlement_file.status == SettlementFile.Status.BALANCED

    upload(carrier, finance_user, content)

    assert LedgerEntry.objects.filter(payment=payment).count() == 2  # the charge and the refund, once each


def test_a_refund_of_unknown_outcome_the_file_does_not_show_stays_pending(
    carrier: Carrier, finance_user: User, make_payment: MakePayment
) -> None:
    payment = charged(make_payment, carrier, "ref-r")
    refund = unknown_refund(payment, 30)

    upload(carrier, finance_user, csv_file("ref-r,99,GBP,2026-05-03"))  # the charge only: the refund not yet

    refund.refresh_from_db()
    assert (refund.status, refund.outcome_unknown_since) == (Refund.Status.PENDING, MAY_3)
    assert not LedgerEntry.objects.filter(refund=refund).exists()
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == (PaymentStatus.SUCCEEDED, 30)  # still reserved
