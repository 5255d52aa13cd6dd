"""Whether a subscription's agreed price can be charged now: one rule, for a loaded subscription (the renewal
engine) and as a filter (the reminders, which must not announce a renewal that will not be charged)."""

from django.db.models import F, Q

from subscriptions.models import Subscription

# Its carrier bills, and the price point the player agreed to is on sale at the very price agreed.
AGREED_PRICE_CHARGEABLE = Q(
    carrier__is_active=True,
    price_point__is_active=True,
    price_point__amount_minor=F("amount_minor"),
    price_point__currency=F("currency"),
)


def agreed_price_available(subscription: Subscription) -> bool:
    """`AGREED_PRICE_CHARGEABLE` for a subscription loaded with its carrier and price point."""
    price_point = subscription.price_point
    return (
        subscription.carrier.is_active
        and price_point.is_active
        and (price_point.amount_minor, price_point.currency) == (subscription.amount_minor, subscription.currency)
    )
