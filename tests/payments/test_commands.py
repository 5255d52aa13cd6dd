"""Operator commands: create_app (seed_demo is the sandbox's: tests/sandbox)."""

import io
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from rest_framework.test import APIClient

from payments.models import WebhookSecret
from payments.services import webhooks
from playpay.crypto import decrypt_credentials
from tenants.models import App
from tests.factories import AppFactory, CarrierFactory
from tests.processes import ROOT

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_app_prints_a_working_key_alone_on_the_last_line() -> None:
    key = run("create_app", "Space Miners").strip().splitlines()[-1]
    assert key.startswith("pp_")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert client.get("/api/v1/payments/").status_code == 200
    assert App.objects.get(name="Space Miners").api_keys.get().key_hash != key  # only a hash is stored


def test_create_app_refuses_a_duplicate_name_and_a_bad_url() -> None:
    run("create_app", "Space Miners")
    with pytest.raises(CommandError, match="exists"):
        run("create_app", "Space Miners")
    with pytest.raises(CommandError, match="webhook-url"):
        run("create_app", "Other", "--webhook-url", "not a url")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_embedded_scheduler_waits_out_a_database_outage(caplog) -> None:
    """The scheduler runs in its own thread; the database it connects to is unreachable (a closed port)
    for its first checks, then back: one error for the outage, one line when it is back, no crash."""
    settings_dict = connections.settings["default"]
    port = settings_dict["PORT"]
    settings_dict["PORT"] = "9"  # the discard port: nothing listens there
    outcome: list[BaseException | None] = []

    def scheduler() -> None:
        try:
            call_command("run_scheduler", "--tick", "0.02", "--cycles", "40", stdout=io.StringIO())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            connections.close_all()

    caplog.set_level(logging.INFO, logger="payments.management.commands.run_scheduler")
    thread = threading.Thread(target=scheduler)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # a few more failed checks
    finally:
        settings_dict["PORT"] = port
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert outcome == [None]
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0][0] == "ERROR"
    assert messages[0][1].startswith("database unavailable, periodic tasks wait until it is back")
    assert messages[1][0] == "WARNING"
    assert messages[1][1].startswith("database reachable again after")


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_carrier_worker_starts_without_celery_on_path() -> None:
    """A service manager's PATH rarely holds the virtualenv's bin: the worker is this interpreter's Celery."""
    carrier = CarrierFactory.create()
    env = {
        **{name: os.environ[name] for name in ("HOME", "LANG") if name in os.environ},
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": _url(connections["default"].settings_dict),
        "JOURNAL_URL": _url(connections["journal"].settings_dict),
        "CELERY_BROKER_URL": os.environ["CELERY_BROKER_URL"],
        "SANDBOX": "true",
    }
    assert shutil.which("celery", path=env["PATH"]) is None
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "carrier_worker", "--carriers", carrier.slug, "--concurrency", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert worker.stdout is not None
        deadline = time.monotonic() + 60
        for line in worker.stdout:
            lines.append(line)
            if " ready." in line or time.monotonic() > deadline:
                break
        assert any(" ready." in line for line in lines), "".join(lines)
        assert any(f"carrier.{carrier.slug}" in line for line in lines), "".join(lines)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def _url(settings_dict: dict[str, object]) -> str:
    return f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"


def test_rotate_encryption_keys_moves_stored_secrets_to_the_newest_key(settings) -> None:
    settings.CARRIER_CREDENTIALS_KEY = "old-key"
    carrier = CarrierFactory.create()
    carrier.credentials = {"client_secret": "carrier-s3cret"}
    carrier.save()
    app = AppFactory.create()
    raw = webhooks.new_secret(app=app)

    settings.CARRIER_CREDENTIALS_KEY = "new-key,old-key"
    assert "re-encrypted 1 carrier credential(s) and 1 webhook secret(s)" in run("rotate_encryption_keys")

    settings.CARRIER_CREDENTIALS_KEY = "new-key"  # the old key dropped
    carrier.refresh_from_db()
    assert carrier.credentials == {"client_secret": "carrier-s3cret"}
    secret = WebhookSecret.objects.get(app=app)
    assert decrypt_credentials(secret.secret_encrypted) == {"secret": raw}


def test_rotate_encryption_keys_changes_nothing_when_a_key_is_missing(settings) -> None:
    settings.CARRIER_CREDENTIALS_KEY = "old-key"
    carrier = CarrierFactory.create()
    carrier.credentials = {"client_secret": "carrier-s3cret"}
    carrier.save()
    stored = carrier.credentials_encrypted
    settings.CARRIER_CREDENTIALS_KEY = "new-key"
    with pytest.raises(CommandError, match="cannot be decrypted with any configured key"):
        run("rotate_encryption_keys")
    carrier.refresh_from_db()
    assert carrier.credentials_encrypted == stored
