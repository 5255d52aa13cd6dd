"""Per-request observability: the request id and log context, and the HTTP metrics."""

import re
import time
import uuid
from collections.abc import Callable

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

from playpay.logging import close_scope, open_scope
from playpay.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

# Where the request's id is kept for the rest of the stack (the journal records it).
REQUEST_ID_META = "playpay.request_id"
# A caller's own X-Request-Id is kept when it is a plain token; anything else gets a fresh id.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(route: str) -> str:
    """A route's label: `api/v1/payments/(?P<id>[0-9a-f-]{36})/$` (a router's regex) -> `/api/v1/payments/<id>/`."""
    label, i = [], 0
    while i < len(route):
        if route.startswith("(?P<", i):
            end = route.index(">", i)
            label.append("<" + route[i + 4 : end] + ">")
            depth, i = 1, end + 1
            while i < len(route) and depth:
                depth += {"(": 1, ")": -1}.get(route[i], 0) if route[i - 1] != "\\" else 0
                i += 1
            continue
        if route[i] not in "^$":
            label.append(route[i])
        i += 1
    return "/" + "".join(label)


def request_id_of(request: HttpRequest) -> str:
    return str(request.META.get(REQUEST_ID_META, ""))


class RequestContextMiddleware:
    """Gives every request an id (the caller's X-Request-Id, or a new one), answered in X-Request-Id
    and carried by every log line made while it is handled."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if _CALLER_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        request.META[REQUEST_ID_META] = request_id
        open_scope(request_id=request_id)
        response = self.get_response(request)
        response["X-Request-Id"] = request_id
        return response


def _end_request_scope(**_: object) -> None:
    close_scope()


# The scope ends when the server closes the response (after Django's own log line about it).
request_finished.connect(_end_request_scope, dispatch_uid="playpay.logging.close_scope")


class MetricsMiddleware:
    """Counts and times every request by its route pattern (never the raw path: ids would explode it)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        match = request.resolver_match
        route = route_label(match.route) if match is not None else "<unmatched>"
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUESTS.labels(method=method, route=route, status=str(response.status_code)).inc()
        HTTP_REQUEST_SECONDS.labels(method=method, route=route).observe(elapsed)
        return response
