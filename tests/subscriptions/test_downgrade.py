"""Downgrade billing: a renewal declined for insufficient funds is tried again at the plan offer's lower fallback
price, where the carrier allows it; the charge, its payment, the webhooks and the admin say which price was
charged. On the sandbox carrier, whose numbers ending 0021 pay their first charge then are declined for
insufficient funds on every other one, and ending 0024 on every one after the first (sandbox/simulators/core.py)."""

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from carriers.models import Carrier, PricePoint
from payments.models import WebhookDelivery
from reporting.models import Dataset
from reporting.services.datasets import DatasetQuery, run_query
from subscriptions.models import PlanOffer, Subscription, SubscriptionCharge, SubscriptionStatus
from tests.conftest import MSISDN, StaffClient
from tests.factories import PricePointFactory
from tests.payments.test_webhooks import Receiver
from tests.reporting.catalog import seed_subscription_datasets
from tests.subscriptions.conftest import Subs, event_types

pytestmark = pytest.mark.django_db

EVERY_OTHER = MSISDN[:-4] + "0021"  # pays the opt-in, then declined (insufficient funds) on every other charge
BROKE_AFTER_FIRST = MSISDN[:-4] + "0024"  # pays the opt-in, then declined (insufficient funds) on every charge
DAY = timedelta(days=1)
OFFERS = "/admin/subscriptions/planoffer/"


def with_fallback(subs: Subs, *, amount_minor: int = 49, allowed: bool = True) -> PricePoint:
    """The offer's fallback price point (£0.49 below the regular £0.99); the carrier allows downgrade billing."""
    Carrier.objects.filter(pk=subs.shop.carrier.pk).update(supports_downgrade_billing=allowed)
    fallback = PricePointFactory.create(
        carrier=subs.shop.carrier, code="vip-low", amount_minor=amount_minor, carrier_payout_minor=30
    )
    PlanOffer.objects.filter(pk=subs.offer.pk).update(fallback_price_point=fallback)
    return fallback


def charged(subscription: Subscription) -> list[tuple[int, int, str, int, bool]]:
    """(period, attempt, outcome, amount charged, at the fallback price) of each renewal charge, in order."""
    rows = SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal").order_by("id")
    return [
        (c.period_index, c.attempt, c.outcome, c.payment.amount_minor if c.payment else 0, c.fallback_price)
        for c in rows
    ]


def webhook(subscription: Subscription, event_type: str) -> dict[str, Any]:
    found = [
        d.payload["data"]
        for d in WebhookDelivery.objects.filter(event_type=event_type).order_by("id")
        if d.payload["data"]["id"] == str(subscription.public_id)
    ]
    assert found, event_type
    data: dict[str, Any] = found[-1]
    return data


def test_a_renewal_declined_for_insufficient_funds_is_charged_at_the_fallback_price_and_entitles(
    subs: Subs, hooks: Receiver, staff_client: StaffClient
) -> None:
    with_fallback(subs)
    subscription = subs.active(msisdn=EVERY_OTHER)
    end = subscription.current_period_end
    assert end is not None

    subs.renew(end)  # the full price, declined
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    subs.renew(end + DAY)  # the retry, at the fallback price, paid
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == (SubscriptionStatus.ACTIVE, 1)
    assert subscription.entitled_until == end + 7 * DAY  # the whole period, as at the full price
    assert (subscription.amount_minor, subscription.price_point_id) == (99, subs.offer.price_point_id)  # agreed
    assert charged(subscription) == [(1, 1, "failed", 99, False), (1, 2, "succeeded", 49, True)]
    payment = SubscriptionCharge.objects.get(subscription=subscription, attempt=2).payment
    assert payment is not None
    assert (payment.price_point.code, payment.metadata["fallback_price"]) == ("vip-low", True)

    renewed = webhook(subscription, "subscription.renewed")
    assert renewed["period"]["index"] == 1
    assert (renewed["amount_minor"], renewed["currency"], renewed["amount_display"]) == (49, "GBP", "£0.49")
    assert renewed["fallback_price"] is True
    receipt = webhook(subscription, "subscription.receipt")
    assert (receipt["amount_minor"], receipt["fallback_price"]) == (49, True)
    declined = webhook(subscription, "subscription.renewal_failed")
    assert (declined["amount_minor"], declined["fallback_price"]) == (99, False)

    page = staff_client("support").get(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert "£0.49 (fallback price)" in page.content.decode()

    # The next period starts at the agreed price again.
    subs.renew(end + 7 * DAY)
    assert charged(subscription)[-1][1:] == (1, "failed", 99, False)


def test_a_fallback_price_also_declined_keeps_the_grace_and_suspension_schedule(subs: Subs, hooks: Receiver) -> None:
    with_fallback(subs)
    subscription = subs.active(msisdn=BROKE_AFTER_FIRST)
    end = subscription.current_period_end
    assert end is not None
    for day in range(4):
        subs.renew(end + day * DAY)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.SUSPENDED  # the grace period (3 days) is over
    assert [row[3:] for row in charged(subscription)] == [(99, False)] + [(49, True)] * 3
    for day in range(4, 7):  # SUBSCRIPTION_RETRY_DAYS
        subs.renew(end + day * DAY)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.EXPIRED
    assert len(charged(subscription)) == 7
    assert event_types(subscription)[:3] == [
        "subscription.activated",
        "subscription.renewal_failed",
        "subscription.past_due",
    ]
    assert event_types(subscription)[-1] == "subscription.expired"


@pytest.mark.parametrize("why", ["carrier does not allow it", "no fallback on the offer", "fallback switched off"])
def test_without_downgrade_billing_a_retry_charges_the_agreed_price(subs: Subs, hooks: Receiver, why: str) -> None:
    fallback = with_fallback(subs, allowed=why != "carrier does not allow it")
    if why == "no fallback on the offer":
        PlanOffer.objects.filter(pk=subs.offer.pk).update(fallback_price_point=None)
    if why == "fallback switched off":
        PricePoint.objects.filter(pk=fallback.pk).update(is_active=False)
    subscription = subs.active(msisdn=EVERY_OTHER)
    end = subscription.current_period_end
    assert end is not None
    subs.renew(end)
    subs.renew(end + DAY)  # the number pays this one: at the agreed price
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    assert charged(subscription) == [(1, 1, "failed", 99, False), (1, 2, "succeeded", 99, False)]
    assert webhook(subscription, "subscription.renewed")["fallback_price"] is False


def test_a_carrier_that_holds_the_schedule_never_downgrades(subs: Subs) -> None:
    """The aggregator's carriers charge their renewals themselves: their flag does not make a fallback valid."""
    Carrier.objects.filter(pk=subs.shop.carrier.pk).update(protocol="aggregator", supports_downgrade_billing=True)
    offer = PlanOffer.objects.select_related("carrier", "price_point").get(pk=subs.offer.pk)
    offer.fallback_price_point = PricePointFactory.create(
        carrier=subs.shop.carrier, code="low", amount_minor=49, carrier_payout_minor=30
    )
    with pytest.raises(ValidationError) as refused:
        offer.full_clean()
    assert "does not take downgrade billing" in str(refused.value.message_dict["fallback_price_point"])


def test_the_offer_form_takes_a_fallback_price_and_explains_what_is_wrong(
    subs: Subs, staff_client: StaffClient
) -> None:
    shop = subs.shop
    operations = staff_client("operations")
    url = f"{OFFERS}{subs.offer.pk}/change/"
    form = {"price_point": shop.price_point.pk, "change_reason": "downgrade billing for low balances"}
    dearer = PricePointFactory.create(carrier=shop.carrier, code="dearer", amount_minor=199)
    euros = PricePointFactory.create(
        carrier=shop.carrier, code="euros", amount_minor=49, currency="EUR", carrier_payout_minor=30
    )
    elsewhere = PricePointFactory.create(code="elsewhere", amount_minor=49, carrier_payout_minor=30)
    low = PricePointFactory.create(carrier=shop.carrier, code="low", amount_minor=49, carrier_payout_minor=30)
    off = PricePointFactory.create(
        carrier=shop.carrier, code="off", amount_minor=29, carrier_payout_minor=20, is_active=False
    )

    def refusal(fallback: PricePoint) -> str:
        response = operations.post(url, {**form, "fallback_price_point": fallback.pk})
        assert response.status_code == 200  # the form again, with the error; nothing saved
        return response.content.decode()

    not_allowed = refusal(low)
    assert "does not take downgrade billing: tick &quot;downgrade billing&quot; on the carrier first" in not_allowed
    Carrier.objects.filter(pk=shop.carrier.pk).update(supports_downgrade_billing=True)
    assert "below it (£0.99)" in refusal(dearer)  # major units, with the currency
    assert "in the regular price&#x27;s currency" in refusal(euros)
    assert "Choose a price point of this offer&#x27;s carrier." in refusal(elsewhere)
    assert "This price point is switched off" in refusal(off)
    assert PlanOffer.objects.get(pk=subs.offer.pk).fallback_price_point is None

    saved = operations.post(url, {**form, "fallback_price_point": low.pk})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    offer = PlanOffer.objects.get(pk=subs.offer.pk)
    assert offer.fallback_price_point == low
    assert offer.history.latest().history_change_reason == "downgrade billing for low balances"
    assert "£0.49 if the balance is too low (fallback)" in operations.get(OFFERS).content.decode()


@pytest.mark.postgres
def test_recurring_revenue_counts_a_period_paid_at_the_fallback_price_at_that_price(subs: Subs) -> None:
    """Reporting's recurring revenue sums what the charges' payments asked for (the catalog's
    subscription-charges dataset, which the dashboard reads)."""
    seed_subscription_datasets()
    with_fallback(subs)
    subscription = subs.active(msisdn=EVERY_OTHER)
    end = subscription.current_period_end
    assert end is not None
    subs.renew(end)
    subs.renew(end + DAY)
    query = DatasetQuery(measures=("revenue_minor",), group_by=("kind",))
    result = run_query(dataset=Dataset.objects.get(slug="subscription-charges"), query=query)
    assert {row["kind"]: row["revenue_minor"] for row in result.rows} == {"opt_in": 99, "renewal": 49}


def test_a_fallback_attempt_refused_by_the_spend_cap_is_retried_at_the_fallback_price(subs: Subs) -> None:
    with_fallback(subs)
    subscription = subs.active(msisdn=BROKE_AFTER_FIRST)
    end = subscription.current_period_end
    assert end is not None
    subs.renew(end)  # the full price, declined for insufficient funds
    Carrier.objects.filter(pk=subs.shop.carrier.pk).update(monthly_spend_cap_minor=40)
    subs.renew(end + DAY)  # the fallback's £0.49 is above the cap: not sent
    Carrier.objects.filter(pk=subs.shop.carrier.pk).update(monthly_spend_cap_minor=None)

    subs.renew(end + 2 * DAY)  # the carrier's last answer was still "insufficient funds"

    assert charged(subscription) == [
        (1, 1, "failed", 99, False),
        (1, 2, "failed", 0, True),
        (1, 3, "failed", 49, True),
    ]
