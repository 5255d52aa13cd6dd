"""Finance's figures: the exports' ledger columns, the per-carrier settlement report against the ledger, and
finance's read-only access to refunds, reversals and the ledger."""

import io
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from openpyxl import load_workbook  # type: ignore[import-untyped]

from carriers.models import Country
from payments.figures import FIGURES, account_kind
from payments.models import LedgerLine, Payment, PaymentStatus
from payments.services.refunds import request_refund
from playpay.tables import TableFormat
from reporting.models import ExportKind
from reporting.services.settlement_report import carrier_settlement
from tests.conftest import MSISDN, Shop, StaffClient
from tests.factories import PaymentFactory, PricePointFactory
from tests.reporting.conftest import reverse_paid
from tests.reporting.test_exports import csv_rows, export_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

TODAY = timezone.now().date()


def refund(shop: Shop, payment_id: str, amount_minor: int) -> None:
    with shop.after_commit(execute=True):
        request_refund(
            payment=Payment.objects.get(public_id=payment_id), amount_minor=amount_minor, reason="r", actor="staff:f"
        )


def taxed_shop(make_shop: Callable[..., Shop], *, prefix: str, refunds: bool, **carrier: Any) -> Shop:
    """A shop whose country has 20% VAT in its prices, whose carrier keeps 30% and whose app gets 85%."""
    Country.objects.filter(code="GB").update(vat_rate=Decimal(20))
    shop = make_shop(
        prefix=prefix, supports_refund=refunds, supports_reversal=refunds, revenue_share=Decimal("0.3"), **carrier
    )
    shop.app.revenue_share = Decimal("0.85")
    shop.app.save()
    for code, amount, currency in (("gems-500", 499, "GBP"), ("gems-odd", 1337, "GBP")):
        PricePointFactory.create(carrier=shop.carrier, code=code, amount_minor=amount, currency=currency)
    return shop


FATES = ("keep", "refund", "refunds", "reverse")


def play_random_history(shop: Shop, rng: random.Random, *, payments: int, msisdn: str) -> None:
    """Payments of random price points, some refunded in random parts, some reversed, some failed: the first
    ones meet each fate once (so that every kind of row exists whatever the seed), the others a random one."""
    for number in range(payments):
        code = rng.choice(["gems-100", "gems-500", "gems-odd"])
        paid = shop.pay(f"{shop.carrier.slug}-{number}", flow="one_click", price_point=code, msisdn=msisdn)
        assert paid["status"] == PaymentStatus.SUCCEEDED, paid
        fate = FATES[number] if number < len(FATES) else rng.choice(FATES)
        if fate == "reverse":
            reverse_paid(shop, paid["id"])
        elif fate != "keep":
            left = paid["amount_minor"]
            for _ in range(1 if fate == "refund" else rng.randint(2, 3)):
                if left == 0:
                    break
                amount = rng.randint(1, left)
                refund(shop, paid["id"], amount)
                left -= amount


@pytest.fixture
def history(make_shop: Callable[..., Shop]) -> list[Shop]:
    seed = random.randrange(1_000_000)
    print(f"random history seed {seed}")  # to replay a failure
    rng = random.Random(seed)
    through_carrier = taxed_shop(make_shop, prefix="4474", refunds=True)
    platform_pays = taxed_shop(make_shop, prefix="4475", refunds=False)
    play_random_history(through_carrier, rng, payments=8, msisdn=MSISDN)
    play_random_history(platform_pays, rng, payments=8, msisdn="+447512345678")
    return [through_carrier, platform_pays]


def ledger_sums() -> dict[tuple[str, str], dict[str, int]]:
    """(carrier slug, currency) -> account kind -> the sum of its lines, line by line in Python."""
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in LedgerLine.objects.select_related("entry__payment__carrier"):
        key = (line.entry.payment.carrier.slug, line.currency)
        sums[key][account_kind(line.account)] += line.amount_minor
    return sums


def test_the_settlement_report_equals_the_sums_of_the_ledger_lines_to_the_minor_unit(history: list[Shop]) -> None:
    report = carrier_settlement(date_from=TODAY - timedelta(days=1), date_to=TODAY)
    sums = ledger_sums()
    assert {(row.carrier, row.currency) for row in report} == set(sums)
    for row in report:
        accounts = sums[(row.carrier, row.currency)]
        assert row.gross_minor == accounts["carrier_receivable"] + accounts["carrier_share"]
        assert row.carrier_share_minor == accounts["carrier_share"]
        assert row.tax_minor == -accounts["tax_payable"]
        assert row.net_due_minor == accounts["carrier_receivable"]
        assert row.gross_minor == row.net_due_minor + row.carrier_share_minor
        assert row.payments == Payment.objects.filter(carrier__slug=row.carrier, ledger_entries__kind="charge").count()
    assert sum(row.payments for row in report) == 16


def test_the_settlement_report_leaves_out_payments_of_other_periods(history: list[Shop]) -> None:
    assert carrier_settlement(date_from=TODAY + timedelta(days=1), date_to=TODAY + timedelta(days=30)) == []
    one = history[1].carrier.slug
    assert [row.carrier for row in carrier_settlement(date_from=TODAY, date_to=TODAY, carrier=one)] == [one]


def figures(row: dict[str, str]) -> dict[str, int]:
    return {name: int(row[f"{name}_minor"]) for name in FIGURES}


def test_a_transaction_s_figures_are_the_sums_of_its_ledger_lines_and_add_up(history: list[Shop]) -> None:
    transactions = csv_rows(export_bytes(ExportKind.TRANSACTIONS, TableFormat.CSV))
    lines = csv_rows(export_bytes(ExportKind.LEDGER, TableFormat.CSV))
    by_payment: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in (dict(zip(lines[0], values, strict=True)) for values in lines[1:]):
        for name, value in figures(line).items():
            by_payment[line["payment_id"]][name] += value
    rows = [dict(zip(transactions[0], values, strict=True)) for values in transactions[1:]]
    assert len(rows) == 16
    for row in rows:
        own = figures(row)
        assert own == dict(by_payment[row["payment_id"]])
        assert own["gross"] == own["tax"] + own["carrier_share"] + own["net"]
        assert own["net"] == own["app_payable"] + own["platform_revenue"]
        assert own["gross"] == int(row["amount_minor"]) - int(row["refunded_minor"])  # what the player kept paid
        assert row["counts_as_revenue"] == ("true" if row["status"] in ("succeeded", "partially_refunded") else "false")
        assert Decimal(row["gross"]) == Decimal(own["gross"]) / 100  # GBP: 2 decimals
        if row["status"] == "reversed":
            assert row["reversed_minor"] == row["refunded_minor"] == row["amount_minor"]
            assert row["reversed_at_utc"]
        assert row["charged_at_utc"]


def test_a_refund_s_and_a_reversal_s_figures_are_those_of_their_ledger_entry(history: list[Shop]) -> None:
    lines = csv_rows(export_bytes(ExportKind.LEDGER, TableFormat.CSV))
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in (dict(zip(lines[0], values, strict=True)) for values in lines[1:]):
        for name, value in figures(line).items():
            by_kind[line["entry_kind"]][name] += value
    for kind, export in (("refund", ExportKind.REFUNDS), ("reversal", ExportKind.REVERSALS)):
        rows = csv_rows(export_bytes(export, TableFormat.CSV))
        totals: dict[str, int] = defaultdict(int)
        for row in (dict(zip(rows[0], values, strict=True)) for values in rows[1:]):
            succeeded = row["status"] == "succeeded"
            assert row["counts_as_revenue"] == ("true" if succeeded else "false")
            for name, value in figures(row).items():
                totals[name] += value
            # Paid back in full, whoever paid; one the carrier refused moved nothing.
            assert -int(row["gross_minor"]) == (int(row["amount_minor"]) if succeeded else 0)
            assert bool(row["failure_code"]) == (row["status"] == "failed")
        assert dict(totals) == dict(by_kind[kind])


def test_a_failed_payment_counts_nothing_though_it_keeps_its_price(shop: Shop) -> None:
    PaymentFactory.create(
        app=shop.app,
        carrier=shop.carrier,
        price_point=shop.price_point,
        msisdn=MSISDN,
        amount_minor=1500,
        currency="KWD",
        status=PaymentStatus.FAILED,
        failure_code="insufficient_funds",
    )
    rows = csv_rows(export_bytes(ExportKind.TRANSACTIONS, TableFormat.CSV))
    row = dict(zip(rows[0], rows[1], strict=True))
    assert (row["amount_minor"], row["amount"], row["status"]) == ("1500", "1.500", "failed")
    assert (row["failure_code"], row["counts_as_revenue"]) == ("insufficient_funds", "false")
    assert (row["gross_minor"], row["gross"], row["net_minor"], row["charged_at_utc"]) == ("0", "0.000", "0", "")


def test_finance_downloads_the_settlement_report_from_the_admin_and_it_equals_the_ledger(
    history: list[Shop], staff_client: StaffClient
) -> None:
    finance = staff_client("finance")
    listing = finance.get("/admin/reporting/settlementfile/")
    assert "Settlement report per carrier" in listing.content.decode()
    period = {"date_from": str(TODAY), "date_to": str(TODAY)}
    page = finance.get("/admin/reporting/settlementfile/settlement-report/", period)
    assert page.status_code == 200
    report = carrier_settlement(date_from=TODAY, date_to=TODAY)
    for row in report:
        assert f'data-minor="{row.net_due_minor}">£{Decimal(row.net_due_minor) / 100:,.2f}<' in page.content.decode()
    download = finance.get(
        "/admin/reporting/settlementfile/settlement-report/", {**period, "file_format": "xlsx", "download": "1"}
    )
    assert download.status_code == 200
    sheet = load_workbook(io.BytesIO(b"".join(download.streaming_content))).worksheets[0]  # type: ignore[attr-defined]
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    header = values[0]
    sums = ledger_sums()
    for cells in values[1:]:
        named = dict(zip(header, cells, strict=True))
        accounts = sums[(named["carrier"], named["currency"])]
        assert named["net_due_minor"] == accounts["carrier_receivable"]
        assert named["carrier_share_minor"] == accounts["carrier_share"]
        assert named["gross"] == (accounts["carrier_receivable"] + accounts["carrier_share"]) / 100
    assert len(values) - 1 == len(report) == 2


def test_only_those_who_read_the_ledger_see_the_settlement_report(staff_client: StaffClient) -> None:
    url = f"/admin/reporting/settlementfile/settlement-report/?date_from={date(2026, 5, 1)}&date_to={date(2026, 5, 31)}"
    assert staff_client("finance").get(url).status_code == 200
    assert staff_client("operations").get(url).status_code == 403
    assert staff_client("support").get(url).status_code == 403


def test_a_period_that_ends_before_it_starts_is_refused_once_in_plain_words(staff_client: StaffClient) -> None:
    page = staff_client("finance").get(
        "/admin/reporting/settlementfile/settlement-report/", {"date_from": "2026-05-31", "date_to": "2026-05-01"}
    )
    assert page.content.decode().count("The period ends before it starts.") == 1


@pytest.mark.parametrize("page", ["refund", "reversal", "ledgerentry", "ledgerline"])
def test_finance_reads_refunds_reversals_and_the_ledger_and_changes_none_of_them(
    page: str, history: list[Shop], staff_client: StaffClient
) -> None:
    finance = staff_client("finance")
    listing = finance.get(f"/admin/payments/{page}/")
    assert listing.status_code == 200
    model = listing.context["cl"].model
    one = model.objects.order_by("pk").first()
    detail = finance.get(f"/admin/payments/{page}/{one.pk}/change/")
    assert detail.status_code == 200
    assert not detail.context["has_change_permission"]
    assert finance.get(f"/admin/payments/{page}/add/").status_code == 403
    assert finance.post(f"/admin/payments/{page}/{one.pk}/delete/", {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=one.pk).exists()


def test_support_does_not_see_the_ledger(staff_client: StaffClient) -> None:
    assert staff_client("support").get("/admin/payments/ledgerline/").status_code == 403


def test_the_ledger_pages_show_each_line_in_major_units_with_its_currency(
    history: list[Shop], staff_client: StaffClient
) -> None:
    finance = staff_client("finance")
    line = LedgerLine.objects.filter(amount_minor__lt=-99).order_by("pk").first()
    assert line is not None
    assert line.currency == "GBP"
    shown = f"-£{-line.amount_minor // 100}.{-line.amount_minor % 100:02d}"
    page = finance.get(f"/admin/payments/ledgerline/{line.pk}/change/").content.decode()
    assert shown in page
    listing = finance.get(f"/admin/payments/ledgerline/?account={line.account}").content.decode()
    assert shown in listing
    entry = finance.get(f"/admin/payments/ledgerentry/{line.entry_id}/change/").content.decode()
    assert shown in entry
    assert f">{line.amount_minor}<" not in entry
