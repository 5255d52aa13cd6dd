"""Project-level views: problem-type docs, health, and problem+json for API 404/500."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error

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
