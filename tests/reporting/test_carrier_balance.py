"""The ledger and the reconciliation agree on what a carrier settles, whoever paid the player back."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.utils import timezone

from carriers.adapters.base import CarrierResult, Outcome
from carriers.models import Carrier
from payments.models import LedgerLine, Payment, PaymentStatus, Refund, Reversal
from payments.services import ledger
from payments.services.refunds import record_refund_result, request_refund
from payments.services.state_machine import transition
from reporting.services.reconciliation import Category, import_settlement_file, reconcile_settlement_file
from tests.conftest import Shop


def carrier_lines(carrier: Carrier, kind: str) -> int:
    lines = LedgerLine.objects.filter(account=f"{kind}:{carrier.slug}")
    return int(lines.aggregate(total=Sum("amount_minor"))["total"] or 0)


@pytest.mark.django_db
def test_the_carriers_ledger_balance_is_what_its_settlement_file_reconciles_to(shop: Shop) -> None:
    shop.carrier.country.vat_rate = Decimal("20")
    shop.carrier.country.save()
    carrier = shop.carrier
    payments = {name: Payment.objects.get(public_id=shop.pay(key=name, flow="one_click")["id"]) for name in "abcdefg"}

    def refund(name: str, amount: int, *, through_carrier: bool) -> None:
        Carrier.objects.filter(pk=carrier.pk).update(supports_refund=through_carrier)
        made = request_refund(payment=payments[name], amount_minor=amount, reason="goodwill", actor="test")
        assert made.via_carrier is through_carrier
        if through_carrier:  # the carrier's answer
            record_refund_result(refund_id=made.pk, result=CarrierResult(outcome=Outcome.SUCCEEDED))
        assert Refund.objects.get(pk=made.pk).status == Refund.Status.SUCCEEDED

    refund("b", 49, through_carrier=True)
    refund("c", 30, through_carrier=True)
    refund("c", 69, through_carrier=True)
    refund("d", 49, through_carrier=False)
    refund("e", 99, through_carrier=False)
    response = shop.client.post(f"/api/v1/payments/{payments['f'].public_id}/reversal/", {"reason": "x"}, format="json")
    assert response.json()["status"] == "succeeded"
    assert Reversal.objects.get(payment=payments["f"]).via_carrier is False
    # A carrier that reverses (no test carrier does): its answer settles the reversal so.
    by_carrier = Reversal.objects.create(
        payment=payments["g"], reason="x", requested_by="test", via_carrier=True, status="succeeded"
    )
    ledger.post_reversal(by_carrier)
    transition(payments["g"], PaymentStatus.REVERSED, actor=f"carrier:{carrier.slug}", reason="reversal: x")

    today = timezone.now().date().isoformat()
    charges = [f"{payment.carrier_reference},99,GBP,{today}" for payment in payments.values()]
    paid_back = {"b": [-49], "c": [-30, -69], "g": [-99]}  # what the carrier paid back; not d, e, f: we did
    refunds = [
        f"{payments[name].carrier_reference},{amount},GBP,{today}"
        for name, amounts in paid_back.items()
        for amount in amounts
    ]
    content = "\n".join(["carrier_reference,amount_minor,currency,date", *charges, *refunds]).encode()
    user = User.objects.create_user("finance-clerk", is_staff=True)
    settlement_file = import_settlement_file(carrier=carrier, name="theirs.csv", content=content, uploaded_by=user)

    report = reconcile_settlement_file(settlement_file=settlement_file)
    assert {row.category for row in report.rows} == {Category.MATCHED}
    expected = {row.carrier_reference: row.our_amount_minor for row in report.rows}
    assert expected == {
        payments[name].carrier_reference: amount
        for name, amount in {"a": 99, "b": 50, "c": 0, "d": 99, "e": 99, "f": 99, "g": 0}.items()
    }
    settles = sum(amount or 0 for amount in expected.values())  # 446
    # The carrier collects `settles` for us, keeps its share of it and owes us the rest.
    receivable, share = carrier_lines(carrier, "carrier_receivable"), carrier_lines(carrier, "carrier_share")
    assert receivable + share == settles == 446
    # Its share: 25 of each 99 it settles in full (a, d, e, f), 13 of b's 50, none of c's and g's 0.
    assert (receivable, share) == (446 - 4 * 25 - 13, 4 * 25 + 13)
