"""What the API refuses before any view runs, as problem+json: a body over the one request size limit
(413), and query parameters holding what no text column can (a NUL character: 400). The other pages (the
admin's searches and filters) refuse such a query too, with a plain 400.

The size limit is Django's DATA_UPLOAD_MAX_MEMORY_SIZE (settings.MAX_REQUEST_BYTES), so that Django
itself never answers with its own HTML 400 for a body it would not read. Bodies' values are checked
by the API's JSON parser (playpay.api.parsers).
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.html import escape

from playpay.api.parsers import UNSTORABLE_TEXT
from playpay.api.problems import query_value_problem, request_too_large
from playpay.storable import has_unstorable_text


def declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class RequestLimitsMiddleware:
    """After the journal's middleware, so that a refused request is journaled too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request.path.startswith("/api/") and limit is not None and declared_length(request) > limit:
            return request_too_large(limit)
        unstorable = sorted(
            name
            for name, values in request.GET.lists()
            if has_unstorable_text(name) or any(has_unstorable_text(value) for value in values)
        )
        if unstorable and request.path.startswith("/api/"):
            return query_value_problem(unstorable, UNSTORABLE_TEXT)
        if unstorable:
            # The admin's searches and filters compare the query with text columns, which PostgreSQL refuses
            # for such text: refused here, for every page, rather than a 500 from the database.
            # Plain text, the names escaped too: a query's own names are never sent back as markup.
            return HttpResponseBadRequest(
                escape(
                    f"Query parameter {', '.join(unstorable)}: a NUL character or a lone UTF-16 surrogate "
                    "matches nothing."
                ),
                content_type="text/plain; charset=utf-8",
            )
        return self.get_response(request)
