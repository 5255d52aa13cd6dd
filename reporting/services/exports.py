"""Finance exports: transactions, refunds, reversals and ledger lines, filtered, streamed as CSV or XLSX.

What each export contains is declared once (`reporting.resources`). On PostgreSQL the server writes the
rows (`COPY (SELECT ...) TO STDOUT`): CSV lines passed through as they come, or the sheet rows of an XLSX
that is only packaged here; on SQLite rows are read in chunks and formatted here (XLSX by XlsxWriter).
`uses_copy` is the one place that decides. Neither holds more than
a chunk in memory, whatever the size of the export.

Small exports are downloaded at once. Large ones are `ExportJob`s that a web request only records: a
Celery worker runs them (with a broker), or the scheduler process (`manage.py run_scheduler`, the embedded
default). A worker claims a job, moves its heartbeat with its progress, and a job whose heartbeat stops is
queued again by `requeue_stale_export_jobs`, up to `EXPORT_MAX_ATTEMPTS` attempts, then failed with why.
"""

import itertools
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta
from typing import IO, Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import connection, connections, transaction
from django.db.models import F, Field, QuerySet
from django.utils import timezone

from payments.models import Payment
from payments.services import outbox
from playpay.parallel import Parts, in_one_snapshot
from playpay.redaction import sql_mask_msisdn
from playpay.replica import reading_reports, reporting_alias, reporting_connection
from playpay.tables import (
    TableFormat,
    copy_out_batches,
    csv_lines,
    temporary_file,
    write_table,
    write_xlsx_rows,
)
from playpay.times import start_of_utc_day
from reporting import resources
from reporting.models import ExportJob, ExportKind, export_file_path
from reporting.resources import (
    Column,
    ExportColumns,
    Kind,
    python_value,
    sql_minor_unit,
    sql_value,
    sql_xlsx_cell,
)
from reporting.services.rollups import reporting_statement
from tenants.models import App

logger = logging.getLogger(__name__)

# An export at most this big is downloaded at once; a bigger one runs in the background.
DIRECT_DOWNLOAD_LIMIT = 20_000
# Below this many rows (by the planner's estimate) a job counts its rows exactly before it starts.
EXACT_COUNT_BELOW = 200_000
RUN_EXPORT_TASK = "reporting.tasks.run_export"
EXPORT_QUEUE = "default"
CHUNK_ROWS = 5000
# COPY's rows are taken from the connection this many at a time (a CSV's lines are written as one block).
COPY_BATCH_ROWS = 5000
# A large CSV is cut into parts (`key_ranges`) from a sample of about this many rows, when it holds at least
# this many per part; the parts' files are appended to the export in blocks of this size.
KEY_SAMPLE_ROWS = 20_000
KEY_SAMPLE_MIN_PER_PART = 20
COPY_FILE_BYTES = 1 << 20

_COLUMNS: dict[str, ExportColumns] = {
    ExportKind.TRANSACTIONS: resources.TRANSACTIONS,
    ExportKind.REFUNDS: resources.REFUNDS,
    ExportKind.REVERSALS: resources.REVERSALS,
    ExportKind.LEDGER: resources.LEDGER,
}


@dataclass(frozen=True)
class ExportFilters:
    """What to export: a period of UTC days (both ends included), a carrier, a country, an app."""

    date_from: date | None = None
    date_to: date | None = None
    carrier: str = ""  # slug
    country: str = ""  # ISO 3166 alpha-2
    app: str = ""  # name

    def as_json(self) -> dict[str, str]:
        return {key: value.isoformat() if isinstance(value, date) else value for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExportFilters":
        return cls(
            date_from=date.fromisoformat(data["date_from"]) if data.get("date_from") else None,
            date_to=date.fromisoformat(data["date_to"]) if data.get("date_to") else None,
            carrier=data.get("carrier") or "",
            country=data.get("country") or "",
            app=data.get("app") or "",
        )

    def describe(self) -> str:
        parts = [
            f"from {self.date_from}" if self.date_from else "",
            f"to {self.date_to}" if self.date_to else "",
            f"carrier {self.carrier}" if self.carrier else "",
            f"country {self.country}" if self.country else "",
            f"app {self.app}" if self.app else "",
        ]
        return ", ".join(part for part in parts if part) or "everything"


def uses_copy() -> bool:
    """Whether CSV exports are written by the database server (COPY, PostgreSQL only)."""
    return connection.vendor == "postgresql"


def _period(filters: ExportFilters) -> tuple[datetime | None, datetime | None]:
    """The period's first moment and the moment after it (UTC days, both ends included), None when open."""
    start = start_of_utc_day(filters.date_from) if filters.date_from else None
    end = start_of_utc_day(filters.date_to + timedelta(days=1)) if filters.date_to else None
    return start, end


def export_queryset(*, kind: str, filters: ExportFilters) -> QuerySet[Any]:
    """The rows of an export (model instances, filtered, unordered)."""
    spec = _COLUMNS[ExportKind(kind)]
    lookups: dict[str, Any] = {}
    start, end = _period(filters)
    if start:
        lookups[f"{spec.created}__gte"] = start
    if end:
        lookups[f"{spec.created}__lt"] = end
    if filters.carrier:
        lookups[f"{spec.payment}carrier__slug"] = filters.carrier
    if filters.country:
        lookups[f"{spec.payment}carrier__country_id"] = filters.country
    if filters.app:
        lookups[f"{spec.payment}app__name"] = filters.app
    elif spec.model is Payment and (filters.date_from or filters.date_to):
        # Payments have no index on their time alone: (app, created_at) serves a period once every app is named
        # (a few dozen), instead of a scan of every month's payments for one.
        lookups["app_id__in"] = list(App.objects.values_list("pk", flat=True))
    return spec.model._default_manager.filter(**lookups).order_by()


def export_values(*, kind: str, filters: ExportFilters) -> QuerySet[Any]:
    """`export_queryset` with the values computed per row (the ledger's figures...) that the columns read."""
    spec = _COLUMNS[ExportKind(kind)]
    annotations: dict[str, Any] = spec.annotations()
    if spec.ledger is not None:
        annotations.update(spec.ledger.subqueries())
    queryset: QuerySet[Any] = export_queryset(kind=kind, filters=filters).annotate(**annotations)
    return queryset


def count_export_rows(*, kind: str, filters: ExportFilters) -> int:
    with reading_reports():
        return export_queryset(kind=kind, filters=filters).count()


def estimate_export_rows(*, kind: str, filters: ExportFilters) -> tuple[int, bool]:
    """(rows, exact): the planner's estimate when it is large (a count would read them all), else a count."""
    with reading_reports():
        queryset = export_queryset(kind=kind, filters=filters)
        if reporting_connection().vendor == "postgresql":
            plan = json.loads(queryset.explain(format="json"))
            estimate = int(plan[0]["Plan"]["Plan Rows"])
            if estimate >= EXACT_COUNT_BELOW:
                return estimate, False
        return queryset.count(), True


def export_header(*, kind: str) -> list[str]:
    return _COLUMNS[ExportKind(kind)].headers


def export_rows(*, kind: str, filters: ExportFilters) -> Iterator[list[Any]]:
    """Native values (ints, Decimals, naive UTC datetimes, text), one row at a time, in the order of the rows' ids."""
    spec = _COLUMNS[ExportKind(kind)]
    sources = spec.sources
    at = {path: index for index, path in enumerate(sources)}
    plan = [(column, at[column.source], at[column.currency] if column.currency else None) for column in spec.columns]
    queryset = export_values(kind=kind, filters=filters).order_by("pk").values_list(*sources)
    for values in queryset.iterator(chunk_size=CHUNK_ROWS):
        yield [
            python_value(column, values[index], values[currency] if currency is not None else None)
            for column, index, currency in plan
        ]


@dataclass(frozen=True)
class KeyRange:
    """The rows whose id is from `first` (included) to `after` (excluded); None: no bound on that side."""

    first: int | None = None
    after: int | None = None


EVERY_ROW = KeyRange()


def copy_statement(
    *, kind: str, filters: ExportFilters, file_format: str = "csv", keys: KeyRange = EVERY_ROW
) -> tuple[str, tuple[Any, ...]]:
    """The COPY statement of the export's rows (no header), and its parameters: CSV lines, or for XLSX one
    SpreadsheetML `<row>` a line.

    The inner query is Django's (filters, joins, the table's own primary key, whatever its shape); the outer
    one only formats its columns and orders by the row id.
    """
    spec = _COLUMNS[ExportKind(kind)]
    ledger = spec.ledger
    from_ledger = set(ledger.names()) if ledger else set()
    alias = {path: f"c{index}" for index, path in enumerate(spec.sources) if path not in from_ledger}
    ledger_keys = {"lk": F(ledger.row_key), "lm": F(ledger.row_month)} if ledger else {}
    rows_of = export_queryset(kind=kind, filters=filters)
    if keys.first is not None:
        rows_of = rows_of.filter(pk__gte=keys.first)
    if keys.after is not None:
        rows_of = rows_of.filter(pk__lt=keys.after)
    inner = rows_of.annotate(**spec.annotations()).values(
        row_key=F("pk"), **ledger_keys, **{name: F(path) for path, name in alias.items()}
    )
    sql, params = inner.query.sql_with_params()
    # The ledger's values: the row's lines grouped by key, joined once (not a subquery per row).
    joined, joined_params = "", ()
    expressions = {path: f"x.{name}" for path, name in alias.items()}
    if ledger is not None:
        _, end = _period(filters)
        # A part of the rows (a range of ids) reads the lines of its own keys only, when the key is the row's id.
        own = ledger.row_key == "pk"
        grouped = ledger.grouped(
            months_to=end,
            keys_from=keys.first if own else None,
            keys_before=keys.after if own else None,
        )
        grouped_sql, joined_params = grouped.query.sql_with_params()
        joined = f" LEFT JOIN ({grouped_sql}) AS l ON l.k = x.lk AND l.m = x.lm"
        for name in from_ledger:
            expressions[name] = f"coalesce(l.{name}, 0)"

    # Each currency's minor unit once per row, for however many amounts are in it.
    currencies = list(dict.fromkeys(column.currency for column in spec.columns if column.currency))
    units = {path: f"x.e{index}" for index, path in enumerate(currencies)}
    with_units = "".join(f", {sql_minor_unit(expressions[path])} AS e{index}" for index, path in enumerate(currencies))

    # Each phone number masked once per row too, then written as the text it is (the CSV guard reads it twice).
    numbers = [column.source for column in spec.columns if column.kind == Kind.MSISDN]
    masked = {path: f"x.m{index}" for index, path in enumerate(numbers)}
    with_units += "".join(f", {sql_mask_msisdn(expressions[path])} AS m{index}" for index, path in enumerate(numbers))

    def cell(column: Column) -> tuple[Column, str, str]:
        """The column as written, the SQL of its value and of its currency."""
        currency = expressions[column.currency] if column.currency else ""
        if column.kind == Kind.MSISDN:
            return replace(column, kind=Kind.TEXT), masked[column.source], currency
        return column, expressions[column.source], currency

    def unit(column: Column) -> str:
        return units[column.currency] if column.currency else ""

    if TableFormat(file_format) == TableFormat.XLSX:
        cells = " || ".join(sql_xlsx_cell(*cell(column), unit=unit(column)) for column in spec.columns)
        select = f"'<row>' || {cells} || '</row>'"
        # The row has no line breaks, and no \x01 or \x02 (not allowed in XML): nothing for CSV to quote.
        options = "FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02'"
    else:
        select = ", ".join(sql_value(*cell(column), unit=unit(column)) for column in spec.columns)
        options = "FORMAT csv"
    # Only our own column expressions and Django's compiled query; every value is a parameter. OFFSET 0 keeps
    # the rows' values computed once each: pulled up into the outer query, an expression (the minor unit's CASE
    # over every odd currency, a subscription's lookup) is computed again for each time a column reads it,
    # which was half the statement's CPU.
    rows = f"SELECT x.*{with_units} FROM ({sql}) AS x OFFSET 0"  # noqa: S608
    statement = f"COPY (SELECT {select} FROM ({rows}) AS x{joined} ORDER BY x.row_key) TO STDOUT ({options})"  # noqa: S608
    return statement, (*params, *joined_params)


def copy_batches(
    *,
    kind: str,
    filters: ExportFilters,
    file_format: str = "csv",
    rows: int = COPY_BATCH_ROWS,
    keys: KeyRange = EVERY_ROW,
) -> Iterator[list[memoryview]]:
    """The rows as PostgreSQL writes them (CSV lines, or sheet rows), each ending with its line feed, in
    lists of `rows` (the last one shorter)."""
    # The reporting settings: a month's rows are sorted in memory (REPORTING_WORK_MEM), not in files on disk.
    with reporting_statement():
        # Built inside: what it reads to build the statement (the apps of a period) comes from the same database.
        statement, params = copy_statement(kind=kind, filters=filters, file_format=file_format, keys=keys)
        with reporting_connection().cursor() as cursor, cursor.cursor.copy(statement, params or None) as copy:
            yield from copy_out_batches(copy, rows=rows, timeout=settings.DATABASE_CONNECT_TIMEOUT + 30)


def _sheet_rows(*, kind: str, filters: ExportFilters, file_format: str) -> Iterator[bytes]:
    """The sheet's rows as PostgreSQL writes them, one SpreadsheetML `<row>` at a time."""
    for batch in copy_batches(kind=kind, filters=filters, file_format=file_format):
        for row in batch:
            yield bytes(row[:-1])


def _csv_batches(
    *, kind: str, filters: ExportFilters, rows: int = COPY_BATCH_ROWS, keys: KeyRange = EVERY_ROW
) -> Iterator[tuple[bytes, int]]:
    """The CSV's lines (no header) as PostgreSQL writes them, ended by CRLF like the csv module's, several
    at a time: (the lines, how many). A line feed inside a quoted value stays as it is."""
    for batch in copy_batches(kind=kind, filters=filters, rows=rows, keys=keys):
        yield b"\r\n".join([row[:-1] for row in batch]) + b"\r\n", len(batch)


def _csv_header(kind: str) -> bytes:
    return next(csv_lines(export_header(kind=kind), [])).encode()


def stream_csv(*, kind: str, filters: ExportFilters) -> Iterator[bytes]:
    """The CSV, a line or a batch of lines at a time, for a streaming response."""
    if uses_copy():
        yield _csv_header(kind)
        for lines, _ in _csv_batches(kind=kind, filters=filters):
            yield lines
        return
    for line in csv_lines(export_header(kind=kind), export_rows(kind=kind, filters=filters)):
        yield line.encode()


def write_export(
    *,
    kind: str,
    filters: ExportFilters,
    file_format: str,
    out: IO[bytes],
    on_progress: Callable[[int], None] | None = None,
    every: int = 0,
    parts: list[KeyRange] | None = None,
) -> int:
    """Write the export to `out` (a binary file); returns the number of data rows. `on_progress(rows)` is
    called every `every` rows (default: settings.EXPORT_PROGRESS_ROWS). A CSV on PostgreSQL given `parts`
    (`key_ranges`) has each part read at once by a connection of its own (`_write_csv_parts`)."""
    every = every or settings.EXPORT_PROGRESS_ROWS
    written = 0

    def counted(rows: Iterator[Any]) -> Iterator[Any]:
        nonlocal written
        for row in rows:
            yield row
            written += 1
            if on_progress is not None and written % every == 0:
                on_progress(written)

    if uses_copy() and TableFormat(file_format) == TableFormat.CSV and parts and len(parts) > 1:
        out.write(_csv_header(kind))
        written = _write_csv_parts(
            kind=kind, filters=filters, parts=parts, out=out, on_progress=on_progress, every=every
        )
    elif uses_copy() and TableFormat(file_format) == TableFormat.CSV:
        out.write(_csv_header(kind))
        # Batches that add up to every multiple of `every`, so progress is reported at each, as row by row.
        for lines, count in _csv_batches(kind=kind, filters=filters, rows=math.gcd(every, COPY_BATCH_ROWS)):
            out.write(lines)
            written += count
            if on_progress is not None and written % every == 0:
                on_progress(written)
    elif uses_copy():
        rows = counted(_sheet_rows(kind=kind, filters=filters, file_format=file_format))
        write_xlsx_rows(out, export_header(kind=kind), rows, title=str(kind))
    else:
        rows = counted(export_rows(kind=kind, filters=filters))
        write_table(out, export_header(kind=kind), rows, file_format=file_format, title=str(kind))
    return written


def key_ranges(*, kind: str, filters: ExportFilters, rows: int) -> list[KeyRange]:
    """The export's rows cut into EXPORT_PARTS ranges of ids holding about as many rows each, for a CSV of at
    least EXPORT_PARTS_FROM_ROWS rows (`rows`: the estimate) on PostgreSQL; else one range, every row.

    The cut comes from a sample of the table's pages in the period (TABLESAMPLE SYSTEM: about
    KEY_SAMPLE_ROWS rows, a few hundred pages read, not the month), so it costs milliseconds; a sample too
    small to tell, or rows whose time is on another table, keep one range. A poor cut only makes one part
    longer: every row is in exactly one range whatever the sample.
    """
    spec = _COLUMNS[ExportKind(kind)]
    wanted = settings.EXPORT_PARTS
    if wanted < 2 or rows < settings.EXPORT_PARTS_FROM_ROWS or not uses_copy() or "__" in spec.created:
        return [EVERY_ROW]
    meta = spec.model._meta
    quote = reporting_connection().ops.quote_name
    time_field = meta.get_field(spec.created)
    assert isinstance(time_field, Field)
    assert meta.pk is not None
    created = quote(str(time_field.column))
    where: list[str] = []
    params: list[Any] = [min(100.0, 100.0 * KEY_SAMPLE_ROWS / rows)]
    start, end = _period(filters)
    if start is not None:
        where.append(f"{created} >= %s")
        params.append(start)
    if end is not None:
        where.append(f"{created} < %s")
        params.append(end)
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    sample = (
        f"SELECT DISTINCT {quote(str(meta.pk.column))} FROM {quote(meta.db_table)}"  # noqa: S608 (names from the model)
        f" TABLESAMPLE SYSTEM (%s) REPEATABLE (0){condition} ORDER BY 1"
    )
    with reporting_connection().cursor() as cursor:
        cursor.execute(sample, params)
        ids = [row[0] for row in cursor.fetchall()]
    if len(ids) < wanted * KEY_SAMPLE_MIN_PER_PART:
        return [EVERY_ROW]
    cuts = sorted({ids[len(ids) * part // wanted] for part in range(1, wanted)})
    bounds: list[int | None] = [None, *cuts, None]
    return [KeyRange(first, after) for first, after in itertools.pairwise(bounds)]


def _write_csv_parts(
    *,
    kind: str,
    filters: ExportFilters,
    parts: list[KeyRange],
    out: IO[bytes],
    on_progress: Callable[[int], None] | None,
    every: int,
) -> int:
    """The CSV's lines of each range of ids, the ranges read at once in one snapshot (`in_one_snapshot`: the
    file is as of one moment, as one statement's is), written to `out` in the ranges' order: the first part
    streams to `out`, the others to anonymous temporary files appended after it. Returns the rows written.
    Progress is reported once per batch (COPY_BATCH_ROWS) that passes a multiple of `every`, with the rows
    so far. When `on_progress` raises (the lease is lost) or a part fails, the other parts stop."""
    lock, reporting = threading.Lock(), threading.Lock()
    written = reported = 0

    def report(count: int) -> None:
        nonlocal written, reported
        with lock:
            before, written = written, written + count
            now = written
        if on_progress is not None and before // every != now // every:
            # Not under `lock`: a heartbeat's round trip does not hold the parts' counting. One at a time and
            # never backwards (another part's later count may have been reported first).
            with reporting:
                if now > reported:
                    on_progress(now)
                    reported = now

    def part(keys: KeyRange, file: IO[bytes]) -> Callable[[Parts], None]:
        def run(shared: Parts) -> None:
            shared.check()  # another part failed before this one's statement began
            for lines, count in _csv_batches(kind=kind, filters=filters, keys=keys):
                shared.check()
                file.write(lines)
                report(count)

        return run

    with ExitStack() as files:
        outs = [out, *(files.enter_context(tempfile.TemporaryFile()) for _ in parts[1:])]
        in_one_snapshot([part(keys, file) for keys, file in zip(parts, outs, strict=True)], using=reporting_alias())
        for file in outs[1:]:
            file.seek(0)
            shutil.copyfileobj(file, out, COPY_FILE_BYTES)
    return written


def export_to_temporary_file(*, kind: str, filters: ExportFilters, file_format: str) -> IO[bytes]:
    """The whole export in an anonymous temporary file, rewound; it disappears when closed."""
    return temporary_file(lambda out: write_export(kind=kind, filters=filters, file_format=file_format, out=out))


def export_file_name(*, kind: str, filters: ExportFilters, file_format: str) -> str:
    period = "-".join(str(day) for day in (filters.date_from, filters.date_to) if day) or "all"
    scope = "-".join(part for part in (filters.carrier, filters.country, filters.app.replace(" ", "_")) if part)
    return "_".join(part for part in ("playpay", str(kind), period, scope) if part) + f".{file_format}"


# --- Background jobs ------------------------------------------------------------------------------


class ExportLeaseLost(Exception):
    """The job was given to another attempt (this worker was taken for dead): this one stops, writes nothing."""


def start_export_job(*, user: AbstractBaseUser, kind: str, filters: ExportFilters, file_format: str) -> ExportJob:
    """Queue an export; nothing of it runs here. With a broker the task goes through the outbox (never lost);
    without one the scheduler process finds the queued job."""
    with transaction.atomic():
        job = ExportJob.objects.create(
            user_id=user.pk, kind=ExportKind(kind), file_format=TableFormat(file_format), filters=filters.as_json()
        )
        _hand_to_workers(job)
    return job


def _hand_to_workers(job: ExportJob) -> None:
    if not outbox.runs_in_process():
        outbox.enqueue(RUN_EXPORT_TASK, queue=EXPORT_QUEUE, job_id=job.pk)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_export_job(*, job_id: int | None = None) -> ExportJob | None:
    """Take a queued job (that one, or the oldest) for this process; None when there is none to take.

    PostgreSQL skips the jobs other workers are taking (SKIP LOCKED); SQLite takes its write lock at the
    start of the transaction (IMMEDIATE), so there the conditional update alone decides.
    """
    queued = ExportJob.objects.filter(status=ExportJob.Status.PENDING)
    if job_id is not None:
        queued = queued.filter(pk=job_id)
    now = timezone.now()
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            candidate = queued.select_for_update(skip_locked=True).order_by("id").values_list("pk", flat=True).first()
        else:
            candidate = queued.order_by("id").values_list("pk", flat=True).first()
        if candidate is None:
            return None
        claimed = ExportJob.objects.filter(pk=candidate, status=ExportJob.Status.PENDING).update(
            status=ExportJob.Status.RUNNING,
            attempts=F("attempts") + 1,
            worker=worker_name()[:120],
            heartbeat_at=now,
            started_at=now,
            rows_done=0,
        )
    return ExportJob.objects.get(pk=candidate) if claimed else None


def run_export_job(*, job_id: int, every: int = 0) -> ExportJob:
    """Run this job if it is queued. Safe to run twice: a job done, failed or run by a live worker is left alone."""
    job = claim_export_job(job_id=job_id)
    return _run_claimed(job, every=every) if job else ExportJob.objects.get(pk=job_id)


def run_next_export_job(*, every: int = 0) -> ExportJob | None:
    """Claim the oldest queued job and run it to the end; None when none is queued."""
    job = claim_export_job()
    return _run_claimed(job, every=every) if job else None


def run_queued_export_jobs(*, limit: int = 10, every: int = 0) -> int:
    """Run queued jobs one after the other, at most `limit`; returns how many ran."""
    ran = 0
    while ran < limit and run_next_export_job(every=every) is not None:
        ran += 1
    return ran


def _own(job: ExportJob) -> QuerySet[ExportJob]:
    """The job while this attempt still holds it: any update through it is fenced by the attempt number."""
    return ExportJob.objects.filter(pk=job.pk, status=ExportJob.Status.RUNNING, attempts=job.attempts)


def _run_claimed(job: ExportJob, *, every: int) -> ExportJob:
    filters = ExportFilters.from_json(job.filters)
    with _side_connection(needed=uses_copy()) as side:

        def heartbeat(rows: int) -> None:
            # Committed at once (no transaction is open here), so the admin sees it while the export runs.
            if not side(lambda: _own(job).update(rows_done=rows, heartbeat_at=timezone.now())):
                raise ExportLeaseLost(f"export job {job.pk}: attempt {job.attempts} was taken over")

        try:
            with _export_statement_timeout(), _beating(job, side, needed=uses_copy()):
                total, exact = estimate_export_rows(kind=job.kind, filters=filters)
                if not _own(job).update(rows_total=total, rows_total_exact=exact, heartbeat_at=timezone.now()):
                    raise ExportLeaseLost(f"export job {job.pk}: attempt {job.attempts} was taken over")
                parts = key_ranges(kind=job.kind, filters=filters, rows=total)
                with tempfile.TemporaryFile() as out:  # anonymous: nothing is left behind if the process dies
                    rows = write_export(
                        kind=job.kind,
                        filters=filters,
                        file_format=job.file_format,
                        out=out,
                        on_progress=heartbeat,
                        every=every,
                        parts=parts,
                    )
                    out.seek(0)
                    _store_file(job, out, filters)
        except ExportLeaseLost:
            logger.warning("export job %s: attempt %s was taken over; it stops", job.pk, job.attempts)
            return ExportJob.objects.get(pk=job.pk)
        except Exception as error:
            logger.exception("export job %s failed", job.pk)
            _own(job).update(
                status=ExportJob.Status.FAILED,
                error=f"{type(error).__name__}: {error}"[:500],
                finished_at=timezone.now(),
            )
            return ExportJob.objects.get(pk=job.pk)
    finished = _own(job).update(
        status=ExportJob.Status.DONE,
        rows_done=rows,
        rows_total=rows,  # rows added while it ran are in the file too
        rows_total_exact=True,
        file=job.file.name,
        finished_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    if not finished:  # taken over at the last moment: the other attempt's file is the one kept
        job.file.delete(save=False)
        logger.warning("export job %s: attempt %s was taken over; its file is deleted", job.pk, job.attempts)
    return ExportJob.objects.get(pk=job.pk)


T = TypeVar("T")


@contextmanager
def _side_connection(*, needed: bool) -> Iterator[Callable[[Callable[[], T]], T]]:
    """Runs a query on a connection of its own when `needed`: while COPY streams, its connection can do
    nothing else. Otherwise (SQLite reading in chunks would lock out a second connection) on this one."""
    if not needed:
        yield lambda query: query()
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-heartbeat")
    try:
        yield lambda query: pool.submit(query).result(timeout=settings.DATABASE_CONNECT_TIMEOUT + 30)
    finally:
        pool.submit(connections.close_all).result(timeout=30)
        pool.shutdown()


@contextmanager
def _beating(job: ExportJob, side: Callable[[Callable[[], int]], int], *, needed: bool) -> Iterator[None]:
    """Moves the attempt's heartbeat on a timer while it works, through the phases that report no rows (the
    estimate, the sort before COPY's first row, storing the file), so a live worker is never taken for dead.
    Only with a side connection (PostgreSQL): SQLite's single writer keeps the heartbeat to the progress."""
    if not needed:
        yield
        return
    stop = threading.Event()
    interval = max(settings.EXPORT_HEARTBEAT_TIMEOUT / 4, 0.1)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not side(lambda: _own(job).update(heartbeat_at=timezone.now())):
                    return  # taken over: the attempt's own next write stops it
            except Exception:  # the next beat tries again; a worker that stays silent is re-queued
                logger.warning("export job %s: heartbeat not written", job.pk, exc_info=True)

    beater = threading.Thread(target=beat, name=f"export-{job.pk}-heartbeat", daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join(timeout=settings.DATABASE_CONNECT_TIMEOUT + 30)


def _store_file(job: ExportJob, out: IO[bytes], filters: ExportFilters) -> None:
    """The file in the job's own folder, which holds nothing else: what a dead attempt saved there goes."""
    storage = job.file.storage
    folder = os.path.dirname(export_file_path(job, "x"))
    try:
        _, leftovers = storage.listdir(folder)
    except FileNotFoundError:
        leftovers = []
    for name in leftovers:
        storage.delete(f"{folder}/{name}")
    name = export_file_name(kind=job.kind, filters=filters, file_format=job.file_format)
    job.file.save(name, File(out), save=False)


@contextmanager
def _export_statement_timeout() -> Iterator[None]:
    """An export is one long statement: it gets EXPORT_STATEMENT_TIMEOUT_MS, not the web's bound, on the
    connection it reads (the replica's, when there is one; its parts take it from there)."""
    reads = reporting_connection()
    if reads.vendor != "postgresql":
        yield
        return
    with reads.cursor() as cursor:
        cursor.execute("SET statement_timeout = %s", [settings.EXPORT_STATEMENT_TIMEOUT_MS])
    try:
        yield
    finally:
        try:
            with reads.cursor() as cursor:
                cursor.execute("RESET statement_timeout")  # back to the connection's own (settings)
        except Exception:  # a broken connection is dropped anyway
            logger.warning("could not reset the statement timeout after an export", exc_info=True)


@dataclass(frozen=True)
class StaleJobs:
    requeued: list[int]
    failed: list[int]


def requeue_stale_export_jobs(*, now: datetime | None = None, stale_after: timedelta | None = None) -> StaleJobs:
    """Running jobs whose worker stopped answering (no heartbeat for `stale_after`): queued again for another
    attempt, or failed with the reason once EXPORT_MAX_ATTEMPTS attempts died."""
    now = now or timezone.now()
    stale_after = stale_after if stale_after is not None else timedelta(seconds=settings.EXPORT_HEARTBEAT_TIMEOUT)
    cutoff = now - stale_after
    max_attempts = settings.EXPORT_MAX_ATTEMPTS
    result = StaleJobs([], [])
    stale = ExportJob.objects.filter(status=ExportJob.Status.RUNNING, heartbeat_at__lte=cutoff).order_by("id")
    for job in stale[:100]:
        heard = job.heartbeat_at
        assert heard is not None  # a running job has one (export_running_has_heartbeat)
        silent = (
            f"its worker ({job.worker}) stopped answering after {job.rows_done} rows,"
            f" last heard of {heard:%Y-%m-%d %H:%M:%S} UTC"
        )
        with transaction.atomic():
            still_stale = ExportJob.objects.filter(
                pk=job.pk, status=ExportJob.Status.RUNNING, attempts=job.attempts, heartbeat_at=heard
            )
            if job.attempts >= max_attempts:
                reason = f"Given up after {job.attempts} attempts: {silent}."
                if still_stale.update(status=ExportJob.Status.FAILED, error=reason[:500], finished_at=now):
                    result.failed.append(job.pk)
                    logger.error("export job %s failed: %s", job.pk, reason)
            else:
                note = f"Attempt {job.attempts} of {max_attempts} stopped: {silent}; queued again."
                if still_stale.update(status=ExportJob.Status.PENDING, error=note[:500]):
                    _hand_to_workers(job)
                    result.requeued.append(job.pk)
                    logger.warning("export job %s queued again: %s", job.pk, note)
    return result


def delete_export_jobs(*, jobs: list[ExportJob]) -> None:
    """Forget export jobs and delete their files."""
    for job in jobs:
        if job.file:
            job.file.delete(save=False)
        job.delete()
