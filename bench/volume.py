"""Benchmark: PlayPay's reads and writes at volume, each figure next to its goal.

What one run does:

1. A fresh database (`--db-name`, default playpay_volume, and its journal `<name>_journal`): `migrate`,
   `seed_demo`, then `generate_volume` with `--payments` (10,000,000) and `--events` (20,000,000) over
   18 months, timed; the journal holds what its retention keeps (`--journal-within-ttl`, as a deployment
   running the daily expiry job would; `--full-journal` for every interaction). `--reuse-db` skips all
   that when the database already holds payments (a run with `--keep-db` left it); `--keep-db` keeps it
   at the end.
   Then the rollups a deployment's periodic jobs keep, timed: the payment and carrier-call rollups by
   `manage.py refresh_payment_rollups --rebuild` and `refresh_carrier_call_rollups --rebuild` (on a reused
   database: built when missing, brought up to the last whole hour when stale), and every funnel's rollups
   over the hours since its first event (`manage.py refresh_funnel_rollups`; on a reused database only the
   hours not computed yet).
2. gunicorn serves the app with DEBUG=false (staff second factor off, a signed-in superuser's session),
   and the script measures over HTTP, as a browser would:
   - the dashboard's `data.json` for every period the dashboard offers (`reporting.selectors.PERIODS`),
     in the viewer's zone `--timezone` (Europe/Paris: its days and months are not UTC ones): the first
     poll, then the median of `--polls` more;
   - the catalog's `query.json`: payments by carrier and month over 18 months;
   - the funnel report page (admin) for the last 30 days, as staff open it.
3. In this process, through the funnel's services: the 30-day report from the raw events
   (`funnel_report`) and from the hourly rollups (`rollup_report`, after `refresh_rollups`); then the
   6-step funnel with a carrier breakdown over the newest `--funnel-events` events (10,000,000, or
   half the events when fewer), raw on PostgreSQL and by ClickHouse's windowFunnel in chdb, with the
   code of bench/funnel_10m.py, and whether both agree.
4. A background export of last month's transactions (CSV, then XLSX) through the admin's "Run in the
   background", as the embedded default runs it: no broker, `manage.py run_scheduler` started for it (and
   stopped after) as its worker. How long the request took, which process ran the job (the web request
   or the scheduler), time to finish and rows/s.
5. Payment creation p50 (bench/payments_api.py's closed loop, `--create-seconds` per phase) on an empty
   database (`<name>_empty`) and on the generated one.
6. Database size per million payments: payments and what hangs on them, funnel, journal.

Prints a table: operation | measured | goal | met? Exit status 0 when the run completed (whatever the
figures), 2 when the setup failed, 130 when interrupted.

    python bench/volume.py --payments 1000000 --events 2000000 --keep-db
    python bench/volume.py --payments 1000000 --reuse-db          # measure again, no generation

Needs PostgreSQL (`--pg-url`, a user that may create databases; a superuser generates about twice as
fast), Redis (`--cache-url`, `--broker-url`) and chdb (requirements-dev.txt). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

try:
    import psycopg
    import redis
except ImportError:
    sys.exit("bench/volume.py needs the project's dependencies (psycopg, redis): activate its virtualenv first")

import funnel_10m
from harness import (
    DEPLOYED_THREADS,
    HOST,
    REPO_ROOT,
    REQUEST_TIMEOUT_S,
    ConnectionPool,
    Server,
    SetupError,
    app_env,
    db_url,
    drop_database,
    log,
    manage,
    recreate_database,
    run_bench,
    server_errors,
)
from payments_api import closed_loop

T = TypeVar("T")

DASHBOARD = "overview"
DEMO_FUNNEL = "Demo store purchase"
DASHBOARD_GOAL_MS = 200.0
CATALOG_GOAL_MS = 500.0
FUNNEL_RAW_GOAL_MS = 1000.0
FUNNEL_ROLLUP_GOAL_MS = 150.0
CHDB_FACTOR_GOAL = 5.0
CSV_GOAL_ROWS_S = 100_000.0
XLSX_GOAL_ROWS_S = 20_000.0
CREATE_SLOWDOWN_GOAL = 0.10
EXPORT_TIMEOUT_S = 600.0
SCHEDULER_STOP_S = 15.0
# Tables of each family; a partitioned table counts with its partitions (pg_partition_tree).
PAYMENT_TABLES = [
    "payments_payment",
    "payments_paymentstatuschange",
    "payments_refund",
    "payments_reversal",
    "payments_ledgerentry",
    "payments_ledgerline",
    "payments_idempotencyrecord",
]
FUNNEL_TABLES = ["funnel_funnelevent", "funnel_funneleventkey", "funnel_journey"]
JOURNAL_TABLES = ["journal_journalrecord"]


@dataclass
class Row:
    operation: str
    measured: str
    goal: str
    met: str


def fmt_ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 10 else f"{value:,.1f} ms"


def check(ok: bool, gap: str = "") -> str:
    return "yes" if ok else f"NO{': ' + gap if gap else ''}"


def timed(what: str, function: Callable[[], T]) -> tuple[T, float]:
    log(what)
    started = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - started
    log(f"{what}: {seconds:.2f} s")
    return result, seconds


# --- Setup ----------------------------------------------------------------------------------------


def payment_count(database_url: str) -> int:
    try:
        with psycopg.connect(database_url, connect_timeout=10) as conn:
            row = conn.execute("SELECT count(*) FROM payments_payment").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def prepare_database(pg_url: str, name: str, env: dict[str, str]) -> str:
    """A fresh database and journal, migrated and seeded; the demo app's API key."""
    recreate_database(pg_url, name)
    recreate_database(pg_url, f"{name}_journal")
    manage(["migrate", "--noinput", "-v", "0"], env)
    manage(["migrate", "--noinput", "-v", "0", "--database", "journal"], env)
    return seed(env)


def seed(env: dict[str, str]) -> str:
    seeded = manage(["seed_demo"], env)
    match = re.search(r"^export PLAYPAY_API_KEY=(\S+)\s*$", seeded, flags=re.MULTILINE)
    if match is None:
        raise SetupError(f"no `export PLAYPAY_API_KEY=` line in seed_demo's output:\n{seeded}")
    return match.group(1)


def generate(env: dict[str, str], payments: int, events: int, *, full_journal: bool) -> float:
    """Run generate_volume, its progress on stderr; seconds it took."""
    command = [
        sys.executable,
        str(REPO_ROOT / "manage.py"),
        "generate_volume",
        "--payments",
        str(payments),
        "--events",
        str(events),
        *([] if full_journal else ["--journal-within-ttl"]),
    ]
    timeout = 600 + payments * 0.01  # generous (10 ms a payment), but bounded
    started = time.perf_counter()
    with subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        lines = []
        try:
            for line in process.stdout:
                lines.append(line.rstrip())
                log(f"generate_volume: {line.rstrip()}")
                if time.perf_counter() - started > timeout:
                    raise SetupError(f"generate_volume took more than {timeout:.0f} s")
            process.wait(timeout=60)
        finally:
            if process.poll() is None:  # interrupted, or too long: it must not outlive the run
                process.kill()
                process.wait(timeout=60)
    if process.returncode != 0:
        raise SetupError("generate_volume failed:\n" + "\n".join(lines[-40:]))
    return time.perf_counter() - started


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def payment_rollups_command(database_url: str, *, fresh: bool) -> tuple[list[str], str]:
    """What brings the payment rollups up to the last whole hour, and why; ([], why) when they are."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT covered_until FROM reporting_rollupstate WHERE id = 1").fetchone()
    if fresh or row is None:
        return ["refresh_payment_rollups", "--rebuild"], "built from scratch"
    covered_until = row[0]
    if covered_until < _floor_hour(datetime.now(UTC)):
        return ["refresh_payment_rollups"], f"brought up from {covered_until:%Y-%m-%d %H}:00"
    return [], "up to date"


def carrier_call_rollups_command(database_url: str, *, fresh: bool) -> tuple[list[str], str]:
    """What brings the carrier-call rollups up to the last whole hour, and why; ([], why) when they are."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT covered_until FROM reporting_carriercallrollupstate WHERE id = 1").fetchone()
    if fresh or row is None:
        return ["refresh_carrier_call_rollups", "--rebuild"], "built from scratch"
    if row[0] < _floor_hour(datetime.now(UTC)):
        return ["refresh_carrier_call_rollups"], f"brought up from {row[0]:%Y-%m-%d %H}:00"
    return [], "up to date"


def funnel_rollup_days(database_url: str) -> tuple[int, str]:
    """The days back `refresh_funnel_rollups` must compute so that every funnel's hours are, from its first
    event's to the current one, and why; (0, why) when they are."""
    with psycopg.connect(database_url) as conn:
        first = conn.execute("SELECT min(occurred_at) FROM funnel_funnelevent").fetchone()
        if first is None or first[0] is None:
            return 0, "no funnel events"
        first_hour = _floor_hour(first[0])
        rows = conn.execute(
            "SELECT f.id, count(h.hour), min(h.hour), max(h.hour) FROM funnel_funneldefinition f "
            "LEFT JOIN funnel_funnelrolluphour h ON h.funnel_id = f.id AND h.hour >= %s GROUP BY f.id",
            (first_hour,),
        ).fetchall()
    now = datetime.now(UTC)
    missing_since = now
    for _, hours, oldest, newest in rows:
        whole = hours and oldest == first_hour and hours == (newest - first_hour) // timedelta(hours=1) + 1
        missing_since = min(missing_since, newest + timedelta(hours=1) if whole else first_hour)
    if missing_since >= _floor_hour(now):
        return 0, "up to date"
    days = (now - missing_since) // timedelta(days=1) + 1
    why = "built from scratch" if missing_since == first_hour else f"computed from {missing_since:%Y-%m-%d %H}:00"
    return days, why


def build_rollups(env: dict[str, str], database_url: str, payments: int, *, fresh: bool) -> list[Row]:
    """The rollups a deployment's periodic jobs would have built by now, built the way they are, timed."""
    timeout = 600 + payments * 0.002  # generous (2 ms a payment), but bounded
    rows = []
    command, why = payment_rollups_command(database_url, fresh=fresh)
    seconds = 0.0
    if command:
        _, seconds = timed(
            f"payment rollups: manage.py {' '.join(command)}", lambda: manage(command, env, timeout_s=timeout)
        )
    with psycopg.connect(database_url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM reporting_paymentrollup), (SELECT count(*) FROM reporting_paymentdayrollup), "
            "(SELECT count(*) FROM reporting_paymentmonthrollup)"
        ).fetchone()
    hourly, daily, monthly = counts if counts else (0, 0, 0)
    rows.append(
        Row(
            f"payment rollups {why} ({hourly:,} hourly, {daily:,} daily, {monthly:,} monthly rows)",
            f"{seconds:,.1f} s",
            "",
            "",
        )
    )
    command, why = carrier_call_rollups_command(database_url, fresh=fresh)
    seconds = 0.0
    if command:
        _, seconds = timed(
            f"carrier-call rollups: manage.py {' '.join(command)}", lambda: manage(command, env, timeout_s=timeout)
        )
    rows.append(Row(f"carrier-call rollups {why}", f"{seconds:,.1f} s", "", ""))
    days, why = funnel_rollup_days(database_url)
    seconds = 0.0
    if days:
        command = ["refresh_funnel_rollups", "--days", str(days)]
        _, seconds = timed(
            f"funnel rollups: manage.py {' '.join(command)}", lambda: manage(command, env, timeout_s=timeout)
        )
    rows.append(Row(f"funnel rollups {why} ({days} days)", f"{seconds:,.1f} s", "", ""))
    return rows


def setup_django(env: dict[str, str], workdir: Path) -> None:
    os.environ.update({key: env[key] for key in ("DATABASE_URL", "JOURNAL_URL", "SECRET_KEY", "CACHE_URL")})
    os.environ.update({"DEBUG": "false", "STAFF_2FA": "false", "SANDBOX": "true", "CELERY_BROKER_URL": ""})
    funnel_10m.setup_django(env["DATABASE_URL"], workdir)


def staff_session() -> tuple[str, str]:
    """A signed-in superuser's session cookie and a CSRF secret for the admin's forms."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user, _ = get_user_model().objects.get_or_create(
        username="bench-volume", defaults={"is_staff": True, "is_superuser": True, "email": "bench@example.com"}
    )
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return str(session.session_key), secrets.token_hex(16)


# --- HTTP -----------------------------------------------------------------------------------------


class Browser:
    """Requests with the staff session, a connection each."""

    def __init__(self, port: int, session: str, csrf: str) -> None:
        self.port, self.session, self.csrf = port, session, csrf

    def _send(self, payload: bytes) -> tuple[int, bytes, float]:
        """(status, body, ms); status 0 when the server dropped the connection (a worker killed on timeout)."""

        async def once() -> tuple[int, bytes]:
            pool = ConnectionPool(self.port)  # an event loop per request: its streams cannot outlive it
            try:
                return await asyncio.wait_for(pool.exchange(payload), REQUEST_TIMEOUT_S * 4)
            finally:
                pool.close()

        started = time.perf_counter()
        try:
            status, body = asyncio.run(once())
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            status, body = 0, b""
        return status, body, (time.perf_counter() - started) * 1000

    def _head(self, method: str, path: str, extra: str = "") -> str:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Cookie: sessionid={self.session}; csrftoken={self.csrf}\r\n{extra}"
        )

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        if params:
            path = f"{path}?{urlencode(params)}"
        return self._send((self._head("GET", path) + "\r\n").encode())

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, bytes, float]:
        body = urlencode({**fields, "csrfmiddlewaretoken": self.csrf}).encode()
        extra = (
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Referer: http://{HOST}:{self.port}{path}\r\nContent-Length: {len(body)}\r\n"
        )
        return self._send((self._head("POST", path, extra) + "\r\n").encode() + body)


def polled(browser: Browser, path: str, params: dict[str, str], polls: int) -> tuple[float, float, int]:
    """(first poll ms, median of the next `polls` ms, status of the last)."""
    status, _, first = browser.get(path, params)
    times = []
    for _ in range(polls):
        status, _, ms = browser.get(path, params)
        times.append(ms)
    return first, statistics.median(times) if times else first, status


# --- Measurements ---------------------------------------------------------------------------------


def measure_reads(browser: Browser, args: argparse.Namespace, rows: list[Row], now: datetime) -> None:
    from funnel.models import FunnelDefinition
    from reporting.selectors import PERIODS

    for period in PERIODS:
        first, median, status = polled(
            browser, f"/reporting/dashboards/{DASHBOARD}/data.json", {"period": period, "tz": args.timezone}, args.polls
        )
        ok = status == 200 and median <= DASHBOARD_GOAL_MS
        rows.append(
            Row(
                f"dashboard data.json {period} {args.timezone} (median of {args.polls}; first {fmt_ms(first)})",
                fmt_ms(median) if status == 200 else f"HTTP {status}",
                f"<= {DASHBOARD_GOAL_MS:.0f} ms",
                check(ok, f"{median / DASHBOARD_GOAL_MS:.1f}x" if status == 200 else ""),
            )
        )
    for missing in ("12m", "18m"):
        if missing not in PERIODS:
            rows.append(Row(f"dashboard data.json {missing}", "not offered", "offered, <= 200 ms", "NO"))
    params = {
        "measures": "payments",
        "group_by": "carrier",
        "bucket": "month",
        "since": f"{(now - timedelta(days=550)).date():%Y-%m-01}",
        "until": f"{(now + timedelta(days=1)).date()}",
    }
    first, median, status = polled(browser, "/reporting/datasets/payments/query.json", params, max(args.polls // 2, 1))
    rows.append(
        Row(
            f"catalog query.json payments carrier x month 18 months (first {fmt_ms(first)})",
            fmt_ms(median) if status == 200 else f"HTTP {status}",
            f"<= {CATALOG_GOAL_MS:.0f} ms",
            check(status == 200 and median <= CATALOG_GOAL_MS, f"{median / CATALOG_GOAL_MS:.1f}x"),
        )
    )
    funnel = FunnelDefinition.objects.get(name=DEMO_FUNNEL)
    today = now.date()
    status, _, page_ms = browser.get(
        f"/admin/funnel/funneldefinition/{funnel.pk}/report/",
        {"since": str(today - timedelta(days=29)), "until": str(today), "breakdown": "carrier"},
    )
    rows.append(
        Row(
            "funnel report page, 30 days to today, by carrier (admin, as staff open it)",
            fmt_ms(page_ms) if status == 200 else f"HTTP {status}",
            f"<= {FUNNEL_RAW_GOAL_MS:.0f} ms",
            check(status == 200 and page_ms <= FUNNEL_RAW_GOAL_MS, f"{page_ms / FUNNEL_RAW_GOAL_MS:.1f}x"),
        )
    )


def measure_funnel_services(rows: list[Row], now: datetime) -> None:
    from django.conf import settings
    from django.test import override_settings

    from funnel.models import FunnelDefinition, FunnelEvent
    from funnel.rollups import refresh_rollups, rollup_report
    from funnel.selectors import funnel_report

    funnel = FunnelDefinition.objects.get(name=DEMO_FUNNEL)
    until = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = until - timedelta(days=30)
    events = FunnelEvent.objects.filter(occurred_at__gte=since, occurred_at__lt=until).count()

    def raw_report() -> Any:
        return funnel_report(
            steps=list(funnel.steps),
            window=timedelta(seconds=funnel.window_seconds),
            since=since,
            until=until,
            breakdown="carrier",
        )

    raw, raw_s = timed(f"funnel report, 30 days, raw events, {settings.FUNNEL_PARTS} parts", raw_report)
    with override_settings(FUNNEL_PARTS=1):
        whole, whole_s = timed("funnel report, 30 days, raw events, one statement (reference)", raw_report)
    built, build_s = timed(
        "building the 30 days' rollups", lambda: refresh_rollups(funnel=funnel, since=since, until=until)
    )
    rolled, rollup_s = timed(
        "funnel report, 30 days, rollups",
        lambda: rollup_report(funnel=funnel, since=since, until=until, breakdown="carrier"),
    )
    agree = raw.breakdown == rolled.breakdown
    rows.append(
        Row(
            f"funnel report 30 days from raw events ({events:,} events; {settings.FUNNEL_PARTS} parts at once; "
            f"one statement: {fmt_ms(whole_s * 1000)}, {whole_s / raw_s:.2f}x as long; equal: "
            f"{'yes' if whole == raw else 'NO'})",
            fmt_ms(raw_s * 1000),
            f"<= {FUNNEL_RAW_GOAL_MS:.0f} ms",
            check(raw_s * 1000 <= FUNNEL_RAW_GOAL_MS, f"{raw_s * 1000 / FUNNEL_RAW_GOAL_MS:.1f}x"),
        )
    )
    rows.append(
        Row(
            f"funnel report 30 days from rollups (built in {build_s:.1f} s, {built:,} rows; "
            f"equal to raw: {'yes' if agree else 'NO'})",
            fmt_ms(rollup_s * 1000),
            f"<= {FUNNEL_ROLLUP_GOAL_MS:.0f} ms",
            check(rollup_s * 1000 <= FUNNEL_ROLLUP_GOAL_MS, f"{rollup_s * 1000 / FUNNEL_ROLLUP_GOAL_MS:.1f}x"),
        )
    )


def measure_reads_by_id(rows: list[Row], reads: int = 300) -> None:
    """A payment read and locked by its row id, as the carrier flow's tasks do: by the id alone (every
    month's partition planned and probed), through the months the id can be in (IdMonths, what the flow
    does), and naming its month (the floor). Alternated three times; the best round of each."""
    from django.db import transaction

    from payments.models import Payment
    from payments.partitions import PAYMENT_MONTHS

    sample = list(Payment.objects.order_by("?").values_list("pk", "created_at")[:reads])
    ways: dict[str, Callable[[int, datetime], Payment]] = {
        "id alone": lambda pk, at: Payment.objects.select_for_update().get(pk=pk),
        "id's months": lambda pk, at: PAYMENT_MONTHS.get(Payment.objects.select_for_update(), pk),
        "id and month": lambda pk, at: Payment.objects.select_for_update().get(pk=pk, created_at=at),
    }
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(3):
        for way, read in ways.items():
            with transaction.atomic():
                started = time.perf_counter()
                for pk, at in sample:
                    read(pk, at)
                best[way] = min(best[way], (time.perf_counter() - started) / len(sample) * 1000)
    months = len(PAYMENT_MONTHS.table.months())
    rows.append(
        Row(
            f"payment read + lock by row id ({months} monthly partitions; {len(sample)} reads, best of 3)",
            " / ".join(f"{way} {value:.2f} ms" for way, value in best.items()),
            "id's months ~ id and month",
            check(best["id's months"] <= 1.5 * best["id and month"]),
        )
    )


def newest_events_since(database_url: str, wanted: int) -> tuple[datetime, int]:
    """The start of the newest whole days holding at least `wanted` events, and how many they hold."""
    with psycopg.connect(database_url) as conn:
        days = conn.execute(
            "SELECT date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day, count(*) FROM funnel_funnelevent "
            "GROUP BY 1 ORDER BY 1 DESC"
        ).fetchall()
    total, since = 0, None
    for day, count in days:
        total += int(count)
        since = day
        if total >= wanted:
            break
    if since is None:
        raise SetupError("no funnel events")
    return since.replace(tzinfo=UTC), total


def measure_funnel_chdb(database_url: str, wanted: int, workdir: Path, rows: list[Row], now: datetime) -> None:
    """bench/funnel_10m.py's comparison, on the generated events; the raw report in parts at once (the
    default), and in one statement for reference."""
    from django.conf import settings
    from django.test import override_settings

    from funnel.selectors import funnel_report

    since, events = newest_events_since(database_url, wanted)
    until = now + timedelta(days=1)

    def raw_report() -> Any:
        return funnel_report(
            steps=funnel_10m.STEPS, window=funnel_10m.WINDOW, since=since, until=until, breakdown="carrier"
        )

    raw, raw_s = timed(f"funnel, {events:,} events, 6 steps by carrier, raw, {settings.FUNNEL_PARTS} parts", raw_report)
    with override_settings(FUNNEL_PARTS=1):
        _, whole_s = timed("the same, one statement (reference)", raw_report)
    (events_file, journeys_file), export_s = timed(
        "exporting them to Parquet for chdb",
        lambda: funnel_10m.export_parquet(database_url, workdir, since, until),
    )
    ch, chdb_s = timed("chdb windowFunnel", lambda: funnel_10m.chdb_funnel(events_file, journeys_file, since, until))
    equal = {carrier or "(unknown)": counts for carrier, counts in raw.breakdown.items()} == ch
    factor = raw_s / chdb_s if chdb_s else float("inf")
    rows.append(
        Row(
            f"funnel {events:,} events 6 steps by carrier, raw vs chdb windowFunnel {chdb_s:.2f} s "
            f"(export {export_s:.0f} s; equal: {'yes' if equal else 'NO'}; {settings.FUNNEL_PARTS} parts at once; "
            f"one statement {whole_s:.2f} s = {whole_s / chdb_s:.1f}x chdb)",
            f"{raw_s:.2f} s = {factor:.1f}x chdb",
            f"<= {CHDB_FACTOR_GOAL:.0f}x chdb",
            check(factor <= CHDB_FACTOR_GOAL, f"{factor / CHDB_FACTOR_GOAL:.1f}x over"),
        )
    )


@contextlib.contextmanager
def scheduler(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`manage.py run_scheduler`, the embedded default's worker for background exports (and periodic
    tasks), for as long as the block runs; stopped (SIGTERM, then SIGKILL) after it, whatever happened."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_scheduler", "--tick", "1"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=SCHEDULER_STOP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=SCHEDULER_STOP_S)


def measure_export(browser: Browser, rows: list[Row], now: datetime, scheduler_pid: int) -> None:
    from reporting.models import ExportJob

    first = (now.replace(day=1) - timedelta(days=1)).replace(day=1)
    last = now.replace(day=1) - timedelta(days=1)
    for file_format, goal in (("csv", CSV_GOAL_ROWS_S), ("xlsx", XLSX_GOAL_ROWS_S)):
        latest = ExportJob.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        status, _, request_ms = browser.post_form(
            "/admin/reporting/exportjob/add/",
            {
                "kind": "transactions",
                "file_format": file_format,
                "date_from": str(first.date()),
                "date_to": str(last.date()),
            },
        )
        job = ExportJob.objects.filter(pk__gt=latest).order_by("pk").first()
        if job is None:
            rows.append(
                Row(f"background export {file_format.upper()} of {first:%Y-%m}", f"HTTP {status}, no job", "", "NO")
            )
            continue
        # Finished when the request answered: it ran in the web request.
        in_request = job.status == ExportJob.Status.DONE
        deadline = time.monotonic() + EXPORT_TIMEOUT_S
        while job.status not in (ExportJob.Status.DONE, ExportJob.Status.FAILED) and time.monotonic() < deadline:
            time.sleep(0.5)
            job.refresh_from_db()
        in_scheduler = job.worker.endswith(f":{scheduler_pid}")
        in_request = in_request or (bool(job.worker) and not in_scheduler)
        where = "inside the web request" if in_request else "in the scheduler process" if in_scheduler else "nowhere"
        label = (
            f"background export {file_format.upper()} of {first:%Y-%m} "
            f"({where}; request {fmt_ms(request_ms)}, HTTP {status})"
        )
        if job.status != ExportJob.Status.DONE or not job.started_at or not job.finished_at:
            rows.append(
                Row(
                    label,
                    f"job {job.status} after {EXPORT_TIMEOUT_S:.0f} s max: {job.error[:80]}",
                    f">= {goal:,.0f} rows/s",
                    "NO",
                )
            )
            continue
        seconds = max((job.finished_at - job.started_at).total_seconds(), 0.001)
        rate = job.rows_done / seconds
        rows.append(
            Row(
                f"{label}: {job.rows_done:,} rows in {seconds:.1f} s",
                f"{rate:,.0f} rows/s",
                f">= {goal:,.0f} rows/s, not in the request",
                check(
                    rate >= goal and not in_request, "ran in the web request" if in_request else f"{goal / rate:.1f}x"
                ),
            )
        )


def measure_create(port: int, api_key: str, seconds: float, connections: int) -> float:
    """p50 of payment creation over `seconds` of closed loop, in ms."""
    result = asyncio.run(
        closed_loop(
            port=port,
            api_key=api_key,
            key_prefix=f"V-{secrets.token_hex(4)}-",
            connections=connections,
            duration_s=seconds,
        )
    )
    if not result.statuses.get(201):
        raise SetupError(f"payment creation answered {dict(result.statuses)}, no 201")
    return float(result.p50_ms)


def compare_create(
    first: tuple[int, str], second: tuple[int, str], *, seconds: float, connections: int, rounds: int
) -> tuple[float, float]:
    """Median p50 of payment creation on two servers (port, API key), measured in alternating phases
    (first, second, second, first, …) so that a drift of the machine's load weighs on both alike."""
    for port, key in (first, second):
        measure_create(port, key, 5, connections)  # warm: connections, caches
    phases: dict[int, list[float]] = {0: [], 1: []}
    for index in range(2 * rounds):
        which = (index + index // 2) % 2  # 0 1 1 0 0 1 1 0 …
        port, key = (first, second)[which]
        phases[which].append(measure_create(port, key, seconds / rounds, connections))
    log(f"payment create p50 per phase: {phases[0]} vs {phases[1]}")
    return statistics.median(phases[0]), statistics.median(phases[1])


def family_sizes(pg_url: str, db_name: str) -> dict[str, int]:
    # A plain table is its own tree; pg_partition_tree gives a partitioned one's partitions (the parent is 0).
    query = (
        "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM ("
        "  SELECT t.name::regclass AS relid FROM unnest(%(tables)s::text[]) AS t(name)"
        "  UNION SELECT p.relid FROM unnest(%(tables)s::text[]) AS t(name),"
        "  LATERAL pg_partition_tree(t.name::regclass) p"
        ") tree"
    )
    sizes = {}
    for family, database, tables in (
        ("payments, history, refunds, reversals, ledger", db_name, PAYMENT_TABLES),
        ("funnel events, keys, journeys", db_name, FUNNEL_TABLES),
        ("journal (within its retention unless --full-journal)", f"{db_name}_journal", JOURNAL_TABLES),
    ):
        with psycopg.connect(db_url(pg_url, database)) as conn:
            existing = []
            for name in tables:
                found = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
                if found and found[0]:
                    existing.append(name)
            row = conn.execute(query, {"tables": existing}).fetchone()
        sizes[family] = int(row[0]) if row else 0
    return sizes


# --- The run --------------------------------------------------------------------------------------


def report(rows: list[Row], header: list[str], footer: list[str]) -> str:
    width = max(len(row.operation) for row in rows)
    measured = max(len(row.measured) for row in rows)
    goal = max(len(row.goal) for row in rows)
    lines = ["", "=" * 120, *header, ""]
    lines.append(f"  {'operation':<{width}} | {'measured':>{measured}} | {'goal':<{goal}} | met?/gap")
    lines.append(f"  {'-' * width}-+-{'-' * measured}-+-{'-' * goal}-+---------")
    for row in rows:
        lines.append(f"  {row.operation:<{width}} | {row.measured:>{measured}} | {row.goal:<{goal}} | {row.met}")
    return "\n".join([*lines, "", *footer, "=" * 120])


def run(args: argparse.Namespace, workdir: Path) -> str:
    database_url = db_url(args.pg_url, args.db_name)
    empty_name = f"{args.db_name}_empty"
    secret = secrets.token_urlsafe(50)

    def env_for(name: str, broker: str) -> dict[str, str]:
        env = app_env(db_url(args.pg_url, name), args.cache_url, secret, broker)
        env.update(
            {
                "JOURNAL_URL": db_url(args.pg_url, f"{name}_journal"),
                "SANDBOX": "true",
                "STAFF_2FA": "false",
                "PLAYPAY_VAR_DIR": str(workdir / name),
                "STATIC_ROOT": str(workdir / "static"),  # DEBUG=false serves the collected, hashed files
            }
        )
        return env

    env = env_for(args.db_name, args.broker_url)
    rows: list[Row] = []
    header: list[str] = []
    footer: list[str] = []
    server: Server | None = None
    try:
        existing = payment_count(database_url) if args.reuse_db else 0
        generated = not existing
        if existing:
            log(f"reusing {args.db_name}: {existing:,} payments")
            api_key = seed(env)
            generation = f"reused {args.db_name} ({existing:,} payments), not generated in this run"
        else:
            log(f"creating {args.db_name}, migrate, seed_demo")
            api_key = prepare_database(args.pg_url, args.db_name, env)
            log(f"generating {args.payments:,} payments and {args.events:,} events")
            seconds = generate(env, args.payments, args.events, full_journal=args.full_journal)
            existing = payment_count(database_url)
            generation = (
                f"generate_volume: {existing:,} payments, {args.events:,} events in {seconds:,.0f} s "
                f"= {seconds / existing * 1e6:,.0f} s per million payments"
            )
        rows += build_rollups(env, database_url, existing, fresh=generated)
        now = datetime.now(UTC)
        setup_django(env, workdir)
        with psycopg.connect(database_url) as conn:
            events_row = conn.execute("SELECT count(*) FROM funnel_funnelevent").fetchone()
        events = int(events_row[0]) if events_row else 0
        load = os.getloadavg()
        header = [
            "PlayPay at volume",
            f"  {existing:,} payments, {events:,} funnel events; {os.cpu_count()} CPUs, "
            f"load average {load[0]:.1f} at start (others' load slows every figure)",
            f"  {generation}",
            f"  HTTP through gunicorn ({args.workers} gthread workers x {DEPLOYED_THREADS} threads, DEBUG=false); "
            "funnel services in-process",
        ]

        manage(["collectstatic", "--noinput", "-v", "0"], env)
        server = Server(
            env=env,
            workers=args.workers,
            log_path=workdir / "gunicorn.log",
        )
        server.wait_ready()
        session, csrf = staff_session()
        browser = Browser(server.port, session, csrf)
        measure_reads(browser, args, rows, now)
        measure_funnel_services(rows, now)
        measure_reads_by_id(rows)
        if not args.skip_chdb:
            measure_funnel_chdb(database_url, min(args.funnel_events, max(events // 2, 1)), workdir, rows, now)
        server.stop()
        errors = server_errors(workdir / "gunicorn.log")
        server = None

        # The export as the embedded default runs it: no broker, the scheduler process is the worker.
        export_env = env_for(args.db_name, "")
        server = Server(
            env=export_env,
            workers=args.workers,
            log_path=workdir / "export.log",
        )
        server.wait_ready()
        with scheduler(export_env, workdir / "scheduler.log") as worker:
            measure_export(Browser(server.port, session, csrf), rows, now, worker.pid)
        server.stop()
        errors += server_errors(workdir / "export.log") + server_errors(workdir / "scheduler.log")
        server = None

        log(f"creating {empty_name} for payment creation on an empty database")
        empty_env = env_for(empty_name, args.broker_url)
        empty_key = prepare_database(args.pg_url, empty_name, empty_env)
        server = Server(
            env=empty_env,
            workers=args.workers,
            log_path=workdir / "empty.log",
        )
        full_server = Server(
            env=env,
            workers=args.workers,
            log_path=workdir / "create.log",
        )
        try:
            server.wait_ready()
            full_server.wait_ready()
            create_empty, create_full = compare_create(
                (server.port, empty_key),
                (full_server.port, api_key),
                seconds=args.create_seconds,
                connections=args.connections,
                rounds=args.create_rounds,
            )
        finally:
            full_server.stop()
        server.stop()
        server = None
        errors += server_errors(workdir / "create.log")
        slower = create_full / create_empty - 1
        rows.append(
            Row(
                f"payment create p50, empty vs {existing:,} payments ({args.connections} connections, "
                f"{args.create_rounds} alternating phases of {args.create_seconds / args.create_rounds:.0f} s each, "
                "median)",
                f"{create_empty:.1f} vs {create_full:.1f} ms ({slower:+.0%})",
                f"<= +{CREATE_SLOWDOWN_GOAL:.0%}",
                check(slower <= CREATE_SLOWDOWN_GOAL),
            )
        )

        sizes = family_sizes(args.pg_url, args.db_name)
        millions = existing / 1e6
        for family, size in sizes.items():
            rows.append(
                Row(f"database size per million payments: {family}", f"{size / millions / 2**20:,.0f} MB", "", "")
            )
        total = sum(sizes.values())
        rows.append(
            Row("database size per million payments: all of the above", f"{total / millions / 2**30:,.2f} GB", "", "")
        )
        if errors:
            footer = ["The server logged errors:", errors]
        return report(rows, header, footer)
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with contextlib.suppress(psycopg.Error):
            drop_database(args.pg_url, empty_name)
            drop_database(args.pg_url, f"{empty_name}_journal")
        if not args.keep_db:
            log(f"dropping {args.db_name}")
            with contextlib.suppress(psycopg.Error):
                drop_database(args.pg_url, args.db_name)
                drop_database(args.pg_url, f"{args.db_name}_journal")
        if args.broker_url.startswith("redis://"):
            # No carrier worker runs here: drop the work the requests queued.
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(args.broker_url).flushdb()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--payments", type=int, default=10_000_000, help="payments to generate (10,000,000)")
    parser.add_argument("--events", type=int, default=20_000_000, help="funnel events to generate (20,000,000)")
    parser.add_argument(
        "--funnel-events", type=int, default=10_000_000, help="newest events the raw-vs-chdb funnel reads (10 M)"
    )
    parser.add_argument("--polls", type=int, default=5, help="dashboard polls per period after the first (5)")
    parser.add_argument("--timezone", default="Europe/Paris", help="the dashboard viewer's zone (Europe/Paris)")
    parser.add_argument(
        "--create-seconds", type=float, default=40.0, help="seconds of payment creation per database (40)"
    )
    parser.add_argument(
        "--create-rounds", type=int, default=8, help="alternating phases per database the seconds are cut in (8)"
    )
    parser.add_argument("--connections", type=int, default=2, help="connections creating payments (2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument(
        "--full-journal",
        action="store_true",
        help="journal every interaction of the 18 months; by default only what the journal's retention "
        "(JOURNAL_TTL_DAYS) keeps, as in a deployment (at 10 M payments the full journal is ~40 GB)",
    )
    parser.add_argument("--skip-chdb", action="store_true", help="leave out the raw-vs-chdb funnel")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without database (env BENCH_PG_URL)",
    )
    parser.add_argument("--db-name", default="playpay_volume", help="database to generate into (playpay_volume)")
    parser.add_argument("--keep-db", action="store_true", help="keep the database (and its journal) at the end")
    parser.add_argument("--reuse-db", action="store_true", help="measure the kept database again, no generation")
    parser.add_argument(
        "--cache-url", default=os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/1"), help="Redis cache"
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/2"),
        help="Celery broker the API queues carrier work on (flushed at the end; no worker runs)",
    )
    args = parser.parse_args(argv)
    if args.payments < 1000 or args.events < 0 or args.polls < 1:
        parser.error("--payments >= 1000, --events >= 0, --polls >= 1")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name):
        parser.error("--db-name must be a plain lower-case identifier")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_chdb:
        try:
            import chdb  # noqa: F401
        except ImportError:
            print("bench/volume.py needs chdb (pip install -r requirements-dev.txt), or --skip-chdb", file=sys.stderr)
            return 2

    def go(tmp: Path) -> bool:
        print(run(args, tmp), flush=True)
        return True

    return run_bench(go)


if __name__ == "__main__":
    sys.exit(main())
