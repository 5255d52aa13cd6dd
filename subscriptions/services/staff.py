"""What staff do to subscriptions from the admin: each act with its reason, recorded in the staff log."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser

from journal.services import record_staff_action
from payments.services.staff import staff_actor
from playpay.times import utc_text
from subscriptions.errors import SubscriptionError
from subscriptions.models import Subscription
from subscriptions.services.subscriptions import cancel_subscription


def cancel_for_staff(
    *, user: AbstractBaseUser, subscription: Subscription, at_period_end: bool, reason: str, now: datetime
) -> Subscription:
    """Cancel as `cancel_subscription` does, on behalf of a staff member (the actor `staff:<username>`); the
    staff log keeps who, why and what came of it, a refusal included (which is raised again)."""
    try:
        cancelled = cancel_subscription(
            subscription=subscription,
            at_period_end=at_period_end,
            reason=reason,
            actor=staff_actor(user),
            now=now,
        )
    except SubscriptionError as error:
        record_staff_action(
            user=user, action="cancel_subscription", target=subscription, reason=reason, outcome=f"refused: {error}"
        )
        raise
    if cancelled.cancel_at_period_end and cancelled.cancelled_at is None:
        outcome = f"cancels at the end of the period, {utc_text(cancelled.current_period_end)}"
    else:
        outcome = "cancelled now: the player is no longer entitled"
    record_staff_action(user=user, action="cancel_subscription", target=cancelled, reason=reason, outcome=outcome)
    return cancelled
