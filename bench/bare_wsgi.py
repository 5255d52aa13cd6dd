"""A WSGI application that reads the request and answers 201 at once: what gunicorn alone costs a request.

Served by `bench/payments_api.py` with the same gunicorn settings as PlayPay (gunicorn.conf.py, the same
workers and threads), as the reference for the stack's floor. It answers /healthz too, so that the
harness sees it ready.
"""

from collections.abc import Callable, Iterable
from typing import Any

ANSWER = b'{"status":"created"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("201 Created" if environ["REQUEST_METHOD"] == "POST" else "200 OK", HEADERS)
    return [ANSWER]
