"""/healthz says the process lives; /readyz says its database, journal store (or its spool) and broker answer."""

import time
from contextlib import AbstractContextManager

import pytest

from tests.conftest import assert_problem, journal_database


@pytest.mark.django_db
def test_ready_when_the_database_and_journal_answer(client, settings) -> None:
    settings.CELERY_BROKER_URL = ""
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {"database": "ok", "journal": "ok"}


@pytest.mark.broker
@pytest.mark.django_db
def test_ready_checks_the_configured_broker(client, settings) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["broker"]["status"] == "ok"


@pytest.mark.django_db
def test_not_ready_while_the_broker_is_down_and_the_check_is_bounded(client, settings) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"  # the discard port: nothing listens there
    settings.CELERY_TASK_ALWAYS_EAGER = False
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 5
    problem = assert_problem(response, status=503, code="not_ready")
    assert response["Retry-After"]
    assert problem["checks"]["broker"]["status"] == "failed"
    assert problem["checks"]["database"]["status"] == "ok"
    assert problem["checks"]["journal"]["status"] == "ok"
    assert client.get(problem["type"]).json()["status"] == 503  # the problem type is documented
    # Liveness does not depend on the broker: the process is not restarted for an outage elsewhere.
    assert client.get("/healthz").status_code == 200


def _journal_store_down() -> AbstractContextManager[None]:
    """The journal's alias, in this thread, on a port nothing listens on (the discard port)."""
    return journal_database("postgres://postgres@127.0.0.1:9/journal")


@pytest.mark.django_db
def test_ready_while_the_journal_store_is_down_as_its_records_are_spooled(client, settings) -> None:
    settings.CELERY_BROKER_URL = ""
    with _journal_store_down():
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["journal"]["status"] == "spooling"


@pytest.mark.django_db
def test_not_ready_when_neither_the_journal_store_nor_its_spool_can_take_a_record(client, settings, tmp_path) -> None:
    settings.CELERY_BROKER_URL = ""
    (tmp_path / "a-file").write_text("")
    settings.JOURNAL_SPOOL_DIR = tmp_path / "a-file" / "spool"  # no directory can be made there
    with _journal_store_down():
        response = client.get("/readyz")
    problem = assert_problem(response, status=503, code="not_ready")
    assert problem["checks"]["journal"]["status"] == "failed"
    assert problem["checks"]["database"]["status"] == "ok"


@pytest.mark.django_db
def test_not_ready_when_the_journal_store_is_down_and_the_spool_disk_is_full(client, settings, monkeypatch) -> None:
    from playpay import views

    settings.CELERY_BROKER_URL = ""
    # Room the disk does not have: what a full disk looks like to the check (its permissions still allow writing).
    monkeypatch.setattr(views, "SPOOL_MIN_FREE_BYTES", 10**18)  # an exabyte
    with _journal_store_down():
        response = client.get("/readyz")
    assert assert_problem(response, status=503, code="not_ready")["checks"]["journal"]["status"] == "failed"
    assert not list(settings.JOURNAL_SPOOL_DIR.glob(".ready-*"))  # the probe leaves nothing behind
