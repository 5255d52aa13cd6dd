"""Carrier settlement files: import them (all or nothing), and reconcile them against our payments.

A settlement file lists what a carrier says it collected for us. Reconciling it compares, per
carrier reference, their total with ours: what we charged less what was refunded *through the
carrier* (a refund the platform paid itself does not change what the carrier collected).

- matched: both sides have it, for the same amount and currency;
- amount mismatch: both have it, the amounts (or currencies) differ;
- missing on our side: in their file, no payment of ours with that reference;
- missing on their side: a payment of ours in the period that their file does not list.
"""

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, timedelta
from pathlib import PurePath
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.db.models import Exists, Max, Min, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from import_export.formats.base_formats import CSV, XLSX

from carriers.models import Carrier
from payments.models import Payment, PaymentStatus, Refund, Reversal
from payments.services.settlement import Collected, settle_unknown_outcomes
from playpay.money import format_money, to_major
from playpay.tables import TableFormat, write_table
from playpay.times import start_of_utc_day
from reporting.models import SettlementFile
from reporting.resources import SettlementLineResource

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("carrier_reference", "currency", "date")
AMOUNT_COLUMNS = ("amount_minor", "amount")  # one of them: minor units, or major units in the currency
# Payments the carrier should have collected money for.
SETTLED = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED)


class Category(models.TextChoices):
    AMOUNT_MISMATCH = "amount_mismatch", "amount mismatch"
    MISSING_ON_OUR_SIDE = "missing_on_our_side", "missing on our side"
    MISSING_ON_THEIR_SIDE = "missing_on_their_side", "missing on their side"
    MATCHED = "matched", "matched"


_ORDER = {category: position for position, category in enumerate(Category)}


class SettlementFileRejected(Exception):
    """The file was not imported at all; `errors` says why, with row numbers where they apply."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""))


# --- Import -----------------------------------------------------------------


def read_dataset(*, name: str, content: bytes) -> Any:
    """The file's rows as a tablib Dataset, with lower-case, trimmed column names."""
    suffix = PurePath(name).suffix.lower()
    try:
        if suffix == ".csv":
            text = content.decode("utf-8-sig")  # Excel writes a byte order mark
            first_line = text.partition("\n")[0]
            delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
            dataset = CSV().create_dataset(text, delimiter=delimiter)
        elif suffix == ".xlsx":
            dataset = XLSX().create_dataset(content)
        else:
            raise SettlementFileRejected([f"{name}: only .csv and .xlsx files can be imported"])
    except SettlementFileRejected:
        raise
    except Exception as error:  # any parser's failure: the file cannot be read at all
        raise SettlementFileRejected([f"{name} cannot be read as {suffix[1:].upper()}: {error}"]) from error
    dataset.headers = [str(header or "").strip().lower() for header in dataset.headers or []]
    return dataset


def _check_columns(dataset: Any) -> None:
    headers = set(dataset.headers or [])
    missing = [column for column in REQUIRED_COLUMNS if column not in headers]
    if not headers.intersection(AMOUNT_COLUMNS):
        missing.append("amount_minor (or amount)")
    if missing:
        found = ", ".join(header for header in dataset.headers or [] if header) or "none"
        raise SettlementFileRejected([f"missing column(s): {', '.join(missing)}; the file has: {found}"])
    if not len(dataset):
        raise SettlementFileRejected(["the file has no lines under its header"])


def _errors_of(result: Any) -> list[str]:
    numbered: list[tuple[int, str]] = []
    for invalid in result.invalid_rows:
        for column, messages in invalid.error_dict.items():
            where = "" if column == "__all__" else f"{column}: "
            numbered.extend((invalid.number, f"row {invalid.number}: {where}{message}") for message in messages)
    for failed in result.error_rows:
        numbered.extend((failed.number, f"row {failed.number}: {error.error}") for error in failed.errors)
    numbered.extend((0, str(error.error)) for error in result.base_errors)
    return [message for _, message in sorted(numbered, key=lambda item: item[0])]


def import_settlement_file(
    *,
    carrier: Carrier,
    name: str,
    content: bytes,
    uploaded_by: AbstractBaseUser,
    period_from: date | None = None,
    period_to: date | None = None,
) -> SettlementFile:
    """Import every line of a carrier's settlement file, or none: raises SettlementFileRejected.

    The period defaults to the first and last dates in the file. What it shows collected settles our
    charges and refunds of unknown outcome; then the file is reconciled.
    """
    dataset = read_dataset(name=name, content=content)
    _check_columns(dataset)
    with transaction.atomic():
        today = timezone.now().date()
        settlement_file = SettlementFile.objects.create(
            carrier=carrier,
            name=PurePath(name).name[:255],
            period_from=period_from or today,
            period_to=period_to or today,
            uploaded_by_id=uploaded_by.pk,
        )
        result = SettlementLineResource().import_data(
            dataset, use_transactions=True, raise_errors=False, settlement_file=settlement_file
        )
        errors = _errors_of(result)
        if errors:
            raise SettlementFileRejected(errors)  # rolls back the file and every line
        dates = settlement_file.lines.aggregate(first=Min("date"), last=Max("date"))
        settlement_file.period_from = period_from or dates["first"] or today
        settlement_file.period_to = period_to or dates["last"] or today
        if settlement_file.period_from > settlement_file.period_to:
            raise SettlementFileRejected(
                [f"the period ends ({settlement_file.period_to}) before it starts ({settlement_file.period_from})"]
            )
        settlement_file.row_count = settlement_file.lines.count()
        settlement_file.save(update_fields=["period_from", "period_to", "row_count"])
        _settle_unknown_outcomes(settlement_file, uploaded_by)
        reconcile_settlement_file(settlement_file=settlement_file)
    return settlement_file


def _settle_unknown_outcomes(settlement_file: SettlementFile, uploaded_by: AbstractBaseUser) -> None:
    """What the file shows collected settles our charges and refunds of unknown outcome (see
    `payments.services.settlement`); nothing is failed for being absent from it."""
    carrier = settlement_file.carrier
    collected = {
        reference: Collected(theirs.amount_minor, frozenset(theirs.currencies))
        for reference, theirs in _their_totals(settlement_file).items()
    }
    actor = f"carrier:{carrier.slug} settlement file {settlement_file.pk} (staff:{uploaded_by.get_username()})"
    settled = settle_unknown_outcomes(carrier=carrier, collected=collected, actor=actor[:150])
    if settled.charges or settled.refunds:
        logger.info(
            "settlement file %s of %s settled %s charge(s) and %s refund(s) of unknown outcome",
            settlement_file.pk,
            carrier.slug,
            settled.charges,
            settled.refunds,
            extra={
                "settlement_file": settlement_file.pk,
                "carrier": carrier.slug,
                "charges_settled": settled.charges,
                "refunds_settled": settled.refunds,
            },
        )


# --- Reconciliation -----------------------------------------------------------


@dataclass(frozen=True)
class ReconciliationRow:
    category: Category
    carrier_reference: str
    payment_id: str  # ours, "" when we have no payment with that reference
    our_status: str
    currency: str
    # What the carrier should have collected for us: charged less refunds through the carrier.
    our_amount_minor: int | None
    their_amount_minor: int | None  # the sum of their lines with that reference
    our_date: date | None
    their_date: date | None
    their_lines: int
    note: str = ""

    @property
    def difference_minor(self) -> int | None:
        if self.our_amount_minor is None or self.their_amount_minor is None:
            return None
        return self.their_amount_minor - self.our_amount_minor


@dataclass(frozen=True)
class ReconciliationReport:
    settlement_file: SettlementFile
    rows: list[ReconciliationRow]
    counts: dict[Category, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return all(row.category == Category.MATCHED for row in self.rows)

    def rows_in(self, category: str | None) -> list[ReconciliationRow]:
        return [row for row in self.rows if category in (None, "", row.category)]


@dataclass
class _Theirs:
    amount_minor: int = 0
    currencies: set[str] = field(default_factory=set)
    first_date: date | None = None
    lines: int = 0


@dataclass(frozen=True)
class _Ours:
    payment_id: str
    reference: str
    status: str
    currency: str
    created: date
    expected_minor: int
    carrier_refunded_minor: int


def _their_totals(settlement_file: SettlementFile) -> dict[str, _Theirs]:
    totals: dict[str, _Theirs] = {}
    lines = settlement_file.lines.values_list("carrier_reference", "amount_minor", "currency", "date")
    for reference, amount, currency, day in lines.iterator(chunk_size=5000):
        theirs = totals.setdefault(reference, _Theirs())
        theirs.amount_minor += amount
        theirs.currencies.add(currency)
        theirs.first_date = day if theirs.first_date is None else min(theirs.first_date, day)
        theirs.lines += 1
    return totals


def _expected(status: str, amount: int, carrier_refunded: int, reversed_by_carrier: bool) -> int:
    """What the carrier owes for a payment: the charge less its refunds. A reversal the platform paid
    back (not the carrier) leaves the carrier owing the charge too."""
    if status in SETTLED or (status == PaymentStatus.REVERSED and not reversed_by_carrier):
        return amount - carrier_refunded
    return 0


def _our_payments(settlement_file: SettlementFile) -> list[_Ours]:
    """Our payments in the file's period, and any other of the carrier's that the file names."""
    start = start_of_utc_day(settlement_file.period_from)
    end = start_of_utc_day(settlement_file.period_to + timedelta(days=1))
    refunded = (
        # With the payment's month: on PostgreSQL each payment's lookup reads its month's partition only.
        Refund.objects.filter(
            payment=OuterRef("pk"),
            payment_created_at=OuterRef("created_at"),
            status=Refund.Status.SUCCEEDED,
            via_carrier=True,
        )
        .values("payment")
        .annotate(total=Sum("amount_minor"))
        .values("total")
    )
    reversed_by_carrier = Reversal.objects.filter(
        payment=OuterRef("pk"),
        payment_created_at=OuterRef("created_at"),
        status=Reversal.Status.SUCCEEDED,
        via_carrier=True,
    )
    named = settlement_file.lines.values("carrier_reference")
    payments = (
        Payment.objects.filter(carrier_id=settlement_file.carrier_id)
        .filter(
            Q(created_at__gte=start, created_at__lt=end, status__in=[*SETTLED, PaymentStatus.REVERSED])
            | Q(carrier_reference__in=Subquery(named))
        )
        .annotate(carrier_refunded=Coalesce(Subquery(refunded), 0), reversed_by_carrier=Exists(reversed_by_carrier))
        .order_by("pk")
        .values_list(
            "public_id",
            "carrier_reference",
            "status",
            "amount_minor",
            "currency",
            "created_at",
            "carrier_refunded",
            "reversed_by_carrier",
        )
    )
    return [
        _Ours(
            payment_id=str(public_id),
            reference=reference,
            status=status,
            currency=currency,
            created=created.astimezone(UTC).date(),
            expected_minor=_expected(status, amount, refunded_minor, by_carrier),
            carrier_refunded_minor=refunded_minor,
        )
        for public_id, reference, status, amount, currency, created, refunded_minor, by_carrier in payments.iterator(
            chunk_size=5000
        )
    ]


def _compare(reference: str, ours: _Ours, theirs: _Theirs) -> ReconciliationRow:
    notes = []
    if theirs.currencies != {ours.currency}:
        notes.append(f"currency: ours {ours.currency}, theirs {', '.join(sorted(theirs.currencies))}")
    if ours.status not in SETTLED:
        notes.append(f"our payment is {ours.status}")
    if ours.carrier_refunded_minor:
        notes.append(f"{format_money(ours.carrier_refunded_minor, ours.currency)} refunded through the carrier")
    if theirs.lines > 1:
        notes.append(f"{theirs.lines} lines in their file")
    same = theirs.amount_minor == ours.expected_minor and theirs.currencies == {ours.currency}
    category = Category.MATCHED if same else Category.AMOUNT_MISMATCH
    return _row(category, reference, ours, theirs, note="; ".join(notes))


def _row(
    category: Category, reference: str, ours: _Ours | None, theirs: _Theirs | None, *, note: str
) -> ReconciliationRow:
    """A line of the report, from our payment and their lines with that reference (either may be missing)."""
    return ReconciliationRow(
        category=category,
        carrier_reference=reference,
        payment_id=ours.payment_id if ours else "",
        our_status=ours.status if ours else "",
        currency=ours.currency if ours else ", ".join(sorted(theirs.currencies if theirs else ())),
        our_amount_minor=ours.expected_minor if ours else None,
        their_amount_minor=theirs.amount_minor if theirs else None,
        our_date=ours.created if ours else None,
        their_date=theirs.first_date if theirs else None,
        their_lines=theirs.lines if theirs else 0,
        note=note,
    )


def reconcile_settlement_file(*, settlement_file: SettlementFile) -> ReconciliationReport:
    """Compare the file with our payments now, and keep the counts on the file for the list."""
    theirs = _their_totals(settlement_file)
    ours = _our_payments(settlement_file)
    by_reference = {payment.reference: payment for payment in ours if payment.reference}
    rows: list[ReconciliationRow] = []
    for reference, their in theirs.items():
        our = by_reference.get(reference)
        if our is not None:
            rows.append(_compare(reference, our, their))
            continue
        rows.append(
            _row(Category.MISSING_ON_OUR_SIDE, reference, None, their, note="no payment of ours with this reference")
        )
    for our in ours:
        if our.reference in theirs or (our.status not in SETTLED and not our.expected_minor):
            continue
        note = "" if our.reference else "we have no carrier reference for it"
        rows.append(_row(Category.MISSING_ON_THEIR_SIDE, our.reference, our, None, note=note))
    rows.sort(key=lambda row: (_ORDER[row.category], row.carrier_reference, row.payment_id))
    counts = Counter(row.category for row in rows)
    report = ReconciliationReport(
        settlement_file=settlement_file, rows=rows, counts={category: counts[category] for category in Category}
    )
    _keep_summary(settlement_file, report)
    return report


def _keep_summary(settlement_file: SettlementFile, report: ReconciliationReport) -> None:
    settlement_file.matched = report.counts[Category.MATCHED]
    settlement_file.amount_mismatches = report.counts[Category.AMOUNT_MISMATCH]
    settlement_file.missing_on_our_side = report.counts[Category.MISSING_ON_OUR_SIDE]
    settlement_file.missing_on_their_side = report.counts[Category.MISSING_ON_THEIR_SIDE]
    settlement_file.status = SettlementFile.Status.BALANCED if report.balanced else SettlementFile.Status.DIFFERENCES
    settlement_file.reconciled_at = timezone.now()
    settlement_file.save(
        update_fields=[
            "matched",
            "amount_mismatches",
            "missing_on_our_side",
            "missing_on_their_side",
            "status",
            "reconciled_at",
        ]
    )


# --- Export of a reconciliation ----------------------------------------------

REPORT_HEADER = [
    "category",
    "carrier_reference",
    "payment_id",
    "our_status",
    "currency",
    "our_amount_minor",
    "their_amount_minor",
    "difference_minor",
    "our_amount",
    "their_amount",
    "our_date",
    "their_date",
    "their_lines",
    "note",
]


def _major(amount: int | None, currency: str) -> Any:
    if amount is None or len(currency) != 3:
        return None
    return to_major(amount, currency)


def report_values(report: ReconciliationReport, *, category: str | None = None) -> Iterator[list[Any]]:
    for row in report.rows_in(category):
        yield [
            row.category.label,
            row.carrier_reference,
            row.payment_id,
            row.our_status,
            row.currency,
            row.our_amount_minor,
            row.their_amount_minor,
            row.difference_minor,
            _major(row.our_amount_minor, row.currency),
            _major(row.their_amount_minor, row.currency),
            row.our_date,
            row.their_date,
            row.their_lines,
            row.note,
        ]


def report_file_name(report: ReconciliationReport, file_format: str) -> str:
    settlement_file = report.settlement_file
    return (
        f"reconciliation_{settlement_file.carrier.slug}_{settlement_file.period_from}_{settlement_file.period_to}"
        f".{TableFormat(file_format).value}"
    )


def write_report(
    report: ReconciliationReport, *, file_format: str, out: IO[bytes], category: str | None = None
) -> None:
    """The reconciliation as CSV or XLSX, one line per carrier reference (or payment without one)."""
    rows = report_values(report, category=category)
    write_table(out, REPORT_HEADER, rows, file_format=file_format, title="reconciliation")
