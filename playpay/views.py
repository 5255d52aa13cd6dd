"""Project-level views: problem-type docs, health, metrics, and problem+json for API 404/500."""

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error

from playpay import metrics as playpay_metrics
from playpay.api.problems import problem_catalogue, problem_json


def problem_types(request: HttpRequest, code: str = "") -> JsonResponse:
    rows = problem_catalogue()
    if code:
        rows = [row for row in rows if row["code"] == code]
        if not rows:
            return problem_json(404, "not_found", "No such problem type", f"{code!r} is not a PlayPay problem type.")
        return JsonResponse(rows[0])
    return JsonResponse({"problem_types": rows})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


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
    if request.path.startswith("/api/"):
        return problem_json(
            500, "internal_error", "Internal error", "Something went wrong on our side; it has been logged."
        )
    return server_error(request)
