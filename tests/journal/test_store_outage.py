"""The journal store's server crashes under real traffic and comes back: every request's record reaches the store
once, each gunicorn worker's in the order it answered them.

The journal store is a private PostgreSQL server (tests/pg_instance.py), stopped with `pg_ctl stop -m immediate`
while clients keep calling the API of gunicorn with 2 workers; the main database stays on the suite's server.
"""

import os
import re
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests
from django.conf import settings
from django.db import connection

from tenants.services import create_app
from tests.deploy.processes import Processes, free_port, service_env, wait_for
from tests.pg_instance import PgInstance, pg_instance

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 3
BEFORE, DURING, AFTER = 60, 120, 60  # requests sent before the crash, while the store is down, after it is back
ACCESS_LINE = re.compile(r"^<(\d+)> (\S+) (\d{3})$")  # gunicorn writes the pid as <pid>


@pytest.fixture
def journal_server() -> Iterator[PgInstance]:
    with pg_instance() as server:
        server.wait_until_accepting()
        server.create_database("journal")
        yield server


def _env(tmp_path: Path, journal_url: str) -> dict[str, str]:
    main = urlsplit(os.environ["DATABASE_URL"])
    return service_env() | {
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        # The suite's own database of this test (it commits: the test is transactional).
        "DATABASE_URL": urlunsplit(main._replace(path=f"/{connection.settings_dict['NAME']}")),
        "JOURNAL_URL": journal_url,
        "JOURNAL_SPOOL_DIR": str(tmp_path / "spool"),
        "PLAYPAY_VAR_DIR": str(tmp_path / "var"),
    }


def _stored_request_ids(journal_url: str) -> list[str]:
    with psycopg.connect(journal_url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT request_id FROM journal_journalrecord ORDER BY id").fetchall()
    return [row[0] for row in rows]


def test_every_record_reaches_the_store_after_it_crashed_under_traffic(
    tmp_path: Path, journal_server: PgInstance
) -> None:
    _, key = create_app(name="Outage Game")
    journal_url = journal_server.url("journal")
    env = _env(tmp_path, journal_url)
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--database", "journal"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    access_log = tmp_path / "access.log"
    sent: list[str] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(number: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Api-Key {key.raw_key}"
        index = 0
        while not stop.is_set():
            request_id = f"c{number}-{index:05d}"
            index += 1
            try:
                response = session.get(f"{base}/api/v1/price-points/", headers={"X-Request-Id": request_id}, timeout=15)
            except requests.RequestException as exc:
                errors.append(f"{request_id}: {exc!r}")
                return
            with lock:
                sent.append(request_id)
                statuses[response.status_code] += 1

    with Processes(log_dir=tmp_path, cwd=ROOT) as processes:
        web = processes.start(
            "gunicorn",
            [
                *(sys.executable, "-m", "gunicorn", "playpay.wsgi:application"),
                *("--workers", "2", "--worker-class", "sync", "--threads", "1", "--bind", f"127.0.0.1:{port}"),
                *("--control-socket", str(tmp_path / "web.ctl")),
                *("--access-logfile", str(access_log), "--access-logformat", "%(p)s %({x-request-id}o)s %(s)s"),
            ],
            env,
        )
        wait_for("gunicorn to answer", lambda: requests.get(f"{base}/healthz", timeout=5).ok, timeout=30)
        clients = [threading.Thread(target=client, args=(number,)) for number in range(CLIENTS)]
        for thread in clients:
            thread.start()
        try:
            wait_for("traffic before the crash", lambda: len(sent) >= BEFORE, timeout=60, interval=0.01)
            journal_server.stop("immediate")
            wait_for("traffic while the store is down", lambda: len(sent) >= BEFORE + DURING, timeout=60, interval=0.01)
            journal_server.start()
            wait_for("traffic after", lambda: len(sent) >= BEFORE + DURING + AFTER, timeout=60, interval=0.01)
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        assert not errors, errors
        assert statuses == {200: len(sent)}, statuses  # the journal's outage is not the API's
        spool = tmp_path / "spool"
        wait_for("the spool to be drained", lambda: not list(spool.glob("*.jsonl")), timeout=90)
        web.assert_running()
        assert "record spooled" in web.output()  # the crash did hit requests in flight

    stored = _stored_request_ids(journal_url)
    assert [request_id for request_id, count in Counter(stored).items() if count > 1] == []
    assert sorted(stored) == sorted(sent)
    answered_by: defaultdict[str, list[str]] = defaultdict(list)
    for line in access_log.read_text().splitlines():
        match = ACCESS_LINE.match(line)
        if match and match[2] in sent:
            answered_by[match[1]].append(match[2])
    assert len(answered_by) == 2, answered_by.keys()  # both workers took traffic
    position = {request_id: index for index, request_id in enumerate(stored)}
    for worker, answered in answered_by.items():
        assert sorted(answered, key=position.__getitem__) == answered, f"worker {worker}'s records out of order"
