"""Webhooks to the app about its subscriptions (Standard Webhooks, delivered and retried by payments)."""

from datetime import datetime
from typing import Any

from payments.services.webhooks import queue_webhook
from playpay.money import format_money
from subscriptions.models import Subscription, SubscriptionCharge

EVENTS = (
    "activated",
    "renewed",
    "renewal_failed",
    "past_due",
    "suspended",
    "cancelled",
    "expired",
    "reminder",
    "receipt",
    "period_missed",
)


def notify(
    subscription: Subscription,
    event: str,
    *,
    at: datetime,
    charge: SubscriptionCharge | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Queue `subscription.<event>` for the app, in the transaction of the change it tells of; `extra` adds
    fields of that event to its data."""
    assert event in EVENTS, event
    queue_webhook(
        app_id=subscription.app_id,
        event_type=f"subscription.{event}",
        payload={
            "type": f"subscription.{event}",
            "timestamp": at.isoformat(),
            "data": {**event_data(subscription, charge), **(extra or {})},
        },
    )


def event_data(subscription: Subscription, charge: SubscriptionCharge | None) -> dict[str, Any]:
    period = None
    if charge is not None and charge.period_start is not None and charge.period_end is not None:
        period = {
            "index": charge.period_index,
            "start": charge.period_start.isoformat(),
            "end": charge.period_end.isoformat(),
        }
    elif subscription.current_period_start is not None and subscription.current_period_end is not None:
        period = {
            "index": subscription.period_index,
            "start": subscription.current_period_start.isoformat(),
            "end": subscription.current_period_end.isoformat(),
        }
    return {
        "id": str(subscription.public_id),
        "status": subscription.status,
        "plan": subscription.plan.code,
        "user_ref": subscription.user_ref,
        "entitled_until": subscription.entitled_until.isoformat() if subscription.entitled_until else None,
        "period": period,
        "payment": str(charge.payment.public_id) if charge is not None and charge.payment is not None else None,
        "failure_code": charge.failure_code if charge is not None and charge.failure_code else None,
        "cancel_reason": subscription.cancel_reason or None,
        "metadata": subscription.metadata,
    }


def charged_price(charge: SubscriptionCharge) -> dict[str, Any]:
    """What a charge with its payment asked for, for the app: the amount in minor units and the currency, as a
    person reads it ("£0.49"), and whether it was the offer's lower fallback price (downgrade billing) rather
    than the agreed one."""
    payment = charge.payment
    if payment is None:
        return {}
    return {
        "amount_minor": payment.amount_minor,
        "currency": payment.currency,
        "amount_display": format_money(payment.amount_minor, payment.currency),
        "fallback_price": charge.fallback_price,
    }
