"""Carrier settlement files: all-or-nothing import, reconciliation against our payments, its export."""

import csv
import io
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]

from carriers.models import Carrier
from payments.models import PaymentStatus, Refund
from reporting.models import ReconciliationNote, SettlementFile, SettlementLine
from reporting.services.reconciliation import (
    REPORT_HEADER,
    Category,
    NoteRefused,
    SettlementFileRejected,
    import_settlement_file,
    note_reconciliation_line,
    reconcile_settlement_file,
    write_report,
)
from tests.conftest import StaffClient
from tests.factories import CarrierFactory
from tests.reporting.conftest import MakePayment

pytestmark = pytest.mark.django_db

MAY_3 = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
MAY = {"period_from": date(2026, 5, 1), "period_to": date(2026, 5, 31)}


def csv_file(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def xlsx_file(*rows: list[Any]) -> bytes:
    workbook = Workbook()
    for row in rows:
        workbook.active.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


@pytest.fixture
def carrier(db: Any) -> Carrier:
    return CarrierFactory.create()


@pytest.fixture
def finance_user(db: Any) -> User:
    return User.objects.create_user("finance-clerk", is_staff=True)


def upload(carrier: Carrier, user: User, name: str, content: bytes, **period: date) -> SettlementFile:
    return import_settlement_file(carrier=carrier, name=name, content=content, uploaded_by=user, **period)


def test_a_csv_settlement_file_is_imported_line_by_line(carrier: Carrier, finance_user: User) -> None:
    content = csv_file(
        "carrier_reference,amount_minor,currency,date",
        "ref-1,99,GBP,2026-05-03",
        "ref-2,199,GBP,2026-05-04",
        "ref-2,-50,GBP,2026-05-20",
    )
    settlement_file = upload(carrier, finance_user, "acme-2026-05.csv", content)
    assert (settlement_file.name, settlement_file.row_count) == ("acme-2026-05.csv", 3)
    assert (settlement_file.period_from, settlement_file.period_to) == (date(2026, 5, 3), date(2026, 5, 20))
    lines = list(SettlementLine.objects.filter(file=settlement_file))
    assert [(line.row_number, line.carrier_reference, line.amount_minor) for line in lines] == [
        (1, "ref-1", 99),
        (2, "ref-2", 199),
        (3, "ref-2", -50),
    ]
    assert lines[0].raw == {"carrier_reference": "ref-1", "amount_minor": "99", "currency": "GBP", "date": "2026-05-03"}


def test_an_xlsx_settlement_file_with_amounts_in_major_units_is_imported(carrier: Carrier, finance_user: User) -> None:
    content = xlsx_file(
        ["Carrier_Reference", "Amount", "Currency", "Date"],  # column names are read case-blind
        ["ref-1", 0.99, "eur", datetime(2026, 5, 3)],
        [123456, 12.5, "EUR", "2026-05-04"],  # a numeric reference, as spreadsheets make them
        ["ref-3", 500, "JPY", date(2026, 5, 5)],  # the exponent comes from the currency
        [None, None, None, None],  # a trailing blank line
    )
    settlement_file = upload(carrier, finance_user, "acme.xlsx", content, **MAY)
    lines = SettlementLine.objects.filter(file=settlement_file)
    assert [(line.carrier_reference, line.amount_minor, line.currency, line.date) for line in lines] == [
        ("ref-1", 99, "EUR", date(2026, 5, 3)),
        ("123456", 1250, "EUR", date(2026, 5, 4)),
        ("ref-3", 500, "JPY", date(2026, 5, 5)),
    ]
    assert (settlement_file.row_count, settlement_file.period_from) == (3, date(2026, 5, 1))


def test_a_file_missing_a_column_is_refused_and_nothing_is_imported(carrier: Carrier, finance_user: User) -> None:
    content = csv_file("carrier_reference,amount_minor,currency", "ref-1,99,GBP")
    with pytest.raises(SettlementFileRejected) as rejected:
        upload(carrier, finance_user, "acme.csv", content)
    assert rejected.value.errors == ["missing column(s): date; the file has: carrier_reference, amount_minor, currency"]
    assert not SettlementFile.objects.exists()


def test_a_bad_amount_on_spreadsheet_row_4_is_refused_with_that_row_number_and_nothing_is_imported(
    carrier: Carrier, finance_user: User
) -> None:
    content = csv_file(
        "carrier_reference,amount_minor,currency,date",
        "ref-1,99,GBP,2026-05-03",
        "ref-2,99,GBP,2026-05-03",
        "ref-3,9.9x,GBP,2026-05-03",
        "ref-4,99,GBP,2026-05-03",
        "ref-5,99,XXY,03/05/2026",
    )
    with pytest.raises(SettlementFileRejected) as rejected:
        upload(carrier, finance_user, "acme.csv", content)
    errors = rejected.value.errors
    # The header is row 1 of the spreadsheet, as a person sees it: the third line under it is row 4.
    assert errors[0] == "row 4: amount_minor: '9.9x' is not a whole number of minor units"
    assert any(error.startswith("row 6: currency: 'XXY' is not an ISO 4217 currency code") for error in errors)
    assert "row 6: date: '03/05/2026' is not a date written as YYYY-MM-DD" in errors
    assert len(errors) == 3
    assert not SettlementFile.objects.exists()
    assert not SettlementLine.objects.exists()  # rows 2, 3 and 5 were fine, and are not half-imported either


def test_an_amount_with_more_decimals_than_its_currency_is_refused(carrier: Carrier, finance_user: User) -> None:
    content = csv_file("carrier_reference,amount,currency,date", "ref-1,0.999,EUR,2026-05-03")
    with pytest.raises(SettlementFileRejected) as rejected:
        upload(carrier, finance_user, "acme.csv", content)
    assert rejected.value.errors == ["row 2: amount: '0.999' has more decimals than EUR has (2)"]


def test_a_file_that_is_not_a_spreadsheet_is_refused(carrier: Carrier, finance_user: User) -> None:
    with pytest.raises(SettlementFileRejected) as rejected:
        upload(carrier, finance_user, "acme.xlsx", b"not a zip at all")
    assert rejected.value.errors[0].startswith("acme.xlsx cannot be read as XLSX")


@pytest.fixture
def hand_made(carrier: Carrier, make_payment: MakePayment) -> None:
    """Our side of May, for `carrier`, and a payment of another carrier."""
    make_payment(carrier=carrier, reference="same", created=MAY_3)
    partly = make_payment(
        carrier=carrier, reference="refunded-30", created=MAY_3, status=PaymentStatus.PARTIALLY_REFUNDED
    )
    Refund.objects.create(
        payment=partly, amount_minor=30, currency="GBP", status="succeeded", reason="x", requested_by="app:x"
    )
    platform_refund = make_payment(carrier=carrier, reference="platform", created=MAY_3, status=PaymentStatus.REFUNDED)
    Refund.objects.create(
        payment=platform_refund,
        amount_minor=99,
        currency="GBP",
        status="succeeded",
        reason="x",
        requested_by="app:x",
        via_carrier=False,  # we paid the player back ourselves: the carrier kept the 99
    )
    make_payment(carrier=carrier, reference="theirs-90", created=MAY_3)
    make_payment(carrier=carrier, reference="failed-but-charged", created=MAY_3, status=PaymentStatus.FAILED)
    make_payment(carrier=carrier, reference="not-in-their-file", created=MAY_3)
    make_payment(carrier=carrier, reference="failed-not-listed", created=MAY_3, status=PaymentStatus.FAILED)
    make_payment(carrier=carrier, reference="april", created=datetime(2026, 4, 30, 23, 0, tzinfo=UTC))
    make_payment(carrier=carrier, reference="late-april", created=datetime(2026, 4, 30, 23, 30, tzinfo=UTC))
    make_payment(carrier=CarrierFactory.create(), reference="other-carrier", created=MAY_3)


THEIR_FILE = csv_file(
    "carrier_reference,amount_minor,currency,date",
    "same,99,GBP,2026-05-03",
    "refunded-30,99,GBP,2026-05-03",
    "refunded-30,-30,GBP,2026-05-10",
    "platform,99,GBP,2026-05-03",
    "theirs-90,90,GBP,2026-05-03",
    "failed-but-charged,99,GBP,2026-05-03",
    "unknown-to-us,50,GBP,2026-05-04",
    "other-carrier,99,GBP,2026-05-04",
    "late-april,99,GBP,2026-05-01",
)


@pytest.mark.usefixtures("hand_made")
def test_reconciliation_sorts_every_reference_into_its_category(carrier: Carrier, finance_user: User) -> None:
    settlement_file = upload(carrier, finance_user, "acme.csv", THEIR_FILE, **MAY)
    report = reconcile_settlement_file(settlement_file=settlement_file)
    categories = {row.carrier_reference: row.category for row in report.rows}
    assert categories == {
        "same": Category.MATCHED,
        "refunded-30": Category.MATCHED,  # 99 - 30 refunded through the carrier, on two lines of theirs
        "platform": Category.MATCHED,  # refunded by the platform, so the carrier still collected 99
        "late-april": Category.MATCHED,  # ours from the day before; named in their file, so found
        "theirs-90": Category.AMOUNT_MISMATCH,
        "failed-but-charged": Category.AMOUNT_MISMATCH,
        "unknown-to-us": Category.MISSING_ON_OUR_SIDE,
        "other-carrier": Category.MISSING_ON_OUR_SIDE,  # another carrier's payment is not this carrier's
        "not-in-their-file": Category.MISSING_ON_THEIR_SIDE,
    }  # "failed-not-listed" and "april" are rightly absent from both sides
    mismatch = next(row for row in report.rows if row.carrier_reference == "theirs-90")
    assert (mismatch.our_amount_minor, mismatch.their_amount_minor, mismatch.difference_minor) == (99, 90, -9)
    failed = next(row for row in report.rows if row.carrier_reference == "failed-but-charged")
    assert (failed.our_amount_minor, failed.note) == (0, "our payment is failed")
    assert report.counts == {
        Category.MATCHED: 4,
        Category.AMOUNT_MISMATCH: 2,
        Category.MISSING_ON_OUR_SIDE: 2,
        Category.MISSING_ON_THEIR_SIDE: 1,
    }
    settlement_file.refresh_from_db()
    assert settlement_file.status == SettlementFile.Status.DIFFERENCES
    assert (settlement_file.matched, settlement_file.amount_mismatches) == (4, 2)
    assert (settlement_file.missing_on_our_side, settlement_file.missing_on_their_side) == (2, 1)


def test_a_file_that_agrees_with_us_is_balanced(
    carrier: Carrier, finance_user: User, make_payment: MakePayment
) -> None:
    make_payment(carrier=carrier, reference="only", created=MAY_3)
    content = csv_file("carrier_reference,amount,currency,date", "only,0.99,GBP,2026-05-03")
    settlement_file = upload(carrier, finance_user, "acme.csv", content, **MAY)
    assert settlement_file.status == SettlementFile.Status.BALANCED


@pytest.mark.usefixtures("hand_made")
def test_the_reconciliation_exports_as_xlsx_with_one_row_per_reference(carrier: Carrier, finance_user: User) -> None:
    settlement_file = upload(carrier, finance_user, "acme.csv", THEIR_FILE, **MAY)
    out = io.BytesIO()
    write_report(reconcile_settlement_file(settlement_file=settlement_file), file_format="xlsx", out=out)
    rows = [[cell.value for cell in row] for row in load_workbook(io.BytesIO(out.getvalue())).worksheets[0].iter_rows()]
    assert rows[0] == REPORT_HEADER
    assert len(rows) == 1 + 9
    by_reference = {row[1]: dict(zip(REPORT_HEADER, row, strict=True)) for row in rows[1:]}
    assert [row[0] for row in rows[1:3]] == ["amount mismatch", "amount mismatch"]  # what needs a look comes first
    mismatch = by_reference["theirs-90"]
    assert (mismatch["our_amount_minor"], mismatch["their_amount_minor"], mismatch["difference_minor"]) == (99, 90, -9)
    assert (mismatch["our_amount"], mismatch["their_amount"], mismatch["currency"]) == (0.99, 0.9, "GBP")
    assert by_reference["unknown-to-us"]["category"] == "missing on our side"
    assert by_reference["unknown-to-us"]["payment_id"] is None  # an empty cell
    assert by_reference["not-in-their-file"]["category"] == "missing on their side"
    assert by_reference["not-in-their-file"]["their_amount_minor"] is None
    assert by_reference["refunded-30"]["their_lines"] == 2


@pytest.mark.usefixtures("hand_made")
def test_finance_uploads_a_settlement_file_and_exports_its_reconciliation_in_the_admin(
    carrier: Carrier, staff_client: StaffClient
) -> None:
    finance = staff_client("finance")
    assert finance.get("/admin/reporting/settlementfile/add/").status_code == 200
    response = finance.post(
        "/admin/reporting/settlementfile/add/",
        {
            "carrier": carrier.pk,
            "file": SimpleUploadedFile("acme-may.csv", THEIR_FILE, content_type="text/csv"),
            "period_from": "2026-05-01",
            "period_to": "2026-05-31",
        },
    )
    settlement_file = SettlementFile.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/reporting/settlementfile/{settlement_file.pk}/change/"
    assert settlement_file.uploaded_by.get_username() == "finance"

    page = finance.get(response["Location"]).content.decode()
    for expected in ("amount mismatch", "missing on our side", "missing on their side", "theirs-90", "unknown-to-us"):
        assert expected in page, expected
    only_missing = finance.get(response["Location"] + "?category=missing_on_our_side").content.decode()
    assert "unknown-to-us" in only_missing
    assert "theirs-90" not in only_missing
    assert "acme-may.csv" in finance.get("/admin/reporting/settlementfile/").content.decode()

    export = finance.get(f"/admin/reporting/settlementfile/{settlement_file.pk}/reconciliation.xlsx")
    assert export.status_code == 200
    assert "attachment" in export["Content-Disposition"]
    sheet = load_workbook(io.BytesIO(b"".join(export.streaming_content))).worksheets[0]  # type: ignore[attr-defined]
    assert sheet.max_row == 1 + 9
    csv_export = finance.get(
        f"/admin/reporting/settlementfile/{settlement_file.pk}/reconciliation.csv?category=amount_mismatch"
    )
    lines = b"".join(csv_export.streaming_content).decode().splitlines()  # type: ignore[attr-defined]
    assert lines[0] == ",".join(REPORT_HEADER)
    assert len(lines) == 1 + 2


def test_an_upload_with_errors_lists_them_and_imports_nothing(carrier: Carrier, staff_client: StaffClient) -> None:
    finance = staff_client("finance")
    bad = csv_file("carrier_reference,amount_minor,currency,date", "a,1,GBP,2026-05-01", "b,x,GBP,2026-05-01")
    response = finance.post(
        "/admin/reporting/settlementfile/add/",
        {"carrier": carrier.pk, "file": SimpleUploadedFile("bad.csv", bad, content_type="text/csv")},
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing was imported" in page
    assert "row 3: amount_minor: &#x27;x&#x27; is not a whole number of minor units" in page
    assert not SettlementFile.objects.exists()


def test_only_finance_uploads_settlement_files(carrier: Carrier, staff_client: StaffClient) -> None:
    assert staff_client("support").get("/admin/reporting/settlementfile/add/").status_code == 403
    assert staff_client("operations").get("/admin/reporting/settlementfile/add/").status_code == 403


# --- Notes and resolutions of differences ---------------------------------------------------------------------


def differences(settlement_file: SettlementFile) -> dict[str, Any]:
    report = reconcile_settlement_file(settlement_file=settlement_file)
    return {row.carrier_reference or row.payment_id: row for row in report.rows if row.category != Category.MATCHED}


@pytest.mark.usefixtures("hand_made")
def test_finance_resolves_every_difference_with_a_reason_and_the_file_is_resolved(
    carrier: Carrier, finance_user: User
) -> None:
    settlement_file = upload(carrier, finance_user, "acme.csv", THEIR_FILE, **MAY)
    lines = differences(settlement_file)
    assert len(lines) == 5
    assert all(row.open for row in lines.values())
    for name, row in lines.items():
        note_reconciliation_line(
            settlement_file=settlement_file,
            carrier_reference=row.carrier_reference,
            payment_id=row.payment_id,
            action="resolve",
            text=f"checked {name} with the carrier",
            author=finance_user,
        )
    resolved = differences(settlement_file)
    assert all(not row.open for row in resolved.values())
    resolution = resolved["theirs-90"].resolution
    assert (resolution.author, resolution.text) == (finance_user, "checked theirs-90 with the carrier")
    assert resolution.created_at is not None
    settlement_file.refresh_from_db()
    assert settlement_file.status == SettlementFile.Status.RESOLVED

    note_reconciliation_line(
        settlement_file=settlement_file,
        carrier_reference="theirs-90",
        payment_id="",
        action="reopen",
        text="their credit note never came",
        author=finance_user,
    )
    reopened = differences(settlement_file)["theirs-90"]
    assert reopened.open
    assert [note.action for note in reopened.notes] == ["resolve", "reopen"]  # the history is kept
    settlement_file.refresh_from_db()
    assert settlement_file.status == SettlementFile.Status.DIFFERENCES


@pytest.mark.usefixtures("hand_made")
@pytest.mark.parametrize(
    ("reference", "action", "text", "refusal"),
    [
        ("theirs-90", "resolve", "   ", "Say why"),
        ("same", "resolve", "fine", "there is no difference to resolve"),
        ("theirs-90", "reopen", "again", "not resolved"),
        ("not-a-line", "note", "hello", "no longer in the reconciliation"),
    ],
)
def test_a_note_without_a_reason_or_on_no_difference_is_refused_in_plain_words(
    carrier: Carrier, finance_user: User, reference: str, action: str, text: str, refusal: str
) -> None:
    settlement_file = upload(carrier, finance_user, "acme.csv", THEIR_FILE, **MAY)
    with pytest.raises(NoteRefused, match=refusal):
        note_reconciliation_line(
            settlement_file=settlement_file,
            carrier_reference=reference,
            payment_id="",
            action=action,
            text=text,
            author=finance_user,
        )
    assert not ReconciliationNote.objects.exists()


@pytest.mark.usefixtures("hand_made")
def test_finance_resolves_a_mismatch_on_the_reconciliation_screen_and_sees_who_when_and_why(
    carrier: Carrier, finance_user: User, staff_client: StaffClient
) -> None:
    settlement_file = upload(carrier, finance_user, "acme.csv", THEIR_FILE, **MAY)
    page = f"/admin/reporting/settlementfile/{settlement_file.pk}/change/"
    notes = f"/admin/reporting/settlementfile/{settlement_file.pk}/notes/"
    why = {"carrier_reference": "theirs-90", "payment_id": "", "action": "resolve", "text": "9p fee per their contract"}
    assert staff_client("operations").post(notes, why).status_code == 403  # operations only looks
    finance = staff_client("finance")
    assert "resolve or add a note" in finance.get(page).content.decode()
    response = finance.post(notes, why)
    assert response.status_code == 302
    assert response["Location"] == page
    shown = finance.get(page).content.decode()
    assert "resolved by finance, " in shown
    assert "UTC: 9p fee per their contract" in shown
    assert "4 not resolved yet" in shown
    refused = finance.post(notes, {**why, "carrier_reference": "failed-but-charged", "text": ""}, follow=True)
    assert "Say why" in refused.content.decode()

    export = finance.get(f"/admin/reporting/settlementfile/{settlement_file.pk}/reconciliation.csv")
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))  # type: ignore[attr-defined]
    resolution = {row[1]: row[-1] for row in rows[1:]}
    assert resolution["theirs-90"].startswith("resolved by finance on ")
    assert resolution["theirs-90"].endswith(" UTC: 9p fee per their contract")
    assert resolution["failed-but-charged"] == ""
