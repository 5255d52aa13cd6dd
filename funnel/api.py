"""POST /api/v1/funnel/events/: one event, or a batch of up to 1,000, validated one by one.

Events are checked by plain Python (a DRF serializer per event would cost more than storing the
event); the rules and the error messages are the ones the serializers below document.
"""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from funnel.services import MAX_BATCH, GameEvent, ingest_events
from playpay.api.parsers import ItemwiseJSONParser, UnacceptableJsonValue, json_value_errors
from playpay.api.problems import BODY_PROBLEMS
from playpay.api.serializers import MAX_METADATA_BYTES, StrictSerializer, unknown_field_errors
from tenants.auth import request_app

FUTURE_TOLERANCE = timedelta(minutes=5)
# No game event predates this; earlier times are clock or client errors (and year 1 in a zone east of
# UTC is not even a UTC date).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
ID_MAX_LENGTH = 128
STEP_MAX_LENGTH = 64


class FunnelEventSerializer(StrictSerializer):
    """The rules of one event: `validate_event` applies them; the OpenAPI schema states them (EVENT)."""

    event_id = serializers.CharField(
        max_length=ID_MAX_LENGTH, help_text="Yours, unique per event: a repeat is ignored."
    )
    journey_id = serializers.CharField(max_length=ID_MAX_LENGTH)
    step = serializers.SlugField(
        max_length=STEP_MAX_LENGTH, help_text="e.g. store_opened, item_selected, msisdn_entered"
    )
    occurred_at = serializers.DateTimeField(help_text="When it happened (ISO 8601 with a time zone).")
    user_ref = serializers.CharField(max_length=ID_MAX_LENGTH, required=False, default="")
    properties = serializers.DictField(required=False, default=dict, help_text="Up to 4 KB of your own JSON.")


# The body: a batch, or one event (an object without `events`). Events are objects judged one by one by
# the rules of FunnelEventSerializer: one that breaks them is answered 200 with its errors in `rejected`.
EVENT = {
    "type": "object",
    "description": "One event: event_id and journey_id (1-128 characters), step (a slug, 1-64), occurred_at "
    "(ISO 8601, from 2000 to 5 minutes ahead), user_ref (up to 128), properties (an object, up to 4 KB of "
    "JSON). An event breaking these rules is reported in `rejected`, not refused.",
}
REQUEST_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "events": {
                    "type": "array",
                    "items": {"description": f"{EVENT['description']} Any other value is reported in `rejected` too."},
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                }
            },
            "required": ["events"],
            "additionalProperties": False,
        },
        {**EVENT, "not": {"required": ["events"]}},
    ]
}

IngestResultSerializer = inline_serializer(
    "FunnelIngestResult",
    {
        "accepted": serializers.IntegerField(),
        "duplicates": serializers.IntegerField(),
        "rejected": inline_serializer(
            "FunnelRejectedEvent",
            {
                "index": serializers.IntegerField(),
                "errors": serializers.DictField(
                    child=serializers.ListField(child=serializers.CharField()),
                    help_text="By field of FunnelEvent (`non_field_errors` when the event as a whole).",
                ),
            },
            many=True,
        ),
    },
)


FIELDS = frozenset(FunnelEventSerializer._declared_fields)
_SLUG = re.compile(r"[-a-zA-Z0-9_]+\Z")
_MISSING = object()
REQUIRED = "This field is required."
DATETIME_FORMAT = (
    "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
)


def _text(
    raw: dict[str, Any], name: str, max_length: int, errors: dict[str, list[str]], *, required: bool = True
) -> str:
    value = raw.get(name, _MISSING)
    if value is _MISSING or (value == "" and not required):
        if required:
            errors[name] = [REQUIRED]
        return ""
    if isinstance(value, str):
        value = value.strip()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    else:
        errors[name] = ["This field may not be null." if value is None else "Not a valid string."]
        return ""
    if not value and required:
        errors[name] = ["This field may not be blank."]
    elif len(value) > max_length:
        errors[name] = [f"Ensure this field has no more than {max_length} characters."]
    return str(value)


def _moment(value: Any, latest: datetime, errors: dict[str, list[str]]) -> datetime | None:
    if value is _MISSING:
        errors["occurred_at"] = [REQUIRED]
        return None
    parsed = None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = parse_datetime(value)
    if parsed is None:
        errors["occurred_at"] = [DATETIME_FORMAT]
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # as DRF does with USE_TZ and TIME_ZONE = "UTC"
    if parsed > latest:
        errors["occurred_at"] = ["In the future."]
        return None
    if parsed < EARLIEST:
        errors["occurred_at"] = [f"Before {EARLIEST.date().isoformat()}."]
        return None
    return parsed


def _unacceptable_values(raw: dict[str, Any]) -> dict[str, list[str]]:
    """NaN/Infinity, NUL and lone surrogates anywhere in the event (this view's parser leaves them to
    be refused event by event), by field; keys that are no field of ours are not echoed."""
    errors: dict[str, list[str]] = {}
    for error in json_value_errors(raw):
        parts = error["pointer"].split("/")
        field = parts[1] if len(parts) > 1 and parts[1] in FIELDS else "non_field_errors"
        where = "/".join(parts[2:]) if field != "non_field_errors" else ""
        errors.setdefault(field, []).append(f"At {where}: {error['detail']}" if where else error["detail"])
    return errors


def validate_event(raw: Any, latest: datetime) -> GameEvent | dict[str, list[str]]:
    """The event, or its errors by field (as a serializer would report them)."""
    if not isinstance(raw, dict):
        return {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {type(raw).__name__}."]}
    unacceptable = _unacceptable_values(raw)
    if unacceptable:
        return unacceptable
    unknown = unknown_field_errors(raw, FIELDS)
    if unknown:
        return unknown
    errors: dict[str, list[str]] = {}
    event_id = _text(raw, "event_id", ID_MAX_LENGTH, errors)
    journey_id = _text(raw, "journey_id", ID_MAX_LENGTH, errors)
    step = _text(raw, "step", STEP_MAX_LENGTH, errors)
    if "step" not in errors and not _SLUG.match(step):
        errors["step"] = ['Enter a valid "slug" consisting of letters, numbers, underscores or hyphens.']
    occurred_at = _moment(raw.get("occurred_at", _MISSING), latest, errors)
    user_ref = _text(raw, "user_ref", ID_MAX_LENGTH, errors, required=False)
    properties = raw.get("properties", _MISSING)
    properties_json = "{}"
    if properties is _MISSING:
        properties = {}
    elif not isinstance(properties, dict):
        errors["properties"] = [f'Expected a dictionary of items but got type "{type(properties).__name__}".']
    else:
        properties_json = json.dumps(properties)
        if len(properties_json) > MAX_METADATA_BYTES:
            errors["properties"] = [f"At most {MAX_METADATA_BYTES} bytes of JSON."]
    if errors or occurred_at is None:
        return errors
    return GameEvent(event_id, journey_id, step, occurred_at, user_ref, properties, properties_json)


class FunnelEventsView(APIView):
    parser_classes = [ItemwiseJSONParser]  # a bad value costs its event only, not the batch

    @extend_schema(
        request={"application/json": REQUEST_SCHEMA},
        responses={
            200: IngestResultSerializer,
            **BODY_PROBLEMS,
        },
        summary="Send funnel events (one, or a batch of up to 1,000)",
    )
    def post(self, request: Request) -> Response:
        app = request_app(request)
        assert app is not None
        if request.stream is None:
            raise ParseError("Send one event or a batch as a JSON object.")
        payload = request.data
        if not isinstance(payload, dict):
            raise serializers.ValidationError({"non_field_errors": ["Send one event or a batch as a JSON object."]})
        if isinstance(payload, dict) and "events" in payload:
            unacceptable = json_value_errors({k: v for k, v in payload.items() if k != "events"})
            if unacceptable:
                raise UnacceptableJsonValue(unacceptable)
            if len(payload) > 1:
                raise serializers.ValidationError(
                    {k: ["This field is not accepted."] for k in payload if k != "events"}
                )
            raw_events = payload["events"]
            if not isinstance(raw_events, list):
                raise serializers.ValidationError({"events": ["Expected a list of items."]})
            if not 1 <= len(raw_events) <= MAX_BATCH:
                raise serializers.ValidationError({"events": [f"Send between 1 and {MAX_BATCH} events."]})
        else:
            raw_events = [payload]
        latest = timezone.now() + FUTURE_TOLERANCE
        valid: list[GameEvent] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_events):
            event = validate_event(raw, latest)
            if isinstance(event, GameEvent):
                valid.append(event)
            else:
                rejected.append({"index": index, "errors": event})
        result = ingest_events(app=app, events=valid)
        return Response({"accepted": result.accepted, "duplicates": result.duplicates, "rejected": rejected})
