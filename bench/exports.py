"""Benchmark: how many rows per second the finance exports write, CSV and XLSX, at ~500,000 payments.

What it measures, in one run, on one month of payments (`--rows`, 500,000 by default):

* CSV as a background job runs it on PostgreSQL: the server writes the rows (`COPY (SELECT ...) TO STDOUT`),
  passed through to a file. Goal >= 100,000 rows/s.
* XLSX as a job runs it on PostgreSQL: the server writes the sheet's rows (COPY), zipped as they come.
  Goal >= 20,000 rows/s.
* References from the same run: PostgreSQL's COPY of the bare table (no joins, no formatting: the ceiling),
  and the CSV formatted in Python (the path SQLite takes; the way every export was written before).
* A background job end to end: the time the web request takes to queue it (`start_export_job`), and the
  worker's run (`run_queued_export_jobs`, what the scheduler or a Celery worker does), with its rows/s.

It exits 0 whatever the figures (a report), 2 when the setup fails. The database (`playpay_bench_exports`)
is made fresh, migrated, filled with set-based SQL, and dropped at the end (`--keep-db` keeps it).

    python bench/exports.py [--rows 500000] [--pg-url postgres://postgres@127.0.0.1:5432]

`measure(rows=...)` is importable: with Django set up on a database that already has payments (e.g. the
volume benchmark's), it measures the exports of the month with the most payments and returns the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "playpay_bench_exports"
MONTH = (date(2026, 5, 1), date(2026, 5, 31))
GOALS = {"csv": 100_000, "xlsx": 20_000}


@dataclass(frozen=True)
class Figure:
    name: str
    rows: int
    seconds: float
    goal: int | None = None  # rows/s
    cpu_seconds: float = 0.0  # this process and its PostgreSQL backend

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def cpu_rate(self) -> float:
        """Rows per CPU-second: what one core would give without other load on the machine."""
        return self.rows / self.cpu_seconds if self.cpu_seconds else 0.0

    def line(self) -> str:
        goal = ""
        if self.goal:
            goal = f"  goal >= {self.goal:,} rows/s: {'met' if self.rate >= self.goal else 'NOT met'}"
        cpu = f" | {self.cpu_seconds:>6.2f} CPU-s {self.cpu_rate:>9,.0f} rows/CPU-s" if self.rows else ""
        return f"{self.name:<62} {self.rows:>8,} rows {self.seconds:>7.2f} s {self.rate:>9,.0f} rows/s{cpu}{goal}"


def _cpu_seconds() -> float:
    """CPU used so far by this process and by the PostgreSQL backend of its connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    try:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:  # a server on another machine: its share is not counted
        server = 0.0
    return time.process_time() + server


def _timed(name: str, run: Callable[[], int], goal: int | None = None) -> Figure:
    cpu = _cpu_seconds()
    started = time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - started
    return Figure(name, rows, seconds, goal, _cpu_seconds() - cpu)


def busiest_month() -> tuple[date, date]:
    """The UTC calendar month with the most payments (the volume benchmark spreads them over 18 months)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM payments_payment"
            " GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        )
        row = cursor.fetchone()
    if row is None:
        return MONTH
    first: date = row[0]
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, date.fromordinal(following.toordinal() - 1)


def measure(*, period: tuple[date, date] | None = None, xlsx_rows: int = 0) -> list[Figure]:
    """The export figures on the current database (Django set up, PostgreSQL). `xlsx_rows` > 0 limits the
    XLSX measurement to the first days of the period holding about that many rows (XLSX is slower)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from playpay.tables import write_csv
    from reporting.models import ExportJob, ExportKind
    from reporting.services import exports

    first, last = period or busiest_month()
    month = exports.ExportFilters(date_from=first, date_to=last)
    kind = ExportKind.TRANSACTIONS
    figures = []

    def to_file(write: Callable[[Any], int]) -> int:
        with tempfile.TemporaryFile() as out:
            return write(out)

    def bare_copy() -> int:
        rows = 0
        # COPY reads a partitioned table only through a query.
        bare = "COPY (SELECT * FROM payments_payment) TO STDOUT (FORMAT csv)"
        with connection.cursor() as cursor, cursor.cursor.copy(bare) as copy:
            for _ in copy:
                rows += 1
        return rows

    figures.append(_timed("reference: COPY of the bare payments table (all of it)", bare_copy))

    def python_csv_once(out: Any) -> int:
        rows = 0

        def counted() -> Any:
            nonlocal rows
            for row in exports.export_rows(kind=kind, filters=month):
                rows += 1
                yield row

        write_csv(out, exports.export_header(kind=kind), counted())
        return rows

    figures.append(_timed("reference: CSV formatted in Python (the SQLite path)", lambda: to_file(python_csv_once)))
    figures.append(
        _timed(
            "CSV written by PostgreSQL (COPY), one month",
            lambda: to_file(lambda out: exports.write_export(kind=kind, filters=month, file_format="csv", out=out)),
            GOALS["csv"],
        )
    )
    xlsx_filters = month
    if xlsx_rows:
        xlsx_filters = _period_holding(first, last, xlsx_rows)
    figures.append(
        _timed(
            f"XLSX written by PostgreSQL (COPY), {xlsx_filters.describe()}",
            lambda: to_file(
                lambda out: exports.write_export(kind=kind, filters=xlsx_filters, file_format="xlsx", out=out)
            ),
            GOALS["xlsx"],
        )
    )

    user, _ = get_user_model().objects.get_or_create(username="bench-exports", defaults={"is_staff": True})
    started = time.perf_counter()
    exports.start_export_job(user=user, kind=kind, filters=month, file_format="csv")
    figures.append(Figure("the web request's part: queue the job (start_export_job)", 0, time.perf_counter() - started))
    job_rows = 0

    def worker() -> int:
        nonlocal job_rows
        exports.run_queued_export_jobs(limit=1)
        job = ExportJob.objects.order_by("-id").first()
        if job is None or job.status != ExportJob.Status.DONE:
            raise RuntimeError(f"the export job did not end done: {job and job.error}")
        job_rows = job.rows_done
        exports.delete_export_jobs(jobs=[job])
        return job_rows

    figures.append(_timed("CSV job run by a worker (estimate, COPY, file stored)", worker, GOALS["csv"]))
    return figures


def _period_holding(first: date, last: date, rows: int) -> Any:
    """The first days of the period that hold about `rows` payments."""
    from django.db import connection

    from reporting.services import exports

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d, sum(n) OVER (ORDER BY d) FROM (SELECT (created_at AT TIME ZONE 'UTC')::date AS d, count(*) AS n"
            " FROM payments_payment WHERE created_at >= %s AND created_at < %s + 1 GROUP BY 1) AS days ORDER BY d",
            [first, last],
        )
        end = first
        for day, running in cursor.fetchall():
            end = day
            if running >= rows:
                break
    return exports.ExportFilters(date_from=first, date_to=end)


def fill(rows: int) -> None:
    """`rows` payments of one month in one INSERT ... SELECT, with a few apps, carriers, statuses, currencies."""
    from django.db import connection

    from carriers.models import Carrier, Country, PricePoint
    from payments.models import Payment
    from tenants.models import App

    country, _ = Country.objects.get_or_create(
        code="GB", defaults={"name": "United Kingdom", "currency": "GBP", "dialing_code": "44"}
    )
    carrier, _ = Carrier.objects.get_or_create(slug="bench-uk", defaults={"name": "Bench UK", "country": country})
    price_point, _ = PricePoint.objects.get_or_create(
        carrier=carrier, code="gems-100", defaults={"amount_minor": 99, "currency": "GBP", "carrier_payout_minor": 69}
    )
    app, _ = App.objects.get_or_create(name="Bench Game")
    template = Payment.objects.create(
        app=app,
        user_ref="player",
        msisdn="+447400123456",
        carrier=carrier,
        price_point=price_point,
        amount_minor=99,
        currency="GBP",
        status="succeeded",
        flow="one_click",
    )
    kept = ("id", "public_id", "carrier_reference", "created_at", "status", "user_ref", "amount_minor", "msisdn")
    columns = [str(field.column) for field in Payment._meta.concrete_fields if field.column not in kept]
    listed = ", ".join(columns)
    seconds = (MONTH[1].toordinal() - MONTH[0].toordinal() + 1) * 86400
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO payments_payment ({listed}, public_id, carrier_reference, created_at, status, user_ref,"
            " amount_minor, msisdn)"
            f" SELECT {listed}, gen_random_uuid(), 'ref-' || n,"
            " %s::timestamptz + make_interval(secs => ((n - 1)::bigint * %s / %s)),"
            " (ARRAY['succeeded','succeeded','succeeded','failed','refunded'])[1 + n %% 5],"
            " 'player-' || (n %% 50000), 99 + (n %% 7) * 100, '+4474' || lpad((n %% 10000000)::text, 8, '0')"
            " FROM payments_payment, generate_series(1, %s) AS n WHERE id = %s",
            [MONTH[0].isoformat() + "T00:00:00Z", seconds, rows, rows, template.pk],
        )
        template.delete()
        cursor.execute("ANALYZE payments_payment")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    import psycopg

    admin_url = f"{args.pg_url}/postgres"
    url = f"{args.pg_url}/{DB_NAME}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME}_journal WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB_NAME}")
        admin.execute(f"CREATE DATABASE {DB_NAME}_journal")
    var_dir = tempfile.mkdtemp(prefix="bench-exports-")
    env = {
        "DATABASE_URL": url,
        "JOURNAL_URL": f"{url}_journal",
        "CELERY_BROKER_URL": "",
        "PLAYPAY_VAR_DIR": var_dir,
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        "DATABASE_STATEMENT_TIMEOUT_MS": "0",  # the fill is one long statement; the exports set their own
    }
    os.environ.update(env)
    try:
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        if migrate.returncode:
            print(migrate.stdout[-2000:], migrate.stderr[-2000:], sep="\n")
            return 2
        sys.path.insert(0, str(REPO_ROOT))
        import django

        django.setup()
        started = time.perf_counter()
        fill(args.rows)
        print(f"filled {args.rows:,} payments of {MONTH[0]:%B %Y} in {time.perf_counter() - started:.1f} s")
        load = os.getloadavg()[0]
        for figure in measure(period=MONTH):
            print(figure.line())
        print(
            f"load average before/after: {load:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            " (above the CPU count, rows/s is held down by other work; rows/CPU-s is not)"
        )
        return 0
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
                admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME}_journal WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(main())
