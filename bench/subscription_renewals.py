"""Benchmark: the renewal engine draining one hour's renewals, each period charged once.

What one run does:

1. Makes the databases `playpay_bench_renewals` and `…_journal` fresh (`--db-name`), runs `migrate` and
   `seed_demo`, then sets Django up in this process (no Celery broker: the carrier work runs in-process after
   each batch's commit, as in the embedded default), against the demo's in-process sandbox carriers.
2. Bulk-inserts `--subscriptions` (1,000,000 by default) active weekly subscriptions of the demo app, spread
   over the sandbox carriers, all due within the same hour (set-based SQL, one statement per carrier).
3. Runs `--engines` engine processes (1 by default) at once, each `run_renewals` at the end of that hour with
   `--batch` subscriptions per transaction, until nothing is due: every renewal is a one-click payment, its
   carrier call (journaled), its settlement, ledger lines and webhook row.
   With `--time-limit`, the engines stop between two batches once that time is up (a machine that cannot
   drain a million renewals within a run of reasonable length still measures the engine against a million due ones).
4. Prints renewals charged per second, the time to drain the hour (and how it compares with the hour; after
   a `--time-limit`, projected from the rate), the database rows written per renewal (inserted + updated,
   from PostgreSQL's table statistics, both databases), the tables that took most of them, and checks that
   each subscription's period was charged exactly once (no double charge, none skipped, nothing left due but
   what a `--time-limit` left, uncharged).

5. With `--dashboard-days N`, then gives every subscription N days of renewal history (one period each, first
   attempts spread over the N days before, 85 % charged, the rest retried a day later, most of those charged:
   set-based SQL), brings the rollups and the subscriber counts' day counts up to date as their periodic jobs
   would, and times the overview dashboard's `data.json` answer (in process, median of 5) for 24 hours, 30 days
   and 18 months, each against the 200 ms a poll may take.

Exit status: 0 when the checks held, 1 when one failed, 2 when the setup failed, 130 when interrupted. The
databases are dropped at the end (`--keep-db` keeps them).

    python bench/subscription_renewals.py --subscriptions 20000 [--engines 2] [--batch 200]

Needs PostgreSQL (`--pg-url`, default postgres://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from harness import REPO_ROOT, SetupError, db_url, drop_database, log, manage, recreate_database, run_bench

try:
    import psycopg
except ImportError:
    sys.exit("bench/subscription_renewals.py needs the project's dependencies: activate its virtualenv first")

SANDBOX_CARRIERS = ("sandbox-gb-alpha", "sandbox-gb-beta")  # seed_demo's carriers that answer in-process
PRICE_POINT = "gems-100"
PLAN_CODE = "bench-weekly"
POLL_GOAL_MS = 200


def stats(url: str) -> dict[str, int]:
    """Rows inserted + updated + deleted so far, per table (partitions under their own name)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables").fetchall()
    return {str(name): int(count) for name, count in rows}


def written(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] - before.get(name, 0)}


def prepare(count: int, due_hour: datetime) -> int:
    """The plan on the sandbox carriers and `count` subscriptions due within `due_hour`; returns the app id."""
    from django.db import connection

    from carriers.models import Carrier, NumberPrefix, PricePoint
    from sandbox.demo import DEMO_APP
    from subscriptions.models import Plan, PlanOffer
    from subscriptions.periods import Period
    from tenants.models import App

    app = App.objects.get(name=DEMO_APP)
    plan = Plan.objects.create(app=app, code=PLAN_CODE, name="Bench pass", period=Period.WEEKLY)
    carriers = list(Carrier.objects.filter(slug__in=SANDBOX_CARRIERS).order_by("slug"))
    if len(carriers) != len(SANDBOX_CARRIERS):
        raise SetupError(f"seed_demo made {[c.slug for c in carriers]}, not {SANDBOX_CARRIERS}")
    anchor_hour = due_hour - timedelta(days=7)
    for position, carrier in enumerate(carriers):
        price_point = PricePoint.objects.get(carrier=carrier, code=PRICE_POINT)
        offer = PlanOffer.objects.create(plan=plan, carrier=carrier, price_point=price_point)
        prefix = NumberPrefix.objects.filter(carrier=carrier).values_list("prefix", flat=True).first()
        share = range(position, count, len(carriers))
        with connection.cursor() as cursor:
            # Numbers end in 1000-9999: none of the sandbox's declining suffixes (0002, 0003, …). Anchors spread
            # over one hour a week before `due_hour`: every first period ends within `due_hour`.
            cursor.execute(
                """
                INSERT INTO subscriptions_subscription (
                    public_id, app_id, user_ref, msisdn, carrier_id, plan_id, offer_id, price_point_id,
                    amount_minor, currency, status, idempotency_key, anchor_at, period_index,
                    current_period_start, current_period_end, entitled_until, next_charge_at,
                    cancel_at_period_end, cancel_reason, metadata, created_at, updated_at,
                    carrier_managed, carrier_reference, journey_id, carrier_cancel_attempts)
                SELECT gen_random_uuid(), %(app)s, 'bench-' || n,
                       '+' || %(prefix)s || lpad((n / 9000 %% 1000000)::text, 6, '0') || (1000 + n %% 9000)::text,
                       %(carrier)s, %(plan)s, %(offer)s, %(price_point)s, %(amount)s, %(currency)s, 'active', '',
                       a.anchor, 0, a.anchor, a.anchor + interval '7 days', a.anchor + interval '7 days',
                       a.anchor + interval '7 days', false, '', '{}', now(), now(), false, '', '', 0
                FROM generate_series(%(first)s, %(last)s, %(step)s) AS n,
                     LATERAL (SELECT %(hour)s::timestamptz + (n * 3600.0 / %(count)s) * interval '1 second'
                              AS anchor) AS a
                """,
                {
                    "app": app.pk,
                    "prefix": prefix,
                    "carrier": carrier.pk,
                    "plan": plan.pk,
                    "offer": offer.pk,
                    "price_point": price_point.pk,
                    "amount": price_point.amount_minor,
                    "currency": price_point.currency,
                    "first": share.start,
                    "last": count - 1,
                    "step": share.step,
                    "hour": anchor_hour,
                    "count": count,
                },
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE subscriptions_subscription")
    return int(app.pk)


def engine(now: datetime, batch: int, deadline: float | None, results: Any) -> None:
    """One engine process: run until nothing is due (a run returns when its last batch was short), or until
    `deadline` (monotonic): a run then takes no new batch once its time is up."""
    from django.db import connections

    from subscriptions.services.renewals import run_renewals

    connections.close_all()  # the parent's connections are not this process's
    charged = 0
    while deadline is None or time.monotonic() < deadline:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        run = run_renewals(now=now, batch_size=batch, max_seconds=left)
        charged += run.charged
        if run.charged == 0 and run.skipped == 0:
            break
    connections.close_all()
    results.put(charged)


# A renewal history for the dashboard's figures: each subscription's period 100 (never one the engine charges here),
# first tried within the days before, 85 % charged; the others tried again a day later, 93 % of those charged.
HISTORY = """
CREATE TEMP TABLE history AS
SELECT nextval(pg_get_serial_sequence('payments_payment', 'id')) AS pid, *
FROM (
    SELECT s.*, 1 AS attempt, s.first_at AS at, CASE WHEN s.r < 0.85 THEN 'succeeded' ELSE 'failed' END AS outcome
    FROM tried s
    UNION ALL
    SELECT s.*, 2, s.first_at + interval '1 day', CASE WHEN s.r < 0.93 THEN 'succeeded' ELSE 'failed' END
    FROM tried s WHERE s.r >= 0.85 AND s.first_at + interval '1 day' < %(until)s
) a;
INSERT INTO payments_payment (id, public_id, user_ref, msisdn, amount_minor, currency, status, flow, idempotency_key,
    journey_id, metadata, carrier_reference, failure_code, failure_message, pin_attempts, created_at, updated_at,
    app_id, carrier_id, price_point_id, carrier_data, charge_attempts, refunded_minor, insufficient_funds_declines,
    resolve_attempts, pin_ciphertext, pin_error)
SELECT pid, gen_random_uuid(), user_ref, msisdn, amount_minor, currency, outcome, 'one_click', '', '', '{}'::jsonb,
    'history-' || pid, CASE WHEN outcome = 'failed' THEN 'insufficient_funds' ELSE '' END, '', 0, at, at, app_id,
    carrier_id, price_point_id, '{}'::jsonb, 1, 0, 0, 0, '', ''
FROM history;
INSERT INTO subscriptions_subscriptioncharge (subscription_id, kind, period_index, period_start, period_end, attempt,
    payment_id, payment_created_at, outcome, fallback_price, failure_code, created_at, settled_at)
SELECT id, 'renewal', 100, first_at, first_at + interval '7 days', attempt, pid, at, outcome, false,
    CASE WHEN outcome = 'failed' THEN 'insufficient_funds' ELSE '' END, at, at + interval '5 seconds'
FROM history;
"""


def dashboard_figures(days: int, until: datetime) -> list[tuple[str, float]]:
    """Renewal history over `days` days before `until`, the rollups and day counts brought up to date, and the
    overview's `data.json` answer per period (median of 5 ms, after one to warm up)."""
    from django.db import connection

    from reporting.models import Dashboard
    from reporting.selectors import DashboardFilters, dashboard_data
    from reporting.services import rollups, subscriber_counts

    since = until - timedelta(days=days)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE tried AS SELECT s.*, %(since)s::timestamptz + random() * (%(until)s::timestamptz "
            "- %(since)s::timestamptz) AS first_at, random() AS r FROM subscriptions_subscription s",
            {"since": since, "until": until - timedelta(hours=1)},
        )
        cursor.execute(HISTORY, {"until": until})
        cursor.execute("SELECT COUNT(*) FROM history")
        made = cursor.fetchone()[0]
        cursor.execute("ANALYZE payments_payment; ANALYZE subscriptions_subscriptioncharge")
    hourly = made / days / 24
    log(f"{made:,} renewal charges over {days} days ({hourly:,.0f} an hour), {time.monotonic() - started:.0f} s")
    rollups.forget_payment_rollups()
    list(rollups.catch_up_payment_rollups())
    subscriber_counts.fold(now=rollups.floor_day(since) - timedelta(hours=1))
    subscriber_counts.fold()
    dashboard = Dashboard.objects.get(slug="overview")
    figures = []
    for period in ("24h", "30d", "18m"):
        timings = []
        for _ in range(6):
            begun = time.perf_counter()
            dashboard_data(dashboard=dashboard, filters=DashboardFilters(period=period))
            timings.append((time.perf_counter() - begun) * 1000)
        figures.append((period, sorted(timings[1:])[2]))
    return figures


def checks(count: int, charged: int, now: datetime) -> list[tuple[str, bool, str]]:
    """Each charged subscription's period charged exactly once, none skipped: the ones not charged (a run stopped
    by --time-limit) are still due on their first period, with no charge."""
    from django.db import connection

    queries = {
        "renewal charge rows": "SELECT count(*) FROM subscriptions_subscriptioncharge WHERE kind = 'renewal'",
        "charges succeeded": "SELECT count(*) FROM subscriptions_subscriptioncharge WHERE outcome = 'succeeded'",
        "payments succeeded": "SELECT count(*) FROM payments_payment WHERE flow = 'one_click' AND status = 'succeeded'",
        "payments in all": "SELECT count(*) FROM payments_payment WHERE flow = 'one_click'",
        "subscriptions on period 1": "SELECT count(*) FROM subscriptions_subscription WHERE period_index = 1",
        "periods charged twice": (
            "SELECT count(*) FROM (SELECT 1 FROM subscriptions_subscriptioncharge WHERE outcome = 'succeeded'"
            " GROUP BY subscription_id, period_index HAVING count(*) > 1) AS twice"
        ),
    }
    found: dict[str, int] = {}
    with connection.cursor() as cursor:
        for name, query in queries.items():
            cursor.execute(query)
            found[name] = int(cursor.fetchone()[0])
        cursor.execute("SELECT count(*) FROM subscriptions_subscription WHERE next_charge_at <= %s", [now])
        found["still due"] = int(cursor.fetchone()[0])
    expected = dict.fromkeys(queries, charged) | {"periods charged twice": 0, "still due": count - charged}
    return [(name, found[name] == expected[name], f"{found[name]:,} (expected {expected[name]:,})") for name in found]


def run(args: argparse.Namespace, workdir: Path) -> bool:
    base = args.pg_url
    journal_name = f"{args.db_name}_journal"
    url, journal_url = db_url(base, args.db_name), db_url(base, journal_name)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "JOURNAL_URL": journal_url,
        "CELERY_BROKER_URL": "",
        "SANDBOX": "true",
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        "PLAYPAY_VAR_DIR": str(workdir),
        "DATABASE_STATEMENT_TIMEOUT_MS": "0",  # the bulk insert is one long statement
        # Each renewal sent at once: the engine's own rate is measured, not the carriers' rate limits, which
        # the pacing (SUBSCRIPTION_RENEWAL_SPREAD_SECONDS) keeps to in a deployment.
        "SUBSCRIPTION_RENEWAL_SPREAD_SECONDS": "0",
    }
    try:
        recreate_database(base, args.db_name)
        recreate_database(base, journal_name)
        log(f"{args.db_name}: migrate, seed_demo")
        manage(["migrate", "--no-input"], env)
        manage(["migrate", "--no-input", "--database", "journal"], env)
        manage(["seed_demo"], env)
        os.environ.update(env)
        sys.path.insert(0, str(REPO_ROOT))
        import django

        django.setup()
        from django.db import connections

        due_hour = datetime.now().astimezone().replace(minute=0, second=0, microsecond=0)
        now = due_hour + timedelta(hours=1)
        started = time.perf_counter()
        prepare(args.subscriptions, due_hour)
        log(f"{args.subscriptions:,} subscriptions due in one hour, inserted in {time.perf_counter() - started:.1f} s")
        connections.close_all()

        before = {"main": stats(url), "journal": stats(journal_url)}
        results: Any = multiprocessing.get_context("fork").Queue()
        deadline = time.monotonic() + args.time_limit if args.time_limit else None
        processes = [
            multiprocessing.get_context("fork").Process(target=engine, args=(now, args.batch, deadline, results))
            for _ in range(args.engines)
        ]
        started = time.perf_counter()
        for process in processes:
            process.start()
        charged = [results.get() for _ in processes]
        elapsed = time.perf_counter() - started
        for process in processes:
            process.join()
            if process.exitcode != 0:
                raise SetupError(f"an engine process exited with {process.exitcode}")
        time.sleep(1.5)  # the engines' statistics reach pg_stat_user_tables when their backends end
        after = {"main": stats(url), "journal": stats(journal_url)}

        total = sum(charged)
        rows = {db: written(before[db], after[db]) for db in before}
        all_rows = sum(sum(tables.values()) for tables in rows.values())
        print(
            f"subscription renewals: {args.subscriptions:,} due in one hour, {args.engines} engine(s), "
            f"batch {args.batch}, sandbox carriers in-process"
        )
        print(f"  charged:              {total:,} ({', '.join(f'{n:,}' for n in charged)} per engine)")
        rate = total / elapsed if elapsed else 0.0
        if not (args.time_limit and total < args.subscriptions):
            print(f"  time to drain:        {elapsed:.1f} s ({elapsed / 3600:.1%} of the hour they fell due in)")
        else:
            projected = args.subscriptions / rate if rate else float("inf")
            print(
                f"  time to drain:        stopped after {elapsed:.1f} s (--time-limit) with "
                f"{args.subscriptions - total:,} still due; at this rate all would take {projected:,.0f} s "
                f"({projected / 3600:.1%} of the hour)"
            )
        print(f"  renewals per second:  {rate:,.1f}")
        print(
            f"  rows written/renewal: {all_rows / max(total, 1):.1f} "
            f"(main {sum(rows['main'].values()) / max(total, 1):.1f}, "
            f"journal {sum(rows['journal'].values()) / max(total, 1):.1f}; inserted + updated + deleted)"
        )
        top = sorted(((n, db, t) for db, tables in rows.items() for t, n in tables.items()), reverse=True)[:12]
        for count, db, table in top:
            print(f"    {count / max(total, 1):5.2f}  {table}" + (" (journal)" if db == "journal" else ""))
        if args.subscriptions:
            print(f"  needed to keep up:    {args.subscriptions / 3600:,.1f} renewals/s for this hour's load")
        load = os.getloadavg()[0]
        print(f"  load average after:   {load:.1f} on {os.cpu_count()} CPUs (other work on the machine slows it)")
        ok = True
        for name, held, text in checks(args.subscriptions, total, now):
            print(f"  check {name}: {text} {'ok' if held else 'FAILED'}")
            ok = ok and held
        if args.dashboard_days:
            for period, ms in dashboard_figures(args.dashboard_days, datetime.now().astimezone()):
                verdict = "ok" if ms <= POLL_GOAL_MS else "over"
                print(f"  dashboard {period:>4}:       {ms:6.0f} ms data.json (goal <= {POLL_GOAL_MS} ms) {verdict}")
        return ok
    except psycopg.Error as exc:
        raise SetupError(str(exc)) from exc
    finally:
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        if not args.keep_db:
            drop_database(base, args.db_name)
            drop_database(base, journal_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=1_000_000, help="how many are due (1,000,000)")
    parser.add_argument("--engines", type=int, default=1, help="engine processes at once (1)")
    parser.add_argument("--batch", type=int, default=200, help="subscriptions per transaction (200)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop the engines after this many seconds (between two batches) and project the drain from the rate "
        "(0: run until nothing is due)",
    )
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--db-name", default="playpay_bench_renewals")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--dashboard-days",
        type=int,
        default=0,
        help="then give each subscription that many days of renewal history and time the dashboard (0: not)",
    )
    args = parser.parse_args(argv)
    return run_bench(lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
