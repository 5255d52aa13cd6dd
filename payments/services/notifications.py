"""Inbound carrier callbacks: verify, de-duplicate, apply. A rejected callback changes nothing."""

from collections.abc import Mapping
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from carriers.adapters import adapter_for
from carriers.adapters.base import NotificationKind
from carriers.errors import NotificationRejected
from carriers.models import Carrier
from payments import notification_handlers
from payments.errors import UnknownCarrier
from payments.models import CarrierNotification
from payments.services.carrier_flow import apply_notification
from payments.services.refunds import apply_refund_notification
from playpay.storable import has_unstorable_text


@dataclass(frozen=True)
class Receipt:
    ack_status: int
    result: str


def receive_notification(*, carrier_slug: str, headers: Mapping[str, str], body: bytes) -> Receipt:
    """Verify a callback over its raw body, record its id once, and move the payment on."""
    carrier = Carrier.objects.filter(slug=carrier_slug).first()
    if carrier is None:
        raise UnknownCarrier(f"No carrier has the slug {carrier_slug!r}.")
    adapter = adapter_for(carrier)
    # Raises NotificationRejected (400) or NotificationSignatureInvalid (401): nothing is recorded.
    notification = adapter.parse_notification(headers=headers, body=body, now=timezone.now())
    texts = (
        notification.notification_id,
        notification.carrier_reference,
        notification.payment_id,
        notification.refund_id,
        notification.raw_code,
        notification.raw_message,
        notification.subscription_event.charge_reference if notification.subscription_event else "",
        *((notification.sms.msisdn, notification.sms.text, notification.sms.to) if notification.sms else ()),
    )
    if any(has_unstorable_text(text) for text in texts):
        # Signed by the carrier and still unstorable (PostgreSQL refuses NUL and lone surrogates).
        raise NotificationRejected("malformed", "the notification holds a NUL character or a lone surrogate")

    with transaction.atomic():
        try:
            with transaction.atomic():
                record = CarrierNotification.objects.create(
                    carrier=carrier,
                    notification_id=notification.notification_id[:200],
                    kind=notification.kind,
                    outcome=notification.outcome,
                    carrier_reference=notification.carrier_reference[:128],
                    raw_code=notification.raw_code[:100],
                )
        except IntegrityError:
            return Receipt(ack_status=adapter.notification_ack_status, result="duplicate: already applied")
        if notification.kind == NotificationKind.REFUND:
            result = apply_refund_notification(carrier_slug=carrier.slug, notification=notification)
        elif notification.kind == NotificationKind.PAYMENT:
            result = apply_notification(carrier=carrier, notification=notification)
        else:  # about something above payments (a subscription, a player's SMS): whoever registered for it
            result = notification_handlers.handle(carrier, notification)
        record.result = result[:200]
        record.save(update_fields=["result"])
    return Receipt(ack_status=adapter.notification_ack_status, result=record.result)
