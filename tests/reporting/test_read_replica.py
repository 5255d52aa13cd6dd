"""Reports read a streaming replica when REPORTING_DATABASE_URL names one: with the primary stopped, the
dashboard, a catalog query and a CSV export read in parts (one snapshot exported and imported on the replica)
give what they give on the primary, and without the setting they fail; behind gunicorn, the dashboard's poll
shows a change on the primary only once the replica has replayed it, and answers 503 while the replica is down.

The primary and its replica are private PostgreSQL servers (tests/pg_instance.py): the replica is made by
pg_basebackup and follows by streaming; the suite's test database is loaded into the primary after the
replica started, so it reaches the replica by replication. The reads run in a process of their own, with
the settings of its environment, as a web or worker process runs them.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.db import SessionStore
from django.db import connections
from django.utils import timezone

from funnel.models import FunnelDefinition
from funnel.rollups import refresh_rollups
from payments.models import Payment, PaymentStatus, Refund
from reporting.models import Dashboard, Dataset, DatasetField
from reporting.services.rollups import refresh_payment_rollups
from tests.deploy.processes import Processes, free_port, service_env, wait_for
from tests.factories import AppFactory, CarrierFactory, CountryFactory
from tests.funnel.test_analysis import STEPS
from tests.funnel.test_rollup_days import DAY0, journeys_over_days
from tests.pg_instance import PgInstance, pg_instance
from tests.reporting.conftest import MakePayment
from tests.reporting.replica_reads import reports
from tests.reporting.test_dashboard import seed_module

pytestmark = [pytest.mark.postgres, pytest.mark.journal, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = 40


def _url_of(alias: str, environ_name: str) -> str:
    """The URL of this test's database of `alias` (the suite's server, the test database's name)."""
    settings_dict = connections[alias].settings_dict
    if connections[alias].vendor != "postgresql":
        return f"sqlite:///{settings_dict['NAME']}"
    return urlunsplit(urlsplit(os.environ[environ_name])._replace(path=f"/{settings_dict['NAME']}"))


def _base_env(tmp_path: Path) -> dict[str, str]:
    return service_env() | {
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        "PLAYPAY_VAR_DIR": str(tmp_path / "var"),
        "JOURNAL_URL": _url_of("journal", "JOURNAL_URL"),
        "DATABASE_CONNECT_TIMEOUT": "3",
    }


@contextmanager
def _replicated() -> Iterator[tuple[PgInstance, PgInstance]]:
    """A primary holding what this test's database holds now, and its streaming replica, caught up."""
    with pg_instance() as primary:
        primary.wait_until_accepting()
        replica = primary.start_standby()
        try:
            # Loaded after the replica started: it comes to the replica by streaming, not in the base backup.
            primary.copy_database(_url_of("default", "DATABASE_URL"), "playpay")
            primary.wait_until_replayed_by(replica)
            yield primary, replica
        finally:
            replica.destroy()


def _overview() -> Dashboard:
    seed_module.seed_datasets(Dataset, DatasetField)
    dashboard, _ = Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    dashboard.groups.set(Group.objects.filter(name="finance"))
    return dashboard


def _read(tmp_path: Path, arguments: dict[str, Any], **databases: str) -> subprocess.CompletedProcess[str]:
    env = _base_env(tmp_path) | {"SECRET_KEY": "replica-test", **databases}
    return subprocess.run(
        [sys.executable, "-m", "tests.reporting.replica_reads", json.dumps(arguments)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_with_the_primary_stopped_reports_answer_from_the_replica_as_from_the_primary(
    tmp_path: Path, make_payment: MakePayment
) -> None:
    now = DAY0 + timedelta(days=4, hours=12, minutes=20)
    _overview()
    # A funnel whose day rollups the dashboard's funnel tile reads.
    journeys_over_days(AppFactory.create(name="game"), seed=1, days=4, count=100)
    shop = FunnelDefinition.objects.create(name="shop", steps=STEPS, window_seconds=3600)
    refresh_rollups(funnel=shop, since=DAY0, until=DAY0 + timedelta(days=5))
    carriers = [
        CarrierFactory.create(slug="gb-one"),
        CarrierFactory.create(slug="jp-one", country=CountryFactory.create(code="JP", currency="JPY")),
    ]
    for index in range(PAYMENTS):  # over the last days, some failed, some refunded
        carrier = carriers[index % 2]
        payment = make_payment(
            carrier=carrier,
            created=now - timedelta(hours=7 * index + 1),
            amount_minor=100 + index,
            currency="GBP" if carrier is carriers[0] else "JPY",
            status=PaymentStatus.FAILED if index % 5 == 0 else PaymentStatus.SUCCEEDED,
        )
        if index % 7 == 3:
            Refund.objects.create(
                payment=payment, amount_minor=50, currency=payment.currency, reason="r", requested_by="staff:x",
                status="succeeded",
            )  # fmt: skip
    refresh_payment_rollups(now=now - timedelta(hours=30))  # the rollups, then raw rows for the rest
    ids = sorted(Payment.objects.values_list("pk", flat=True))
    cut = ids[len(ids) // 2]
    arguments = {"now": now.isoformat(), "cut": cut, "csv": str(tmp_path / "replica.csv")}
    expected = reports(now=now, cut=cut, csv_path=tmp_path / "primary.csv")
    assert expected["rows"] == PAYMENTS
    assert expected["catalog"]["read_from"] == "rollups"
    assert sum(expected["dashboard"]["revenue"]["payments"]) > 0
    assert expected["dashboard"]["funnel"]["steps"][0]["reached"] > 0

    with _replicated() as (primary, replica):
        primary.stop()
        read = _read(
            tmp_path, arguments, DATABASE_URL=primary.url("playpay"), REPORTING_DATABASE_URL=replica.url("playpay")
        )
        assert read.returncode == 0, read.stderr[-3000:]
        assert json.loads(read.stdout) == expected
        assert (tmp_path / "replica.csv").read_bytes() == (tmp_path / "primary.csv").read_bytes()

        # The same reads without the setting go to the primary, which is down.
        unset = _read(tmp_path, arguments, DATABASE_URL=primary.url("playpay"))
        assert unset.returncode != 0
        assert "OperationalError" in unset.stderr


def _staff_session() -> str:
    """A signed-in superuser's session key, as the admin's sign-in leaves it."""
    user = get_user_model().objects.create_user("replica-viewer", is_staff=True, is_superuser=True)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return str(session.session_key)


def test_behind_gunicorn_the_dashboard_shows_a_change_once_the_replica_has_replayed_it(
    tmp_path: Path, make_payment: MakePayment
) -> None:
    now = timezone.now()
    _overview()
    carrier = CarrierFactory.create(slug="gb-one")
    paid = [make_payment(carrier=carrier, created=now - timedelta(hours=hours)) for hours in (1, 2, 3, 4)]
    session_key = _staff_session()
    port = free_port()
    (tmp_path / "logs").mkdir()

    with _replicated() as (primary, replica), Processes(log_dir=tmp_path / "logs", cwd=ROOT) as processes:
        env = _base_env(tmp_path) | {
            "DEBUG": "false",
            "STAFF_2FA": "false",
            "SECRET_KEY": settings.SECRET_KEY,  # the session's hash is signed with it
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": primary.url("playpay"),
            "REPORTING_DATABASE_URL": replica.url("playpay"),
        }
        gunicorn = [sys.executable, "-m", "gunicorn", "playpay.wsgi:application", "--workers", "2"]
        processes.start("gunicorn", [*gunicorn, "--bind", f"127.0.0.1:{port}"], env)
        web = f"http://127.0.0.1:{port}"
        wait_for("gunicorn to answer /readyz", lambda: requests.get(f"{web}/readyz", timeout=5).ok, timeout=30)

        def poll() -> requests.Response:
            return requests.get(
                f"{web}/reporting/dashboards/overview/data.json",
                params={"period": "24h"},
                headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_key}"},
                timeout=10,
            )

        def charged() -> set[int]:
            """The dashboard's count of charged payments, as each of a few polls (both workers) answers it."""
            answers = set()
            for _ in range(4):
                response = poll()
                assert response.status_code == 200, response.text[:500]
                answers.add(response.json()["revenue"]["total_payments"])
            return answers

        assert charged() == {4}
        with psycopg.connect(replica.url("playpay"), autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            with psycopg.connect(primary.url("playpay"), autocommit=True) as main:
                main.execute("UPDATE payments_payment SET status = 'failed' WHERE id = %s", [paid[0].pk])
                assert main.execute("SELECT count(*) FROM payments_payment WHERE status = 'succeeded'").fetchone() == (
                    3,
                )
            assert charged() == {4}  # the replica has not replayed it: the poll read the replica
            standby.execute("SELECT pg_wal_replay_resume()")
        primary.wait_until_replayed_by(replica)
        assert charged() == {3}

        # The replica down: the dashboard is unavailable for a while (503, as for any database outage); the
        # process stays ready, since payments and the admin do not need the replica.
        replica.stop("immediate")
        assert {poll().status_code for _ in range(4)} == {503}
        assert requests.get(f"{web}/readyz", timeout=10).status_code == 200
