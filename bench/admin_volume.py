"""Benchmark: the admin's payment list, searches, filters and player page on a database of many payments.

What one run does, against a database `manage.py generate_volume` filled (`--db-name`; bench/volume.py makes
one with `--keep-db`, 10,000,000 payments by default), migrated to this code:

1. gunicorn serves the app with DEBUG=false (staff second factor off), a signed-in superuser's session.
2. Over HTTP, as a browser: the admin's index page (the reference: a page that reads no payment), then the
   payment list, a search by public id, by its first 8 characters, by a number in national format, by a
   user_ref, a filter by carrier, by one day's date-time range, and a player's page (by number). Each the
   first time (cold) and the median of `--repeats` more; a search that lands on a payment or a player is
   timed to its redirect, and the page it lands on is timed apart (shown beside it).

Prints a table: operation | first | median | goal (300 ms) | met? Exit status 0 when the run completed
(whatever the figures), 2 when the setup failed.

    python bench/admin_volume.py --db-name playpay_volume
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

try:
    import phonenumbers
    import psycopg
except ImportError:
    sys.exit("bench/admin_volume.py needs the project's dependencies: activate its virtualenv first")

from harness import DEPLOYED_THREADS, HOST, Server, SetupError, app_env, db_url, log, manage, run_bench, server_errors
from volume import setup_django, staff_session

GOAL_MS = 300.0
LIST = "/admin/payments/payment/"
LEDGER = "/admin/payments/ledgerentry/"
# The other lists of records the volume generator fills, each as a person opens it.
OTHER_LISTS = [
    ("refund", "/admin/payments/refund/"),
    ("reversal", "/admin/payments/reversal/"),
    ("ledger entry", LEDGER),
    ("ledger line", "/admin/payments/ledgerline/"),
    ("journey", "/admin/funnel/journey/"),
    ("funnel event", "/admin/funnel/funnelevent/"),
]


def one_day(day: str) -> dict[str, str]:
    """The date-time range filter's parameters for one whole day."""
    return {"created_at_from_0": day, "created_at_from_1": "00:00", "created_at_to_0": day, "created_at_to_1": "23:59"}


@dataclass
class Timing:
    operation: str
    first_ms: float
    median_ms: float
    statuses: str


class Staff:
    """GET requests with the staff session, a connection each; a redirect is followed once (timed with it)."""

    def __init__(self, port: int, session: str) -> None:
        self.port, self.session = port, session

    def _get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            connection.request("GET", path, headers={"Cookie": f"sessionid={self.session}"})
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader("Location") or ""
        finally:
            connection.close()

    def visit(self, path: str) -> tuple[float, float, str]:
        """(ms of the request, ms of the page it redirects to or 0, what answered)."""
        started = time.perf_counter()
        status, location = self._get(path)
        answered = (time.perf_counter() - started) * 1000
        if status != 302 or not location:
            return answered, 0.0, str(status)
        started = time.perf_counter()
        landed, _ = self._get(location)
        page = location.split("?")[0].rstrip("/").rsplit("/", 2)[-2]
        return answered, (time.perf_counter() - started) * 1000, f"302 to the {page} page ({landed})"


def timed(staff: Staff, operation: str, path: str, params: dict[str, str], repeats: int) -> Timing:
    url = f"{path}?{urlencode(params)}" if params else path
    first, _, statuses = staff.visit(url)
    visits = [staff.visit(url) for _ in range(repeats)]
    median = statistics.median(v[0] for v in visits)
    landing = statistics.median(v[1] for v in visits)
    if landing:
        statuses += f", which took {landing:.0f} ms more"
    log(f"{operation}: first {first:.0f} ms, median {median:.0f} ms ({statuses})")
    return Timing(operation, first, median, statuses)


@dataclass
class Sample:
    public_id: str
    national_msisdn: str
    msisdn: str
    user_ref: str
    carrier_id: int
    day: str


def sample(database_url: str) -> Sample:
    """A payment from a few months ago (its ids, its number in national format), and the most common carrier."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT public_id::text, msisdn, user_ref, created_at::date::text FROM payments_payment "
            "WHERE created_at >= now() - interval '100 days' AND created_at < now() - interval '99 days' LIMIT 1"
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT public_id::text, msisdn, user_ref, created_at::date::text FROM payments_payment LIMIT 1"
            ).fetchone()
        carrier = (
            conn.execute(
                "SELECT carrier_id FROM payments_payment WHERE created_at >= now() - interval '1 day' "
                "GROUP BY carrier_id ORDER BY count(*) DESC LIMIT 1"
            ).fetchone()
            or conn.execute("SELECT carrier_id FROM payments_payment LIMIT 1").fetchone()
        )
    if row is None or carrier is None:
        raise SetupError("the database holds no payments: generate them first (manage.py generate_volume)")
    public_id, msisdn, user_ref, day = row
    number = phonenumbers.parse(msisdn, None)
    national = re.sub(r"\D", "", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    return Sample(public_id, national, msisdn, user_ref, int(carrier[0]), day)


def run(args: argparse.Namespace, workdir: Path) -> str:
    database_url = db_url(args.pg_url, args.db_name)
    env = app_env(database_url, args.cache_url, secrets.token_urlsafe(50), "")
    env.update(
        {
            "JOURNAL_URL": db_url(args.pg_url, f"{args.db_name}_journal"),
            "SANDBOX": "true",
            "STAFF_2FA": "false",
            "PLAYPAY_VAR_DIR": str(workdir / "var"),
            "STATIC_ROOT": str(workdir / "static"),
        }
    )
    with psycopg.connect(database_url) as conn:
        count_row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'payments_payment'").fetchone()
        partitions_row = conn.execute(
            "SELECT sum(c.reltuples)::bigint FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'payments_payment'"
        ).fetchone()
    estimated = max(int(count_row[0] if count_row else 0), int(partitions_row[0] or 0) if partitions_row else 0)
    found = sample(database_url)
    setup_django(env, workdir)
    session, _ = staff_session()
    manage(["collectstatic", "--noinput", "-v", "0"], env)
    server = Server(
        env=env,
        workers=args.workers,
        log_path=workdir / "gunicorn.log",
    )
    try:
        server.wait_ready()
        staff = Staff(server.port, session)
        r = args.repeats
        timings = [
            timed(staff, "reference: the admin's index page", "/admin/", {}, r),
            timed(staff, "payment list (newest first)", LIST, {}, r),
            timed(staff, "search: public id", LIST, {"q": found.public_id}, r),
            timed(staff, "search: first 8 characters of the id", LIST, {"q": found.public_id[:8]}, r),
            timed(
                staff,
                f"search: number in national format ({found.national_msisdn[:4]}…)",
                LIST,
                {"q": found.national_msisdn},
                r,
            ),
            timed(staff, "search: user_ref", LIST, {"q": found.user_ref}, r),
            timed(staff, "filter: carrier (the busiest)", LIST, {"carrier__id__exact": str(found.carrier_id)}, r),
            timed(
                staff,
                "filter: one day (date-time range)",
                LIST,
                one_day(found.day),
                r,
            ),
            timed(staff, "player page (by number)", LIST + "player/", {"msisdn": found.msisdn}, r),
            *(timed(staff, f"{name} list (newest first)", path, {}, r) for name, path in OTHER_LISTS),
            timed(staff, "filter: failed payments", LIST, {"status__exact": "failed"}, r),
            timed(staff, "ledger entries: one day (date-time range)", LEDGER, one_day(found.day), r),
        ]
    finally:
        server.stop()
    errors = server_errors(workdir / "gunicorn.log")
    width = max(len(t.operation) for t in timings)
    lines = [
        "",
        "=" * 110,
        f"PlayPay admin at volume: {args.db_name}, about {estimated:,} payments; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} (others' load slows every figure)",
        f"  HTTP through gunicorn ({args.workers} gthread workers x {DEPLOYED_THREADS} threads, DEBUG=false); "
        f"first request, then median of {r}",
        "",
        f"  {'operation':<{width}} | {'first':>8} | {'median':>8} | goal   | met? | responses",
    ]
    for t in timings:
        goal = "—" if t.operation.startswith("reference") else f"{GOAL_MS:.0f} ms"
        met = "—" if goal == "—" else ("yes" if t.median_ms <= GOAL_MS else "NO")
        lines.append(
            f"  {t.operation:<{width}} | {t.first_ms:>5.0f} ms | {t.median_ms:>5.0f} ms | {goal:<6} | {met:<4} | "
            + t.statuses
        )
    lines += ["", f"server errors: {errors or 'none'}", "=" * 110]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db-name", default="playpay_volume", help="a generated database (playpay_volume)")
    parser.add_argument("--repeats", type=int, default=5, help="requests after the first, per operation (5)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without database (env BENCH_PG_URL)",
    )
    parser.add_argument(
        "--cache-url", default=os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/1"), help="Redis cache"
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name) or args.repeats < 1:
        parser.error("--db-name must be a plain lower-case identifier, --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go(tmp: Path) -> bool:
        print(run(args, tmp), flush=True)
        return True

    return run_bench(go)


if __name__ == "__main__":
    sys.exit(main())
