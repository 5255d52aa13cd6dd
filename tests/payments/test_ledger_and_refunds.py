"""Money: the ledger, refunds and reversals, with their invariants held on PostgreSQL."""

import contextlib
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, InternalError, connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from carriers.adapters.base import CarrierResult, Outcome
from carriers.models import Carrier
from payments.errors import RefundExceedsCaptured
from payments.models import ImmutableLedger, LedgerEntry, LedgerLine, Payment, PaymentStatus, Refund, Reversal
from payments.services import ledger
from payments.services.refunds import record_refund_result, request_refund
from playpay.errors import DomainError
from tests.concurrency import at_once
from tests.conftest import Shop, assert_problem


def lines_of(payment_id: str, kind: str | None = None) -> dict[str, int]:
    lines = LedgerLine.objects.filter(entry__payment__public_id=payment_id)
    if kind:
        lines = lines.filter(entry__kind=kind)
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.account] = totals.get(line.account, 0) + line.amount_minor
    return totals


def refund(shop: Shop, payment_id: str, key: str, **body: Any) -> Any:
    with shop.after_commit(execute=True):
        return shop.client.post(
            f"/api/v1/payments/{payment_id}/refunds/",
            {"reason": "goodwill", **body},
            format="json",
            HTTP_IDEMPOTENCY_KEY=key,
        )


@pytest.fixture
def paid(shop: Shop) -> str:
    shop.carrier.country.vat_rate = Decimal("20")
    shop.carrier.country.save()
    return str(shop.pay(flow="one_click")["id"])


@pytest.mark.django_db
def test_a_charge_posts_balanced_lines_split_between_tax_carrier_app_and_platform(shop: Shop, paid: str) -> None:
    slug, app = shop.carrier.slug, shop.app.public_id
    # 99 with 20% VAT included: tax 16.5 -> 16; net 83; carrier 30% -> 25; app 85% of 58 -> 49; platform 34.
    assert lines_of(paid) == {
        f"carrier_receivable:{slug}": 74,
        f"carrier_share:{slug}": 25,
        "tax_payable:GB": -16,
        f"app_payable:{app}": -49,
        "platform_revenue": -34,
    }
    assert sum(lines_of(paid).values()) == 0


def carrier_refund(payment_id: str, amount_minor: int) -> Refund:
    """A refund through the carrier (it must support refunds), settled by the carrier's answer."""
    payment = Payment.objects.get(public_id=payment_id)
    pending = request_refund(payment=payment, amount_minor=amount_minor, reason="goodwill", actor="test")
    assert (pending.via_carrier, pending.status) == (True, Refund.Status.PENDING)
    record_refund_result(refund_id=pending.pk, result=CarrierResult(outcome=Outcome.SUCCEEDED, carrier_reference="r"))
    return Refund.objects.get(pk=pending.pk)


def refund_lines(refund: Refund) -> dict[str, int]:
    return {line.account: line.amount_minor for line in refund.entry.lines.all()}


@pytest.mark.django_db
def test_a_refund_through_the_carrier_undoes_its_share_of_the_charge_and_moves_the_carrier_by_its_amount(
    shop: Shop, paid: str
) -> None:
    Carrier.objects.filter(pk=shop.carrier.pk).update(supports_refund=True)
    slug, app = shop.carrier.slug, shop.app.public_id
    first = carrier_refund(paid, 49)
    # 49 of 99: carrier share 25 * 49/99 -> 12, so the carrier owes 49 - 12 = 37 less; tax 16 * 49/99 -> 8;
    # app 49 * 49/99 -> 25 (credits round away from zero); the platform takes the rest.
    assert refund_lines(first) == {
        f"carrier_share:{slug}": -12,
        f"carrier_receivable:{slug}": -37,
        "tax_payable:GB": 8,
        f"app_payable:{app}": 25,
        "platform_revenue": 16,
    }
    assert shop.get(paid)["status"] == "partially_refunded"
    rest = carrier_refund(paid, 50)
    assert refund_lines(rest) == {
        f"carrier_share:{slug}": -13,
        f"carrier_receivable:{slug}": -37,
        "tax_payable:GB": 8,
        f"app_payable:{app}": 24,
        "platform_revenue": 18,
    }
    assert shop.get(paid)["status"] == "refunded"
    assert all(total == 0 for total in lines_of(paid).values())  # refunds of the whole amount undo the charge


@pytest.mark.django_db
def test_a_refund_posts_to_the_accounts_of_its_charge_even_after_the_carrier_is_renamed(shop: Shop, paid: str) -> None:
    Carrier.objects.filter(pk=shop.carrier.pk).update(supports_refund=True, slug="renamed")
    carrier_refund(paid, 99)
    assert all(total == 0 for total in lines_of(paid).values())
    assert not LedgerLine.objects.filter(account__endswith=":renamed").exists()


@pytest.mark.django_db
def test_partial_refunds_the_platform_pays_leave_the_carrier_and_the_tax_alone(shop: Shop, paid: str) -> None:
    """The test carrier cannot refund: the platform pays the player back, the carrier settles the whole 99."""
    slug, app = shop.carrier.slug, shop.app.public_id
    first = refund(shop, paid, "r1", amount_minor=49)
    assert first.status_code == 201
    assert (first.json()["status"], first.json()["amount_minor"]) == ("succeeded", 49)
    assert shop.get(paid)["status"] == "partially_refunded"
    assert refund_lines(Refund.objects.get(public_id=first.json()["id"])) == {
        "platform_refunds_paid": -49,
        f"app_payable:{app}": 25,  # 49 * 49/99
        "platform_revenue": 24,
    }
    assert refund(shop, paid, "r2", amount_minor=51).json()["code"] == "refund_exceeds_captured"
    assert refund(shop, paid, "r3").status_code == 201  # the rest: 50
    assert shop.get(paid)["status"] == "refunded"
    assert lines_of(paid) == {
        f"carrier_receivable:{slug}": 74,  # the carrier still collects 99 and keeps its 25
        f"carrier_share:{slug}": 25,
        "tax_payable:GB": -16,  # charged on the carrier's bill of 99
        f"app_payable:{app}": 0,  # the app gets nothing for a payment paid back
        "platform_revenue": 16,  # 34 earned, 50 given up: the carrier's share and the tax on what we paid back
        "platform_refunds_paid": -99,
    }
    for entry in LedgerEntry.objects.filter(payment__public_id=paid):
        assert sum(entry.lines.values_list("amount_minor", flat=True)) == 0
    assert refund(shop, paid, "r4", amount_minor=1).status_code == 409


@pytest.mark.django_db
def test_a_refund_request_is_idempotent_and_validated(shop: Shop, paid: str) -> None:
    first = refund(shop, paid, "same", amount_minor=10)
    again = refund(shop, paid, "same", amount_minor=10)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Refund.objects.count() == 1
    assert refund(shop, paid, "bad", amount_minor=0).status_code == 400
    assert refund(shop, paid, "no-reason", reason="").status_code == 400
    listed = shop.client.get(f"/api/v1/payments/{paid}/refunds/").json()
    assert [row["amount_minor"] for row in listed] == [10]


@pytest.mark.django_db
def test_a_payment_that_did_not_succeed_cannot_be_refunded(shop: Shop) -> None:
    payment_id = shop.pay()["id"]  # pin_sent
    assert_problem(refund(shop, payment_id, "r"), status=409, code="illegal_transition")


@pytest.mark.django_db
def test_reversal_undoes_the_charge_within_its_window_only(shop: Shop, paid: str, settings: Any) -> None:
    response = shop.client.post(f"/api/v1/payments/{paid}/reversal/", {"reason": "item not delivered"}, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "succeeded"
    assert shop.get(paid)["status"] == "reversed"
    assert Reversal.objects.get(payment__public_id=paid).via_carrier is False  # the test carrier cannot reverse
    # The platform pays the 99 back; the carrier settles the charge, as for a refund the platform pays.
    assert lines_of(paid, "reversal") == {
        "platform_refunds_paid": -99,
        f"app_payable:{shop.app.public_id}": 49,
        "platform_revenue": 50,
    }
    again = shop.client.post(f"/api/v1/payments/{paid}/reversal/", {"reason": "again"}, format="json")
    assert again.status_code == 409

    late = shop.pay(key="late", flow="one_click")["id"]
    Payment.objects.get(public_id=late).history.filter(to_status="succeeded").update(
        created_at=timezone.now() - timedelta(hours=settings.REVERSAL_WINDOW_HOURS + 1)
    )
    assert shop.client.post(f"/api/v1/payments/{late}/reversal/", {"reason": "x"}, format="json").json()["code"] == (
        "reversal_not_allowed"
    )


@pytest.mark.django_db
def test_a_reversal_through_the_carrier_undoes_the_charge_exactly(shop: Shop, paid: str) -> None:
    payment = Payment.objects.get(public_id=paid)
    reversal = Reversal.objects.create(
        payment=payment, reason="item not delivered", requested_by="test", via_carrier=True, status="succeeded"
    )
    ledger.post_reversal(reversal)
    assert lines_of(paid, "reversal") == {account: -amount for account, amount in lines_of(paid, "charge").items()}
    assert all(total == 0 for total in lines_of(paid).values())


@pytest.mark.django_db
def test_a_refunded_payment_cannot_be_reversed(shop: Shop, paid: str) -> None:
    refund(shop, paid, "r1", amount_minor=10)
    response = shop.client.post(f"/api/v1/payments/{paid}/reversal/", {"reason": "x"}, format="json")
    assert_problem(response, status=409, code="reversal_not_allowed")
    assert shop.get(paid)["status"] == "partially_refunded"


@pytest.mark.django_db
def test_ledger_lines_refuse_to_change_in_python(shop: Shop, paid: str) -> None:
    line = LedgerLine.objects.first()
    assert line is not None
    line.amount_minor = 1
    with pytest.raises(ImmutableLedger):
        line.save()
    with pytest.raises(ImmutableLedger):
        line.delete()


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_refuses_updates_and_deletes_of_ledger_lines(shop: Shop, paid: str) -> None:
    for attempt in (
        lambda: LedgerLine.objects.update(amount_minor=1),
        lambda: LedgerLine.objects.all().delete(),
        lambda: LedgerEntry.objects.update(memo="edited"),
    ):
        with pytest.raises((IntegrityError, InternalError), match="append-only"), transaction.atomic():
            attempt()
    assert sum(LedgerLine.objects.values_list("amount_minor", flat=True)) == 0


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_refuses_to_truncate_the_ledger(shop: Shop, paid: str) -> None:
    # TRUNCATE skips the row-level guards; statement-level ones refuse it, cascaded from a payment too.
    with connection.cursor() as cursor:  # as if committed: no balance check left pending, which TRUNCATE refuses
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for statement in (
        "TRUNCATE payments_ledgerline",
        "TRUNCATE payments_ledgerentry CASCADE",
        "TRUNCATE payments_payment CASCADE",
    ):
        with (
            pytest.raises((IntegrityError, InternalError), match="append-only: TRUNCATE on payments_ledger"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert LedgerLine.objects.count() == 5
    assert Payment.objects.filter(public_id=paid).exists()


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_refuses_an_unbalanced_entry(shop: Shop, paid: str) -> None:
    payment = Payment.objects.get(public_id=paid)

    def post_unbalanced() -> None:
        entry = LedgerEntry.objects.create(kind=LedgerEntry.Kind.REFUND, payment=payment, memo="bad")
        LedgerLine.objects.create(entry=entry, account="platform_revenue", amount_minor=5, currency="GBP")
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # what the commit would check

    with pytest.raises((IntegrityError, InternalError), match="does not balance"), transaction.atomic():
        post_unbalanced()


@pytest.mark.postgres
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_never_exceed_the_captured_amount(make_shop: Any) -> None:
    shop = make_shop()
    payment = Payment.objects.get(public_id=shop.pay(flow="one_click")["id"])
    assert payment.status == PaymentStatus.SUCCEEDED

    def attempt() -> str:
        try:
            request_refund(payment=payment, amount_minor=20, reason="race", actor="test")
        except RefundExceedsCaptured:
            return "refused"
        return "ok"

    outcomes = at_once(attempt, times=12)
    payment.refresh_from_db()
    assert outcomes.count("ok") == 4  # 4 x 20 of 99
    assert outcomes.count("refused") == 8
    assert payment.refunded_minor == 80
    assert sum(Refund.objects.filter(status="succeeded").values_list("amount_minor", flat=True)) == 80
    assert payment.status == PaymentStatus.PARTIALLY_REFUNDED


class TestMoneyProperties(TestCase):
    """For any sequence of charges, refunds, reversals and failures, through the carrier or paid by the
    platform, the books hold."""

    databases = {"default", "journal"}  # each charge is an API request, journaled

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        carrier_refunds=st.booleans(),
        operations=st.lists(
            st.one_of(
                st.tuples(st.just("charge"), st.sampled_from(["+447400123456", "+447400120002"]), st.just(True)),
                # A refund of an amount; through the carrier, whether the carrier does it.
                st.tuples(st.just("refund"), st.integers(min_value=1, max_value=120), st.booleans()),
                st.tuples(st.just("reverse"), st.just(0), st.just(True)),
            ),
            max_size=12,
        ),
    )
    def test_ledger_balances_and_refunds_never_exceed_captures(
        self, carrier_refunds: bool, operations: list[tuple[str, Any, bool]]
    ) -> None:
        from payments.services.refunds import request_reversal
        from tenants.services import issue_api_key
        from tests.factories import AppFactory, NumberPrefixFactory, PricePointFactory

        price_point = PricePointFactory.create(amount_minor=99, carrier__supports_refund=carrier_refunds)
        NumberPrefixFactory.create(carrier=price_point.carrier, prefix="4474")
        app = AppFactory.create()
        client = __import__("rest_framework.test", fromlist=["APIClient"]).APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=app).raw_key}")
        payments: list[Payment] = []
        for index, (operation, value, carrier_does_it) in enumerate(operations):
            if operation == "charge":
                body = {"user_ref": "p", "msisdn": value, "price_point": price_point.code, "flow": "one_click"}
                with self.captureOnCommitCallbacks(execute=True):
                    client.post("/api/v1/payments/", body, format="json", HTTP_IDEMPOTENCY_KEY=f"k{index}")
                payments = list(Payment.objects.all())
            elif payments:
                target = payments[index % len(payments)]
                # A business rule may refuse the operation (a DomainError); that must change nothing.
                # The carrier's queued call is not run: its answer is recorded here instead.
                with contextlib.suppress(DomainError), self.captureOnCommitCallbacks(execute=not carrier_refunds):
                    if operation == "refund":
                        made = request_refund(payment=target, amount_minor=value, reason="p", actor="test")
                        if made.status == Refund.Status.PENDING:
                            answer = CarrierResult(outcome=Outcome.SUCCEEDED if carrier_does_it else Outcome.FAILED)
                            record_refund_result(refund_id=made.pk, result=answer)
                    else:
                        request_reversal(payment=target, reason="p", actor="test")
        for entry in LedgerEntry.objects.all():
            assert sum(entry.lines.values_list("amount_minor", flat=True)) == 0
        for payment in Payment.objects.all():
            succeeded = payment.refunds.filter(status="succeeded")
            settled = sum(succeeded.values_list("amount_minor", flat=True))
            assert settled == payment.refunded_minor <= payment.amount_minor
            has_charge = payment.ledger_entries.filter(kind="charge").exists()
            assert has_charge == (payment.status != PaymentStatus.FAILED)
            if not has_charge:
                continue
            assert succeeded.filter(via_carrier=not carrier_refunds).count() == 0
            lines = lines_of(str(payment.public_id))
            charge = lines_of(str(payment.public_id), "charge")
            carrier = payment.carrier.slug
            by_carrier = settled if carrier_refunds else 0
            by_platform = (settled if not carrier_refunds else 0) + (
                payment.amount_minor if payment.status == PaymentStatus.REVERSED else 0
            )
            # What the carrier settles: the charge less what it paid back (a reversal here is the platform's).
            carrier_total = lines.get(f"carrier_receivable:{carrier}", 0) + lines.get(f"carrier_share:{carrier}", 0)
            assert carrier_total == payment.amount_minor - by_carrier
            assert lines.get("platform_refunds_paid", 0) == -by_platform
            if by_platform:
                assert {account: lines[account] for account in charge if "carrier" in account or "tax" in account} == {
                    account: amount for account, amount in charge.items() if "carrier" in account or "tax" in account
                }
            paid_back = payment.status in (PaymentStatus.REFUNDED, PaymentStatus.REVERSED)
            app_owed = lines.get(f"app_payable:{app.public_id}", 0)
            # Paid back whole: the app is owed nothing. Partly: its share of a last unit or two may round to 0.
            assert app_owed <= 0
            if paid_back:
                assert app_owed == 0
            assert (paid_back and not by_platform) == all(total == 0 for total in lines.values())
        for account, _currency, balance in ledger.balances():
            if account.startswith("app_payable:") or account.startswith("tax_payable:"):
                assert balance <= 0, (account, balance)  # we never hold a claim on an app or the tax office
            if account == "platform_refunds_paid":
                assert balance <= 0, balance  # the platform only ever pays players back


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_ledger_list_shows_one_days_entries_newest_first(shop: Shop, paid: str, staff_client: Any) -> None:
    payment = Payment.objects.get(public_id=paid)
    day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=40)
    # Entries posted at chosen times (the ORM stamps `created_at` with now): two that day, one each side of it.
    times = [day - timedelta(seconds=1), day + timedelta(hours=9), day + timedelta(hours=17), day + timedelta(days=1)]
    with connection.cursor() as cursor:
        for at in times:
            cursor.execute(
                "INSERT INTO payments_ledgerentry (kind, payment_id, payment_created_at, memo, created_at) "
                "VALUES ('refund', %s, %s, %s, %s)",
                [payment.pk, payment.created_at, f"at {at.isoformat()}", at],
            )
    shown = staff_client("finance").get(
        "/admin/payments/ledgerentry/",
        {
            "created_at_from_0": day.date().isoformat(),
            "created_at_from_1": "00:00",
            "created_at_to_0": day.date().isoformat(),
            "created_at_to_1": "23:59",
        },
    )
    assert shown.status_code == 200
    assert [entry.memo for entry in shown.context["cl"].result_list] == [f"at {at.isoformat()}" for at in times[2:0:-1]]
    newest_first = staff_client("finance").get("/admin/payments/ledgerentry/").context["cl"].result_list
    assert [entry.created_at for entry in newest_first] == sorted((e.created_at for e in newest_first), reverse=True)
