"""Webhooks to apps, following the Standard Webhooks specification.

Headers `webhook-id` (the same on every retry: the app's idempotency key),
`webhook-timestamp` (of the attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, one per active secret, space-separated, so that secrets can
be rotated without downtime). Retried with the specification's example schedule, which
spans a little over three days.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from journal.services import Kind, record
from payments.events import PaymentStatusChanged
from payments.models import Payment, WebhookAttempt, WebhookDelivery, WebhookSecret
from payments.services import outbox
from payments.services.state_machine import WEBHOOK_STATUSES
from playpay.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import App

logger = logging.getLogger(__name__)

QUEUE = "webhooks"
TIMEOUT_SECONDS = 15
# Delays after the first, immediate attempt (Standard Webhooks' example schedule).
RETRY_SCHEDULE = [
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
]
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret(*, app: App) -> str:
    """Create a webhook secret for `app`; older secrets stay valid for ROTATION_OVERLAP. Shown once."""
    raw = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with transaction.atomic():
        WebhookSecret.objects.filter(app=app, expires_at__isnull=True).update(
            expires_at=timezone.now() + ROTATION_OVERLAP
        )
        WebhookSecret.objects.create(app=app, secret_encrypted=encrypt_credentials({"secret": raw}))
    return raw


def _active_secrets(app: App) -> list[str]:
    rows = WebhookSecret.objects.filter(app=app).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    return [decrypt_credentials(row.secret_encrypted)["secret"] for row in rows]


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def payment_event(payment: Payment) -> dict[str, Any]:
    return {
        "type": f"payment.{payment.status}",
        "timestamp": timezone.now().isoformat(),
        "data": {
            "id": str(payment.public_id),
            "status": payment.status,
            "amount_minor": payment.amount_minor,
            "currency": payment.currency,
            "user_ref": payment.user_ref,
            "journey_id": payment.journey_id,
            "metadata": payment.metadata,
            "failure": {"code": payment.failure_code, "message": payment.failure_message}
            if payment.failure_code
            else None,
        },
    }


def on_status_changed(event: PaymentStatusChanged) -> None:
    if event.to_status in WEBHOOK_STATUSES:
        queue_payment_webhook(event.payment)


def queue_payment_webhook(payment: Payment) -> WebhookDelivery | None:
    """Queue a webhook of the payment's new state; call inside the transaction that set it.

    It is delivered after the commit, through the outbox.
    """
    return queue_webhook(
        app_id=payment.app_id,
        event_type=f"payment.{payment.status}",
        payload=payment_event(payment),
        payment=payment,
    )


def queue_webhook(
    *, app_id: int, event_type: str, payload: dict[str, Any], payment: Payment | None = None
) -> WebhookDelivery | None:
    """Queue a webhook to the app (none when it has no webhook URL); call inside the transaction of the change
    it tells of. It is delivered after the commit, through the outbox, and retried on the usual schedule."""
    app = App.objects.get(pk=app_id)
    if not app.webhook_url:
        return None
    delivery = WebhookDelivery.objects.create(
        app=app,
        payment=payment,
        payment_created_at=payment.created_at if payment is not None else None,
        message_id=f"msg_{uuid.uuid4().hex}",
        event_type=event_type,
        payload=payload,
        url=app.webhook_url,
        next_attempt_at=timezone.now(),
    )
    outbox.enqueue("payments.tasks.deliver_webhook", queue=QUEUE, delivery_id=delivery.pk)
    return delivery


@dataclass(frozen=True)
class Attempt:
    """What one POST to the app's webhook URL gave: a status code, or a transport error."""

    status_code: int | None
    error: str
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(*, delivery_id: int) -> None:
    """Make one attempt if it is due; schedule the next one or settle the delivery."""
    delivery = WebhookDelivery.objects.select_related("app").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return
    if delivery.next_attempt_at and delivery.next_attempt_at > timezone.now():
        return
    attempt = _post(delivery)
    _journal(delivery, attempt)
    _record_attempt(delivery_id, attempt)


def _post(delivery: WebhookDelivery) -> Attempt:
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    signatures = " ".join(sign(s, delivery.message_id, timestamp, body) for s in _active_secrets(delivery.app))
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }
    started = time.monotonic()
    status_code: int | None = None
    error = ""
    try:
        response = httpx.post(delivery.url, content=body, headers=headers, timeout=TIMEOUT_SECONDS)
        status_code = response.status_code
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:255]
    return Attempt(status_code=status_code, error=error, duration_ms=int((time.monotonic() - started) * 1000))


def _journal(delivery: WebhookDelivery, attempt: Attempt) -> None:
    record(
        Kind.WEBHOOK,
        {
            "url": delivery.url,
            "webhook_id": delivery.message_id,
            "event": delivery.event_type,
            "attempt": delivery.attempts + 1,
            "payload": delivery.payload,
            "status": attempt.status_code,
            "error": attempt.error,
            "latency_ms": attempt.duration_ms,
        },
        app=delivery.app.name,
        payment_id=str(delivery.payload.get("data", {}).get("id", "")),
    )


def _record_attempt(delivery_id: int, attempt: Attempt) -> None:
    """Record the attempt and settle the delivery, or schedule its next attempt."""
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        WebhookAttempt.objects.create(
            delivery=locked, status_code=attempt.status_code, error=attempt.error, duration_ms=attempt.duration_ms
        )
        locked.attempts += 1
        locked.last_status_code = attempt.status_code
        locked.last_error = attempt.error
        locked.next_attempt_at = None
        if attempt.delivered:
            locked.status, locked.delivered_at = WebhookDelivery.Status.SUCCEEDED, timezone.now()
        elif attempt.status_code == 410:  # the app says: stop sending
            locked.status = WebhookDelivery.Status.ABANDONED
        elif locked.attempts > len(RETRY_SCHEDULE):
            locked.status = WebhookDelivery.Status.FAILED
        else:
            _schedule_next_attempt(locked)
        locked.save()
    if not attempt.delivered:
        _log_failure(locked, attempt)


def _schedule_next_attempt(delivery: WebhookDelivery) -> None:
    delay = RETRY_SCHEDULE[delivery.attempts - 1]
    jitter = timedelta(seconds=secrets.randbelow(max(int(delay.total_seconds() * 0.1), 1) + 1))
    delivery.next_attempt_at = timezone.now() + delay + jitter
    outbox.enqueue(
        "payments.tasks.deliver_webhook",
        queue=QUEUE,
        countdown=int((delay + jitter).total_seconds()),
        delivery_id=delivery.pk,
    )


def _log_failure(delivery: WebhookDelivery, attempt: Attempt) -> None:
    final = delivery.status != WebhookDelivery.Status.PENDING
    logger.log(
        logging.ERROR if final else logging.WARNING,
        "webhook %s to %s failed (attempt %d): %s%s",
        delivery.message_id,
        delivery.app.name,
        delivery.attempts,
        attempt.status_code or attempt.error,
        f"; {delivery.status}" if final else f"; next attempt at {delivery.next_attempt_at:%Y-%m-%d %H:%M:%S}",
        extra={
            "webhook_id": delivery.message_id,
            "app": delivery.app.name,
            "payment_id": str(delivery.payload.get("data", {}).get("id", "")),
            "attempt": delivery.attempts,
            "status_code": attempt.status_code,
            "error": attempt.error,
            "delivery_status": delivery.status,
        },
    )


def replay(*, delivery: WebhookDelivery) -> None:
    """Send a delivery again now (staff action), with the same webhook-id."""
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        locked.status = WebhookDelivery.Status.PENDING
        locked.next_attempt_at = timezone.now()
        locked.save(update_fields=["status", "next_attempt_at"])
        outbox.enqueue("payments.tasks.deliver_webhook", queue=QUEUE, delivery_id=locked.pk)


def due_deliveries(*, limit: int = 1000) -> int:
    """Dispatch pending deliveries whose attempt is due (lost messages, the in-process mode)."""
    ids = list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
    for delivery_id in ids:
        with transaction.atomic():
            outbox.enqueue("payments.tasks.deliver_webhook", queue=QUEUE, delivery_id=delivery_id)
    return len(ids)
