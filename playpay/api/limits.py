"""The API's one request size limit: a larger body is answered 413 problem+json before any view runs.

The limit is Django's DATA_UPLOAD_MAX_MEMORY_SIZE (settings.MAX_REQUEST_BYTES), so that Django
itself never answers with its own HTML 400 for a body it would not read.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from playpay.api.problems import request_too_large


def declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class RequestSizeLimitMiddleware:
    """After the journal's middleware, so that a refused request is journaled too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request.path.startswith("/api/") and limit is not None and declared_length(request) > limit:
            return request_too_large(limit)
        return self.get_response(request)
