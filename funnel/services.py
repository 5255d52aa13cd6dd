"""Funnel events: ingestion from game backends (batches, de-duplicated, validated per event) and
the steps the platform emits itself from the payment and subscription flows.

De-duplication: every stored event first claims its (app, event_id) in `FunnelEventKey` with
INSERT ... ON CONFLICT DO NOTHING, in the same transaction; an event whose claim finds the key taken
(sent before, in whatever partition it went, or by a concurrent batch) is not stored.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Least
from django.utils import timezone

from funnel.models import FunnelEvent, Journey
from payments.events import PaymentStatusChanged
from payments.models import Payment
from subscriptions.events import SubscriptionStatusChanged
from subscriptions.models import SubscriptionStatus
from tenants.models import App

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
# A subscription's opt-in -> the steps the platform emits for it (its payment's steps come with them).
SUBSCRIPTION_STEPS = {
    "started": "subscription_opt_in_started",
    "activated": "subscription_activated",
    "failed": "subscription_opt_in_failed",
}


class GameEvent(NamedTuple):
    event_id: str
    journey_id: str
    step: str
    occurred_at: datetime
    user_ref: str = ""
    properties: dict[str, Any] | None = None
    # The properties as JSON, when the caller has it already (the API does, from its size check).
    properties_json: str | None = None


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


# PostgreSQL: the whole batch in one statement. Keys are claimed and journeys upserted in a fixed
# order (by id), so that concurrent batches that share some wait for each other instead of deadlocking.
INGEST_SQL = """
WITH batch AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::text[])
        AS b (event_id, journey_id, step, occurred_at, user_ref, properties)
),
claimed AS (
    INSERT INTO funnel_funneleventkey (app_id, event_id)
    SELECT %s, event_id FROM batch ORDER BY event_id
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
new AS (
    SELECT batch.* FROM batch JOIN claimed USING (event_id)
),
stored AS (
    INSERT INTO funnel_funnelevent
        (app_id, journey_id, event_id, step, occurred_at, received_at, source, error_code, properties)
    SELECT %s, journey_id, event_id, step, occurred_at, now(), 'game', '', properties::jsonb FROM new
    RETURNING 1
),
journeys AS (
    INSERT INTO funnel_journey
        (app_id, journey_id, user_ref, started_at, carrier, country, price_point, flow, outcome, updated_at)
    SELECT %s, journey_id, max(user_ref), min(occurred_at), '', '', '', '', '', now()
    FROM new GROUP BY journey_id ORDER BY journey_id
    ON CONFLICT (app_id, journey_id) DO UPDATE
        SET started_at = least(funnel_journey.started_at, excluded.started_at),
            user_ref = CASE WHEN funnel_journey.user_ref = '' THEN excluded.user_ref ELSE funnel_journey.user_ref END,
            updated_at = excluded.updated_at
        WHERE excluded.started_at < funnel_journey.started_at
            OR (funnel_journey.user_ref = '' AND excluded.user_ref <> '')
    RETURNING 1
)
SELECT count(*) FROM stored
"""


def ingest_events(*, app: App, events: Sequence[GameEvent]) -> IngestResult:
    """Keep the new events of a validated batch; repeats of an event id (in the batch or sent before)
    are ignored."""
    unique: dict[str, GameEvent] = {}
    for event in events:
        unique.setdefault(event.event_id, event)  # a repeat inside the batch counts once
    if not unique:
        return IngestResult(accepted=0, duplicates=len(events))
    if connection.vendor == "postgresql":
        accepted = _ingest_postgresql(app.pk, list(unique.values()))
    else:
        accepted = _ingest_portable(app, list(unique.values()))
    return IngestResult(accepted=accepted, duplicates=len(events) - accepted)


def _ingest_postgresql(app_id: int, events: list[GameEvent]) -> int:
    import psycopg

    params = (
        [e.event_id for e in events],
        [e.journey_id for e in events],
        [e.step for e in events],
        [e.occurred_at for e in events],
        [e.user_ref for e in events],
        [e.properties_json if e.properties_json is not None else json.dumps(e.properties or {}) for e in events],
        app_id,
        app_id,
        app_id,
    )
    connection.ensure_connection()
    # Django's cursors bind parameters on the client (they would spell the arrays out as SQL text, at
    # some 13 ms of Python per 1,000 events); a plain psycopg cursor sends them bound, the arrays in
    # binary (%b), and psycopg prepares the statement after a few runs.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(INGEST_SQL, params)
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def claim_event_ids(app_id: int, event_ids: Iterable[str]) -> set[str]:
    """Claim these event ids for the app; returns those that were free (the others were seen before)."""
    ids = sorted(set(event_ids))
    if not ids:
        return set()
    values = ", ".join(["(%s, %s)"] * len(ids))
    params: list[Any] = []
    for event_id in ids:
        params += [app_id, event_id]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO funnel_funneleventkey (app_id, event_id) VALUES {values} "  # noqa: S608 - placeholders only
            "ON CONFLICT DO NOTHING RETURNING event_id",
            params,
        )
        return {row[0] for row in cursor.fetchall()}


def _ingest_portable(app: App, events: list[GameEvent]) -> int:
    """Any database with INSERT ... ON CONFLICT ... RETURNING (SQLite 3.35+): the ORM does the rest."""
    with transaction.atomic():
        claimed = claim_event_ids(app.pk, (e.event_id for e in events))
        new = [e for e in events if e.event_id in claimed]
        FunnelEvent.objects.bulk_create(
            [
                FunnelEvent(
                    app=app,
                    journey_id=e.journey_id,
                    event_id=e.event_id,
                    step=e.step,
                    occurred_at=e.occurred_at,
                    source=FunnelEvent.Source.GAME,
                    properties=e.properties or {},
                )
                for e in new
            ]
        )
        _touch_journeys(app, [(e.journey_id, e.occurred_at, e.user_ref) for e in new])
    return len(new)


def _touch_journeys(app: App, seen: list[tuple[str, datetime, str]]) -> None:
    """Create missing journeys; a late event moves a journey's start earlier; a journey without a
    player takes the one an event names."""
    earliest: dict[str, datetime] = {}
    players: dict[str, str] = {}
    for journey_id, occurred_at, user_ref in seen:
        if journey_id not in earliest or occurred_at < earliest[journey_id]:
            earliest[journey_id] = occurred_at
        if user_ref:
            players[journey_id] = max(user_ref, players.get(journey_id, ""))
    Journey.objects.bulk_create(
        [
            Journey(app=app, journey_id=j, started_at=t, user_ref=players.get(j, ""))
            for j, t in sorted(earliest.items())
        ],
        ignore_conflicts=True,
    )
    for journey_id, occurred_at in sorted(earliest.items()):
        Journey.objects.filter(app=app, journey_id=journey_id, started_at__gt=occurred_at).update(
            started_at=occurred_at, updated_at=timezone.now()
        )
        if journey_id in players:
            Journey.objects.filter(app=app, journey_id=journey_id, user_ref="").update(user_ref=players[journey_id])


def record_payment_step(event: PaymentStatusChanged) -> None:
    """Subscriber of payments' status changes: the platform's step, in the change's transaction."""
    record_platform_step(event.payment, event.to_status, occurred_at=event.occurred_at)


def record_platform_step(payment: Payment, status: str, *, occurred_at: datetime) -> None:
    """The platform's own step for a payment's new status, in its journey (if it has one)."""
    step = PLATFORM_STEPS.get(status)
    if not payment.journey_id or step is None:
        return
    journey_fields: dict[str, Any] = {
        "carrier": payment.carrier.slug,
        "country": payment.carrier.country_id,
        "price_point": payment.price_point.code,
        "flow": payment.flow,
    }
    if status in ("succeeded", "failed", "expired"):
        journey_fields["outcome"] = status
    _record_step(
        app_id=payment.app_id,
        journey_id=payment.journey_id,
        user_ref=payment.user_ref,
        event_id=f"platform:{payment.public_id}:{status}",
        step=step,
        occurred_at=occurred_at,
        error_code=payment.failure_code if status == "failed" else "",
        properties={"payment_id": str(payment.public_id)},
        journey_fields=journey_fields,
    )


def subscription_step(event: SubscriptionStatusChanged) -> str | None:
    """The platform's step for a subscription's status change: only its opt-in's (a journey is one visit)."""
    if not event.from_status:
        return SUBSCRIPTION_STEPS["started"]
    if event.from_status != SubscriptionStatus.PENDING_OPT_IN:
        return None
    if event.to_status == SubscriptionStatus.ACTIVE:
        return SUBSCRIPTION_STEPS["activated"]
    return SUBSCRIPTION_STEPS["failed"]  # expired (PIN, decline) or cancelled before it was confirmed


def record_subscription_step(event: SubscriptionStatusChanged) -> None:
    """Subscriber of subscriptions' status changes: the opt-in's step in the subscription's journey, if it has
    one, in the change's transaction. (Its payment's own steps come from the payment, in the same journey.)"""
    subscription = event.subscription
    step = subscription_step(event)
    if not subscription.journey_id or step is None:
        return
    _record_step(
        app_id=subscription.app_id,
        journey_id=subscription.journey_id,
        user_ref=subscription.user_ref,
        event_id=f"platform:subscription:{subscription.public_id}:{step}",
        step=step,
        occurred_at=event.occurred_at,
        error_code=(event.failure_code or event.to_status) if step == SUBSCRIPTION_STEPS["failed"] else "",
        properties={"subscription_id": str(subscription.public_id), "plan": subscription.plan.code},
        journey_fields={},
    )


def _record_step(
    *,
    app_id: int,
    journey_id: str,
    user_ref: str,
    event_id: str,
    step: str,
    occurred_at: datetime,
    error_code: str,
    properties: dict[str, Any],
    journey_fields: dict[str, Any],
) -> None:
    """Store one platform step (once per event id) and bring its journey up to date with `journey_fields`."""
    # Runs inside the state change's transaction (no savepoint of its own: this is on every transition).
    if claim_event_ids(app_id, [event_id]):
        FunnelEvent.objects.create(
            app_id=app_id,
            journey_id=journey_id,
            event_id=event_id,
            step=step,
            occurred_at=occurred_at,
            source=FunnelEvent.Source.PLATFORM,
            error_code=error_code,
            properties=properties,
        )
    fields: dict[str, Any] = {
        **journey_fields,
        # A journey starts at its earliest step, whichever arrived first.
        "started_at": Least(F("started_at"), Value(occurred_at)),
        # An update() leaves auto_now alone; the analytics shipping finds changed journeys by this time.
        "updated_at": timezone.now(),
    }
    updated = Journey.objects.filter(app_id=app_id, journey_id=journey_id).update(**fields)
    if not updated:
        Journey.objects.bulk_create(
            [
                Journey(
                    app_id=app_id,
                    journey_id=journey_id,
                    user_ref=user_ref,
                    **{**fields, "started_at": occurred_at},
                )
            ],
            ignore_conflicts=True,
        )
