"""Finance exports: transactions, refunds and ledger lines, filtered, streamed as CSV or XLSX.

Rows are read with `.iterator(chunk_size=…)` and written as they come, so an export of a
million payments needs no more memory than one of ten. Small exports are downloaded at once;
large ones run as an `ExportJob` in a Celery worker that reports its progress.
"""

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.db.models import Model, QuerySet
from django.utils import timezone

from payments.models import LedgerLine, Payment, Refund
from payments.services import outbox
from playpay.tables import TableFormat, csv_lines, temporary_file, write_table
from playpay.times import start_of_utc_day
from reporting.models import ExportJob, ExportKind
from reporting.resources import ExportResource, LedgerLineResource, RefundResource, TransactionResource

logger = logging.getLogger(__name__)

# An export at most this big is downloaded at once; a bigger one runs in the background.
DIRECT_DOWNLOAD_LIMIT = 20_000
# A background export writes its progress every this many rows.
PROGRESS_EVERY = 1000
RUN_EXPORT_TASK = "reporting.tasks.run_export"
EXPORT_QUEUE = "default"


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


@dataclass(frozen=True)
class _Source:
    model: type[Model]
    resource: type[ExportResource]
    created: str  # the lookup of the row's time
    payment: str  # the path to the payment, "" for payments themselves


_SOURCES = {
    ExportKind.TRANSACTIONS: _Source(Payment, TransactionResource, "created_at", ""),
    ExportKind.REFUNDS: _Source(Refund, RefundResource, "created_at", "payment__"),
    ExportKind.LEDGER: _Source(LedgerLine, LedgerLineResource, "entry__created_at", "entry__payment__"),
}


def export_queryset(*, kind: str, filters: ExportFilters) -> QuerySet[Any]:
    """The rows of an export, in a stable order, with the joins its columns need."""
    source = _SOURCES[ExportKind(kind)]
    lookups: dict[str, Any] = {}
    if filters.date_from:
        lookups[f"{source.created}__gte"] = start_of_utc_day(filters.date_from)
    if filters.date_to:
        lookups[f"{source.created}__lt"] = start_of_utc_day(filters.date_to + timedelta(days=1))
    if filters.carrier:
        lookups[f"{source.payment}carrier__slug"] = filters.carrier
    if filters.country:
        lookups[f"{source.payment}carrier__country_id"] = filters.country
    if filters.app:
        lookups[f"{source.payment}app__name"] = filters.app
    queryset = source.model._default_manager.filter(**lookups).order_by("pk")
    return source.resource().select(queryset)  # type: ignore[no-any-return]


def count_export_rows(*, kind: str, filters: ExportFilters) -> int:
    return export_queryset(kind=kind, filters=filters).count()


def export_header(*, kind: str) -> list[str]:
    return _SOURCES[ExportKind(kind)].resource().headers()


def export_rows(*, kind: str, filters: ExportFilters) -> Iterator[list[Any]]:
    """Native values (ints, Decimals, naive UTC datetimes, text), one row at a time."""
    resource = _SOURCES[ExportKind(kind)].resource()
    for instance in resource.iter_queryset(export_queryset(kind=kind, filters=filters)):
        yield resource.values(instance)


def stream_csv(*, kind: str, filters: ExportFilters) -> Iterator[str]:
    """The CSV, line by line, for a streaming response."""
    return csv_lines(export_header(kind=kind), export_rows(kind=kind, filters=filters))


def write_export(
    *,
    kind: str,
    filters: ExportFilters,
    file_format: str,
    out: IO[bytes],
    on_progress: Callable[[int], None] | None = None,
    every: int = PROGRESS_EVERY,
) -> int:
    """Write the export to `out` (a binary file); returns the number of data rows."""
    written = 0

    def counted() -> Iterator[list[Any]]:
        nonlocal written
        for row in export_rows(kind=kind, filters=filters):
            yield row
            written += 1
            if on_progress is not None and written % every == 0:
                on_progress(written)

    header = export_header(kind=kind)
    write_table(out, header, counted(), file_format=file_format, title=str(kind))
    return written


def export_to_temporary_file(*, kind: str, filters: ExportFilters, file_format: str) -> IO[bytes]:
    """The whole export in an anonymous temporary file, rewound; it disappears when closed."""
    return temporary_file(lambda out: write_export(kind=kind, filters=filters, file_format=file_format, out=out))


def export_file_name(*, kind: str, filters: ExportFilters, file_format: str) -> str:
    period = "-".join(str(day) for day in (filters.date_from, filters.date_to) if day) or "all"
    scope = "-".join(part for part in (filters.carrier, filters.country, filters.app.replace(" ", "_")) if part)
    return "_".join(part for part in ("playpay", str(kind), period, scope) if part) + f".{file_format}"


def start_export_job(*, user: AbstractBaseUser, kind: str, filters: ExportFilters, file_format: str) -> ExportJob:
    """Record an export to run in the background; the task goes through the outbox, so it is never lost."""
    with transaction.atomic():
        job = ExportJob.objects.create(
            user_id=user.pk, kind=ExportKind(kind), file_format=TableFormat(file_format), filters=filters.as_json()
        )
        outbox.enqueue(RUN_EXPORT_TASK, queue=EXPORT_QUEUE, job_id=job.pk)
    return job


def run_export_job(*, job_id: int, every: int = PROGRESS_EVERY) -> ExportJob:
    """Run an export job to the end. Safe to run twice: a finished job is left alone, a broken one restarts."""
    job = ExportJob.objects.get(pk=job_id)
    if job.status == ExportJob.Status.DONE:
        return job
    filters = ExportFilters.from_json(job.filters)
    job.status = ExportJob.Status.RUNNING
    job.started_at = timezone.now()
    job.rows_done = 0
    job.rows_total = count_export_rows(kind=job.kind, filters=filters)
    job.error = ""
    job.save(update_fields=["status", "started_at", "rows_done", "rows_total", "error"])

    def progress(rows: int) -> None:
        # Committed at once (no transaction is open here), so the admin sees it while the export runs.
        ExportJob.objects.filter(pk=job.pk).update(rows_done=min(rows, job.rows_total or rows))

    try:
        with tempfile.TemporaryFile() as out:
            rows = write_export(
                kind=job.kind, filters=filters, file_format=job.file_format, out=out, on_progress=progress, every=every
            )
            out.seek(0)
            name = export_file_name(kind=job.kind, filters=filters, file_format=job.file_format)
            job.file.save(name, File(out), save=False)
    except Exception as error:
        logger.exception("export job %s failed", job.pk)
        job.status = ExportJob.Status.FAILED
        job.error = f"{type(error).__name__}: {error}"[:500]
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error", "finished_at"])
        return job
    job.status = ExportJob.Status.DONE
    job.rows_done = rows
    job.rows_total = max(rows, job.rows_total or 0)  # rows added while it ran are in the file too
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "rows_done", "rows_total", "file", "finished_at"])
    return job


def delete_export_jobs(*, jobs: list[ExportJob]) -> None:
    """Forget export jobs and delete their files."""
    for job in jobs:
        if job.file:
            job.file.delete(save=False)
        job.delete()
