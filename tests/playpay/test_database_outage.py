"""A database that is unreachable or too slow is an outage to retry (503 + Retry-After), not a bug (500)."""

import sqlite3
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import OperationalError, close_old_connections, connection, connections, transaction
from django.test import Client

from playpay.api.problems import is_database_outage
from tests.concurrency import other_session
from tests.conftest import Shop, assert_problem
from tests.processes import django


@pytest.fixture
def payments_locked() -> Iterator[None]:
    """Another session holds an exclusive lock on the payments table: every read of it waits."""
    other = other_session(autocommit=False)
    other.execute("SET lock_timeout = 5000")
    other.execute("LOCK TABLE payments_payment IN ACCESS EXCLUSIVE MODE")
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 300")  # this test's session only
    try:
        yield
    finally:
        other.rollback()
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")


@pytest.mark.postgres
@pytest.mark.django_db
def test_every_connection_has_the_configured_timeouts(settings) -> None:
    for alias in ("default", "journal"):
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT name, setting FROM pg_settings"
                " WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout')"
            )
            values = dict(cursor.fetchall())
        assert values == {
            "statement_timeout": str(settings.DATABASE_STATEMENT_TIMEOUT_MS),
            "idle_in_transaction_session_timeout": str(settings.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS),
        }, alias
        assert settings.DATABASE_STATEMENT_TIMEOUT_MS > 0
        assert connections[alias].get_connection_params()["connect_timeout"] == settings.DATABASE_CONNECT_TIMEOUT


# Transactional: the request's cancelled statement would otherwise abort the test's own transaction.
@pytest.mark.postgres
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_statement_timeout_is_a_503_problem_with_retry_after(shop: Shop, payments_locked: None) -> None:
    started = time.monotonic()
    response = shop.client.get("/api/v1/payments/")
    assert time.monotonic() - started < 5
    problem = assert_problem(response, status=503, code="database_unavailable")
    assert response["Retry-After"] == "5"
    assert problem["instance"] == "/api/v1/payments/"
    assert shop.client.get(problem["type"]).json()["status"] == 503  # the problem type is documented


# Transactional: the request's cancelled statement would otherwise abort the test's own transaction.
@pytest.mark.postgres
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_statement_timeout_outside_the_api_is_a_503_page(staff_client, payments_locked: None) -> None:
    client: Client = staff_client("superuser")
    client.raise_request_exception = False
    response = client.get("/admin/payments/payment/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"


def test_an_unreachable_database_is_a_503_problem_within_the_connect_timeout(tmp_path) -> None:
    code = (
        "import time\n"
        "from django.test import Client\n"
        "started = time.monotonic()\n"
        # A key of the right form: looking it up needs the database.
        "r = Client(raise_request_exception=False).get('/api/v1/payments/', HTTP_AUTHORIZATION='Api-Key pp_0a1b2c_x')\n"
        "print(r.status_code, r['Content-Type'], r.get('Retry-After'), r.json()['code'])\n"
        "print(round(time.monotonic() - started))\n"
    )
    closed = "postgres://postgres@127.0.0.1:9/playpay"  # the discard port: nothing listens there
    env = {
        "DATABASE_URL": closed,
        "JOURNAL_URL": closed,
        "DATABASE_CONNECT_TIMEOUT": "2",
        "PLAYPAY_VAR_DIR": str(tmp_path),
    }
    result = django(["shell", "-c", code], env)
    assert result.returncode == 0, result.stderr
    status, seconds = result.stdout.splitlines()[-2:]
    assert status == "503 application/problem+json 5 database_unavailable"
    assert int(seconds) <= 2


@pytest.mark.parametrize(
    ("cause", "outage"),
    [
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), True),
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), False),
        (psycopg.errors.SerializationFailure("could not serialize"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: payments_payment"), False),
    ],
    ids=["statement-timeout", "no-connection", "admin-shutdown", "deadlock", "serialization", "locked", "no-table"],
)
def test_only_an_unreachable_or_stalled_database_is_an_outage_not_every_operational_error(
    cause: Exception, outage: bool
) -> None:
    error = OperationalError(str(cause))
    error.__cause__ = cause
    assert is_database_outage(error) is outage


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_long_statement_on_a_live_server_is_left_alone_by_the_watchdog() -> None:
    """The watchdog probes the server of a statement that waits past PROBE_AFTER_SECONDS; a live server opens
    the probe's connection, so its long statement runs to its end."""
    from playpay.postgresql import base as engine

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 20000")
        assert isinstance(connection.connection, engine.BoundedConnection)  # the watchdog watches this one
        cursor.execute("SELECT pg_sleep(%s)", [engine.PROBE_AFTER_SECONDS + 2 * engine.WATCH_INTERVAL_SECONDS + 1])
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def _wait_until_gone(pid: int) -> None:
    with other_session(autocommit=False) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 5
        while True:
            other.rollback()  # a new transaction reads pg_stat_activity anew (one keeps its first view)
            if not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                return
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.02)


def _last_statement() -> str:
    with other_session(autocommit=False) as other:
        row = other.execute(
            "SELECT query FROM pg_stat_activity WHERE pid = %s", [connection.connection.info.backend_pid]
        ).fetchone()
    assert row is not None
    return str(row[0])


# Transactional: a connection inside the test's transaction is always asked with a statement.
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_idle_persistent_connection_is_found_usable_without_a_statement() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'the last statement'")
    assert connection.is_usable()
    assert _last_statement() == "SELECT 'the last statement'"  # no SELECT 1 after it


# Transactional: a connection inside the test's transaction is always asked with a statement.
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_the_server_has_not_answered_for_a_while_is_asked_with_a_statement() -> None:
    """A peer gone without a word (a host lost, a NAT that forgot the connection) leaves the socket quiet. Empty
    transactions send the server nothing, so they do not count as its answers."""
    from playpay.postgresql import base as engine

    with connection.cursor() as cursor:
        cursor.execute("SELECT 'left alone'")
    connection.connection.answered_at -= engine.ANSWERED_WITHIN_SECONDS + 1
    with transaction.atomic():
        pass
    assert connection.is_usable()
    assert _last_statement() == "SELECT 1"


# Transactional: the test opens its own transaction.
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_inside_a_transaction_is_asked_with_a_statement() -> None:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 'in a transaction'")
        assert connection.is_usable()
        assert _last_statement() == "SELECT 1"


# Transactional: the request's connection must outlive the request, as it does in a server's process.
@pytest.mark.postgres
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_persistent_connection_the_server_ended_is_replaced_before_the_next_request(shop: Shop) -> None:
    assert connection.settings_dict["CONN_MAX_AGE"] > 0
    assert shop.client.get("/api/v1/payments/").status_code == 200
    ended = connection.connection.info.backend_pid
    _wait_until_gone(ended)  # a restart of the server ends every session the same way
    close_old_connections()  # as a server's handler does when a request starts (the test client does not)
    response = shop.client.get("/api/v1/payments/")
    assert response.status_code == 200, response.content
    assert connection.connection.info.backend_pid != ended
