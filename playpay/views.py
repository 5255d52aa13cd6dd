"""Project-level views: problem-type docs, liveness and readiness, metrics, and problem+json for API 404/500."""

import hmac
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error

from playpay import metrics as playpay_metrics
from playpay.api.problems import (
    DATABASE_RETRY_AFTER_SECONDS,
    NOT_READY,
    PROBLEM_CONTENT_TYPE,
    database_unavailable_problem,
    is_database_outage,
    problem_body,
    problem_catalogue,
    problem_json,
)

logger = logging.getLogger(__name__)
# Each readiness check gives up after this long, so that /readyz answers within the load balancer's timeout.
READINESS_CHECK_TIMEOUT_SECONDS = 2


def problem_types(request: HttpRequest, code: str = "") -> JsonResponse:
    rows = problem_catalogue()
    if code:
        rows = [row for row in rows if row["code"] == code]
        if not rows:
            return problem_json(404, "not_found", "No such problem type", f"{code!r} is not a PlayPay problem type.")
        return JsonResponse(rows[0])
    return JsonResponse({"problem_types": rows})


def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches no database or broker, so an outage does not restart it."""
    return JsonResponse({"status": "ok"})


def _check_database(alias: str) -> None:
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Bounded even when the connection was made with a longer statement timeout.
            cursor.execute("SET statement_timeout = %s", [READINESS_CHECK_TIMEOUT_SECONDS * 1000])
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.execute("RESET statement_timeout")  # back to the connection's own (settings)
        else:
            cursor.execute("SELECT 1")


def _check_journal_store() -> None:
    if settings.JOURNAL_BACKEND != "mongodb":
        _check_database("journal")
        return
    import pymongo

    timeout_ms = READINESS_CHECK_TIMEOUT_SECONDS * 1000
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        settings.JOURNAL_URL, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
    finally:
        client.close()


# Free room the spool must have to count as writable: a few of its segments (journal.spool: 4 MB each).
SPOOL_MIN_FREE_BYTES = 16 * 1024 * 1024


def _spool_is_writable() -> bool:
    """Records can be spooled now: the directory takes a file written and fsync'ed, and has room left (a full
    disk passes a permission check)."""
    directory = settings.JOURNAL_SPOOL_DIR
    probe = directory / f".ready-{os.getpid()}-{threading.get_ident()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(directory).free < SPOOL_MIN_FREE_BYTES:
            return False
        with probe.open("wb") as file:
            file.write(b"ready\n")
            file.flush()
            os.fsync(file.fileno())
        probe.unlink()
    except OSError:
        return False
    return True


def _check_journal() -> str | None:
    """The journal store answers; or, while it does not, its records go to this host's spool: "spooling",
    which keeps the node in rotation (nothing is lost), unless the spool cannot be written either."""
    try:
        _check_journal_store()
    except Exception as exc:
        if not _spool_is_writable():
            raise
        logger.warning("readiness check journal: the store failed (%s); records are spooled", exc)
        return "spooling"
    return None


def _check_broker() -> None:
    from kombu import Connection

    with Connection(settings.CELERY_BROKER_URL, connect_timeout=READINESS_CHECK_TIMEOUT_SECONDS) as broker:
        broker.ensure_connection(max_retries=1, timeout=READINESS_CHECK_TIMEOUT_SECONDS)


def readiness(request: HttpRequest) -> JsonResponse:
    """Readiness for a load balancer: the database, the journal store (or, while it is down, the journal's spool)
    and the broker (when one is configured) answer, each within READINESS_CHECK_TIMEOUT_SECONDS. 200 with each
    check's status, else a 503 problem."""
    checks: dict[str, Callable[[], str | None]] = {
        "database": lambda: _check_database("default"),
        "journal": _check_journal,
    }
    if settings.CELERY_BROKER_URL and not settings.CELERY_TASK_ALWAYS_EAGER:
        checks["broker"] = _check_broker
    results: dict[str, dict[str, object]] = {}
    for name, check in checks.items():
        started = time.monotonic()
        try:
            status = check()
        except Exception as exc:
            logger.warning("readiness check %s failed: %s", name, exc)
            results[name] = {"status": "failed", "error": type(exc).__name__}
        else:
            results[name] = {"status": status or "ok"}
        results[name]["seconds"] = round(time.monotonic() - started, 3)
    failed = [name for name, result in results.items() if result["status"] == "failed"]
    if not failed:
        return JsonResponse({"status": "ok", "checks": results})
    body = problem_body(
        status_code=503,
        code=NOT_READY[0],
        title=NOT_READY[1],
        detail=f"Failed: {', '.join(failed)}.",
        checks=results,
    )
    response = JsonResponse(body, status=503, content_type=PROBLEM_CONTENT_TYPE)
    response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, for a scraper holding METRICS_TOKEN; absent (404) when none is configured."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = playpay_metrics.exposition()
    return HttpResponse(body, content_type=content_type)


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        return problem_json(404, "not_found", "No such resource", f"Nothing at {request.path}.")
    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    # Django calls this while handling the exception: an unreachable database or a cancelled statement
    # (the timeouts in settings) is an outage to retry, not a bug.
    if is_database_outage(sys.exc_info()[1]):
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse(
                database_unavailable_problem(), status=503, content_type=PROBLEM_CONTENT_TYPE
            )
        else:
            response = HttpResponse(
                "PlayPay is temporarily unavailable; try again in a few seconds.\n",
                status=503,
                content_type="text/plain",
            )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    if request.path.startswith("/api/"):
        return problem_json(
            500, "internal_error", "Internal error", "Something went wrong on our side; it has been logged."
        )
    return server_error(request)
