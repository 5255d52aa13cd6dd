"""The per-carrier settlement report: what each carrier collected for the payments of a period, from the ledger.

For the payments created in the period (UTC days, both ends included), per carrier and currency, summed over
their ledger lines (charges, and the refunds and reversals posted since):

- gross: what the carrier collected for us, less what it paid players back (`carrier_receivable` and
  `carrier_share` lines): the total its settlement file should add up to;
- carrier share: what the carrier keeps (`carrier_share`);
- tax: the VAT in the gross (`tax_payable`), which we owe;
- net due: what the carrier pays us, gross less its share (`carrier_receivable`).

The signs of the lines in each figure are declared once: the payments' figures in payments.figures, the
carrier's in reporting.resources (CARRIER_FIGURES). The period is the payments' (as in the reconciliation of a
settlement file), so a refund made later of a payment of the period counts in the period, and only the period's
monthly partitions are read.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import IO, Any

from django.db.models import Q, Sum

from payments.figures import is_kind
from payments.models import LedgerLine
from playpay.money import format_money
from playpay.tables import write_table
from playpay.times import start_of_utc_day
from reporting.resources import Column, Kind, line_figure, python_value

HEADER = [
    "carrier",
    "currency",
    "gross_minor",
    "gross",
    "carrier_share_minor",
    "carrier_share",
    "tax_minor",
    "tax",
    "net_due_minor",
    "net_due",
    "payments",
]


@dataclass(frozen=True)
class CarrierSettlement:
    carrier: str  # slug
    currency: str
    gross_minor: int
    carrier_share_minor: int
    tax_minor: int
    net_due_minor: int
    payments: int  # payments of the period with lines in the ledger

    @property
    def amounts(self) -> list[tuple[str, int]]:
        return [
            ("gross", self.gross_minor),
            ("carrier_share", self.carrier_share_minor),
            ("tax", self.tax_minor),
            ("net_due", self.net_due_minor),
        ]

    @property
    def shown(self) -> list[tuple[str, int, str]]:
        """(name, minor units, the amount as people read it: £9.99, ¥100, KWD 1.500)."""
        return [(name, minor, format_money(minor, self.currency)) for name, minor in self.amounts]


def carrier_settlement(*, date_from: date, date_to: date, carrier: str = "") -> list[CarrierSettlement]:
    """One row per carrier and currency with lines for the payments created from `date_from` to `date_to`."""
    start, end = start_of_utc_day(date_from), start_of_utc_day(date_to + timedelta(days=1))
    lines = LedgerLine.objects.filter(
        payment_created_at__gte=start,
        payment_created_at__lt=end,
        entry__payment_created_at__gte=start,
        entry__payment_created_at__lt=end,
        entry__payment__created_at__gte=start,
        entry__payment__created_at__lt=end,
    )
    if carrier:
        lines = lines.filter(entry__payment__carrier__slug=carrier)
    rows = (
        lines.values("entry__payment__carrier__slug", "currency")
        .annotate(
            # The figures' signs by account are declared once, with the payments' (payments.figures).
            carrier_gross=Sum(line_figure("carrier_gross"), default=0),
            carrier_share=Sum(line_figure("carrier_share"), default=0),
            tax=Sum(line_figure("tax"), default=0),
            net_due=Sum(line_figure("net_due"), default=0),
            payments=Sum(1, filter=Q(entry__kind="charge") & is_kind("carrier_receivable"), default=0),
        )
        .order_by("entry__payment__carrier__slug", "currency")
    )
    return [
        CarrierSettlement(
            carrier=row["entry__payment__carrier__slug"],
            currency=row["currency"],
            gross_minor=int(row["carrier_gross"]),
            carrier_share_minor=int(row["carrier_share"]),
            tax_minor=int(row["tax"]),
            net_due_minor=int(row["net_due"]),
            payments=int(row["payments"]),
        )
        for row in rows
    ]


_MONEY = Column("amount", "amount", Kind.MONEY)


def settlement_rows(report: list[CarrierSettlement]) -> Iterator[list[Any]]:
    """The report's rows as the download writes them: each amount in minor units, then in major units."""
    for row in report:
        amounts = [value for _, minor in row.amounts for value in (minor, python_value(_MONEY, minor, row.currency))]
        yield [row.carrier, row.currency, *amounts, row.payments]


def write_settlement_report(report: list[CarrierSettlement], *, file_format: str, out: IO[bytes]) -> None:
    write_table(out, HEADER, settlement_rows(report), file_format=file_format, title="settlement")


def settlement_report_file_name(*, date_from: date, date_to: date, carrier: str, file_format: str) -> str:
    scope = f"_{carrier}" if carrier else ""
    return f"playpay_settlement_{date_from}-{date_to}{scope}.{file_format}"
