import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dj_database_url
import pytest
import redis
from django.contrib.auth.models import Group, User
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.management import call_command
from django.db import connection, connections
from django.db.utils import load_backend
from django.test import Client
from pytest_django.live_server_helper import LiveServer
from rest_framework.test import APIClient

from carriers import gateway
from carriers.models import Carrier, PricePoint
from playpay import refcache
from playpay.celery import app as celery_app
from sandbox.simulators import core as simulators
from tenants.models import App
from tenants.services import issue_api_key
from tests.factories import AppFactory, CarrierFactory, NumberPrefixFactory, PricePointFactory

# A valid UK mobile number routed to the default test carrier by its prefix.
MSISDN = "+447400123456"
# What the browser tests leave when they fail (tests/e2e/conftest.py).
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    # Staff users are made and signed in by the dozen: a million PBKDF2 rounds each (~0.2 s of CPU) buy a
    # test nothing. Production keeps Django's default hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # With CACHE_URL on Redis, pytest-xdist workers share its database: each keeps its keys under its own
    # prefix, so that `_fresh_caches` empties this worker's cache only (the locmem default is per process).
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    for cache_settings in settings.CACHES.values():
        if cache_settings["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
            cache_settings["KEY_PREFIX"] = f"test-cache-{worker}"  # not the broker's "test-{worker}:"
    # Once a run, in the process that starts it: a pytest-xdist worker must not empty the folder
    # while another one is writing what its failed test left there.
    if not hasattr(config, "workerinput"):
        shutil.rmtree(ARTIFACTS, ignore_errors=True)


def _is_transactional(item: pytest.Item, marker: pytest.Mark) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    transaction = marker.kwargs.get("transaction") or (marker.args and marker.args[0])
    return bool(transaction or "transactional_db" in fixtures or "live_server" in fixtures)


def _databases(item: pytest.Item, marker: pytest.Mark) -> str | list[str]:
    """Every API request, carrier call, staff action and webhook is journaled, in the journal's own database.
    A test that rolls back has it for nothing (its own transaction there too). A transactional test empties
    each database it has after it, so it has the journal only when it may write there: when it is marked
    `journal`, or when a live server answers it (what that thread journals must not outlive the test).
    `_journal_writes_need_the_journal` fails a test that journals from its own thread without it."""
    if "live_server" in getattr(item, "fixturenames", ()) or item.get_closest_marker("journal"):
        return "__all__"
    return ["default"] if _is_transactional(item, marker) else "__all__"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests (databases, services), then puts those that empty the database (transactional, live
    server, browser) after all the others, keeping the random order within each part. pytest-django sorts
    so too, but pytest-randomly may shuffle after it: a test relying on the rows the migrations seed (staff
    roles, the operator catalogue, periodic tasks) then ran in a worker that had emptied them. The workers
    take the tests in this order (--dist load), so within each one as well."""
    for item in items:
        if "simulator_server" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("django_db"):
            item.add_marker(pytest.mark.django_db)  # the simulators' state is in the database
        marker = item.get_closest_marker("django_db")
        if marker is not None and "databases" not in marker.kwargs:
            # Before the test's own marks: pytest-django reads the closest one.
            databases = _databases(item, marker)
            item.add_marker(pytest.mark.django_db(*marker.args, **marker.kwargs, databases=databases), append=False)
        if item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.usefixtures("_require_postgres"))
        if item.get_closest_marker("broker"):
            item.add_marker(pytest.mark.usefixtures("_require_broker"))
    items.sort(key=_empties_the_database)


def _empties_the_database(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    return marker is not None and _is_transactional(item, marker)


@pytest.fixture
def _require_postgres(django_db_blocker: Any) -> None:
    # These tests assert PostgreSQL behaviour (locking, constraints); elsewhere they fail, never skip.
    assert connection.vendor == "postgresql", "this test needs PostgreSQL: set DATABASE_URL=postgres://…"


@pytest.fixture
def _require_broker() -> None:
    assert os.environ.get("CELERY_BROKER_URL"), "this test needs a Celery broker: set CELERY_BROKER_URL"


class _ForbiddenJournalWrites(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "are not allowed in this test" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _no_worker_mark_left_behind() -> Iterator[None]:
    """A Celery worker started in this process (a test's, in a thread) marks the process as one where waiting on a
    task's result would block, and leaves the mark: each test starts as a process without a worker (the mark is
    put back as it was after it)."""
    from celery.result import allow_join_result

    with allow_join_result():
        yield


@pytest.fixture(autouse=True)
def _journal_writes_need_the_journal() -> Iterator[None]:
    """A record the test may not write to the journal's database would go to the spool instead, quietly:
    the test would pass on a path production does not take. Mark it `journal`."""
    handler = _ForbiddenJournalWrites()
    logger = logging.getLogger("journal.services")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    if handler.messages:
        pytest.fail(f"this test journals without the journal database (mark it `journal`): {handler.messages[0]}")


@pytest.fixture(autouse=True)
def _journal_spool_of_the_test(tmp_path_factory: pytest.TempPathFactory, settings: Any) -> Iterator[Path]:
    """Each test spools journal records in a directory of its own (made when first written), not under var/,
    and no drainer thread it started outlives it to write into another test's journal."""
    from journal.spool import stop_drainers

    settings.JOURNAL_SPOOL_DIR = tmp_path_factory.getbasetemp() / "journal-spool" / uuid.uuid4().hex
    yield settings.JOURNAL_SPOOL_DIR
    stop_drainers(timeout=10)


# What migrate's post_migrate handlers make (the only ones installed): no test changes them.
_REFERENCE_TABLES = {"django_content_type", "auth_permission"}
# Rows the data migrations seed and tests rely on: copied aside once per test database, put back as they were
# after every flush, so a test finds them whatever its worker ran before (and never a change a test made).
_SEED_TABLES = ("carriers_country", "auth_group", "auth_group_permissions")
_SEED_SCHEMA = "test_seed"
_SEED_SEQUENCES: dict[str, str] = {}  # a seeded table's id sequence, for those with one


@pytest.fixture(scope="session", autouse=True)
def _seed_rows_aside(django_db_setup: None, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        if connection.vendor != "postgresql" or not set(_SEED_TABLES) <= set(connection.introspection.table_names()):
            return  # no test of this run uses the database: pytest-django made none
        cursor.execute(f"DROP SCHEMA IF EXISTS {_SEED_SCHEMA} CASCADE")
        cursor.execute(f"CREATE SCHEMA {_SEED_SCHEMA}")
        for table in _SEED_TABLES:
            cursor.execute(f"CREATE TABLE {_SEED_SCHEMA}.{table} AS TABLE {table}")
            cursor.execute(
                "SELECT pg_get_serial_sequence(%s, a.attname) FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attname = 'id'",
                [table, table],
            )
            sequence = cursor.fetchone()
            if sequence and sequence[0]:
                _SEED_SEQUENCES[table] = sequence[0]


@pytest.fixture(scope="session", autouse=True)
def _flush_by_delete() -> Iterator[None]:
    """After a transactional test Django empties every table with one TRUNCATE of all ~60 of them, which
    PostgreSQL pays for per table (new files for each table and index), ~0.2 s a test, then runs the
    post_migrate handlers again to remake every content type and permission, ~0.05 s more. Here the rows
    of the few tables that have any are deleted, content types and permissions excepted, so there is
    nothing to remake: the same tables as Django's flush leaves, in a few milliseconds. Triggers (the
    ledger's and the journal's append-only guards, foreign-key checks) are off for those statements only,
    as for TRUNCATE; that needs a superuser, so with another role the flush stays Django's TRUNCATE, with
    the append-only tables' TRUNCATE guards off around it (a table's owner may turn its triggers off)."""
    from django.core.management.commands import flush
    from django.core.management.sql import emit_post_migrate_signal
    from django.db.backends.postgresql.operations import DatabaseOperations

    django_truncate = DatabaseOperations.sql_flush
    kept_reference_rows: set[str] = set()  # the aliases whose last flush was this one

    def truncate(self: Any, style: Any, tables: Any, **options: Any) -> list[str]:
        """Django's TRUNCATE, with the triggers that refuse it (the append-only tables') off around it."""
        with self.connection.cursor() as cursor:
            # tgtype bit 5: a TRUNCATE trigger; a partitioned table's partitions each have their own.
            cursor.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE NOT t.tgisinternal AND t.tgtype & 32 <> 0 AND (c.relname = ANY(%s) OR c.oid IN ("
                " SELECT i.inhrelid FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
                " WHERE p.relname = ANY(%s)))",
                [list(tables), list(tables)],
            )
            guards = [(self.quote_name(table), self.quote_name(trigger)) for table, trigger in cursor.fetchall()]
        return [
            *(f"ALTER TABLE {table} DISABLE TRIGGER {trigger};" for table, trigger in guards),
            *django_truncate(self, style, tables, **options),
            *(f"ALTER TABLE {table} ENABLE TRIGGER {trigger};" for table, trigger in guards),
        ]

    def sql_flush(self: Any, style: Any, tables: Any, *, reset_sequences: bool = False, **options: Any) -> Any:
        kept_reference_rows.discard(self.connection.alias)
        if reset_sequences or not tables:
            return truncate(self, style, tables, reset_sequences=reset_sequences, **options)
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if not cursor.fetchone()[0]:
                return truncate(self, style, tables, reset_sequences=reset_sequences, **options)
            kept_reference_rows.add(self.connection.alias)
            quoted = [self.quote_name(table) for table in tables if table not in _REFERENCE_TABLES]
            # Table names from Django's own introspection, quoted by the backend.
            selects = [f"(SELECT {i} FROM {table} LIMIT 1)" for i, table in enumerate(quoted)]  # noqa: S608
            cursor.execute(" UNION ALL ".join(selects))
            used = [quoted[row[0]] for row in cursor.fetchall()]
        if not used:
            return []
        deletes = [f"DELETE FROM {table};" for table in used]  # noqa: S608
        seeds = [t for t in _SEED_TABLES if t in tables] if self.connection.alias == "default" else []
        restores = [f"INSERT INTO {t} SELECT * FROM {_SEED_SCHEMA}.{t};" for t in seeds]  # noqa: S608
        # The rows keep their ids; the sequence goes past them, wherever an earlier test left it (a migration
        # test moving the schema back and forth may have set it back): else the next insert collides, and an
        # m2m add (ON CONFLICT DO NOTHING) silently adds nothing.
        restores += [
            f"SELECT setval('{_SEED_SEQUENCES[t]}', (SELECT MAX(id) FROM {t}));"  # noqa: S608
            for t in seeds
            if t in _SEED_SEQUENCES
        ]
        return ["SET LOCAL session_replication_role = replica;", *deletes, *restores]

    def after_flush(verbosity: int, interactive: bool, db: str, **kwargs: Any) -> None:
        if db not in kept_reference_rows:
            emit_post_migrate_signal(verbosity, interactive, db, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", sql_flush)
        patch.setattr(flush, "emit_post_migrate_signal", after_flush)
        yield


_EMPTIED: set[str] = set()  # the databases a transactional test of this process has emptied


@pytest.fixture(autouse=True)
def _transactional_tests_start_empty(request: pytest.FixtureRequest) -> None:
    """A transactional test finds the tables as the one before it left them, emptied, migrated rows included;
    the first of a process would find the migrated rows instead, and pass or fail by its place in the
    (random) order. It starts from empty tables too."""
    marker = request.node.get_closest_marker("django_db") or pytest.mark.django_db.mark
    if not _is_transactional(request.node, marker):
        return
    request.getfixturevalue("transactional_db")
    databases = marker.kwargs.get("databases") or ["default"]
    for alias in connections if databases == "__all__" else databases:
        if alias not in _EMPTIED:
            call_command("flush", database=alias, interactive=False, verbosity=0)
            _EMPTIED.add(alias)


@contextmanager
def journal_database(database_url: str) -> Iterator[None]:
    """The journal's alias on this database (a SQLite file as in the embedded default, or a server that is
    down) until the block ends, in this thread only: a live server's or a worker's thread keeps the journal
    of JOURNAL_URL."""
    url = dj_database_url.parse(database_url)
    settings_dict = connections.configure_settings({**connections.settings, "journal": url})["journal"]
    original = connections["journal"]
    connections["journal"] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "journal")
    try:
        yield
    finally:
        connections["journal"].close()
        connections["journal"] = original


@pytest.fixture(scope="session")
def _sqlite_journal_template(tmp_path_factory: pytest.TempPathFactory, django_db_blocker: Any) -> Path:
    path = tmp_path_factory.mktemp("journal") / "journal.sqlite3"
    with django_db_blocker.unblock(), journal_database(f"sqlite:///{path}"):
        call_command("migrate", database="journal", interactive=False, verbosity=0)
    return path


@pytest.fixture(scope="session", autouse=True)
def _sqlite_journal_made_first(request: pytest.FixtureRequest) -> None:
    """Migrating the SQLite journal takes some 20 s of CPU (more on a loaded machine): it is done before the
    first test, when a test of this run needs it, not inside one, whose transaction on the main database would
    sit idle meanwhile (and PostgreSQL ends a transaction idle past its idle-in-transaction timeout)."""
    items = request.session.items
    by_fixture = any(
        {"journal_on_sqlite", "journal_engines"} & set(getattr(item, "fixturenames", ())) for item in items
    )
    if by_fixture or any("journal_on_sqlite" in path.read_text() for path in {item.path for item in items}):
        request.getfixturevalue("_sqlite_journal_template")


@pytest.fixture
def journal_on_sqlite(tmp_path: Path, _sqlite_journal_template: Path) -> Iterator[None]:
    """The journal on SQLite, as scripts/run.sh has it, whatever JOURNAL_URL the suite runs with: a migrated
    database of the test's own, so that the SQL store's queries are run on both engines it supports."""
    path = tmp_path / "journal.sqlite3"
    shutil.copyfile(_sqlite_journal_template, path)
    with journal_database(f"sqlite:///{path}"):
        yield


@pytest.fixture(params=["journal_url", "sqlite"])
def journal_engines(request: pytest.FixtureRequest) -> str:
    """Runs the test on the journal of JOURNAL_URL, then again on a SQLite journal."""
    if request.param == "sqlite":
        request.getfixturevalue("journal_on_sqlite")
    return str(request.param)


@pytest.fixture(scope="session")
def _simulator_server_thread(django_db_setup: None) -> Iterator[LiveServer]:
    server = LiveServer("127.0.0.1:0")
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_database_session_left(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Request threads of the live and simulator servers keep their database sessions for a kept-alive
    connection's next request: they end when the session does, or the test databases could not be dropped."""
    yield
    for alias in ("default", "journal"):
        if connections[alias].vendor != "postgresql":
            continue
        with django_db_blocker.unblock(), connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def simulator_server(_simulator_server_thread: LiveServer) -> str:
    """The base URL of the app served on a loopback port, for tests that only call its carrier and
    reference-data simulators. Unlike live_server it leaves the test its rolled-back transaction: nothing
    the server answers depends on the test's rows. The simulators keep their state in the test database,
    as a carrier's servers share theirs, so a test that uses them has database access (given it at
    collection when it has none); what they write is committed at once, never part of the test's
    transaction, whether the server or the test (`sandbox.simulators.core.simulator(name)`) writes it."""
    return str(_simulator_server_thread.url)


@pytest.fixture(scope="session", autouse=True)
def _broker_per_worker(request: pytest.FixtureRequest) -> None:
    """pytest-xdist workers share one Redis database: each keeps its queues under its own key prefix, so that
    a worker started by one test never takes (or purges) the tasks of a test in another process. What an
    earlier run left under the prefix goes first: its tasks name rows of databases that no longer exist,
    and carrier queues are named after factory slugs that the next run makes again."""
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    prefix = f"test-{worker}:"
    options = dict(celery_app.conf.broker_transport_options or {})
    celery_app.conf.broker_transport_options = {**options, "global_keyprefix": prefix}
    url = os.environ.get("CELERY_BROKER_URL", "")
    if url.startswith(("redis://", "rediss://")):
        broker = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        stale = list(broker.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            broker.delete(*stale)


@pytest.fixture(autouse=True)
def _simulators_reset(django_db_blocker: Any) -> Iterator[None]:
    """The suite runs with the sandbox on (SANDBOX=true, pyproject's pytest env): its simulators are served,
    their state in the test database. A test that used them leaves them reset."""
    yield
    if not simulators.used():
        return
    with django_db_blocker.unblock():
        # Callbacks a simulator still has queued must not reach the next test (or a dropped database).
        simulators.reset_all(kept_too=True)  # a test's registered keys too
        # One already on its way finishes first: the live server handling it while a transactional test
        # empties the tables can deadlock with the TRUNCATE.
        for thread in threading.enumerate():
            if thread.name.endswith("-callbacks"):
                thread.join(timeout=15)


@pytest.fixture(autouse=True)
def _fresh_reference_caches() -> Iterator[None]:
    """Each test rolls its rows back: memoised carriers, price points and keys must not outlive it."""
    refcache.clear_all()
    yield
    refcache.clear_all()


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    """Breaker states, rate-limit windows and health counters are kept in the cache, by carrier slug, and
    the tests make the same slugs again: what one test leaves there must not open the next one's breaker."""
    for cache in caches.all():
        if isinstance(cache, RedisCache):  # this worker's keys only (pytest_configure), not the whole database
            client = cache._cache.get_client(write=True)
            stale = list(client.scan_iter(match=f"{cache.key_prefix}:*", count=1000))
            if stale:
                client.delete(*stale)
        else:
            cache.clear()


@pytest.fixture(autouse=True)
def _staff_second_factor_off(settings: Any) -> None:
    """Admin tests sign in with force_login; the second factor has tests of its own."""
    settings.STAFF_2FA = False


@pytest.fixture(autouse=True)
def _plain_static_storage(settings: Any) -> None:
    """Production serves hashed static files made by collectstatic; tests render pages without it."""
    settings.STORAGES = settings.STORAGES | {
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    }


@pytest.fixture(autouse=True)
def _tasks_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tasks run at enqueue time, except in tests that exercise the real broker."""
    eager = request.node.get_closest_marker("broker") is None
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = eager
    yield
    celery_app.conf.task_always_eager = previous


def assert_problem(response: Any, *, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of this status and code (the API's contract for every error);
    returns its body for the fields a test promises beyond those."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert (problem["type"], problem["code"], problem["status"]) == (f"/api/problems/{code}", code, status), problem
    assert problem["title"]
    assert problem["detail"]
    return problem


STAFF_PASSWORD = "pw-Str0ng-enough!"
STAFF_ROLES = ("operations", "finance", "support", "superuser")
StaffClient = Callable[[str], Client]


@pytest.fixture(scope="session")
def _staff_roles(django_db_setup: None, django_db_blocker: Any) -> dict[str, list[int]]:
    """The roles' permissions as the migrations made them, read once: a transactional test run earlier in
    the same worker empties the groups table (the permissions themselves are kept), and `staff_client`
    makes a missing role again from this."""
    with django_db_blocker.unblock():
        return {group.name: list(group.permissions.values_list("pk", flat=True)) for group in Group.objects.all()}


@pytest.fixture
def staff_client(db: Any, _staff_roles: dict[str, list[int]]) -> StaffClient:
    """staff_client(role): a Django client signed in as a staff member named after the role. The roles are
    the groups of payments 0010 (operations, finance, support; their reporting rights: reporting 0002),
    and "superuser", who may do anything."""

    def sign_in(role: str) -> Client:
        assert role in STAFF_ROLES, f"no staff role {role!r}: one of {STAFF_ROLES}"
        user = User.objects.filter(username=role).first()
        if user is None and role == "superuser":
            user = User.objects.create_superuser(role, f"{role}@example.com", STAFF_PASSWORD)
        elif user is None:
            user = User.objects.create_user(role, f"{role}@example.com", STAFF_PASSWORD, is_staff=True)
            group, made = Group.objects.get_or_create(name=role)
            if made:
                group.permissions.set(_staff_roles[role])
            user.groups.add(group)
        client = Client()
        client.force_login(user)
        return client

    return sign_in


@dataclass
class Shop:
    """One app with an API key and one active carrier with a price point."""

    app: App
    key: str
    carrier: Carrier
    price_point: PricePoint
    client: APIClient
    # Runs what the request queued for after its commit (the test's own transaction never commits).
    after_commit: Callable[..., Any]

    def create_payment(self, key: str = "key-1", **body: Any) -> Any:
        payload = {"user_ref": "player-1", "msisdn": MSISDN, "price_point": self.price_point.code, **body}
        with self.after_commit(execute=True):
            return self.client.post("/api/v1/payments/", payload, format="json", HTTP_IDEMPOTENCY_KEY=key)

    def get(self, payment_id: str) -> Any:
        response = self.client.get(f"/api/v1/payments/{payment_id}/")
        assert response.status_code == 200, response.content
        return response.json()

    def pay(self, key: str = "key-1", **body: Any) -> Any:
        """Create a payment and return it as it is once the queued carrier work has run."""
        response = self.create_payment(key, **body)
        assert response.status_code == 201, response.content
        return self.get(response.json()["id"])

    def confirm(self, payment_id: str, pin: str) -> Any:
        with self.after_commit(execute=True):
            return self.client.post(f"/api/v1/payments/{payment_id}/confirm/", {"pin": pin}, format="json")


@pytest.fixture
def make_shop(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[..., Shop]:
    def make(prefix: str = "4474", **carrier_fields: Any) -> Shop:
        app = AppFactory.create()
        key = issue_api_key(app=app).raw_key
        carrier = CarrierFactory.create(**carrier_fields)
        NumberPrefixFactory.create(carrier=carrier, prefix=prefix)
        price_point = PricePointFactory.create(carrier=carrier)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        return Shop(
            app=app,
            key=key,
            carrier=carrier,
            price_point=price_point,
            client=client,
            after_commit=django_capture_on_commit_callbacks,
        )

    return make


@pytest.fixture
def shop(db: Any, make_shop: Callable[..., Shop]) -> Shop:
    return make_shop()


@dataclass
class GatewayClock:
    """The carrier gateway's wall clock (breaker, rate limit, Retry-After), moved by a test instead of waited for."""

    now: float = 1_800_000_000.0  # the start of a second (and of a minute)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> GatewayClock:
    fake = GatewayClock()
    monkeypatch.setattr(gateway, "clock", fake)
    return fake
