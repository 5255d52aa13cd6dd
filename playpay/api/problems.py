"""RFC 9457 problem+json: the one place where errors become HTTP responses."""

import logging
import math
import sqlite3
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import OperationalError
from django.http import Http404, JsonResponse
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

from playpay.api.parsers import JsonTooDeep, RequestTooLarge, UnacceptableJsonValue, json_pointer
from playpay.errors import DomainError

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "/api/problems/"

# The RFC 9457 body every error has (built here from `problem_body`; documented for the schema only).
ProblemSerializer = inline_serializer(
    "Problem",
    {
        "type": serializers.CharField(help_text="`/api/problems/<code>`"),
        "title": serializers.CharField(),
        "status": serializers.IntegerField(),
        "detail": serializers.CharField(),
        "code": serializers.CharField(help_text="Stable; see /api/problems/ for every code."),
        "instance": serializers.CharField(required=False),
        "errors": inline_serializer(
            "ProblemError",
            {
                "pointer": serializers.CharField(help_text="JSON pointer (RFC 6901), e.g. `#/metadata/score`."),
                "detail": serializers.CharField(),
            },
            many=True,
            required=False,
            help_text="Per field, when fields are at fault.",
        ),
    },
)

# For the OpenAPI schema: an error response, and the ones every operation that reads a body can give.
PROBLEM = OpenApiResponse(ProblemSerializer, description="RFC 9457 problem+json; see /api/problems/ for the codes.")
BODY_PROBLEMS = {
    400: OpenApiResponse(
        ProblemSerializer,
        description="`validation_error`, `malformed_request`, `invalid_json_value` (NaN/Infinity, NUL or a lone "
        "surrogate; `errors` names the field), `json_too_deep`.",
    ),
    413: OpenApiResponse(ProblemSerializer, description="`request_too_large`: the body is over the size limit."),
    415: OpenApiResponse(ProblemSerializer, description="`unsupported_media_type`: send `application/json`."),
}
LIST_PROBLEMS = {
    400: OpenApiResponse(
        ProblemSerializer, description="`validation_error`: a filter, `limit` or `offset` out of range."
    )
}

# DRF's own exceptions, by class, to a stable code.
_DRF_CODES: dict[type[exceptions.APIException], tuple[str, str]] = {
    exceptions.ValidationError: ("validation_error", "The request is not valid"),
    # Before ParseError, whose subclasses they are.
    JsonTooDeep: ("json_too_deep", "The JSON is nested too deep"),
    UnacceptableJsonValue: ("invalid_json_value", "The JSON holds a value the API does not accept"),
    RequestTooLarge: ("request_too_large", "The request body is too large"),
    exceptions.ParseError: ("malformed_request", "The request body is not valid JSON"),
    exceptions.AuthenticationFailed: ("authentication_failed", "Authentication failed"),
    exceptions.NotAuthenticated: ("not_authenticated", "Authentication is required"),
    exceptions.PermissionDenied: ("permission_denied", "You may not do this"),
    exceptions.NotFound: ("not_found", "No such resource"),
    exceptions.MethodNotAllowed: ("method_not_allowed", "This method is not allowed here"),
    exceptions.NotAcceptable: ("not_acceptable", "No acceptable representation"),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", "Send application/json"),
    exceptions.Throttled: ("rate_limited", "Too many requests"),
}


# The database is unreachable or cancelled a statement (connect or statement timeout): the request's
# transaction rolled back; the client retries after this many seconds. Also answered by
# playpay.views.handler500 outside DRF.
DATABASE_UNAVAILABLE = ("database_unavailable", "The service is temporarily unavailable")
DATABASE_RETRY_AFTER_SECONDS = 5
# /readyz when a dependency does not answer (playpay.views.readiness).
NOT_READY = ("not_ready", "Not ready")


# SQLSTATE classes of an outage rather than a bug: connection exceptions, operator intervention
# (query_canceled by a timeout, admin_shutdown, cannot_connect_now), insufficient resources.
_OUTAGE_SQLSTATE_PREFIXES = ("08", "57", "53")


def is_database_outage(exc: BaseException | None) -> bool:
    """Whether `exc` says the database is unreachable, stalled or overloaded (503, retry), not a bug (500).

    A lost or refused connection carries no SQLSTATE; a statement timeout is 57014. A deadlock, a
    serialization failure or a missing table are errors of ours and stay 500s.
    """
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    if isinstance(cause, sqlite3.OperationalError):  # the embedded default: only a lock held too long
        return "database is locked" in str(cause)
    sqlstate = getattr(cause, "sqlstate", None)
    return sqlstate is None or str(sqlstate).startswith(_OUTAGE_SQLSTATE_PREFIXES)


def database_unavailable_problem() -> dict[str, Any]:
    code, title = DATABASE_UNAVAILABLE
    detail = f"The database did not answer in time; retry in {DATABASE_RETRY_AFTER_SECONDS} seconds."
    return problem_body(status_code=503, code=code, title=title, detail=detail)


def problem_catalogue() -> list[dict[str, Any]]:
    """Every problem type the API can return, for the docs page at /api/problems/."""
    from playpay.errors import all_domain_errors

    rows = [{"code": code, "title": title, "status": cls.status_code} for cls, (code, title) in _DRF_CODES.items()]
    rows += [{"code": e.code, "title": e.title, "status": e.http_status} for e in all_domain_errors()]
    rows += [{"code": code, "title": title, "status": 503} for code, title in (DATABASE_UNAVAILABLE, NOT_READY)]
    return sorted(rows, key=lambda row: str(row["code"]))


def problem_body(*, status_code: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "type": f"{PROBLEM_BASE}{code}",
        "title": title,
        "status": status_code,
        "detail": detail,
        "code": code,
    }


def problem_response(
    *, status_code: int, code: str, title: str, detail: str, instance: str = "", **extra: Any
) -> Response:
    """A problem for DRF views and the DRF exception handler."""
    body = problem_body(status_code=status_code, code=code, title=title, detail=detail, **extra)
    if instance:
        body["instance"] = instance
    return Response(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)


def problem_json(status_code: int, code: str, title: str, detail: str) -> JsonResponse:
    """A problem for plain Django views (error handlers, the staff dashboard's endpoints)."""
    body = problem_body(status_code=status_code, code=code, title=title, detail=detail)
    return JsonResponse(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)


def request_too_large(limit: int) -> JsonResponse:
    """413 for a body over the size limit (playpay.api.limits), before any view runs."""
    code, title = _DRF_CODES[RequestTooLarge]
    return problem_json(413, code, title, f"The body is larger than {limit} bytes; send at most that.")


def query_value_problem(names: list[str], detail: str) -> JsonResponse:
    """400 for query parameters no database text can hold (playpay.api.limits), before any view runs."""
    code, title = _DRF_CODES[exceptions.ValidationError]
    errors = [{"pointer": json_pointer((name,)), "detail": detail} for name in names]
    body = problem_body(
        status_code=400, code=code, title=title, detail="One or more fields are not valid; see `errors`.", errors=errors
    )
    return JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)


def _pointer_errors(detail: Any, path: str = "#") -> list[dict[str, str]]:
    """Flatten DRF's nested validation detail into RFC 9457 `errors` with JSON pointers."""
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for field, value in detail.items():
            sub = path if field == "non_field_errors" else f"{path}/{field}"
            out += _pointer_errors(value, sub)
        return out
    if isinstance(detail, list):
        if all(isinstance(item, (str, exceptions.ErrorDetail)) for item in detail):
            return [{"pointer": path, "detail": str(item)} for item in detail]
        out = []
        for index, item in enumerate(detail):
            out += _pointer_errors(item, f"{path}/{index}")
        return out
    return [{"pointer": path, "detail": str(detail)}]


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    request = context.get("request")
    instance = request.get_full_path() if request is not None else ""

    if isinstance(exc, DomainError):
        response = problem_response(
            status_code=exc.http_status,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            instance=instance,
            **exc.extra,
        )
        if exc.http_status in (status.HTTP_409_CONFLICT, status.HTTP_503_SERVICE_UNAVAILABLE) and (
            "retry_after" in exc.extra
        ):
            response["Retry-After"] = str(exc.extra["retry_after"])
        return response

    if is_database_outage(exc):  # unreachable, or a statement cancelled by its timeout
        logger.warning("database unavailable: %s", exc)
        set_rollback()
        response = Response(database_unavailable_problem(), status=503, content_type=PROBLEM_CONTENT_TYPE)
        response.data["instance"] = instance
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 handling and logging take over

    base = exception_handler(exc, context)  # keeps DRF's headers (WWW-Authenticate, Retry-After)
    code, title = next(
        (value for cls, value in _DRF_CODES.items() if isinstance(exc, cls)), ("error", "The request failed")
    )
    extra: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        detail = "One or more fields are not valid; see `errors`."
        extra["errors"] = _pointer_errors(exc.detail)
    elif isinstance(exc, UnacceptableJsonValue):
        detail = str(exc.detail)
        extra["errors"] = exc.errors
    else:
        detail = str(exc.detail)
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled) and wait is not None:
        wait = math.ceil(wait)
        detail = f"Rate limit exceeded; retry in {wait} seconds."
    response = problem_response(
        status_code=exc.status_code, code=code, title=title, detail=detail, instance=instance, **extra
    )
    if base is not None:
        for header, value in base.items():
            response[header] = value
        response["Content-Type"] = PROBLEM_CONTENT_TYPE
    return response
