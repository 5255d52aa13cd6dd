"""Runs a create request under its Idempotency-Key: replays, conflicts and storing the response."""

import json
import uuid
from collections.abc import Callable
from typing import Any

from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from payments.errors import IdempotencyRequestInFlight
from payments.models import App
from payments.services.idempotency import (
    IdempotentRequest,
    KeyAlreadyClaimed,
    complete_key,
    find_previous,
    fingerprint,
    parse_key,
)
from playpay.errors import DomainError

REPLAYED_HEADER = "Idempotent-Replayed"

Outcome = tuple[int, Any]


def idempotent_request(request: Request, app: App, render: Callable[[Any], Outcome]) -> IdempotentRequest:
    """Parse the Idempotency-Key header (400 when missing or malformed).

    `render` is how the endpoint answers with the resource it creates.
    """
    key = parse_key(request.headers.get("Idempotency-Key"))

    def render_json(resource: Any) -> Outcome:
        status, body = render(resource)
        return status, _jsonable(body)

    return IdempotentRequest(
        app=app,
        key=key,
        fingerprint=fingerprint(method=request.method or "", path=request.path, body=request.data),
        render=render_json,
    )


def run_idempotent(
    idem: IdempotentRequest,
    perform: Callable[[IdempotentRequest], Any],
    load: Callable[[uuid.UUID], Any],
) -> Response:
    """`perform` creates the resource (claiming the key in its transaction) and returns it.

    `load` reads a resource whose creating request died before storing its response.
    """
    assert idem.render is not None
    # The key is claimed inside `perform`; an earlier request with the key is looked up only when
    # the claim (or a validation that a replay skips) fails, which keeps the common path short.
    try:
        resource = perform(idem)
    except KeyAlreadyClaimed:
        previous = find_previous(idem)
        if previous is None:  # the other request rolled back in between; the client may retry
            raise IdempotencyRequestInFlight(retry_after=1) from None
    except DomainError:
        previous = find_previous(idem)
        if previous is None:
            raise
    else:
        if idem.stored is not None:  # stored with the claim, in the creating transaction
            status, body = idem.stored
        else:
            status, body = idem.render(resource)
            complete_key(idem, status=status, body=body)
        return Response(body, status=status)

    if previous.state == previous.State.COMPLETED:
        status, body = previous.response_status or 200, previous.response_body
    else:
        assert previous.resource_id is not None
        status, body = idem.render(load(previous.resource_id))
        complete_key(idem, status=status, body=body)
    return Response(body, status=status, headers={REPLAYED_HEADER: "true"})


def _jsonable(body: Any) -> Any:
    return json.loads(JSONRenderer().render(body))
