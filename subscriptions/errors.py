"""Subscription domain errors; each has a stable `code` that the API returns as problem+json."""

from playpay.errors import DomainError


class SubscriptionError(DomainError):
    code = "subscription_error"


class PlanNotAvailable(SubscriptionError):
    code = "plan_not_available"
    title = "This plan is not offered to this player's carrier"
    http_status = 422


class IllegalSubscriptionTransition(SubscriptionError):
    code = "illegal_subscription_transition"
    title = "The subscription is not in a state that allows this"
    http_status = 409


class SpendingCapReached(SubscriptionError):
    code = "spending_cap_reached"
    title = "This charge would take the player's spending on the carrier this month above its cap"
    http_status = 422
