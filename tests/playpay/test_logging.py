"""Log lines are JSON (or plain text) and say which request, app, task and payment they belong to."""

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from carriers.gateway import Breaker
from journal.services import Kind
from journal.store import JournalQuery, journal_store
from playpay.logging import JsonFormatter, TextFormatter, bind, bound
from tests.conftest import MSISDN, Shop

pytestmark = pytest.mark.django_db


def _configured_formatter(kind: type[logging.Formatter]) -> logging.Formatter:
    """The formatter settings.LOGGING gave the root logger's handler."""
    formatters = [handler.formatter for handler in logging.getLogger().handlers if handler.formatter is not None]
    found = [formatter for formatter in formatters if isinstance(formatter, kind)]
    assert found, f"the root logger has no {kind.__name__}: {formatters}"
    return found[0]


class Lines:
    """What the configured handler writes, formatted as it is written (with the context of that moment)."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)

    def text(self) -> list[str]:
        return [line for line in self.stream.getvalue().splitlines() if line]

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text()]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    lines = Lines(_configured_formatter(JsonFormatter))
    root = logging.getLogger()
    root.addHandler(lines.handler)
    yield lines
    root.removeHandler(lines.handler)


def is_about(line: dict[str, Any], path: str) -> bool:
    """Django's request log line of `path`: a thread left over from another test (a simulator answering late) may
    log a request of its own meanwhile."""
    return bool(line["logger"] == "django.request" and line["message"].endswith(f": {path}"))


# Committed for real, so that the PIN is checked in-process at the commit (the embedded default) and the
# wrong PIN is answered 422 by the request itself.
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_a_line_logged_during_an_api_request_is_json_with_the_request_id_and_the_app(
    shop: Shop, json_lines: Lines
) -> None:
    payment_id = shop.pay()["id"]
    response = shop.confirm(payment_id, "0000")  # a wrong PIN: Django logs the 422 as a warning
    assert response.status_code == 422
    request_id = response["X-Request-Id"]
    lines = [line for line in json_lines.json() if is_about(line, f"/api/v1/payments/{payment_id}/confirm/")]
    assert len(lines) == 1
    line = lines[0]
    assert line["level"] == "WARNING"
    assert line["message"].endswith(f": /api/v1/payments/{payment_id}/confirm/")
    assert line["status_code"] == 422  # Django's own extra
    assert line["request_id"] == request_id
    assert line["app"] == shop.app.name
    assert line["payment_id"] == payment_id
    # The journal's record of that request carries the same id.
    records = journal_store().query(JournalQuery(correlation={"request_id": request_id}, kind=Kind.API_REQUEST))
    assert [record["data"]["endpoint"] for record in records] == [f"/api/v1/payments/{payment_id}/confirm/"]


# Committed for real, so that the PIN is checked in-process at the commit (the embedded default) and the
# wrong PIN is answered 422 by the request itself.
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_the_callers_request_id_is_kept_when_it_is_a_plain_token(shop: Shop, json_lines: Lines) -> None:
    payment_id = shop.pay()["id"]
    response = shop.client.post(
        f"/api/v1/payments/{payment_id}/confirm/", {"pin": "0000"}, format="json", HTTP_X_REQUEST_ID="game-req-42"
    )
    assert response["X-Request-Id"] == "game-req-42"
    about = [line for line in json_lines.json() if is_about(line, f"/api/v1/payments/{payment_id}/confirm/")]
    assert [line["request_id"] for line in about] == ["game-req-42"]
    odd = shop.client.get(f"/api/v1/payments/{payment_id}/", HTTP_X_REQUEST_ID="x" * 65)
    assert odd["X-Request-Id"] != "x" * 65
    assert len(odd["X-Request-Id"]) == 32


def test_extras_and_bound_fields_appear_with_secrets_removed_and_numbers_masked(json_lines: Lines) -> None:
    logger = logging.getLogger("payments.services.state_machine")
    with bound(request_id="req-1"):
        bind(payment_id="8d4f2b8e-0c1a-4d4e-9a53-123456789012")
        logger.info(
            "payment moved to %s for %s",
            "succeeded",
            MSISDN,
            extra={"from_status": "charging", "to_status": "succeeded", "api_secret": "s3cret", "amount_minor": 99},
        )
    logger.info("outside the scope")
    inside, outside = json_lines.json()
    assert inside["message"] == "payment moved to succeeded for +44740*****56"
    assert inside["request_id"] == "req-1"
    assert inside["payment_id"] == "8d4f2b8e-0c1a-4d4e-9a53-123456789012"  # an id is never taken for a number
    assert inside["from_status"] == "charging"
    assert inside["to_status"] == "succeeded"
    assert inside["amount_minor"] == 99
    assert inside["api_secret"] == "[removed]"
    assert "s3cret" not in json_lines.stream.getvalue()
    assert MSISDN not in json_lines.stream.getvalue()
    assert "request_id" not in outside
    assert "payment_id" not in outside


def test_a_payment_task_logs_with_its_task_and_the_payments_public_id(shop: Shop, json_lines: Lines) -> None:
    breaker = Breaker(shop.carrier)
    for _ in range(shop.carrier.breaker_failure_threshold):
        breaker.record_failure()
    payment_id = shop.create_payment().json()["id"]  # its start task finds the breaker open and defers
    deferred = [line for line in json_lines.json() if line["logger"] == "carriers.gateway" and "reason" in line]
    assert len(deferred) == 1
    line = deferred[0]
    assert line["level"] == "INFO"
    assert line["message"] == "carrier call send_pin deferred (breaker open); it is retried later"
    assert line["task_name"] == "payments.tasks.start_payment"
    assert line["task_id"]
    assert line["payment_id"] == payment_id
    assert line["carrier"] == shop.carrier.slug
    assert line["reason"] == "breaker_open"


def test_the_breaker_opening_is_logged_once_as_a_warning(shop: Shop, json_lines: Lines) -> None:
    breaker = Breaker(shop.carrier)
    for _ in range(shop.carrier.breaker_failure_threshold + 2):
        breaker.record_failure()
    opened = [line for line in json_lines.json() if line["logger"] == "carriers.gateway"]
    assert [(line["level"], line["carrier"]) for line in opened] == [("WARNING", shop.carrier.slug)]
    assert opened[0]["message"].startswith("circuit breaker opened after")


def test_plain_text_lines_carry_the_context_and_extras() -> None:
    formatter = TextFormatter(
        "%(levelname)s %(name)s %(message)s", redact="playpay.redaction.redact"
    )  # as settings.LOGGING's "text"
    lines = Lines(formatter)
    logger = logging.getLogger("tests.plain")
    logger.addHandler(lines.handler)
    try:
        with bound(request_id="req-7", app="space-miners"):
            logger.warning("PIN sent to %s", MSISDN, extra={"password": "hunter2", "attempts": 2})
    finally:
        logger.removeHandler(lines.handler)
    assert lines.text() == [
        "WARNING tests.plain PIN sent to +44740*****56 "
        "[request_id=req-7 app=space-miners password=[removed] attempts=2]"
    ]


def test_text_is_the_default_format_when_debug() -> None:
    env = {"DEBUG": "true", "DJANGO_SETTINGS_MODULE": "playpay.settings"}
    script = "from django.conf import settings; print(settings.LOG_FORMAT, settings.LOGGING['handlers']['console'])"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        capture_output=True,
        text=True,
        check=False,
        env={**_base_env(), **env},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("text ")
    assert "'formatter': 'text'" in result.stdout
    refused = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        capture_output=True,
        text=True,
        check=False,
        env={**_base_env(), "LOG_FORMAT": "xml", "DJANGO_SETTINGS_MODULE": "playpay.settings"},
    )
    assert "LOG_FORMAT must be json or text" in refused.stderr


def test_a_celery_worker_logs_info_lines_as_json_whatever_its_loglevel() -> None:
    # Workers start with Celery's --loglevel (WARNING by default); the tasks' INFO lines must still come out.
    script = (
        "import django, logging; django.setup(); from playpay.celery import app; "
        "app.log.setup(loglevel='WARNING'); "
        "logging.getLogger('payments.services.carrier_flow').info('retried', extra={'payment_id': 'p-1'})"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**_base_env(), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "DJANGO_SETTINGS_MODULE": "playpay.settings"},
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["level"], line["message"], line["payment_id"]) == ("INFO", "retried", "p-1")


def _base_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("DEBUG", "LOG_FORMAT")}
