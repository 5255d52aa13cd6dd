"""Finance exports: filters, streamed CSV and XLSX, background jobs with progress, the admin screens."""

import csv
import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from openpyxl import load_workbook  # type: ignore[import-untyped]

from carriers.models import Carrier
from payments.figures import FIGURES
from payments.models import LedgerLine, OutboxMessage, Payment, Refund, Reversal
from playpay.redaction import mask_msisdn, sql_mask_msisdn
from playpay.tables import TableFormat, csv_lines, write_table
from reporting.models import ExportJob, ExportKind
from reporting.services import exports
from reporting.services.exports import ExportFilters
from subscriptions.models import SubscriptionCharge
from tests.concurrency import client_sessions, sessions_drop_to
from tests.conftest import Shop, StaffClient
from tests.deploy.processes import Processes, wait_for
from tests.reporting.conftest import MakePayment, reverse_paid, subscribe_and_renew

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]

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
    "failure_code",
    "carrier_reference",
    "counts_as_revenue",
    "refunded_minor",
    "refunded",
    "reversed_minor",
    "reversed",
    *(column for figure in FIGURES for column in (f"{figure}_minor", figure)),
    "charged_at_utc",
    "refunded_at_utc",
    "reversed_at_utc",
    "subscription_id",
    "subscription_charge",
    "period_index",
    "period_start_utc",
    "period_end_utc",
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
    with CaptureQueriesContext(connection) as queries:  # the rows formatted in Python (SQLite's path)
        assert len(list(exports.export_rows(kind=ExportKind.TRANSACTIONS, filters=ExportFilters()))) == 30
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
    assert ledger[0][:7] == ["entry_id", "entry_kind", "payment_id", "account", "amount_minor", "currency", "amount"]
    assert ledger[0][-1] == "created_at_utc"
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


@pytest.fixture
def progress_log() -> Iterator[Callable[[], list[int]]]:
    """Every `rows_done` written to an export job, whichever connection wrote it (a trigger keeps them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE test_export_progress (id serial PRIMARY KEY, rows_done integer);"
            " CREATE FUNCTION test_log_export_progress() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO test_export_progress (rows_done) VALUES (NEW.rows_done); RETURN NEW; END $$;"
            " CREATE TRIGGER test_export_progress AFTER UPDATE OF rows_done ON reporting_exportjob"
            " FOR EACH ROW EXECUTE FUNCTION test_log_export_progress()"
        )

    def logged() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rows_done FROM test_export_progress ORDER BY id")
            return [row[0] for row in cursor.fetchall()]

    yield logged
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER test_export_progress ON reporting_exportjob; DROP FUNCTION test_log_export_progress();"
            " DROP TABLE test_export_progress"
        )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # the progress of a COPY is written on a second connection
@pytest.mark.parametrize("file_format", TableFormat.values)
def test_a_background_export_reports_its_progress_while_it_runs_and_ends_done_with_a_file(
    file_format: str,
    carrier: Carrier,
    make_payment: MakePayment,
    django_user_model: Any,
    progress_log: Callable[[], list[int]],
) -> None:
    for n in range(25):
        make_payment(carrier=carrier, reference=f"ref-{n}", created=MAY_3)
    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True), file_format)
    finished = exports.run_export_job(job_id=job.pk, every=10)
    assert (finished.status, finished.rows_done, finished.rows_total, finished.error) == ("done", 25, 25, "")
    assert (finished.attempts, finished.progress_percent, finished.finished_at is not None) == (1, 100, True)
    assert progress_log() == [0, 10, 20, 25]  # claimed, two heartbeats, done
    with finished.file.open("rb") as stored:
        content = stored.read()
    rows = csv_rows(content) if file_format == TableFormat.CSV else xlsx_rows(content)
    assert rows[0] == TRANSACTION_HEADER
    assert len(rows) == 26


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # the heartbeat is written on a second connection
def test_a_worker_keeps_its_heartbeat_while_a_phase_reports_no_rows(
    carrier: Carrier, make_payment: MakePayment, django_user_model: Any, settings: Any
) -> None:
    settings.EXPORT_HEARTBEAT_TIMEOUT = 1  # a beat every quarter of a second
    make_payment(carrier=carrier, reference="ref-1", created=MAY_3)
    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True))
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE test_export_beats (id serial PRIMARY KEY, rows_done integer);"
            " CREATE FUNCTION test_log_export_beat() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO test_export_beats (rows_done) VALUES (NEW.rows_done); RETURN NEW; END $$;"
            " CREATE TRIGGER test_export_beats AFTER UPDATE OF heartbeat_at ON reporting_exportjob"
            " FOR EACH ROW EXECUTE FUNCTION test_log_export_beat()"
        )
    locked, released = threading.Event(), threading.Event()

    def hold_the_payments_table() -> None:
        # The export's first statement (its row estimate) waits behind this lock: a phase with no rows to report.
        with psycopg.connect(**_libpq(connection.settings_dict), autocommit=False) as other:
            other.execute("LOCK TABLE payments_payment IN ACCESS EXCLUSIVE MODE")
            locked.set()
            released.wait(timeout=30)

    holder = threading.Thread(target=hold_the_payments_table)
    holder.start()
    try:
        assert locked.wait(timeout=30)
        threading.Timer(1.5, released.set).start()
        finished = exports.run_export_job(job_id=job.pk)
    finally:
        released.set()
        holder.join(timeout=30)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM test_export_beats WHERE rows_done = 0")
        (silent_phase_beats,) = cursor.fetchone()
        cursor.execute(
            "DROP TRIGGER test_export_beats ON reporting_exportjob; DROP FUNCTION test_log_export_beat();"
            " DROP TABLE test_export_beats"
        )
    assert (finished.status, finished.attempts, finished.rows_done) == ("done", 1, 1)
    # The claim and the estimate beat once each; the timer beat while the estimate waited for 1.5 s.
    assert silent_phase_beats >= 4


def _libpq(settings_dict: dict[str, Any]) -> dict[str, Any]:
    return {
        "dbname": settings_dict["NAME"],
        "user": settings_dict["USER"],
        "host": settings_dict["HOST"] or None,
        "port": settings_dict["PORT"] or None,
        "password": settings_dict["PASSWORD"] or None,
    }


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


# --- COPY and the Python path write the same file ------------------------------------------------------------

AWKWARD_TEXTS = [
    "=HYPERLINK(evil)",
    "+cmd",
    "-2+3",
    "@SUM(A1)",
    "\tindented",
    "-5",
    "+44740*****56",
    '"quoted", with a comma',
    "two\nlines",
    "crlf\r\nline",
    "ünïcödé ✓",
    "",
]


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_database_masks_numbers_of_every_length_as_python_does() -> None:
    numbers = ["+1234", "+123456", "+3581234", "+35812345", "+3581234567", "+447400123456", "+123456789012345"]
    with connection.cursor() as cursor:
        # The expression is our own; the numbers are bound.
        statement = f"SELECT {sql_mask_msisdn('n')} FROM unnest(%s::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i"  # noqa: S608
        cursor.execute(statement, [numbers])
        masked = [row[0] for row in cursor.fetchall()]
    assert masked == [mask_msisdn(number) for number in numbers]


def python_csv(kind: str, **filters: Any) -> bytes:
    """The CSV as the rows formatted in Python give it (the SQLite path)."""
    header = exports.export_header(kind=kind)
    rows = exports.export_rows(kind=kind, filters=ExportFilters(**filters))
    return "".join(csv_lines(header, rows)).encode()


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ExportKind.values)
def test_the_csv_postgresql_writes_is_byte_for_byte_the_one_python_writes(
    kind: str, shop: Shop, make_payment: MakePayment, german_carrier: Carrier
) -> None:
    for number, text in enumerate(AWKWARD_TEXTS):
        payment = make_payment(
            carrier=shop.carrier, reference=text, created=datetime(2026, 5, 3, 23, 59, 59, 123456, tzinfo=UTC)
        )
        Refund.objects.create(
            payment=payment,
            amount_minor=number + 1,
            currency="GBP",
            reason=text,
            requested_by=text,
            via_carrier=number % 2 == 0,
        )
    make_payment(carrier=german_carrier, reference="de", created=MAY_3, currency="EUR", amount_minor=1999)
    for currency, amount in (("JPY", 500), ("KWD", 1234), ("EUR", 7)):  # exponents 0, 3 and 2
        payment = make_payment(carrier=shop.carrier, created=MAY_3, currency=currency, amount_minor=amount)
        Reversal.objects.create(payment=payment, reason=f"={currency}", requested_by="staff:ops", via_carrier=False)
    shop.pay(flow="one_click")  # with its ledger lines
    reverse_paid(shop, shop.pay("key-2", flow="one_click")["id"], reason="-2+3")  # posted
    subscribe_and_renew(shop)  # an opt-in and a renewal, with their subscription and period

    assert exports.uses_copy()
    copied = b"".join(exports.stream_csv(kind=kind, filters=ExportFilters()))
    assert copied == python_csv(kind)
    may: dict[str, Any] = {"date_from": date(2026, 5, 1), "date_to": date(2026, 5, 31), "carrier": shop.carrier.slug}
    assert b"".join(exports.stream_csv(kind=kind, filters=ExportFilters(**may))) == python_csv(kind, **may)
    assert len(csv_rows(copied)) > 1


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ExportKind.values)
def test_the_xlsx_postgresql_writes_holds_the_values_python_writes(
    kind: str, shop: Shop, make_payment: MakePayment
) -> None:
    # Not "\r": XlsxWriter writes it as the escape _x000D_, which Excel reads back and openpyxl does not.
    texts = [text for text in AWKWARD_TEXTS if "\r" not in text]
    for number, text in enumerate([*texts, "<b>&amp;</b>", "bell\x07"]):
        payment = make_payment(
            carrier=shop.carrier, reference=text, created=datetime(2026, 5, 3, 23, 59, 59, tzinfo=UTC)
        )
        Refund.objects.create(
            payment=payment,
            amount_minor=number + 1,
            currency="GBP",
            reason=text,
            requested_by=text,
            via_carrier=number % 2 == 0,
        )
    for currency, amount in (("JPY", 500), ("KWD", 1234)):
        payment = make_payment(carrier=shop.carrier, created=MAY_3, currency=currency, amount_minor=amount)
        Reversal.objects.create(payment=payment, reason="<b>", requested_by="staff:ops", via_carrier=True)
    shop.pay(flow="one_click")
    reverse_paid(shop, shop.pay("key-2", flow="one_click")["id"])
    subscribe_and_renew(shop)

    python_made = io.BytesIO()
    header, rows = exports.export_header(kind=kind), exports.export_rows(kind=kind, filters=ExportFilters())
    write_table(python_made, header, rows, file_format=TableFormat.XLSX, title=kind)
    copied = xlsx_rows(export_bytes(kind, TableFormat.XLSX))
    assert copied == xlsx_rows(python_made.getvalue())
    assert len(copied) > 1
    sheet = load_workbook(io.BytesIO(export_bytes(kind, TableFormat.XLSX))).worksheets[0]
    assert {cell.data_type for row in sheet.iter_rows(min_row=2) for cell in row if isinstance(cell.value, str)} == {
        "s"
    }  # texts are texts, never formulas


@pytest.mark.parametrize("file_format", TableFormat.values)
def test_subscription_charges_are_exported_with_their_subscription_and_period(shop: Shop, file_format: str) -> None:
    # An app's own metadata may say "subscription": the payment is still no subscription's charge.
    one_off = shop.pay("one-off", flow="one_click", metadata={"subscription": "gold"})["id"]
    subscription = subscribe_and_renew(shop)
    content = export_bytes(ExportKind.TRANSACTIONS, file_format)
    rows = csv_rows(content) if file_format == TableFormat.CSV else xlsx_rows(content)
    assert rows[0] == TRANSACTION_HEADER
    by_payment = {row[0]: dict(zip(TRANSACTION_HEADER, row, strict=True)) for row in rows[1:]}
    empty = "" if file_format == TableFormat.CSV else None
    subscription_columns = ("subscription_id", "subscription_charge", "period_index", "period_start_utc")
    assert [by_payment[one_off][name] for name in (*subscription_columns, "period_end_utc")] == [empty] * 5

    charges = SubscriptionCharge.objects.filter(subscription=subscription).order_by("period_index")
    assert [charge.kind for charge in charges] == ["opt_in", "renewal"]
    for charge in charges:
        assert charge.payment is not None
        row = by_payment[str(charge.payment.public_id)]
        assert charge.period_start is not None
        assert charge.period_end is not None
        start, end = (
            moment.astimezone(UTC).replace(tzinfo=None, microsecond=0)
            for moment in (charge.period_start, charge.period_end)
        )
        expected: list[Any]
        if file_format == TableFormat.CSV:
            expected = [
                str(subscription.public_id),
                charge.kind,
                str(charge.period_index),
                f"{start:%Y-%m-%d %H:%M:%S}",
            ]
            assert row["period_end_utc"] == f"{end:%Y-%m-%d %H:%M:%S}"
        else:
            expected = [str(subscription.public_id), charge.kind, charge.period_index, start]
            assert row["period_end_utc"] == end
        assert [row[name] for name in subscription_columns] == expected


@pytest.mark.postgres
def test_amounts_are_in_major_units_of_each_currency_beside_the_minor_units(
    shop: Shop, make_payment: MakePayment
) -> None:
    for currency, amount in (("JPY", 500), ("KWD", 1234), ("GBP", 5)):
        make_payment(carrier=shop.carrier, created=MAY_3, currency=currency, amount_minor=amount)
    rows = csv_rows(export_bytes(ExportKind.TRANSACTIONS, TableFormat.CSV))
    at = {name: rows[0].index(name) for name in ("amount_minor", "currency", "amount")}
    assert [(row[at["amount_minor"]], row[at["currency"]], row[at["amount"]]) for row in rows[1:]] == [
        ("500", "JPY", "500"),
        ("1234", "KWD", "1.234"),
        ("5", "GBP", "0.05"),
    ]


# --- Jobs whose worker died ----------------------------------------------------------------------------------


def queued_job(user: Any, file_format: str = TableFormat.CSV, kind: str = ExportKind.TRANSACTIONS) -> ExportJob:
    return exports.start_export_job(user=user, kind=kind, filters=ExportFilters(), file_format=file_format)


def payments_in_parts(shop: Shop, make_payment: MakePayment, count: int) -> None:
    """`count` payments with a refund and a reversal each, every fifteenth paid and reversed through the API
    (with their ledger lines), so that every part of each export holds rows with ledger figures and without."""
    for n in range(count):
        if n % 15 == 0:
            payment = Payment.objects.get(public_id=shop.pay(f"key-{n}", flow="one_click")["id"])
            reverse_paid(shop, str(payment.public_id), reason=f"v{n}")
        else:
            payment = make_payment(carrier=shop.carrier, reference=f"ref-{n}", created=MAY_3 + timedelta(minutes=n))
            Reversal.objects.create(payment=payment, reason=f"v{n}", requested_by="staff:ops", via_carrier=False)
        Refund.objects.create(
            payment=payment, amount_minor=n + 1, currency="GBP", reason=f"r{n}", requested_by="ops", via_carrier=False
        )


@pytest.mark.postgres
@pytest.mark.journal  # the payments paid through the API are journaled
@pytest.mark.django_db(transaction=True)  # each part is read by a connection of its own
@pytest.mark.parametrize("kind", [ExportKind.TRANSACTIONS, ExportKind.REFUNDS, ExportKind.REVERSALS])
def test_a_large_csv_read_in_parts_at_once_is_the_file_one_statement_writes(
    kind: str,
    shop: Shop,
    make_payment: MakePayment,
    django_user_model: Any,
    settings: Any,
    progress_log: Callable[[], list[int]],
) -> None:
    settings.EXPORT_PARTS = 3
    settings.EXPORT_PARTS_FROM_ROWS = 50
    payments_in_parts(shop, make_payment, 75)
    assert LedgerLine.objects.exists()
    whole = b"".join(exports.stream_csv(kind=kind, filters=ExportFilters()))  # one statement

    parts = exports.key_ranges(kind=kind, filters=ExportFilters(), rows=75)
    assert len(parts) == 3
    assert (parts[0].first, parts[-1].after) == (None, None)
    assert [part.after for part in parts[:-1]] == [part.first for part in parts[1:]]  # no gap, no overlap
    models: dict[str, type[Model]] = {"transactions": Payment, "refunds": Refund, "reversals": Reversal}
    for part in parts:  # every part holds rows
        rows = models[kind]._default_manager.all()
        rows = rows.filter(pk__gte=part.first) if part.first is not None else rows
        rows = rows.filter(pk__lt=part.after) if part.after is not None else rows
        assert rows.count() >= 10, parts
    assert exports.key_ranges(kind=kind, filters=ExportFilters(), rows=49) == [exports.EVERY_ROW]  # too small

    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True), kind=kind)
    finished = exports.run_export_job(job_id=job.pk, every=10)
    assert (finished.status, finished.rows_done, finished.error) == ("done", 75, "")
    with finished.file.open("rb") as stored:
        assert stored.read() == whole
    logged = progress_log()
    assert (logged[0], logged[-1], logged == sorted(logged)) == (0, 75, True)
    assert len(logged) >= 4  # claimed, reported while the parts ran, done
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("snapshot-part")]


@pytest.mark.postgres
@pytest.mark.journal  # the payments paid through the API are journaled
@pytest.mark.django_db(transaction=True)  # each part is read by a connection of its own
def test_an_export_read_in_parts_stops_every_part_when_its_attempt_is_taken_over(
    shop: Shop, make_payment: MakePayment, django_user_model: Any, settings: Any
) -> None:
    settings.EXPORT_PARTS = 3
    settings.EXPORT_PARTS_FROM_ROWS = 50
    payments_in_parts(shop, make_payment, 75)
    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True))
    with connection.cursor() as cursor:  # another worker takes the job over once the first rows are reported
        cursor.execute(
            "CREATE FUNCTION test_take_over() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN IF OLD.rows_done = 0 AND NEW.rows_done > 0 THEN NEW.attempts := OLD.attempts + 1; END IF;"
            " RETURN NEW; END $$;"
            " CREATE TRIGGER test_take_over BEFORE UPDATE OF rows_done ON reporting_exportjob"
            " FOR EACH ROW EXECUTE FUNCTION test_take_over()"
        )
    try:
        before = client_sessions()
        ended = exports.run_export_job(job_id=job.pk, every=10)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_take_over ON reporting_exportjob; DROP FUNCTION test_take_over()")
    assert (ended.status, ended.attempts, bool(ended.file)) == ("running", 2, False)  # the other attempt's
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("snapshot-part")]
    assert sessions_drop_to(before)  # every part's connection closed


def test_a_job_whose_worker_stopped_answering_is_queued_again_then_failed_with_the_reason(
    carrier: Carrier, make_payment: MakePayment, django_user_model: Any, settings: Any, staff_client: StaffClient
) -> None:
    make_payment(carrier=carrier, reference="ref-1", created=MAY_3)
    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True))
    settings.EXPORT_MAX_ATTEMPTS = 3
    later = timedelta(seconds=settings.EXPORT_HEARTBEAT_TIMEOUT + 1)

    for attempt in (1, 2, 3):
        claimed = exports.claim_export_job()  # a worker takes it, then dies without a word
        assert claimed is not None
        assert (claimed.pk, claimed.status, claimed.attempts) == (job.pk, "running", attempt)
        assert exports.claim_export_job() is None  # nobody else takes a job that is running
        heartbeat = claimed.heartbeat_at
        assert heartbeat is not None
        assert exports.requeue_stale_export_jobs(now=heartbeat + later / 2) == exports.StaleJobs([], [])
        stale = exports.requeue_stale_export_jobs(now=heartbeat + later)
        if attempt < 3:
            assert stale == exports.StaleJobs(requeued=[job.pk], failed=[])
            job.refresh_from_db()
            assert (job.status, job.attempts) == ("pending", attempt)
            assert f"Attempt {attempt} of 3 stopped" in job.error

    assert stale == exports.StaleJobs(requeued=[], failed=[job.pk])
    job.refresh_from_db()
    assert (job.status, job.file.name) == ("failed", "")
    assert job.error.startswith("Given up after 3 attempts: its worker")
    assert "stopped answering after 0 rows" in job.error
    assert exports.run_export_job(job_id=job.pk).status == "failed"  # a late delivery of its task changes nothing
    listing = staff_client("superuser").get("/admin/reporting/exportjob/").content.decode()
    assert "Given up after 3 attempts" in listing


@pytest.mark.broker
def test_a_requeued_job_is_handed_to_the_workers_again_through_the_outbox_when_there_is_a_broker(
    django_user_model: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True))
    claimed = exports.claim_export_job(job_id=job.pk)
    assert claimed is not None
    assert claimed.heartbeat_at is not None
    with django_capture_on_commit_callbacks(execute=False):
        later = claimed.heartbeat_at + timedelta(seconds=settings.EXPORT_HEARTBEAT_TIMEOUT + 1)
        assert exports.requeue_stale_export_jobs(now=later).requeued == [job.pk]
    assert [message.kwargs for message in OutboxMessage.objects.order_by("id")] == [{"job_id": job.pk}] * 2


def _scheduler_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    db, journal = connection.settings_dict, connections["journal"].settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        # This run's test databases (a pytest-xdist worker has its own), never the ones the test runner was given.
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "JOURNAL_URL": f"postgres://{journal['USER']}@{journal['HOST']}:{journal['PORT']}/{journal['NAME']}",
        "CELERY_BROKER_URL": "",  # the embedded default: the scheduler is the worker
        "PLAYPAY_VAR_DIR": str(tmp_path),
        **extra,
    }


def _fill_payments(template: Payment, count: int) -> None:
    """`count` more payments like `template`, in one statement."""
    fields = [
        str(f.column) for f in Payment._meta.concrete_fields if f.column not in ("id", "public_id", "carrier_reference")
    ]
    columns = ", ".join(fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO payments_payment ({columns}, public_id, carrier_reference)"  # noqa: S608  # our column names
            f" SELECT {columns}, gen_random_uuid(), 'bulk-' || n FROM payments_payment, generate_series(1, %s) AS n"
            " WHERE id = %s",
            [count, template.pk],
        )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_export_whose_scheduler_was_killed_is_resumed_by_the_next_one_and_completes_once(
    carrier: Carrier, make_payment: MakePayment, django_user_model: Any, tmp_path: Path
) -> None:
    rows = 100_000
    _fill_payments(make_payment(carrier=carrier, reference="first", created=MAY_3), rows - 1)
    # Only the check for dead exports among the periodic tasks (a transactional test has none of the others).
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="stale exports", task="reporting.tasks.requeue_stale_exports", interval=every_second
    )
    job = queued_job(django_user_model.objects.create_user("finance-user", is_staff=True), TableFormat.XLSX)
    scheduler = [sys.executable, "manage.py", "run_scheduler", "--tick", "0.2"]
    env = _scheduler_env(tmp_path, EXPORT_PROGRESS_ROWS="100", EXPORT_HEARTBEAT_TIMEOUT="2")

    def fresh() -> ExportJob:
        return ExportJob.objects.get(pk=job.pk)

    with Processes(log_dir=tmp_path, cwd=ROOT) as processes:
        first = processes.start("scheduler-1", scheduler, env)
        wait_for("the first scheduler's progress", lambda: fresh().rows_done > 0, timeout=120, interval=0.01)
        os.killpg(first.popen.pid, signal.SIGKILL)  # kill -9, mid-export
        assert first.popen.wait(timeout=10) == -signal.SIGKILL
        first.returncode = -signal.SIGKILL
        dead = fresh()
        assert (dead.status, dead.attempts, dead.file.name) == ("running", 1, "")
        assert 0 < dead.rows_done < rows

        processes.start("scheduler-2", scheduler, env)
        wait_for("the export's end", lambda: fresh().status in ("done", "failed"), timeout=180, interval=0.2)
    done = fresh()

    assert (done.attempts, done.rows_done, done.rows_total) == (2, rows, rows)
    assert "Attempt 1 of 3 stopped: its worker" in done.error
    folder = tmp_path / "reporting" / "exports" / str(job.pk)
    assert [path.name for path in folder.iterdir()] == [Path(str(done.file.name)).name]  # one file, nothing left over
    with done.file.open("rb") as stored:
        exported = xlsx_rows(stored.read())
    ids = [row[0] for row in exported[1:]]
    assert len(ids) == len(set(ids)) == rows  # no row twice, none lost
    assert set(ids) == {str(value) for value in Payment.objects.values_list("public_id", flat=True)}


def test_an_export_period_that_ends_before_it_starts_is_refused_once_and_queues_nothing(
    staff_client: StaffClient,
) -> None:
    form = {"kind": "transactions", "file_format": "csv", "date_from": "2026-05-31", "date_to": "2026-05-01"}
    response = staff_client("finance").post("/admin/reporting/exportjob/add/", form)
    assert response.status_code == 200
    assert response.content.decode().count("The period ends before it starts.") == 1
    assert not ExportJob.objects.exists()
