"""What a renewal charges: whether the agreed price can be charged now (one rule, for a loaded subscription — the
renewal engine — and as a filter — the reminders, which must not announce a renewal that will not be charged),
and downgrade billing: a lower fallback price tried after a decline for insufficient funds, where allowed."""

from django.db.models import F, Q, QuerySet

from carriers.errors import ErrorCode
from carriers.models import PricePoint
from subscriptions.models import Subscription, SubscriptionCharge, downgrade_billing_allowed

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


def declined_in_arrears(subscription: Subscription, first_unpaid: int) -> QuerySet[SubscriptionCharge]:
    """The declined renewal attempts of a subscription's periods in arrears (`first_unpaid` on)."""
    return subscription.charges.filter(
        kind=SubscriptionCharge.Kind.RENEWAL,
        period_index__gte=first_unpaid,
        outcome=SubscriptionCharge.Outcome.FAILED,
    )


def fallback_price(subscription: Subscription, *, first_unpaid: int) -> PricePoint | None:
    """The lower price point to charge this renewal attempt at instead of the agreed price, or None.

    Only a retry whose previous attempt sent to the carrier (of the periods in arrears, `first_unpaid` on) was
    declined for insufficient funds, on a carrier that allows downgrade billing, at the offer's fallback price point
    as it is now: on sale, on the subscription's carrier, in the agreed currency and below the agreed amount (a price
    changed since is not charged: the agreed one is)."""
    if not downgrade_billing_allowed(subscription.carrier):
        return None
    # The carrier's last answer: an attempt refused before it was sent (over the spend cap: no payment) says
    # nothing of the balance.
    last_failure = (
        declined_in_arrears(subscription, first_unpaid)
        .filter(payment__isnull=False)
        .order_by("-id")
        .values_list("failure_code", flat=True)
        .first()
    )
    if last_failure != ErrorCode.INSUFFICIENT_FUNDS:
        return None
    fallback = (
        PricePoint.objects.filter(
            pk=subscription.offer.fallback_price_point_id,
            carrier=subscription.carrier_id,
            is_active=True,
            currency=subscription.currency,
            amount_minor__lt=subscription.amount_minor,
        ).first()
        if subscription.offer.fallback_price_point_id
        else None
    )
    return fallback
