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
from dataclasses import dataclass, field, replace
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
from reporting.models import ReconciliationNote, SettlementFile
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


def spreadsheet_row(data_row: int) -> int:
    """The row as a person sees it in the spreadsheet, where the header is row 1: data row 1 is row 2."""
    return data_row + 1


def _errors_of(result: Any) -> list[str]:
    numbered: list[tuple[int, str]] = []
    for invalid in result.invalid_rows:
        row = spreadsheet_row(invalid.number)
        for column, messages in invalid.error_dict.items():
            where = "" if column == "__all__" else f"{column}: "
            numbered.extend((row, f"row {row}: {where}{message}") for message in messages)
    for failed in result.error_rows:
        row = spreadsheet_row(failed.number)
        numbered.extend((row, f"row {row}: {error.error}") for error in failed.errors)
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
    notes: tuple[ReconciliationNote, ...] = ()  # finance's, oldest first

    @property
    def difference_minor(self) -> int | None:
        if self.our_amount_minor is None or self.their_amount_minor is None:
            return None
        return self.their_amount_minor - self.our_amount_minor

    @property
    def key(self) -> tuple[str, str]:
        """What names the line: its carrier reference, or our payment when we have no reference for it."""
        return line_key(self.carrier_reference, self.payment_id)

    @property
    def resolution(self) -> ReconciliationNote | None:
        """The note that resolved this difference, unless it was reopened since."""
        for note in reversed(self.notes):
            if note.action == ReconciliationNote.Action.RESOLVE:
                return note
            if note.action == ReconciliationNote.Action.REOPEN:
                return None
        return None

    @property
    def open(self) -> bool:
        """A difference nobody has resolved yet."""
        return self.category != Category.MATCHED and self.resolution is None


def line_key(carrier_reference: str, payment_id: str) -> tuple[str, str]:
    return (carrier_reference, "") if carrier_reference else ("", payment_id)


@dataclass(frozen=True)
class ReconciliationReport:
    settlement_file: SettlementFile
    rows: list[ReconciliationRow]
    counts: dict[Category, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return all(row.category == Category.MATCHED for row in self.rows)

    @property
    def open_differences(self) -> int:
        return sum(row.open for row in self.rows)

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
    notes: dict[tuple[str, str], list[ReconciliationNote]] = {}
    for kept in settlement_file.notes.select_related("author").order_by("id"):
        notes.setdefault(line_key(kept.carrier_reference, kept.payment_id), []).append(kept)
    rows = [replace(row, notes=tuple(notes.get(row.key, ()))) for row in rows]
    # What needs a look first: open differences, then resolved ones, then the matched lines.
    rows.sort(key=lambda row: (row.category == Category.MATCHED, not row.open, _ORDER[row.category], row.key))
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
    if report.balanced:
        settlement_file.status = SettlementFile.Status.BALANCED
    elif report.open_differences:
        settlement_file.status = SettlementFile.Status.DIFFERENCES
    else:
        settlement_file.status = SettlementFile.Status.RESOLVED
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


# --- Notes and resolutions ------------------------------------------------------


class NoteRefused(ValueError):
    """A note that cannot be kept, with a sentence for the person who wrote it."""


def note_reconciliation_line(
    *,
    settlement_file: SettlementFile,
    carrier_reference: str,
    payment_id: str,
    action: str,
    text: str,
    author: AbstractBaseUser,
) -> ReconciliationNote:
    """Keep finance's note on a line of the file's reconciliation: a note, a resolution or a reopening, with
    why (required), who and when. Only a difference can be resolved, and only a resolved one reopened."""
    text = text.strip()
    if not text:
        raise NoteRefused("Say why: the note is kept with your name and the time.")
    if action not in ReconciliationNote.Action.values:
        raise NoteRefused("Choose to add a note, resolve the difference or reopen it.")
    report = reconcile_settlement_file(settlement_file=settlement_file)
    key = line_key(carrier_reference.strip(), payment_id.strip())
    row = next((row for row in report.rows if row.key == key), None)
    if row is None:
        raise NoteRefused("This line is no longer in the reconciliation; reload the page.")
    if action == ReconciliationNote.Action.RESOLVE and row.category == Category.MATCHED:
        raise NoteRefused("This line matches: there is no difference to resolve.")
    if action == ReconciliationNote.Action.RESOLVE and row.resolution is not None:
        raise NoteRefused("This difference is already resolved.")
    if action == ReconciliationNote.Action.REOPEN and row.resolution is None:
        raise NoteRefused("This difference is not resolved: there is nothing to reopen.")
    note = ReconciliationNote.objects.create(
        file=settlement_file,
        carrier_reference=key[0],
        payment_id=key[1],
        action=action,
        text=text,
        author_id=author.pk,
    )
    reconcile_settlement_file(settlement_file=settlement_file)  # the file's status counts resolved lines
    return note


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
    "resolution",
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
            describe_resolution(row.resolution),
        ]


def describe_resolution(note: ReconciliationNote | None) -> str:
    """ "resolved by finance on 2026-05-03 12:00 UTC: <why>", or "" while the line is open."""
    if note is None:
        return ""
    return f"resolved by {note.author.get_username()} on {note.created_at:%Y-%m-%d %H:%M} UTC: {note.text}"


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
