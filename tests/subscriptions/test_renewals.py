"""The renewal engine with a fake clock (the services take `now`): each due period charged once by a
one-click payment through the carrier's flow, the retry, grace and suspension schedule, and the end of a
subscription cancelled at its period's end."""

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.db import IntegrityError, transaction

from payments.models import Payment, PaymentFlow, PaymentStatus, WebhookDelivery
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionStatus
from subscriptions.services.renewals import run_renewals
from tests.concurrency import at_once
from tests.conftest import MSISDN
from tests.payments.test_webhooks import Receiver
from tests.subscriptions.conftest import Subs, event_types

pytestmark = pytest.mark.django_db

# The sandbox carrier declines a charge to a number ending 0002 (insufficient funds) or 0003 (barred).
BROKE = MSISDN[:-4] + "0002"
BARRED = MSISDN[:-4] + "0003"
UNANSWERED = MSISDN[:-4] + "0005"  # the charge stays pending: the carrier never states its outcome
DAY = timedelta(days=1)


def renewals_of(subscription: Subscription) -> list[tuple[int, int, str]]:
    """(period, attempt, outcome) of each renewal charge, in order."""
    charges = SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal").order_by("id")
    return list(charges.values_list("period_index", "attempt", "outcome"))


def balance(subscription: Subscription, msisdn: str) -> None:
    """The player's balance as the sandbox carrier reads it: its number's last digits."""
    Subscription.objects.filter(pk=subscription.pk).update(msisdn=msisdn)


def test_a_due_renewal_charges_the_next_period_without_pin_and_moves_the_entitlement(subs: Subs) -> None:
    subscription = subs.active()
    first_end = subscription.current_period_end
    assert first_end is not None
    assert subs.renew(first_end - timedelta(seconds=1)).charged == 0
    assert subs.renew(first_end).charged == 1
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == ("active", 1)
    assert (subscription.current_period_start, subscription.current_period_end) == (first_end, first_end + 7 * DAY)
    assert subscription.entitled_until == subscription.next_charge_at == first_end + 7 * DAY
    charge = SubscriptionCharge.objects.get(subscription=subscription, kind="renewal")
    assert (charge.period_start, charge.period_end, charge.outcome) == (first_end, first_end + 7 * DAY, "succeeded")
    payment = charge.payment
    assert payment is not None
    assert (payment.flow, payment.status, payment.amount_minor) == (PaymentFlow.ONE_CLICK, PaymentStatus.SUCCEEDED, 99)
    assert payment.history.filter(to_status="pin_sent").count() == 0


def test_a_second_run_at_the_same_time_charges_nothing_more(subs: Subs) -> None:
    subscription = subs.active()
    assert subscription.current_period_end is not None
    subs.renew(subscription.current_period_end)
    assert subs.renew(subscription.current_period_end + timedelta(hours=1)).charged == 0
    assert renewals_of(subscription) == [(1, 1, "succeeded")]


def test_a_run_bounded_in_time_leaves_the_rest_due_to_the_next_run_and_charges_each_once(subs: Subs) -> None:
    subscriptions = [subs.active(f"sub-{n}", user_ref=f"player-{n}") for n in range(3)]
    end = max(subscription.current_period_end for subscription in subscriptions if subscription.current_period_end)
    first = subs.renew(end, batch_size=1, max_seconds=0)  # its time is up after its first batch
    assert (first.charged, first.batches) == (1, 1)
    assert Subscription.objects.filter(pk__in=[s.pk for s in subscriptions], period_index=0).count() == 2
    assert subs.renew(end, batch_size=1).charged == 2  # unbounded: the two left, then a short batch
    assert subs.renew(end, batch_size=1).charged == 0
    assert [renewals_of(subscription) for subscription in subscriptions] == [[(1, 1, "succeeded")]] * 3
    with pytest.raises(ValueError, match="max_seconds"):
        run_renewals(now=end, max_seconds=-1)


def test_a_period_whose_charge_awaits_its_outcome_is_never_charged_again(subs: Subs) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    balance(subscription, UNANSWERED)
    assert subs.renew(end).charged == 1
    assert subs.renew(end + 2 * DAY).charged == 0  # not due while its charge is pending
    # Made due again anyway (a clock jump, a hand edit): the database refuses a second live charge.
    Subscription.objects.filter(pk=subscription.pk).update(next_charge_at=end)
    run = subs.renew(end + 2 * DAY)
    assert (run.charged, run.skipped) == (0, 1)
    assert renewals_of(subscription) == [(1, 1, "pending")]
    subscription.refresh_from_db()
    assert (subscription.status, subscription.next_charge_at) == (SubscriptionStatus.ACTIVE, None)


def test_periods_follow_the_anchor_across_several_renewals(subs: Subs) -> None:
    subscription = subs.active()
    anchor = subscription.anchor_at
    assert anchor is not None
    for weeks in (1, 2, 3):
        subs.renew(anchor + weeks * 7 * DAY)
    subscription.refresh_from_db()
    assert subscription.period_index == 3
    assert subscription.current_period_end == anchor + 28 * DAY
    assert renewals_of(subscription) == [(1, 1, "succeeded"), (2, 1, "succeeded"), (3, 1, "succeeded")]


def test_insufficient_funds_retries_daily_with_grace_then_suspends_and_recovers(subs: Subs, hooks: Receiver) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    balance(subscription, BROKE)

    subs.renew(end)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert subscription.entitled_until == end + 3 * DAY  # SUBSCRIPTION_GRACE_DAYS
    assert subscription.next_charge_at == end + DAY
    assert subscription.period_index == 0  # the new period is not paid

    subs.renew(end + DAY)
    subs.renew(end + 2 * DAY)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE

    subs.renew(end + 3 * DAY)  # the grace period is over: suspended, and tried again
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.SUSPENDED
    assert subscription.entitled_until is not None
    assert subscription.entitled_until <= end + 3 * DAY
    assert renewals_of(subscription) == [(1, n, "failed") for n in (1, 2, 3, 4)]

    balance(subscription, MSISDN)
    subs.renew(end + 4 * DAY)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    assert (subscription.period_index, subscription.current_period_start) == (1, end)
    assert subscription.entitled_until == end + 7 * DAY  # the period keeps its dates: no day is given away
    assert renewals_of(subscription)[-1] == (1, 5, "succeeded")
    assert event_types(subscription) == [
        "subscription.activated",
        "subscription.renewal_failed",
        "subscription.past_due",
        "subscription.renewal_failed",
        "subscription.renewal_failed",
        "subscription.suspended",
        "subscription.renewal_failed",
        "subscription.renewed",
        "subscription.receipt",
    ]
    history = list(subscription.history.values_list("to_status", flat=True))
    assert history == ["pending_opt_in", "active", "past_due", "suspended", "active"]


def test_a_renewal_unpaid_after_every_retry_expires_the_subscription(subs: Subs) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    balance(subscription, BROKE)
    for day in range(7):  # SUBSCRIPTION_RETRY_DAYS
        subs.renew(end + day * DAY)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.EXPIRED
    assert subscription.next_charge_at is None
    assert len(renewals_of(subscription)) == 7
    last = subscription.history.last()
    assert last is not None
    assert last.reason == "renewal failed: insufficient_funds (7 attempts)"
    assert subs.renew(end + 30 * DAY).charged == 0


def test_a_barred_player_is_not_retried(subs: Subs) -> None:
    subscription = subs.active()
    assert subscription.current_period_end is not None
    balance(subscription, BARRED)
    subs.renew(subscription.current_period_end)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.EXPIRED
    assert renewals_of(subscription) == [(1, 1, "failed")]


def test_a_subscription_cancelled_at_period_end_ends_then_without_a_charge(subs: Subs, hooks: Receiver) -> None:
    subscription = subs.active()
    subs.cancel(str(subscription.public_id), reason="player asked")
    assert subscription.current_period_end is not None
    run = subs.renew(subscription.current_period_end)
    assert (run.charged, run.cancelled) == (0, 1)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    assert subscription.entitled_until == subscription.current_period_end
    assert renewals_of(subscription) == []
    assert event_types(subscription)[-1] == "subscription.cancelled"


def test_the_renewed_webhook_names_the_period_and_its_payment(subs: Subs, hooks: Receiver) -> None:
    subscription = subs.active()
    assert subscription.current_period_end is not None
    subs.renew(subscription.current_period_end)
    delivery = WebhookDelivery.objects.get(event_type="subscription.renewed")
    charge = SubscriptionCharge.objects.get(kind="renewal")
    data = delivery.payload["data"]
    assert data["period"] == {
        "index": 1,
        "start": subscription.current_period_end.isoformat(),
        "end": (subscription.current_period_end + 7 * DAY).isoformat(),
    }
    assert charge.payment is not None
    assert data["payment"] == str(charge.payment.public_id)
    assert delivery.status == "succeeded"  # delivered to the app's endpoint, signed
    assert any(b'"subscription.renewed"' in body for _, body in hooks.requests)


@pytest.mark.postgres
def test_the_database_refuses_a_second_live_charge_of_a_period(subs: Subs) -> None:
    subscription = subs.active()
    opt_in = SubscriptionCharge.objects.get(subscription=subscription)
    with pytest.raises(IntegrityError), transaction.atomic():
        SubscriptionCharge.objects.create(
            subscription=subscription, kind="renewal", period_index=0, attempt=2, payment=opt_in.payment
        )


@pytest.mark.postgres
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_two_engines_at_once_charge_each_period_once(make_subs: Callable[..., Subs]) -> None:
    subs = make_subs()
    anchor = datetime.fromisoformat("2026-01-31T10:00:00+00:00")
    subscriptions = subs.bulk_active(24, anchor=anchor)
    runs = at_once(lambda: run_renewals(now=anchor + 8 * DAY, batch_size=3).charged, times=2)
    assert sum(runs) == 24
    for subscription in subscriptions:
        assert renewals_of(subscription) == [(1, 1, "succeeded")]
    assert Payment.objects.filter(flow=PaymentFlow.ONE_CLICK, status=PaymentStatus.SUCCEEDED).count() == 24
    assert set(Subscription.objects.values_list("period_index", flat=True)) == {1}


def test_a_carrier_switched_off_is_not_billed_and_its_renewals_resume_when_it_is_on_again(subs: Subs) -> None:
    subscription = subs.active()
    due = subscription.current_period_end
    assert due is not None
    subscription.carrier.is_active = False
    subscription.carrier.save(update_fields=["is_active"])
    run = subs.renew(due)
    assert (run.charged, run.paused) == (0, 1)
    assert renewals_of(subscription) == []
    subscription.refresh_from_db()
    assert subscription.next_charge_at == due + timedelta(hours=1)
    subscription.carrier.is_active = True
    subscription.carrier.save(update_fields=["is_active"])
    assert subs.renew(due + timedelta(hours=1)).charged == 1
    assert renewals_of(subscription) == [(1, 1, "succeeded")]
