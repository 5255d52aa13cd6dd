"""POST /api/v1/funnel/events/: one event, or a batch of up to 1,000, validated one by one."""

import json
from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from funnel.services import MAX_BATCH, GameEvent, ingest_events
from payments.api.serializers import MAX_METADATA_BYTES, StrictSerializer
from playpay.api.auth import request_app

FUTURE_TOLERANCE = timedelta(minutes=5)


class FunnelEventSerializer(StrictSerializer):
    event_id = serializers.CharField(max_length=128, help_text="Yours, unique per event: a repeat is ignored.")
    journey_id = serializers.CharField(max_length=128)
    step = serializers.SlugField(max_length=64, help_text="e.g. store_opened, item_selected, msisdn_entered")
    occurred_at = serializers.DateTimeField(help_text="When it happened (ISO 8601 with a time zone).")
    user_ref = serializers.CharField(max_length=128, required=False, default="")
    properties = serializers.DictField(required=False, default=dict)

    def validate_occurred_at(self, value: Any) -> Any:
        if value > timezone.now() + FUTURE_TOLERANCE:
            raise serializers.ValidationError("In the future.")
        return value

    def validate_properties(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"At most {MAX_METADATA_BYTES} bytes of JSON.")
        return value


class BatchSerializer(StrictSerializer):
    events = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=MAX_BATCH)


class FunnelEventsView(APIView):
    @extend_schema(
        request=BatchSerializer,
        responses={200: OpenApiResponse(description="{accepted, duplicates, rejected: [{index, errors}]}")},
        summary="Send funnel events (one, or a batch of up to 1,000)",
    )
    def post(self, request: Request) -> Response:
        app = request_app(request)
        assert app is not None
        payload = request.data
        raw_events = payload.get("events") if isinstance(payload, dict) and "events" in payload else [payload]
        batch = BatchSerializer(data={"events": raw_events})
        batch.is_valid(raise_exception=True)
        valid: list[GameEvent] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(batch.validated_data["events"]):
            event = FunnelEventSerializer(data=raw)
            if event.is_valid():
                valid.append(GameEvent(**event.validated_data))
            else:
                rejected.append({"index": index, "errors": event.errors})
        result = ingest_events(app=app, events=valid)
        return Response({"accepted": result.accepted, "duplicates": result.duplicates, "rejected": rejected})
