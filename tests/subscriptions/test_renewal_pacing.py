"""The renewal engine's pacing: renewals due together are sent to their carrier spread over a window, with
jitter, at no more than a share of the carrier's rate limit; the player stays entitled meanwhile, and the
due-attempts job sends each when its time comes."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from payments.models import Payment, PaymentStatus
from payments.services.carrier_flow import due_attempts
from subscriptions.models import SubscriptionCharge, SubscriptionStatus
from subscriptions.services.renewals import PACED_ANSWER_MARGIN
from subscriptions.services.subscriptions import cancel_subscription
from tests.subscriptions.conftest import Subs

pytestmark = pytest.mark.django_db

ANCHOR = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DUE = ANCHOR + timedelta(days=7)


def renewal_payments() -> list[Payment]:
    return [
        charge.payment
        for charge in SubscriptionCharge.objects.filter(kind="renewal").select_related("payment").order_by("id")
        if charge.payment is not None
    ]


@override_settings(SUBSCRIPTION_RENEWAL_SPREAD_SECONDS=1, SUBSCRIPTION_RENEWAL_RATE_PERCENT=50)
def test_renewals_due_together_are_paced_at_half_the_carriers_rate_limit(subs: Subs) -> None:
    subs.shop.carrier.rate_limit_per_second = 4  # 50 %: two renewals a second
    subs.shop.carrier.save()
    subs.bulk_active(12, anchor=ANCHOR)
    before = timezone.now()
    run = subs.renew(DUE)
    assert run.charged == 12
    payments = renewal_payments()
    # Not sent yet: each waits for its moment, the k-th of the carrier at k / 2 s plus under 1 s of jitter.
    assert {p.status for p in payments} == {PaymentStatus.CREATED}
    offsets = sorted((p.next_attempt_at - before).total_seconds() for p in payments if p.next_attempt_at)
    assert len(offsets) == 12
    for k, offset in enumerate(offsets):
        assert k / 2 <= offset < k / 2 + 1 + 1, (k, offsets)  # + 1 s for the run itself
    assert offsets[-1] >= 5.5  # twelve at two a second take six seconds, not one burst


@override_settings(SUBSCRIPTION_RENEWAL_SPREAD_SECONDS=600)
def test_a_paced_renewal_keeps_the_player_entitled_and_is_charged_once_when_due(subs: Subs) -> None:
    subscriptions = subs.bulk_active(5, anchor=ANCHOR)
    subs.renew(DUE)
    payments = renewal_payments()
    waiting = {p.pk: p.next_attempt_at for p in payments}
    assert all(at is not None and at > timezone.now() for at in waiting.values())
    assert len(set(waiting.values())) == 5  # jitter: each its own moment
    with subs.shop.after_commit(execute=True):
        assert due_attempts() == 0  # none is due yet: nothing is sent early
    assert {p.status for p in Payment.objects.filter(pk__in=waiting)} == {PaymentStatus.CREATED}
    for subscription in subscriptions:
        subscription.refresh_from_db()
        (payment_id,) = subscription.charges.filter(kind="renewal").values_list("payment_id", flat=True)
        # The engine's wait is not the player's: entitled until the renewal is sent and answered.
        moment = waiting[payment_id]
        assert moment is not None
        assert subscription.entitled_until == moment + PACED_ANSWER_MARGIN
    # Their moments come (the clock moved on): the due-attempts job sends them, once each.
    Payment.objects.filter(pk__in=waiting).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    with subs.shop.after_commit(execute=True):
        assert due_attempts() == 5
    with subs.shop.after_commit(execute=True):
        assert due_attempts() == 0
    assert {p.status for p in Payment.objects.filter(pk__in=waiting)} == {PaymentStatus.SUCCEEDED}
    for subscription in subscriptions:
        subscription.refresh_from_db()
        assert (subscription.status, subscription.period_index) == (SubscriptionStatus.ACTIVE, 1)
        assert subscription.entitled_until == DUE + timedelta(days=7)


@override_settings(SUBSCRIPTION_RENEWAL_SPREAD_SECONDS=600)
def test_a_paced_renewal_cancelled_before_its_moment_is_never_sent(subs: Subs) -> None:
    subscription = subs.active()
    assert subscription.current_period_end is not None
    subs.renew(subscription.current_period_end)
    (payment,) = renewal_payments()
    answer = subs.cancel(str(subscription.public_id), reason="changed my mind", at_period_end=False)
    assert answer.status_code == 200, answer.content
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code, payment.next_attempt_at) == (PaymentStatus.FAILED, "withdrawn", None)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    assert subscription.entitled_until is not None
    assert subscription.entitled_until <= timezone.now()


@override_settings(SUBSCRIPTION_RENEWAL_SPREAD_SECONDS=600)
def test_cancelling_at_the_periods_end_while_its_renewal_waits_withdraws_it(subs: Subs) -> None:
    (subscription,) = subs.bulk_active(1, anchor=ANCHOR)  # its first period ended (DUE is past)
    subs.renew(DUE)
    (payment,) = renewal_payments()
    assert payment.status == PaymentStatus.CREATED  # waiting for its paced moment
    # The player asks to stop at the end of the period: that period is over, the renewal is of the next one.
    with subs.shop.after_commit(execute=True):
        cancel_subscription(
            subscription=subscription, at_period_end=True, reason="no more", actor="app:test", now=timezone.now()
        )
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code) == (PaymentStatus.FAILED, "withdrawn")
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    Payment.objects.filter(pk=payment.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    with subs.shop.after_commit(execute=True):
        assert due_attempts() == 0  # withdrawn: never sent


@override_settings(SUBSCRIPTION_RENEWAL_SPREAD_SECONDS=1, SUBSCRIPTION_RENEWAL_RATE_PERCENT=50)
def test_a_later_run_queues_its_renewals_after_the_ones_still_waiting(subs: Subs) -> None:
    subs.shop.carrier.rate_limit_per_second = 4  # two renewals a second
    subs.shop.carrier.save()
    subs.bulk_active(12, anchor=ANCHOR)
    subs.renew(DUE)
    first = {p.pk: p.next_attempt_at for p in renewal_payments()}
    subs.bulk_active(4, anchor=ANCHOR + timedelta(hours=1))  # due an hour later, the first twelve still waiting
    assert subs.renew(DUE + timedelta(hours=1)).charged == 4
    second = [p.next_attempt_at for p in renewal_payments() if p.pk not in first]
    assert len(second) == 4
    ends = max(at for at in first.values() if at is not None)
    # The first run's queue takes about six seconds (twelve at two a second): the next run's go after it, not
    # at the same time (which would double the carrier's pace).
    assert min(at for at in second if at is not None) >= ends - timedelta(seconds=1)
