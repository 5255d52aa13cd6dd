"""Celery tasks of subscriptions: thin wrappers over the services; the periodic one is declared in
django-celery-beat by a data migration."""

from celery import shared_task
from django.utils import timezone

from subscriptions.services import carrier_managed, stop
from subscriptions.services.charges import refund_unwanted_charge as refund_charge
from subscriptions.services.renewals import run_renewals


@shared_task(acks_late=True)
def renew_due_subscriptions() -> int:
    """Charge the subscriptions whose period is due (a run that overlaps another takes other rows)."""
    return run_renewals(now=timezone.now()).charged


@shared_task(acks_late=True, reject_on_worker_lost=True)
def refund_unwanted_charge(charge_id: int, check: int = 0) -> None:
    """Refund a charge that succeeded after its subscription ended (queued by its settlement), and check on it
    (queued again by itself, with growing waits, until the payment is refunded or the attempts run out)."""
    refund_charge(charge_id=charge_id, check=check)


@shared_task(acks_late=True)
def register_at_carrier(subscription_id: int) -> None:
    """Hand an activated subscription to a carrier that manages renewals (queued by its activation)."""
    carrier_managed.register_at_carrier(subscription_id=subscription_id)


@shared_task(acks_late=True)
def cancel_at_carrier(subscription_id: int) -> None:
    """Tell a carrier that manages renewals that a subscription was cancelled (queued by the cancellation)."""
    carrier_managed.cancel_at_carrier(subscription_id=subscription_id)


@shared_task(acks_late=True)
def check_overdue_carrier_renewals() -> int:
    """Ask carriers that manage renewals about the subscriptions they have not told of in time, and tell them
    again of the cancellations they have not confirmed."""
    now = timezone.now()
    carrier_managed.resend_cancellations(now=now)
    return carrier_managed.check_overdue(now=now)


@shared_task(acks_late=True)
def stop_by_sms(subscription_id: int) -> None:
    """Cancel a subscription now for its player's STOP by SMS (queued by the carrier's callback)."""
    stop.stop_by_sms(subscription_id=subscription_id)
