"""The README's deployment, run: production settings on PostgreSQL and Redis, collectstatic, gunicorn, a carrier
worker, a Celery worker and beat, each a process of its own. A payment goes through the API to `succeeded` on a
CAMARA carrier and is partly refunded; the admin's login page, the API docs, a hashed static file and /readyz
answer; then every process stops on SIGTERM, cleanly and in time.

The carrier is an outside service: a second instance of this code in its embedded default with the sandbox on,
serving the CAMARA and aggregator simulators from two gunicorn workers, which share their state through its own
(SQLite) database, and running its own periodic jobs (`run_scheduler`): there the aggregator renews a subscription
by itself and tells PlayPay by signed callback.
Databases are this run's own (named after the xdist worker, dropped at the end); the broker is the suite's Redis
database, whose own tests keep their keys under a per-worker prefix.
"""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
import requests
from psycopg import sql

from tests.deploy.processes import Processes, free_port, service_env, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.postgres, pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]
CARRIER = "camara-gb"
# A carrier that holds its subscriptions' renewals itself: the outside aggregator charges them on its own schedule.
AGGREGATOR = "aggregator-gb"
# Beat's proof of life: a job of the schedule that the data migrations install, run by the Celery worker.
OVERDUE_JOB = ("payments: relay the task outbox", "payments.tasks.relay_outbox")
ERRORS = re.compile(r'"level": "(?:ERROR|CRITICAL)".*|.* (?:ERROR|CRITICAL) .*|Traceback \(most recent call last\)')
QUEUES = ["default", "webhooks", f"carrier.{CARRIER}", f"carrier.{AGGREGATOR}"]
STOP_SECONDS = 20


def _database_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


@pytest.fixture
def databases(worker_id: str) -> Iterator[tuple[str, str]]:
    """Fresh PostgreSQL databases for this run's deployment: (DATABASE_URL, JOURNAL_URL). Dropped after."""
    base = os.environ.get("DATABASE_URL", "")
    assert base.startswith("postgres"), "the deployment test needs PostgreSQL: set DATABASE_URL=postgres://…"
    stem = urlsplit(base).path.strip("/")
    names = [f"{stem}_deploy_{worker_id}", f"{stem}_deploy_journal_{worker_id}"]
    admin_url = _database_url(base, "postgres")

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    drop()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _database_url(base, names[0]), _database_url(base, names[1])
    drop()


@pytest.fixture
def broker_url() -> Iterator[str]:
    """The suite's Redis database, as the deployment's broker and cache: its queues and its cache entries (Django's
    `:1:` keys; the suite's own cache is in memory) are emptied before and after, so that no run sees another's
    rate-limit counters or carrier health."""
    url = os.environ.get("CELERY_BROKER_URL", "")
    assert url.startswith("redis://"), "the deployment test needs Redis: set CELERY_BROKER_URL=redis://…"
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def empty() -> None:
        keys = [*QUEUES, "unacked", "unacked_index", "unacked_mutex"]
        keys += list(client.scan_iter(match=":1:*", count=1000))
        client.delete(*keys)

    empty()
    yield url
    empty()


def _manage_together(commands: list[tuple[list[str], dict[str, str]]], timeout: float = 240) -> None:
    """`manage.py` commands (each with its environment) that need nothing of each other, at the same time (the
    machine has cores to spare while each one starts up)."""
    running = [
        (
            args,
            subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for args, env in commands
    ]
    deadline = time.monotonic() + timeout
    failures = []
    for args, process in running:
        try:
            output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            failures.append(f"manage.py {' '.join(args)} took over {timeout:g} s:\n{output}")
            continue
        if process.returncode != 0:
            failures.append(f"manage.py {' '.join(args)} failed:\n{output}")
    assert not failures, "\n".join(failures)


def _manage(args: list[str], env: dict[str, str], timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


SEED_CARRIER = """
from carriers.models import Carrier, NumberPrefix, PricePoint, Protocol
carrier = Carrier.objects.create(
    slug="{slug}", name="CAMARA Telco UK", country_id="GB", protocol=Protocol.CAMARA, endpoint="{endpoint}",
    is_active=True, supports_pin=True, supports_one_click=True, supports_refund=True,
)
carrier.credentials = {{"client_id": "playpay", "client_secret": "camara-secret", "notification_token": "{token}"}}
carrier.save(update_fields=["credentials_encrypted"])
NumberPrefix.objects.create(prefix="4477", carrier=carrier)
# A periodic job long overdue, so that beat sends it at once (a fresh schedule waits one interval).
from datetime import timedelta
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
overdue = PeriodicTask.objects.filter(name="{overdue}").update(last_run_at=timezone.now() - timedelta(hours=1))
assert overdue == 1, "no periodic task {overdue}"
for code, amount in [("gems-100", 99), ("gems-500", 499)]:
    PricePoint.objects.create(
        carrier=carrier, code=code, amount_minor=amount, currency="GBP", carrier_payout_minor=amount * 70 // 100
    )
"""


# A weekly plan of the app on the carrier (at gems-100), after the app exists.
SEED_PLAN = """
from carriers.models import Carrier, PricePoint
from subscriptions.models import Plan, PlanOffer
from tenants.models import App
carrier = Carrier.objects.get(slug="{slug}")
Carrier.objects.filter(pk=carrier.pk).update(supports_subscriptions=True)
app = App.objects.get(name="Deploy Smoke")
plan = Plan.objects.create(app=app, code="vip-weekly", name="VIP pass", period="weekly")
price_point = PricePoint.objects.get(carrier=carrier, code="gems-100")
PlanOffer.objects.create(plan=plan, carrier=carrier, price_point=price_point)
"""

# The aggregator, on the same outside service, and the plan offered there too.
SEED_AGGREGATOR = """
from carriers.models import Carrier, NumberPrefix, PricePoint, Protocol
from subscriptions.models import Plan, PlanOffer
carrier = Carrier.objects.create(
    slug="{slug}", name="DCB Aggregator UK", country_id="GB", protocol=Protocol.AGGREGATOR, endpoint="{endpoint}",
    is_active=True, supports_pin=True, supports_one_click=True, supports_refund=True, supports_subscriptions=True,
)
carrier.credentials = {{
    "merchant_id": "playpay-demo",
    "api_secret": "aggregator-api-secret",
    "callback_secret": "aggregator-callback-secret",
}}
carrier.save(update_fields=["credentials_encrypted"])
NumberPrefix.objects.create(prefix="4478", carrier=carrier)
price_point = PricePoint.objects.create(
    carrier=carrier, code="gems-100", amount_minor=99, currency="GBP", carrier_payout_minor=69
)
PlanOffer.objects.create(plan=Plan.objects.get(code="vip-weekly"), carrier=carrier, price_point=price_point)
"""

# On the aggregator's side a week passes for one subscription: its schedule moves a week back (its own scheduler
# then finds its second period due).
AGGREGATOR_WEEK_LATER = """
from sandbox.simulators import aggregator
from sandbox.simulators.core import simulator
[held] = simulator("aggregator").records.find("sub_", merchant_reference="{id}")
aggregator.time_passes(held["subscription_id"], seconds=7 * 24 * 3600)
"""

# The subscription's first week moved a week back, so that its renewal is due now; beat's renewal job made
# overdue (saved, so that beat reloads its schedule) and sent at once.
RENEWAL_DUE = """
from datetime import timedelta
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from subscriptions.models import Subscription
week = timedelta(days=7)
subscription = Subscription.objects.get(public_id="{id}")
for name in ("anchor_at", "current_period_start", "current_period_end", "entitled_until"):
    setattr(subscription, name, getattr(subscription, name) - week)
subscription.next_charge_at = subscription.current_period_end
subscription.save()
task = PeriodicTask.objects.get(task="subscriptions.tasks.renew_due_subscriptions")
task.last_run_at = timezone.now() - timedelta(hours=1)
task.save()
"""


def _payment(session: requests.Session, base: str, payment_id: str) -> dict[str, Any]:
    response = session.get(f"{base}/api/v1/payments/{payment_id}/", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_documented_deployment_takes_a_payment_and_stops_cleanly(
    tmp_path: Path, databases: tuple[str, str], broker_url: str
) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}
    web_port, carrier_port = free_port(), free_port()
    web, carrier_base = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{carrier_port}"
    (tmp_path / "logs").mkdir()
    base_env = service_env()
    env = base_env | {
        "PLAYPAY_ENV": "production",
        "DEBUG": "false",
        "SECRET_KEY": "deploy-smoke-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CARRIER_CREDENTIALS_KEY": "deploy-smoke-credentials-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": databases[0],
        "JOURNAL_URL": databases[1],
        "CELERY_BROKER_URL": broker_url,
        "CACHE_URL": broker_url,
        "METRICS_TOKEN": "deploy-smoke-metrics-" + uuid.uuid4().hex,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "SECURE_SSL_REDIRECT": "false",
        "STATIC_ROOT": str(tmp_path / "static"),
        "PUBLIC_BASE_URL": web,
        "PLAYPAY_VAR_DIR": str(tmp_path / "var"),
        # Renewals paced (a short window for the test): the renewal payment waits, and beat's due-attempts job
        # sends it through the broker when its moment comes, as in production.
        "SUBSCRIPTION_RENEWAL_SPREAD_SECONDS": "5",
    }
    carrier_env = base_env | {
        "SANDBOX": "true",
        "DEBUG": "true",
        "PLAYPAY_VAR_DIR": str(tmp_path / "carrier-var"),
        "PUBLIC_BASE_URL": carrier_base,
    }
    (tmp_path / "carrier-var").mkdir()
    token = "deploy-smoke-sink-" + uuid.uuid4().hex
    # gunicorn's control socket defaults to one path in $HOME: each server here gets its own.
    gunicorn = [sys.executable, "-m", "gunicorn", "playpay.wsgi:application"]
    celery = [sys.executable, "-m", "celery", "-A", "playpay"]

    with Processes(log_dir=tmp_path / "logs", cwd=ROOT) as processes:
        # The README's steps before the processes; the carrier's database too (its simulators' state).
        _manage_together(
            [
                (["migrate", "--noinput"], env),
                (["migrate", "--database", "journal", "--noinput"], env),
                (["collectstatic", "--noinput"], env),
                (["migrate", "--noinput"], carrier_env),
            ]
        )
        # The carrier: two processes, whichever answers a call is the same operator (tokens, PINs, charges).
        carrier = processes.start(
            "carrier",
            [
                *gunicorn,
                "--workers",
                "2",
                "--threads",
                "4",
                "--bind",
                f"127.0.0.1:{carrier_port}",
                "--control-socket",
                str(tmp_path / "carrier.ctl"),
            ],
            carrier_env,
        )
        # The outside service's own periodic jobs (its embedded default): the aggregator's renewal schedule is one.
        carrier_scheduler = processes.start(
            "carrier_scheduler", [sys.executable, "manage.py", "run_scheduler", "--tick", "1"], carrier_env
        )
        # Served over plain HTTP here; checked with the documented production value (behind TLS).
        _manage(["check", "--deploy", "--fail-level", "WARNING"], env | {"SECURE_SSL_REDIRECT": "true"})
        key = _manage(["create_app", "Deploy Smoke"], env).strip().splitlines()[-1]
        endpoint = f"{carrier_base}/simulators/camara"
        _manage(
            ["shell", "-c", SEED_CARRIER.format(slug=CARRIER, endpoint=endpoint, token=token, overdue=OVERDUE_JOB[0])],
            env,
        )
        _manage(["shell", "-c", SEED_PLAN.format(slug=CARRIER)], env)
        aggregator_endpoint = f"{carrier_base}/simulators/aggregator"
        _manage(["shell", "-c", SEED_AGGREGATOR.format(slug=AGGREGATOR, endpoint=aggregator_endpoint)], env)
        timings["setup"] = time.monotonic() - started

        web_process = processes.start(
            "gunicorn",
            [
                *gunicorn,
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--control-socket",
                str(tmp_path / "web.ctl"),
            ],
            env,
        )
        carrier_worker = processes.start(
            "carrier_worker",
            [
                sys.executable,
                "manage.py",
                "carrier_worker",
                "--carriers",
                f"{CARRIER},{AGGREGATOR}",
                "--concurrency",
                "2",
            ],
            env,
        )
        worker = processes.start(
            "celery_worker", [*celery, "worker", "-Q", "default,webhooks", "--concurrency", "2"], env
        )
        beat = processes.start(
            "celery_beat", [*celery, "beat", "--schedule", str(tmp_path / "celerybeat-schedule")], env
        )

        session = requests.Session()
        session.headers["Authorization"] = f"Api-Key {key}"
        wait_for("gunicorn to answer /readyz", lambda: requests.get(f"{web}/readyz", timeout=5).ok, timeout=30)
        wait_for(
            "the carrier to answer",
            lambda: requests.get(f"{endpoint}/_sms", params={"msisdn": "+440"}, timeout=5).ok,
            timeout=30,
        )
        timings["started"] = time.monotonic() - started

        # A payment by PIN: created, the PIN read from the carrier's test handset, confirmed, charged.
        msisdn = "+447712345678"
        body = {"user_ref": "player-1", "msisdn": msisdn, "price_point": "gems-500"}
        idempotency = {"Idempotency-Key": f"smoke-{uuid.uuid4()}"}
        created = session.post(f"{web}/api/v1/payments/", json=body, headers=idempotency, timeout=15)
        assert created.status_code == 201, created.text
        payment = created.json()
        # With a broker the carrier is called from the carrier worker, after the answer.
        assert payment["status"] in ("created", "pin_sent"), payment
        replay = session.post(f"{web}/api/v1/payments/", json=body, headers=idempotency, timeout=15)
        assert replay.status_code == 201, replay.text
        assert replay.json()["id"] == payment["id"], replay.text
        assert replay.headers.get("Idempotent-Replayed") == "true", replay.headers

        def pin() -> str | None:
            inbox = requests.get(f"{carrier_base}/simulators/camara/_sms", params={"msisdn": msisdn}, timeout=5)
            found = re.findall(r"\b(\d{4,8})\b", json.dumps(inbox.json()["messages"]))
            return found[-1] if found else None

        wait_for(
            "the PIN to be sent", lambda: _payment(session, web, payment["id"])["status"] == "pin_sent", timeout=30
        )
        code = wait_for("the PIN's SMS", pin, timeout=15)
        confirmed = session.post(f"{web}/api/v1/payments/{payment['id']}/confirm/", json={"pin": code}, timeout=15)
        assert confirmed.status_code in (200, 202), confirmed.text
        wait_for(
            "the payment to succeed",
            lambda: _payment(session, web, payment["id"])["status"] == "succeeded",
            timeout=30,
        )
        timings["succeeded"] = time.monotonic() - started

        # Part of it refunded through the carrier.
        refund = session.post(
            f"{web}/api/v1/payments/{payment['id']}/refunds/",
            json={"amount_minor": 100, "reason": "deployment smoke test"},
            headers={"Idempotency-Key": f"smoke-refund-{uuid.uuid4()}"},
            timeout=15,
        )
        assert refund.status_code in (200, 201, 202), refund.text
        wait_for(
            "the refund to complete",
            lambda: _payment(session, web, payment["id"])["status"] == "partially_refunded",
            timeout=30,
        )
        refunds = session.get(f"{web}/api/v1/payments/{payment['id']}/refunds/", timeout=10).json()
        refund_rows = refunds["results"] if isinstance(refunds, dict) else refunds
        assert [(row["amount_minor"], row["status"]) for row in refund_rows] == [(100, "succeeded")], refunds
        timings["refunded"] = time.monotonic() - started

        def subscription(subscription_id: str) -> dict[str, Any]:
            answer = session.get(f"{web}/api/v1/subscriptions/{subscription_id}/", timeout=10)
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        def subscribe(msisdn: str, simulator: str) -> str:
            """The double opt-in through the API, its PIN read from the simulator's test handset; once active, the
            subscription's id."""
            opted = session.post(
                f"{web}/api/v1/subscriptions/",
                json={"user_ref": f"player-{msisdn[-4:]}", "msisdn": msisdn, "plan": "vip-weekly"},
                headers={"Idempotency-Key": f"smoke-sub-{uuid.uuid4()}"},
                timeout=15,
            )
            assert opted.status_code == 201, opted.text
            subscription_id: str = opted.json()["id"]

            def pin() -> str | None:
                inbox = requests.get(
                    f"{carrier_base}/simulators/{simulator}/_sms", params={"msisdn": msisdn}, timeout=5
                )
                found = re.findall(r"code is (\d{4,10})", json.dumps(inbox.json()["messages"]))
                return found[-1] if found else None

            code = wait_for("the opt-in's PIN", pin, timeout=30)
            # An asynchronous carrier tells of the PIN it sent by callback: the PIN is taken once PlayPay knows.
            wait_for(
                "the PIN sent", lambda: subscription(subscription_id)["next_action"]["type"] == "enter_pin", timeout=30
            )
            confirmed = session.post(
                f"{web}/api/v1/subscriptions/{subscription_id}/confirm/", json={"pin": code}, timeout=15
            )
            assert confirmed.status_code in (200, 202), confirmed.text
            wait_for("the opt-in", lambda: subscription(subscription_id)["status"] == "active", timeout=30)
            return subscription_id

        def period(subscription_id: str) -> int | None:
            return (subscription(subscription_id)["current_period"] or {}).get("index")

        # A subscription: the double opt-in by PIN, then its renewal, made by beat's renewal job on the Celery
        # worker, sent at its paced moment by beat's due-attempts job (every 30 s), charged through the carrier
        # worker.
        subscription_id = subscribe("+447712345679", "camara")
        _manage(["shell", "-c", RENEWAL_DUE.format(id=subscription_id)], env)
        wait_for("beat's renewal job to renew the subscription", lambda: period(subscription_id) == 1, timeout=120)
        assert subscription(subscription_id)["status"] == "active"
        timings["renewed"] = time.monotonic() - started

        # A subscription on the aggregator: the same double opt-in, then the aggregator holds its renewals. A week
        # later on its side, its own scheduler charges the second period and tells PlayPay by signed callback.
        subscription_id = subscribe("+447812345679", "aggregator")
        later = [sys.executable, "manage.py", "shell", "-c", AGGREGATOR_WEEK_LATER.format(id=subscription_id)]
        wait_for(
            "the aggregator to hold the subscription, a week on",
            lambda: subprocess.run(later, cwd=ROOT, env=carrier_env, capture_output=True, timeout=60).returncode == 0,
            timeout=90,
            interval=1,
        )
        wait_for(
            "the aggregator's own scheduler to renew it, told by callback",
            lambda: period(subscription_id) == 1,
            timeout=120,
        )
        assert subscription(subscription_id)["status"] == "active"
        timings["renewed by the aggregator"] = time.monotonic() - started

        # Staff and docs pages, a static file under its hashed name (collectstatic's manifest, WhiteNoise).
        login = requests.get(f"{web}/admin/login/", timeout=10)
        assert login.status_code == 200, login.text[:500]
        docs = requests.get(f"{web}/api/docs/", timeout=10)
        assert docs.status_code == 200, docs.text[:500]
        hashed = re.search(r'/static/[^"\']+\.[0-9a-f]{12}\.css', login.text)
        assert hashed, login.text[:2000]
        asset = requests.get(f"{web}{hashed.group(0)}", timeout=10)
        assert asset.status_code == 200, hashed.group(0)
        assert "immutable" in asset.headers.get("Cache-Control", ""), asset.headers
        ready = requests.get(f"{web}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["checks"]) == {"database", "journal", "broker"}, ready.text

        # Beat sent the overdue job and the Celery worker ran it.
        wait_for(
            "beat's overdue job to run on the Celery worker",
            lambda: re.search(rf"Task {re.escape(OVERDUE_JOB[1])}\[[^]]+\] succeeded", worker.output()),
            timeout=20,
        )

        carrier_scheduler.assert_running()
        assert re.search(r"sandbox: aggregator simulator renews its subscriptions: 1", carrier_scheduler.output())
        # The outside service's scheduler is not part of the deployment: it is simply stopped.
        processes.stop(carrier_scheduler, timeout=STOP_SECONDS)
        assert not ERRORS.findall(carrier_scheduler.output()), carrier_scheduler.tail()

        # Every process is still up, then stops on SIGTERM, cleanly and in time.
        everything = (web_process, carrier_worker, worker, beat, carrier)
        for process in everything:
            process.assert_running()
        timings["checked"] = time.monotonic() - started
        stopped = processes.stop(*everything, timeout=STOP_SECONDS)
        assert {name: code for name, (code, _) in stopped.items()} == dict.fromkeys(stopped, 0), (
            f"{stopped}\n{processes.tails()}"
        )
        timings["stopped"] = time.monotonic() - started
        # Nothing failed on the way, shutdown included.
        for process in everything:
            errors = ERRORS.findall(process.output())
            assert not errors, f"{process.name} logged errors: {errors}\n{process.tail()}"
        print("seconds each process took to stop:", {name: seconds for name, (_, seconds) in stopped.items()})
    print("deployment smoke timings (s from start):", {k: round(v, 1) for k, v in timings.items()})
