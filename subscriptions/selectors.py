"""Reads of subscriptions for staff screens: what the admin's search box matches, a subscription's periods with
their charges, and a player's subscriptions."""

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from carriers.msisdn import msisdn_readings
from journal.models import StaffAction
from payments.models import Payment
from payments.selectors import MIN_PUBLIC_ID_PREFIX, Player, active_regions, payments_named
from playpay.ids import prefix_range
from playpay.money import format_money
from playpay.times import utc_text
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionNotice
from subscriptions.periods import bounds
from tenants.models import App

_HEX = re.compile(r"[0-9a-f]+")


def search_subscriptions(*, term: str, queryset: QuerySet[Subscription] | None = None) -> QuerySet[Subscription]:
    """The subscriptions `term` names, as the payments' search reads it: a subscription id or its first 8+ hex
    digits (dashes optional), a phone number in any format (national ones read in the countries of the active
    carriers), a user_ref, an app's Idempotency-Key, or the id of one of its charges' payments. Each reading
    uses an index."""
    base = Subscription.objects.all() if queryset is None else queryset
    term = term.strip()
    if not term:
        return base
    # The indexes are (app, user_ref) and (app, idempotency_key): every app named, so that they serve (apps are few).
    apps = list(App.objects.values_list("pk", flat=True))
    wanted = Q(app__in=apps, user_ref=term) | Q(app__in=apps, idempotency_key=term)
    compact = term.lower().replace("-", "")
    if len(compact) == 32 and _HEX.fullmatch(compact):
        wanted |= Q(public_id=uuid.UUID(hex=compact)) | Q(pk__in=_charged_by_payment(compact))
    elif MIN_PUBLIC_ID_PREFIX <= len(compact) < 32 and _HEX.fullmatch(compact):
        low, high = prefix_range(compact)
        wanted |= Q(public_id__gte=low, public_id__lte=high)
    readings = msisdn_readings(term, regions=active_regions()) if not compact.isalpha() else []
    if readings:
        wanted |= Q(msisdn__in=readings)
    return base.filter(wanted)


def _charged_by_payment(public_id: str) -> list[int]:
    """The subscriptions one of whose charges is the payment `public_id` (read from its month only)."""
    payments = list(Payment.objects.with_public_id(public_id).values_list("pk", flat=True)[:1])
    return list(SubscriptionCharge.objects.filter(payment__in=payments).values_list("subscription", flat=True))


@dataclass(frozen=True)
class ChargeRow:
    """One attempt to charge a period, with the payment that charged it."""

    charge: SubscriptionCharge
    payment: Payment | None
    amount: str


@dataclass(frozen=True)
class PeriodRow:
    index: int
    start: str
    end: str
    charges: list[ChargeRow]


# The periods a subscription's page shows: the latest ones (a daily plan has hundreds a year).
SHOWN_PERIODS = 24


def subscription_periods(subscription: Subscription, *, latest: int = SHOWN_PERIODS) -> list[PeriodRow]:
    """The `latest` periods charged (or tried), oldest first, each with its charge attempts and their payments
    (read in one query, each from its own month)."""
    last = subscription.charges.order_by("-period_index").values_list("period_index", flat=True).first()
    if last is None:
        return []
    charges = list(subscription.charges.filter(period_index__gt=last - latest).order_by("period_index", "attempt"))
    payments = {
        payment.pk: payment
        for payment in Payment.objects.filter(
            payments_named(
                (charge.payment_id, charge.payment_created_at) for charge in charges if charge.payment_id is not None
            )
        )
    }
    periods: dict[int, list[ChargeRow]] = {}
    for charge in charges:
        payment = payments.get(charge.payment_id) if charge.payment_id is not None else None
        amount = format_money(payment.amount_minor, payment.currency) if payment else "—"
        if payment is not None and charge.fallback_price:
            amount += " (fallback price)"
        periods.setdefault(charge.period_index, []).append(ChargeRow(charge, payment, amount))
    rows = []
    for index, attempts in periods.items():
        start, end = _period_bounds(subscription, index, attempts)
        rows.append(PeriodRow(index=index, start=utc_text(start), end=utc_text(end), charges=attempts))
    return rows


def skipped_notices(subscription: Subscription, *, latest: int = SHOWN_PERIODS) -> list[SubscriptionNotice]:
    """The `latest` notices not sent (a reminder too late to be of use), oldest first, each with why."""
    skipped = subscription.notices.exclude(skipped_reason="").order_by("-period_index", "-id")[:latest]
    return list(reversed(skipped))


def _period_bounds(
    subscription: Subscription, index: int, attempts: list[ChargeRow]
) -> tuple[datetime | None, datetime | None]:
    for row in attempts:
        if row.charge.period_start is not None:
            return row.charge.period_start, row.charge.period_end
    if subscription.anchor_at is not None:
        return bounds(subscription.anchor_at, subscription.plan.period, index)
    return None, None  # an opt-in not confirmed yet: its period starts when it is


def staff_actions(subscription: Subscription) -> QuerySet[StaffAction]:
    """What staff did to this subscription from the admin, oldest first (who, what, why, outcome)."""
    return (
        StaffAction.objects.filter(object_type="subscription", object_id=str(subscription.public_id))
        .select_related("user")
        .order_by("created_at")
    )


def player_subscriptions(player: Player, *, limit: int = 50) -> list[Subscription]:
    """A player's subscriptions, newest first: an app's user's in that app, a number's in every app."""
    found: Any = Subscription.objects.select_related(
        "app",
        "carrier",
        "plan",
        "offer__plan",
        "offer__price_point",
        "offer__first_period_price_point",
        "offer__fallback_price_point",
    )
    if player.msisdn:
        found = found.filter(msisdn=player.msisdn)
    else:
        found = found.filter(app=player.app, user_ref=player.user_ref)
    return list(found.order_by("-id")[:limit])
