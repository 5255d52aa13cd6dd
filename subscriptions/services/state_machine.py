"""The subscription state machine: the allowed transitions and the one function that applies them.

    pending_opt_in -> active -> (past_due -> active | suspended -> active) -> cancelled / expired

Every transition is recorded in the subscription's history with its actor and reason, and the ones an app
hears of queue their webhook in the same transaction (`services.notify`).
"""

import logging
from datetime import datetime

from django.db import transaction

from subscriptions import events
from subscriptions.errors import IllegalSubscriptionTransition
from subscriptions.models import Subscription, SubscriptionStatus, SubscriptionStatusChange

logger = logging.getLogger(__name__)

S = SubscriptionStatus
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING_OPT_IN: frozenset({S.ACTIVE, S.CANCELLED, S.EXPIRED}),
    S.ACTIVE: frozenset({S.PAST_DUE, S.CANCELLED, S.EXPIRED}),
    S.PAST_DUE: frozenset({S.ACTIVE, S.SUSPENDED, S.CANCELLED, S.EXPIRED}),
    S.SUSPENDED: frozenset({S.ACTIVE, S.CANCELLED, S.EXPIRED}),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
}
FINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
# Statuses in which the renewal engine still charges (or retries) the subscription.
BILLED_STATUSES = (S.ACTIVE, S.PAST_DUE, S.SUSPENDED)


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def transition(
    subscription: Subscription,
    to_status: str,
    *,
    actor: str,
    reason: str,
    at: datetime,
    update_fields: tuple[str, ...] = (),
    failure_code: str = "",
) -> SubscriptionStatusChange:
    """Move a locked subscription to `to_status`, record it in its history and publish it
    (`subscriptions.events`).

    Call inside `transaction.atomic()` on a row fetched with `select_for_update()`; `update_fields` names
    the other fields the caller changed; `failure_code` the standard error code of the charge that caused it.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("subscription transitions must run inside transaction.atomic()")
    from_status = subscription.status
    if not can_transition(from_status, to_status):
        raise IllegalSubscriptionTransition(
            f"A subscription in status {from_status!r} cannot become {to_status!r}.", subscription_status=from_status
        )
    subscription.status = to_status
    subscription.save(update_fields=["status", "updated_at", *update_fields])
    change = SubscriptionStatusChange.objects.create(
        subscription=subscription, from_status=from_status, to_status=to_status, actor=actor, reason=reason[:255]
    )
    logger.info(
        "subscription %s: %s -> %s (%s)",
        subscription.public_id,
        from_status,
        to_status,
        reason,
        extra={
            "subscription_id": str(subscription.public_id),
            "from_status": from_status,
            "to_status": to_status,
            "actor": actor,
            "at": at.isoformat(),
        },
    )
    _publish(change, subscription, at=at, failure_code=failure_code)
    return change


def end(
    subscription: Subscription,
    to_status: str,
    *,
    actor: str,
    reason: str,
    at: datetime,
    update_fields: tuple[str, ...] = (),
) -> SubscriptionStatusChange:
    """End a locked subscription at `at` (cancelled, expired): nothing more is due, and the player's access
    ends then if it ran later."""
    subscription.next_charge_at = None
    if subscription.entitled_until is not None and subscription.entitled_until > at:
        subscription.entitled_until = at
    return transition(
        subscription,
        to_status,
        actor=actor,
        reason=reason,
        at=at,
        update_fields=("next_charge_at", "entitled_until", *update_fields),
    )


def record_creation(subscription: Subscription, *, actor: str, at: datetime) -> SubscriptionStatusChange:
    change = SubscriptionStatusChange.objects.create(
        subscription=subscription, from_status="", to_status=subscription.status, actor=actor, reason="opt-in started"
    )
    _publish(change, subscription, at=at)
    return change


def _publish(
    change: SubscriptionStatusChange, subscription: Subscription, *, at: datetime, failure_code: str = ""
) -> None:
    events.publish(
        events.SubscriptionStatusChanged(
            subscription=subscription,
            from_status=change.from_status,
            to_status=change.to_status,
            actor=change.actor,
            reason=change.reason,
            occurred_at=at,
            failure_code=failure_code,
        )
    )
