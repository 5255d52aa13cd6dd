"""Dashboard and catalog reads at volume, from the payment rows and from the payment rollups (bench/README.md).

Fills the database named by DATABASE_URL (a scratch one: it is migrated and filled) up to `--payments` payments
spread over 18 months, with set-based SQL: every status, failure codes, refunds, reversals and the status change
that decided each payment. Then times, each the median of `--runs` after a warm-up:

- the dashboard's data (`reporting.selectors.dashboard_data`, what data.json returns) for every period,
- the catalog's payments dataset by carrier and month over 18 months (what query.json runs),

first read from the rows (rollups forgotten: the reference, measured in the same run), then from the rollups,
and the rollups' first build and a periodic refresh after late changes. Printed next to the goals of issue 13.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "playpay.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from carriers.models import Carrier, Country, PricePoint  # noqa: E402
from payments.models import Payment  # noqa: E402
from reporting.models import Dashboard, Dataset  # noqa: E402
from reporting.selectors import PERIODS, DashboardFilters, dashboard_data  # noqa: E402
from reporting.services import rollups  # noqa: E402
from reporting.services.datasets import DatasetQuery, run_query  # noqa: E402
from tenants.models import App  # noqa: E402

DASHBOARD_GOAL_MS = 200
CATALOG_GOAL_MS = 500

FILL = """
WITH pp AS (
    SELECT (row_number() OVER (ORDER BY id)) - 1 AS k, id, carrier_id, amount_minor, currency FROM carriers_pricepoint
),
g AS (
    SELECT floor(random() * (SELECT count(*) FROM pp))::int AS k, random() AS r,
        now() - random() * interval '548 days' AS created,
        (SELECT array_agg(id) FROM tenants_app) AS apps
    FROM generate_series(1, %(count)s)
),
s AS (
    SELECT g.*, CASE
        WHEN r < 0.70 THEN 'succeeded' WHEN r < 0.85 THEN 'failed' WHEN r < 0.90 THEN 'expired'
        WHEN r < 0.93 THEN 'refunded' WHEN r < 0.95 THEN 'partially_refunded' WHEN r < 0.955 THEN 'reversed'
        WHEN r < 0.97 THEN 'charging' ELSE 'pin_sent' END AS status
    FROM g
)
INSERT INTO payments_payment (public_id, user_ref, msisdn, amount_minor, currency, status, flow, idempotency_key,
    journey_id, metadata, carrier_reference, failure_code, failure_message, pin_attempts, created_at, updated_at,
    app_id, carrier_id, price_point_id, carrier_data, charge_attempts, refunded_minor, insufficient_funds_declines,
    resolve_attempts, pin_ciphertext, pin_error)
SELECT gen_random_uuid(), 'player-' || floor(random() * 100000)::int, '+4915100000000', pp.amount_minor,
    pp.currency, s.status, CASE WHEN random() < 0.5 THEN 'pin' ELSE 'one_click' END, '', '', '{}', '',
    CASE WHEN s.status IN ('failed', 'expired')
        THEN (ARRAY['insufficient_funds', 'blocked', 'timeout', 'unknown_subscriber'])[1 + floor(random() * 4)::int]
        ELSE '' END,
    '', 0, s.created, s.created + interval '5 seconds', s.apps[1 + floor(random() * array_length(s.apps, 1))::int],
    pp.carrier_id, pp.id, '{}', 1,
    CASE s.status WHEN 'refunded' THEN pp.amount_minor WHEN 'partially_refunded' THEN GREATEST(1, pp.amount_minor / 2)
        ELSE 0 END,
    0, 0, '', ''
FROM s JOIN pp USING (k)
RETURNING id
"""
DEPENDENTS = [
    # the status change that decided each payment, up to 30 s after it was created
    """INSERT INTO payments_paymentstatuschange (from_status, to_status, actor, reason, created_at, payment_id,
        payment_created_at)
    SELECT 'charging', CASE WHEN status IN ('failed', 'expired') THEN status ELSE 'succeeded' END, 'system', '',
        created_at + random() * interval '30 seconds', id, created_at
    FROM payments_payment WHERE id >= %(first)s AND status NOT IN ('charging', 'pin_sent')""",
    """INSERT INTO payments_refund (public_id, amount_minor, currency, status, reason, requested_by, via_carrier,
        carrier_reference, failure_code, failure_message, created_at, completed_at, payment_id, resolve_attempts,
        payment_created_at)
    SELECT gen_random_uuid(), refunded_minor, currency, 'succeeded', 'bench', 'staff:bench', true, '', '', '',
        LEAST(now(), created_at + random() * interval '10 days'), LEAST(now(), created_at + interval '10 days'), id, 0,
        created_at
    FROM payments_payment WHERE id >= %(first)s AND status IN ('refunded', 'partially_refunded')""",
    """INSERT INTO payments_reversal (status, reason, requested_by, via_carrier, failure_code, failure_message,
        created_at, completed_at, payment_id, resolve_attempts, payment_created_at)
    SELECT 'succeeded', 'bench', 'staff:bench', true, '', '', created_at + interval '1 hour',
        created_at + interval '1 hour', id, 0, created_at
    FROM payments_payment WHERE id >= %(first)s AND status = 'reversed'""",
]


def fill(target: int) -> None:
    existing = Payment.objects.count()
    if existing >= target:
        print(f"{existing:,} payments present")
        return
    if not PricePoint.objects.exists():
        for code, currency, dialing in (("DE", "EUR", "49"), ("GB", "GBP", "44"), ("JP", "JPY", "81")):
            country, _ = Country.objects.get_or_create(
                code=code, defaults={"name": code, "currency": currency, "dialing_code": dialing}
            )
            for n in range(4):
                carrier, _ = Carrier.objects.get_or_create(
                    slug=f"bench-{code.lower()}-{n}",
                    defaults={"name": f"bench {code} {n}", "country": country, "protocol": "sandbox"},
                )
                for amount in (99, 499, 999):
                    PricePoint.objects.create(
                        carrier=carrier,
                        code=f"p{amount}",
                        amount_minor=amount,
                        currency=currency,
                        carrier_payout_minor=amount // 2,
                    )
        for n in range(8):
            App.objects.get_or_create(name=f"bench-game-{n}")
    started = time.monotonic()
    remaining = target - existing
    while remaining > 0:
        batch = min(remaining, 100_000)
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")  # filling is not a request
            cursor.execute(FILL, {"count": batch})
            first = min(row[0] for row in cursor.fetchall())
            for statement in DEPENDENTS:
                cursor.execute(statement, {"first": first})
        remaining -= batch
        print(f"  {target - remaining:,} payments ({time.monotonic() - started:.0f} s)", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE payments_payment")
        cursor.execute("ANALYZE payments_refund")
        cursor.execute("ANALYZE payments_reversal")
        cursor.execute("ANALYZE payments_paymentstatuschange")


def median_ms(action: Callable[[], object], runs: int) -> float:
    action()  # warm-up: caches, plans
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(runs: int) -> dict[str, float]:
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    payments = Dataset.objects.prefetch_related("fields").get(slug="payments")
    figures = {}
    for period in PERIODS:
        filters = DashboardFilters(period=period, timezone="Europe/Paris")
        figures[f"dashboard data.json {period}"] = median_ms(
            partial(dashboard_data, dashboard=dashboard, filters=filters), runs
        )
    now = timezone.now()
    query = DatasetQuery(
        measures=("payments", "revenue_minor", "success_rate"),
        group_by=("carrier",),
        bucket="month",
        since=now - timedelta(days=548),
        until=now,
    )
    figures["catalog payments by carrier x month, 18 months"] = median_ms(
        lambda: run_query(dataset=payments, query=query), runs
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        print("needs PostgreSQL: set DATABASE_URL to a scratch database")
        return 2
    call_command("migrate", verbosity=0)
    call_command("migrate", database="journal", verbosity=0)
    fill(args.payments)
    count = Payment.objects.count()

    rollups.forget_payment_rollups()
    raw = measure(args.runs)
    started = time.monotonic()
    steps = sum(1 for _ in rollups.catch_up_payment_rollups())
    build_s = time.monotonic() - started
    rolled = measure(args.runs)
    # Late changes: 2,000 payments of older hours move (as refunds and status changes do), then one refresh.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE payments_payment SET updated_at = now() WHERE id IN "
            "(SELECT id FROM payments_payment TABLESAMPLE SYSTEM (1) LIMIT 2000)"
        )
    started = time.monotonic()
    refreshed = rollups.refresh_payment_rollups()
    refresh_ms = (time.monotonic() - started) * 1000
    started = time.monotonic()
    rollups.refresh_payment_rollups()
    idle_ms = (time.monotonic() - started) * 1000

    print(f"\n{count:,} payments over 18 months; PostgreSQL, median of {args.runs} after a warm-up\n")
    print(f"{'operation':<52} {'rows (ref.)':>12} {'rollups':>10} {'goal':>9}  verdict")
    for name, reference in raw.items():
        goal = CATALOG_GOAL_MS if name.startswith("catalog") else DASHBOARD_GOAL_MS
        ok = rolled[name] <= goal
        print(f"{name:<52} {reference:>9.0f} ms {rolled[name]:>7.0f} ms {goal:>6} ms  {'met' if ok else 'MISSED'}")
    print(f"\nfirst build of the rollups: {build_s:.1f} s in {steps} steps")
    print(f"refresh after 2,000 late changes: {refresh_ms:.0f} ms ({refreshed.hours} hours recomputed)")
    print(f"refresh with nothing changed: {idle_ms:.0f} ms")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM reporting_paymentrollup), "
            "pg_total_relation_size('reporting_paymentrollup'), pg_total_relation_size('payments_payment')"
        )
        rows, rollup_bytes, payment_bytes = cursor.fetchone()
    print(
        f"payment rollup rows: {rows:,} ({rollup_bytes / 2**20:.0f} MB; payments table {payment_bytes / 2**20:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
