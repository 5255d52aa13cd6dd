"""The carrier's monthly spend cap per number: checked before the opt-in's charge and each renewal's, counting
every payment charged to the number on the carrier this calendar month (one-off ones too)."""

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from payments.models import Payment, PaymentStatus
from payments.selectors import monthly_spend
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionStatus
from tests.conftest import MSISDN
from tests.factories import PaymentFactory
from tests.payments.test_webhooks import Receiver
from tests.subscriptions.conftest import Subs, event_types

pytestmark = pytest.mark.django_db

PRICE = 99  # the plan's price point (minor units)


def set_cap(subs: Subs, cap: int | None) -> None:
    subs.shop.carrier.monthly_spend_cap_minor = cap
    subs.shop.carrier.save(update_fields=["monthly_spend_cap_minor"])


def one_off(subs: Subs, *, amount: int, status: str = PaymentStatus.SUCCEEDED, **fields: object) -> Payment:
    """A one-off payment of the number on the shop's carrier, another app's."""
    return PaymentFactory.create(
        **{"price_point": subs.shop.price_point, "amount_minor": amount, "status": status, "msisdn": MSISDN, **fields}
    )


@pytest.mark.parametrize(("cap", "allowed"), [(PRICE + 500, True), (PRICE + 499, False)])
def test_an_opt_in_is_allowed_up_to_the_cap_and_refused_one_minor_unit_over(
    subs: Subs, cap: int, allowed: bool
) -> None:
    one_off(subs, amount=500)
    set_cap(subs, cap)
    response = subs.subscribe()
    if allowed:
        assert response.status_code == 201, response.content
        return
    assert response.status_code == 422, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == "spending_cap_reached"
    assert not Subscription.objects.exists()
    assert Payment.objects.filter(msisdn=MSISDN).count() == 1  # the one-off only: no opt-in payment either


def test_without_a_cap_nothing_is_refused(subs: Subs) -> None:
    one_off(subs, amount=100_000)
    assert subs.subscribe().status_code == 201


def test_the_spend_counts_this_months_charges_less_refunds_and_those_under_way_on_this_carrier_only(
    subs: Subs,
) -> None:
    now = timezone.now()
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    one_off(subs, amount=100)
    one_off(subs, amount=200, status=PaymentStatus.PARTIALLY_REFUNDED, refunded_minor=50)
    one_off(subs, amount=300, status=PaymentStatus.CHARGING)
    one_off(subs, amount=400, status=PaymentStatus.FAILED)
    one_off(subs, amount=800, status=PaymentStatus.REVERSED)
    one_off(subs, amount=1600, created_at=month_start - timedelta(seconds=1))  # last month
    one_off(subs, amount=3200, msisdn=MSISDN[:-1] + "9")  # another number
    PaymentFactory.create(amount_minor=6400, status=PaymentStatus.SUCCEEDED, msisdn=MSISDN)  # another carrier
    spent = monthly_spend(msisdn=MSISDN, carrier=subs.shop.carrier, currency=subs.shop.price_point.currency, now=now)
    assert spent == 100 + 150 + 300


def renewal_due_now(subs: Subs) -> tuple[Subscription, datetime]:
    """An active subscription whose first period ends now (the opt-in is not the point here)."""
    now = timezone.now()
    (subscription,) = subs.bulk_active(1, anchor=now - timedelta(days=7))
    assert subscription.next_charge_at is not None
    return subscription, subscription.next_charge_at


def test_a_renewal_up_to_the_cap_is_charged(subs: Subs) -> None:
    subscription, due = renewal_due_now(subs)
    one_off(subs, amount=500)
    set_cap(subs, 500 + PRICE)
    assert subs.renew(due).charged == 1
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == (SubscriptionStatus.ACTIVE, 1)


def test_a_renewal_over_the_cap_is_not_sent_and_fails_as_spending_limit_then_is_retried(
    subs: Subs, hooks: Receiver
) -> None:
    subscription, due = renewal_due_now(subs)
    one_off(subs, amount=500)
    set_cap(subs, 500 + PRICE - 1)
    run = subs.renew(due)
    assert (run.charged, run.over_cap) == (0, 1)
    charge = SubscriptionCharge.objects.get(subscription=subscription, kind="renewal")
    assert (charge.period_index, charge.attempt, charge.outcome, charge.failure_code) == (
        1,
        1,
        "failed",
        "spending_limit",
    )
    assert charge.payment_id is None
    assert Payment.objects.filter(msisdn=MSISDN).count() == 1  # nothing sent to the carrier
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE  # handled as a declined renewal: grace, retry
    assert subscription.next_charge_at == due + timedelta(days=1)
    assert event_types(subscription) == ["subscription.renewal_failed", "subscription.past_due"]
    # The next day the cap allows it (raised here; a new month would do the same): the retry is charged.
    set_cap(subs, 500 + PRICE)
    assert subs.renew(due + timedelta(days=1)).charged == 1
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == (SubscriptionStatus.ACTIVE, 1)
    attempts = SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal").order_by("attempt")
    assert list(attempts.values_list("attempt", "outcome")) == [(1, "failed"), (2, "succeeded")]


def test_the_subscription_page_shows_a_renewal_kept_back_by_the_cap(subs: Subs, staff_client: Any) -> None:
    subscription, due = renewal_due_now(subs)
    set_cap(subs, PRICE - 1)
    subs.renew(due)
    response = staff_client("operations").get(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert response.status_code == 200
    assert "spending_limit" in response.content.decode()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_charges_of_one_number_decided_at_once_are_decided_one_after_the_other(
    make_subs: Callable[..., Subs],
) -> None:
    import threading

    from django.db import connection, transaction

    from subscriptions.services.caps import CapBusy, within_spend_cap

    subs = make_subs()
    set_cap(subs, PRICE)  # room for one charge
    carrier, currency = subs.shop.carrier, subs.shop.price_point.currency
    first_holds_the_lock = threading.Event()
    answers: dict[str, bool | str] = {}

    def charge(name: str, *, wait: bool = True) -> None:
        try:
            with transaction.atomic():
                answers[name] = within_spend_cap(
                    msisdn=MSISDN, carrier=carrier, amount_minor=PRICE, currency=currency, now=timezone.now(), wait=wait
                )
                if name == "first":
                    one_off(subs, amount=PRICE, status=PaymentStatus.CHARGING)  # its payment, under way
                    first_holds_the_lock.set()
                    time.sleep(0.5)  # the second decides meanwhile
        except CapBusy:
            answers[name] = "busy"
        finally:
            connection.close()

    first = threading.Thread(target=charge, args=("first",))
    first.start()
    assert first_holds_the_lock.wait(10)
    engine = threading.Thread(target=charge, args=("engine",), kwargs={"wait": False})
    engine.start()
    engine.join()
    second = threading.Thread(target=charge, args=("second",))
    second.start()
    first.join()
    second.join()
    # The renewal engine does not wait (it holds a batch's locks); an opt-in waits, then sees the first's payment.
    assert answers == {"first": True, "engine": "busy", "second": False}


def test_a_charge_in_another_currency_than_the_cap_s_is_refused(subs: Subs) -> None:
    country = subs.shop.carrier.country
    assert subs.shop.price_point.currency == country.currency
    set_cap(subs, 100_000)
    country.currency = "EUR"  # the cap now reads in euros, the plan charges pounds
    country.save(update_fields=["currency"])
    response = subs.subscribe()
    assert response.status_code == 422, response.content
    assert response.json()["code"] == "spending_cap_reached"
    assert not Subscription.objects.exists()
