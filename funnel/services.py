"""Funnel events: ingestion from game backends (batches, de-duplicated, validated per event) and
the steps the platform emits itself from the payment flow."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction

from funnel.models import FunnelEvent, Journey
from payments.models import App, Payment

MAX_BATCH = 1000
# Payment status -> the funnel step the platform emits for it.
PLATFORM_STEPS = {
    "created": "payment_created",
    "pin_sent": "pin_sent",
    "pin_verified": "pin_verified",
    "succeeded": "charge_succeeded",
    "failed": "charge_failed",
    "expired": "pin_expired",
    "partially_refunded": "refunded",
    "refunded": "refunded",
    "reversed": "reversed",
}


@dataclass(frozen=True)
class GameEvent:
    event_id: str
    journey_id: str
    step: str
    occurred_at: datetime
    user_ref: str = ""
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


def ingest_events(*, app: App, events: Sequence[GameEvent]) -> IngestResult:
    """Keep the new events of a validated batch; repeats of an event id are ignored."""
    if not events:
        return IngestResult(accepted=0, duplicates=0)
    unique = {event.event_id: event for event in events}  # a repeat inside the batch counts once
    known = set(FunnelEvent.objects.filter(app=app, event_id__in=list(unique)).values_list("event_id", flat=True))
    new = [event for event_id, event in unique.items() if event_id not in known]
    with transaction.atomic():
        FunnelEvent.objects.bulk_create(
            [
                FunnelEvent(
                    app=app,
                    journey_id=event.journey_id,
                    event_id=event.event_id,
                    step=event.step,
                    occurred_at=event.occurred_at,
                    source=FunnelEvent.Source.GAME,
                    properties=event.properties,
                )
                for event in new
            ],
            ignore_conflicts=True,  # a concurrent batch with the same ids
        )
        _touch_journeys(app, [(e.journey_id, e.occurred_at, e.user_ref) for e in new])
    return IngestResult(accepted=len(new), duplicates=len(events) - len(new))


def _touch_journeys(app: App, seen: list[tuple[str, datetime, str]]) -> None:
    """Create missing journeys; a late event moves a journey's start earlier."""
    earliest: dict[str, tuple[datetime, str]] = {}
    for journey_id, occurred_at, user_ref in seen:
        if journey_id not in earliest or occurred_at < earliest[journey_id][0]:
            earliest[journey_id] = (occurred_at, user_ref)
    Journey.objects.bulk_create(
        [Journey(app=app, journey_id=j, started_at=t, user_ref=u) for j, (t, u) in earliest.items()],
        ignore_conflicts=True,
    )
    for journey_id, (occurred_at, _) in earliest.items():
        Journey.objects.filter(app=app, journey_id=journey_id, started_at__gt=occurred_at).update(
            started_at=occurred_at
        )


def record_platform_step(payment: Payment, status: str, *, occurred_at: datetime) -> None:
    """The platform's own step for a payment's new status, in its journey (if it has one)."""
    step = PLATFORM_STEPS.get(status)
    if not payment.journey_id or step is None:
        return
    FunnelEvent.objects.bulk_create(
        [
            FunnelEvent(
                app_id=payment.app_id,
                journey_id=payment.journey_id,
                event_id=f"platform:{payment.public_id}:{status}",
                step=step,
                occurred_at=occurred_at,
                source=FunnelEvent.Source.PLATFORM,
                error_code=payment.failure_code if status == "failed" else "",
                properties={"payment_id": str(payment.public_id)},
            )
        ],
        ignore_conflicts=True,
    )
    journey_fields = {
        "carrier": payment.carrier.slug,
        "country": payment.carrier.country_id,
        "price_point": payment.price_point.code,
        "flow": payment.flow,
    }
    if status in ("succeeded", "failed", "expired"):
        journey_fields["outcome"] = status
    updated = Journey.objects.filter(app_id=payment.app_id, journey_id=payment.journey_id).update(**journey_fields)
    if not updated:
        Journey.objects.bulk_create(
            [
                Journey(
                    app_id=payment.app_id,
                    journey_id=payment.journey_id,
                    user_ref=payment.user_ref,
                    started_at=occurred_at,
                    **journey_fields,
                )
            ],
            ignore_conflicts=True,
        )
