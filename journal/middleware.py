"""Journals every API request and its response (app, endpoint, status, latency, idempotency key)."""

import json
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from journal.services import Kind, new_request_id, record
from playpay.logging import bind
from playpay.middleware import request_id_of

BODY_LIMIT = 16_384


def _body(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw[:BODY_LIMIT].decode("utf-8", "replace")
    try:
        return json.loads(text)
    except RecursionError:
        # Nested too deep to parse: its secrets could not be found by key, so its text is not kept.
        return f"[a JSON body of {len(raw)} bytes, nested too deep to read: not kept]"
    except ValueError:  # not JSON, or cut at the limit
        return text


def _request_body(request: HttpRequest) -> Any:
    try:
        return _body(request.body)
    except RequestDataTooBig:  # answered 413 further in (playpay.api.limits); the record says why
        return f"[a body of {request.META.get('CONTENT_LENGTH')} bytes, over the request size limit: not read]"


def _ids_in_url(request: HttpRequest, kwargs: dict[str, Any]) -> tuple[Any, str]:
    """The payment id (the API's `<id>`) and the carrier (a callback's `<slug>`) that the URL names."""
    return kwargs.get("id") or "", kwargs.get("slug", "") if "/carriers/" in request.path else ""


class JournalMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/api/v1/"):
            return self.get_response(request)
        request_id = request_id_of(request) or new_request_id()
        request_body = _request_body(request)
        started = time.monotonic()
        response = self.get_response(request)
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        # DRF responses still hold their data: no need to parse what was just rendered.
        response_body = getattr(response, "data", None)
        if response_body is None and not response.streaming:
            response_body = _body(response.content)
        url_payment_id, carrier = _ids_in_url(request, getattr(request.resolver_match, "kwargs", {}) or {})
        payment_id = url_payment_id or (response_body.get("id") if isinstance(response_body, dict) else "") or ""
        msisdn = request_body.get("msisdn", "") if isinstance(request_body, dict) else ""
        record(
            Kind.CARRIER_CALLBACK if carrier else Kind.API_REQUEST,
            {
                "method": request.method,
                "endpoint": request.path,
                "status": response.status_code,
                "latency_ms": latency_ms,
                "idempotency_key": request.headers.get("Idempotency-Key", ""),
                "request_headers": {k: v for k, v in request.headers.items() if k.lower() not in ("cookie",)},
                "request": request_body,
                "response": response_body,
            },
            msisdn=msisdn if isinstance(msisdn, str) else "",
            request_id=request_id,
            app=request.META.get("playpay.app", ""),
            carrier=carrier,
            payment_id=str(payment_id) if len(str(payment_id)) == 36 else "",
            journey_id=request_body.get("journey_id", "") if isinstance(request_body, dict) else "",
            user_ref=str(request_body.get("user_ref", "")) if isinstance(request_body, dict) else "",
        )
        return response

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: dict[str, Any]
    ) -> None:
        """Log lines made while an API request about one payment (or from one carrier) is handled say so."""
        if not request.path.startswith("/api/v1/"):
            return
        payment_id, carrier = _ids_in_url(request, view_kwargs)
        bind(payment_id=str(payment_id) if len(str(payment_id)) == 36 else "", carrier=carrier)
