"""A PostgreSQL server that freezes (SIGSTOP: it takes connections and bytes, answers nothing) is an outage to
retry: API clients get 503 problem+json with Retry-After within their timeout, never a hang, and the service
comes back when the server does. bench/db_freeze.py shows the whole timeline of a 45 s freeze."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from django.conf import settings
from django.db import connections

from tenants.services import create_app
from tests.deploy.processes import Processes, free_port, wait_for
from tests.pg_instance import PgInstance, pg_instance

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True, databases="__all__")]

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT_SECONDS = 20


@pytest.fixture
def server() -> Iterator[PgInstance]:
    with pg_instance() as instance:
        instance.wait_until_accepting()
        yield instance


def _url_of(alias: str) -> str:
    base = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(base._replace(path=f"/{connections[alias].settings_dict['NAME']}"))


def test_a_frozen_database_is_answered_503_with_retry_after_and_the_service_comes_back(
    tmp_path: Path, server: PgInstance
) -> None:
    _, key = create_app(name="Freeze Game")
    # This test's databases (migrated, with its app), copied to a server of its own that can be frozen.
    env = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": server.copy_database(_url_of("default"), "playpay"),
        "JOURNAL_URL": server.copy_database(_url_of("journal"), "playpay_journal"),
        "JOURNAL_SPOOL_DIR": str(tmp_path / "spool"),
        "PLAYPAY_VAR_DIR": str(tmp_path / "var"),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/price-points/"
    session = requests.Session()
    session.headers["Authorization"] = f"Api-Key {key.raw_key}"
    with Processes(log_dir=tmp_path, cwd=ROOT) as processes:
        processes.start(
            "gunicorn",
            [
                *(sys.executable, "-m", "gunicorn", "playpay.wsgi:application"),
                *("--workers", "2", "--bind", f"127.0.0.1:{port}", "--control-socket", str(tmp_path / "web.ctl")),
            ],
            env,
        )
        wait_for("the API to answer", lambda: session.get(url, timeout=5).status_code == 200, timeout=30)
        for _ in range(6):  # each worker holds its connections open, as in production (CONN_MAX_AGE)
            assert session.get(url, timeout=5).status_code == 200

        frozen = server.freeze()
        try:
            answers = [session.get(url, timeout=CLIENT_TIMEOUT_SECONDS) for _ in range(4)]
        finally:
            server.thaw(frozen)
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["Content-Type"] == "application/problem+json"
            assert answer.json()["code"] == "database_unavailable"
            assert answer.headers["Retry-After"] == "5"

        wait_for("the API to answer again", lambda: session.get(url, timeout=5).status_code == 200, timeout=30)
