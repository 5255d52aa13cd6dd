"""Finance exports: filters, streamed CSV and XLSX, background jobs with progress, the admin screens."""

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from openpyxl import load_workbook  # type: ignore[import-untyped]

from carriers.models import Carrier
from payments.models import LedgerLine, OutboxMessage, Payment, Refund
from playpay.tables import TableFormat
from reporting.models import ExportJob, ExportKind
from reporting.services import exports
from reporting.services.exports import ExportFilters
from tests.conftest import Shop, StaffClient
from tests.reporting.conftest import MakePayment

pytestmark = pytest.mark.django_db

TRANSACTION_HEADER = [
    "payment_id",
    "created_at_utc",
    "app",
    "carrier",
    "country",
    "msisdn_masked",
    "price_point",
    "amount_minor",
    "currency",
    "amount",
    "status",
    "carrier_reference",
    "refunded_minor",
]
MAY_3 = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)


def xlsx_rows(content: bytes) -> list[list[Any]]:
    sheet = load_workbook(io.BytesIO(content)).worksheets[0]
    return [[cell.value for cell in row] for row in sheet.iter_rows()]


def csv_rows(content: bytes | str) -> list[list[str]]:
    text = content.decode() if isinstance(content, bytes) else content
    return list(csv.reader(io.StringIO(text)))


def export_bytes(kind: str, file_format: str, **filters: Any) -> bytes:
    out = io.BytesIO()
    exports.write_export(kind=kind, filters=ExportFilters(**filters), file_format=file_format, out=out)
    return out.getvalue()


@pytest.fixture
def carrier(shop: Shop) -> Carrier:
    return shop.carrier


def test_an_xlsx_export_of_n_payments_has_the_header_and_n_rows(carrier: Carrier, make_payment: MakePayment) -> None:
    for n in range(25):
        make_payment(carrier=carrier, reference=f"ref-{n}", created=MAY_3)
    rows = xlsx_rows(export_bytes(ExportKind.TRANSACTIONS, TableFormat.XLSX))
    assert rows[0] == TRANSACTION_HEADER
    assert len(rows) == 1 + 25
    first = dict(zip(TRANSACTION_HEADER, rows[1], strict=True))
    payment = Payment.objects.order_by("pk").first()
    assert payment is not None
    assert first["payment_id"] == str(payment.public_id)
    assert first["created_at_utc"] == datetime(2026, 5, 3, 12, 0)  # XLSX has no time zones: UTC, said in the header
    assert first["msisdn_masked"] == "+44740*****56"
    assert (first["amount_minor"], first["currency"], first["amount"]) == (99, "GBP", 0.99)
    assert (first["carrier"], first["country"], first["status"]) == (carrier.slug, "GB", "succeeded")


def test_a_csv_export_is_streamed_line_by_line(carrier: Carrier, make_payment: MakePayment) -> None:
    for n in range(25):
        make_payment(carrier=carrier, reference=f"ref-{n}", created=MAY_3)
    lines = exports.stream_csv(kind=ExportKind.TRANSACTIONS, filters=ExportFilters())
    assert isinstance(lines, Iterator)  # a generator for a StreamingHttpResponse, not a built document
    assert next(lines) == (",".join(TRANSACTION_HEADER) + "\r\n").encode()
    rows = csv_rows(b"".join(lines))
    assert len(rows) == 25
    assert rows[0][TRANSACTION_HEADER.index("amount")] == "0.99"
    assert rows[0][TRANSACTION_HEADER.index("created_at_utc")] == "2026-05-03 12:00:00"


def test_an_export_reads_its_rows_in_a_constant_number_of_queries(carrier: Carrier, make_payment: MakePayment) -> None:
    for n in range(30):
        make_payment(carrier=carrier, reference=f"ref-{n}", created=MAY_3)
    with CaptureQueriesContext(connection) as queries:
        assert len(xlsx_rows(export_bytes(ExportKind.TRANSACTIONS, TableFormat.XLSX))) == 31
    assert len(queries) <= 2  # one chunked read with its joins, never a query per row


def test_exports_filter_by_period_carrier_country_and_app(
    shop: Shop, german_carrier: Carrier, make_payment: MakePayment
) -> None:
    make_payment(carrier=shop.carrier, reference="may-uk", created=MAY_3, app=shop.app)
    make_payment(carrier=shop.carrier, reference="april-uk", created=datetime(2026, 4, 30, 23, 59, tzinfo=UTC))
    make_payment(carrier=shop.carrier, reference="june-uk", created=datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    make_payment(carrier=german_carrier, reference="may-de", created=MAY_3, currency="EUR")

    def references(**filters: Any) -> set[str]:
        rows = csv_rows(export_bytes(ExportKind.TRANSACTIONS, TableFormat.CSV, **filters))
        return {row[TRANSACTION_HEADER.index("carrier_reference")] for row in rows[1:]}

    may = {"date_from": date(2026, 5, 1), "date_to": date(2026, 5, 31)}
    assert references() == {"may-uk", "april-uk", "june-uk", "may-de"}
    assert references(**may) == {"may-uk", "may-de"}  # both ends are whole UTC days
    assert references(**may, carrier=shop.carrier.slug) == {"may-uk"}
    assert references(country="DE") == {"may-de"}
    assert references(app=shop.app.name) == {"may-uk"}


def test_refunds_and_ledger_lines_are_exported_with_their_payment(shop: Shop) -> None:
    paid = shop.pay(flow="one_click")
    with shop.after_commit(execute=True):
        response = shop.client.post(
            f"/api/v1/payments/{paid['id']}/refunds/",
            {"reason": "=HYPERLINK(evil)", "amount_minor": 30},
            format="json",
            HTTP_IDEMPOTENCY_KEY="refund-1",
        )
    assert response.status_code in (200, 201, 202), response.content

    refunds = csv_rows(export_bytes(ExportKind.REFUNDS, TableFormat.CSV))
    header, row = refunds[0], dict(zip(refunds[0], refunds[1], strict=True))
    assert len(refunds) == 2
    assert (row["payment_id"], row["amount_minor"], row["amount"]) == (paid["id"], "30", "0.30")
    assert row["refund_id"] == str(Refund.objects.get().public_id)
    assert header[-2:] == ["reason", "requested_by"]

    ledger = xlsx_rows(export_bytes(ExportKind.LEDGER, TableFormat.XLSX))
    assert ledger[0] == [
        "entry_id",
        "entry_kind",
        "payment_id",
        "account",
        "amount_minor",
        "currency",
        "amount",
        "created_at_utc",
    ]
    assert len(ledger) - 1 == LedgerLine.objects.count()
    assert {row[1] for row in ledger[1:]} == {"charge", "refund"}
    assert sum(row[4] for row in ledger[1:]) == 0  # balanced, as posted


def test_text_from_outside_never_becomes_a_spreadsheet_formula(shop: Shop) -> None:
    paid = Payment.objects.get(public_id=shop.pay(flow="one_click")["id"])
    Refund.objects.create(
        payment=paid, amount_minor=10, currency="GBP", reason="=HYPERLINK(evil)", requested_by="app:x"
    )
    rows = csv_rows(export_bytes(ExportKind.REFUNDS, TableFormat.CSV))
    assert rows[1][rows[0].index("reason")] == "'=HYPERLINK(evil)"
    sheet = load_workbook(io.BytesIO(export_bytes(ExportKind.REFUNDS, TableFormat.XLSX))).worksheets[0]
    reason = sheet.cell(row=2, column=rows[0].index("reason") + 1)
    assert (reason.value, reason.data_type) == ("=HYPERLINK(evil)", "s")  # text, not a formula


def test_a_background_export_reports_its_progress_and_ends_done_with_a_file(
    carrier: Carrier, make_payment: MakePayment, django_user_model: Any
) -> None:
    for n in range(25):
        make_payment(carrier=carrier, reference=f"ref-{n}", created=MAY_3)
    user = django_user_model.objects.create_user("finance-user", is_staff=True)
    job = ExportJob.objects.create(user=user, kind=ExportKind.TRANSACTIONS, file_format=TableFormat.XLSX)

    with CaptureQueriesContext(connection) as queries:
        exports.run_export_job(job_id=job.pk, every=10)
    progress = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "reporting_exportjob" SET "rows_done"')]
    assert len(progress) == 2  # after 10 and after 20 rows, each a heartbeat
    assert '"rows_done" = 10, "heartbeat_at"' in progress[0]
    assert '"rows_done" = 20, "heartbeat_at"' in progress[1]

    job.refresh_from_db()
    assert (job.status, job.rows_done, job.rows_total, job.progress_percent) == ("done", 25, 25, 100)
    assert (job.attempts, job.finished_at is not None) == (1, True)
    with job.file.open("rb") as stored:
        rows = xlsx_rows(stored.read())
    assert rows[0] == TRANSACTION_HEADER
    assert len(rows) == 26


def test_running_a_finished_export_job_again_changes_nothing(
    carrier: Carrier, make_payment: MakePayment, django_user_model: Any
) -> None:
    make_payment(carrier=carrier, reference="ref-1", created=MAY_3)
    user = django_user_model.objects.create_user("finance-user", is_staff=True)
    job = ExportJob.objects.create(user=user, kind=ExportKind.TRANSACTIONS, file_format=TableFormat.CSV)
    first = exports.run_export_job(job_id=job.pk)
    again = exports.run_export_job(job_id=job.pk)
    assert (again.status, again.file.name, again.finished_at) == ("done", first.file.name, first.finished_at)


@pytest.mark.django_db(transaction=True)  # the worker streams from the server while it reports on another connection
def test_finance_queues_a_background_export_in_the_admin_a_worker_runs_it_and_finance_downloads_it(
    shop: Shop, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    for n in range(3):
        make_payment(carrier=shop.carrier, reference=f"ref-{n}", created=MAY_3)
    make_payment(carrier=shop.carrier, reference="other-month", created=datetime(2026, 7, 1, tzinfo=UTC))
    finance = staff_client("superuser")  # a transactional test has no roles: the migrations' groups are emptied
    assert finance.get("/admin/reporting/exportjob/add/").status_code == 200
    form = {
        "kind": "transactions",
        "file_format": "csv",
        "date_from": "2026-05-01",
        "date_to": "2026-05-31",
        "carrier": shop.carrier.slug,
    }
    response = finance.post("/admin/reporting/exportjob/add/", form)
    assert response.status_code == 302
    job = ExportJob.objects.get()
    # The request only queued it: nothing ran, nothing was handed to an in-process worker.
    assert (job.status, job.attempts, job.rows_done, job.file.name) == ("pending", 0, 0, "")
    assert not OutboxMessage.objects.exists()
    assert "queued" in finance.get("/admin/reporting/exportjob/").content.decode()

    assert exports.run_queued_export_jobs() == 1  # what the scheduler's worker thread does
    job.refresh_from_db()
    assert (job.status, job.rows_done, job.user.get_username()) == ("done", 3, "superuser")
    assert job.filters["carrier"] == shop.carrier.slug
    listing = finance.get("/admin/reporting/exportjob/").content.decode()
    assert "100% (3 of 3 rows)" in listing
    assert f"/admin/reporting/exportjob/{job.pk}/download/" in listing
    page = finance.get(f"/admin/reporting/exportjob/{job.pk}/change/").content.decode()
    assert "from 2026-05-01, to 2026-05-31, carrier" in page
    download = finance.get(f"/admin/reporting/exportjob/{job.pk}/download/")
    assert download.status_code == 200
    assert "attachment" in download["Content-Disposition"]
    assert len(csv_rows(b"".join(download.streaming_content))) == 4  # type: ignore[attr-defined]


@pytest.mark.broker
def test_with_a_broker_the_request_hands_the_export_to_a_worker_through_the_outbox(
    shop: Shop, staff_client: StaffClient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = staff_client("finance").post(
            "/admin/reporting/exportjob/add/", {"kind": "ledger", "file_format": "xlsx"}
        )
    assert response.status_code == 302
    job = ExportJob.objects.get()
    assert (job.status, job.attempts) == ("pending", 0)
    message = OutboxMessage.objects.get()
    assert (message.task, message.kwargs, message.queue) == (
        "reporting.tasks.run_export",
        {"job_id": job.pk},
        "default",
    )
    assert len(sent) == 1  # sent to the broker after the commit, never run here


def test_a_small_export_downloads_at_once_from_the_admin(
    shop: Shop, make_payment: MakePayment, staff_client: StaffClient
) -> None:
    make_payment(carrier=shop.carrier, reference="ref-1", created=MAY_3)
    operations = staff_client("operations")
    response = operations.post(
        "/admin/reporting/exportjob/download-now/", {"kind": "transactions", "file_format": "xlsx"}
    )
    assert response.status_code == 200
    rows = xlsx_rows(b"".join(response.streaming_content))  # type: ignore[attr-defined]
    assert rows[0] == TRANSACTION_HEADER
    assert len(rows) == 2
    assert not ExportJob.objects.exists()


def test_a_large_export_must_run_in_the_background(
    shop: Shop, make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch, staff_client: StaffClient
) -> None:
    monkeypatch.setattr(exports, "DIRECT_DOWNLOAD_LIMIT", 2)
    for n in range(3):
        make_payment(carrier=shop.carrier, reference=f"ref-{n}", created=MAY_3)
    response = staff_client("finance").post(
        "/admin/reporting/exportjob/download-now/", {"kind": "transactions", "file_format": "csv"}
    )
    assert response.status_code == 200
    assert "run the export in the background" in response.content.decode()


def test_support_cannot_export(staff_client: StaffClient) -> None:
    support = staff_client("support")
    assert support.get("/admin/reporting/exportjob/add/").status_code == 403
    assert support.post("/admin/reporting/exportjob/download-now/", {"kind": "transactions"}).status_code == 403


def test_filters_are_kept_with_the_job_and_described_in_plain_words() -> None:
    filters = ExportFilters(date_from=date(2026, 5, 1), carrier="acme-uk", app="Space Game")
    assert ExportFilters.from_json(filters.as_json()) == filters
    assert filters.describe() == "from 2026-05-01, carrier acme-uk, app Space Game"
    assert ExportFilters().describe() == "everything"
