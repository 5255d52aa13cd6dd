"""What the renewal engine charges, and when not: the price agreed at opt-in (never the offer's price of the
day), nothing after an immediate cancellation (a renewal not sent yet is withdrawn, one charged anyway is
refunded), and only the period containing `now` after an outage (the periods that ended meanwhile are
recorded as missed, never charged late)."""

from datetime import timedelta
from importlib import import_module

import pytest
from django.apps import apps
from django.db import IntegrityError, transaction

from carriers.adapters.base import CarrierResult, Outcome
from carriers.errors import ErrorCode
from carriers.models import Carrier, Protocol
from payments.models import OutboxMessage, Payment, PaymentStatus, Refund, WebhookDelivery
from payments.services.carrier_flow import charge_payment, record_charge_result
from payments.services.refunds import record_refund_result, request_refund
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionStatus
from subscriptions.periods import Period, bounds
from subscriptions.services.charges import (
    REFUND_TASK,
    UNWANTED_REFUND_ATTEMPTS,
    UNWANTED_REFUND_CHECKS,
    refund_unwanted_charge,
)
from subscriptions.services.renewals import PAUSED_EXPIRY_REASON, run_renewals
from tests.factories import PricePointFactory
from tests.payments.test_webhooks import Receiver
from tests.subscriptions.conftest import Subs, event_types, make_plan
from tests.subscriptions.test_renewals import BROKE, UNANSWERED, balance, renewals_of

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def _renewal_payments(subscription: Subscription) -> list[Payment]:
    charges = SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal", payment__isnull=False)
    return [charge.payment for charge in charges.order_by("id") if charge.payment is not None]


# --- the agreed price ---------------------------------------------------------------------------------------


def test_a_renewal_charges_the_price_agreed_at_opt_in_when_the_offer_has_a_new_price_since(subs: Subs) -> None:
    subscription = subs.active()
    agreed = subs.offer.price_point
    dearer = PricePointFactory.create(carrier=subs.shop.carrier, code="gems-200", amount_minor=199)
    subs.offer.price_point = dearer
    subs.offer.save(update_fields=["price_point"])
    assert subscription.current_period_end is not None

    assert subs.renew(subscription.current_period_end).charged == 1

    [payment] = _renewal_payments(subscription)
    assert (payment.price_point_id, payment.amount_minor, payment.currency) == (agreed.pk, 99, "GBP")
    assert payment.status == PaymentStatus.SUCCEEDED
    assert "£0.99 per week" in payment.carrier_data["description"]
    assert subs.get(str(subscription.public_id))["price"] == {"amount_minor": 99, "currency": "GBP"}
    # A player opting in now agrees to the new price, and is renewed at it.
    newcomer = subs.active("sub-2", user_ref="player-2")
    assert (newcomer.price_point_id, newcomer.amount_minor) == (dearer.pk, 199)


def test_a_renewal_whose_agreed_price_point_is_switched_off_is_paused_not_charged_at_another_price(
    subs: Subs,
) -> None:
    subscription = subs.active()
    agreed = subs.offer.price_point
    subs.offer.price_point = PricePointFactory.create(carrier=subs.shop.carrier, code="gems-200", amount_minor=199)
    subs.offer.save(update_fields=["price_point"])
    agreed.is_active = False
    agreed.save(update_fields=["is_active"])
    due = subscription.current_period_end
    assert due is not None

    run = subs.renew(due)

    assert (run.charged, run.paused) == (0, 1)
    assert renewals_of(subscription) == []
    subscription.refresh_from_db()
    assert (subscription.status, subscription.next_charge_at) == (SubscriptionStatus.ACTIVE, due + timedelta(hours=1))
    agreed.is_active = True
    agreed.save(update_fields=["is_active"])
    assert subs.renew(due + timedelta(hours=1)).charged == 1
    assert [p.amount_minor for p in _renewal_payments(subscription)] == [99]


def test_a_renewal_is_not_charged_when_its_price_point_now_asks_another_amount(subs: Subs) -> None:
    subscription = subs.active()
    price_point = subs.offer.price_point
    price_point.amount_minor = 149  # edited in place: not the price the player agreed to
    price_point.save(update_fields=["amount_minor"])
    assert subscription.current_period_end is not None

    run = subs.renew(subscription.current_period_end)

    assert (run.charged, run.paused) == (0, 1)
    assert Payment.objects.filter(amount_minor=149).count() == 0


def test_subscriptions_opened_before_the_agreed_price_was_kept_take_their_offers_price_point(subs: Subs) -> None:
    subscription = subs.active()
    unrelated = PricePointFactory.create(carrier=subs.shop.carrier, code="gems-500", amount_minor=499)
    Subscription.objects.filter(pk=subscription.pk).update(price_point=unrelated, amount_minor=499)
    backfill = import_module("subscriptions.migrations.0006_agreed_price_and_missed_periods")

    backfill.agreed_price_of_the_offer(apps, None)

    subscription.refresh_from_db()
    assert (subscription.price_point_id, subscription.amount_minor, subscription.currency) == (
        subs.offer.price_point_id,
        99,
        "GBP",
    )


# --- cancelling while a renewal is being charged ------------------------------------------------------------


def test_cancelling_now_withdraws_a_renewal_not_sent_to_the_carrier_yet(subs: Subs, hooks: Receiver) -> None:
    subscription = subs.active()
    assert subscription.current_period_end is not None
    with subs.shop.after_commit(execute=False) as queued:  # the engine committed; its carrier work waits
        assert run_renewals(now=subscription.current_period_end).charged == 1
    [payment] = _renewal_payments(subscription)
    assert payment.status == PaymentStatus.CREATED

    response = subs.cancel(str(subscription.public_id), reason="player asked", at_period_end=False)
    assert response.json()["status"] == "cancelled"
    for callback in queued:  # the carrier's queue gets to the renewal's first step now
        callback()

    payment.refresh_from_db()
    assert (payment.status, payment.failure_code, payment.charge_attempts) == (PaymentStatus.FAILED, "withdrawn", 0)
    assert not payment.history.filter(to_status="charging").exists()  # never sent to the carrier
    assert renewals_of(subscription) == [(1, 1, "failed")]
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == (SubscriptionStatus.CANCELLED, 0)
    assert "subscription.renewed" not in event_types(subscription)


def test_cancelling_now_withdraws_a_renewal_waiting_for_its_next_attempt_at_the_carrier(subs: Subs) -> None:
    subs.shop.carrier.insufficient_funds_retry_minutes = "60"  # the carrier's own retry, within the hour
    subs.shop.carrier.save(update_fields=["insufficient_funds_retry_minutes"])
    subscription = subs.active()
    assert subscription.current_period_end is not None
    balance(subscription, BROKE)
    subs.renew(subscription.current_period_end)
    [payment] = _renewal_payments(subscription)
    assert (payment.status, payment.outcome_unknown_since, payment.charge_attempts) == ("charging", None, 1)
    assert payment.next_attempt_at is not None  # declined once, tried again in an hour

    subs.cancel(str(subscription.public_id), reason="player asked", at_period_end=False)
    # The hour passes and the retry's task runs: nothing is sent.
    Payment.objects.filter(pk=payment.pk).update(next_attempt_at=payment.next_attempt_at - timedelta(hours=2))
    with subs.shop.after_commit(execute=True):
        charge_payment(payment_id=payment.pk)

    payment.refresh_from_db()
    assert (payment.status, payment.failure_code, payment.charge_attempts) == (PaymentStatus.FAILED, "withdrawn", 1)
    assert renewals_of(subscription) == [(1, 1, "failed")]


def test_a_renewal_charged_anyway_after_an_immediate_cancellation_is_refunded_and_grants_nothing(
    subs: Subs, hooks: Receiver
) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    balance(subscription, UNANSWERED)
    subs.renew(end)  # sent: the carrier has it, and has not said yet
    [payment] = _renewal_payments(subscription)
    assert (payment.status, payment.outcome_unknown_since is not None) == (PaymentStatus.CHARGING, True)

    subs.cancel(str(subscription.public_id), reason="player asked", at_period_end=False)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.CHARGING  # at the carrier: cannot be taken back
    with subs.shop.after_commit(execute=True):  # the carrier's callback: charged after all
        record_charge_result(payment_id=payment.pk, result=CarrierResult(outcome=Outcome.SUCCEEDED))

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    refund = Refund.objects.get(payment_id=payment.pk)
    assert (refund.amount_minor, refund.requested_by, refund.status) == (99, "system", "succeeded")
    assert renewals_of(subscription) == [(1, 1, "succeeded")]
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == (SubscriptionStatus.CANCELLED, 0)
    assert subscription.entitled_until is not None
    assert subscription.entitled_until <= subscription.cancelled_at  # type: ignore[operator]
    assert "subscription.renewed" not in event_types(subscription)


def _cancelled_while_at_the_carrier(subs: Subs) -> Payment:
    """A subscription cancelled now while its renewal's payment is at the carrier, unanswered: that payment."""
    subscription = subs.active()
    assert subscription.current_period_end is not None
    balance(subscription, UNANSWERED)
    subs.renew(subscription.current_period_end)
    [payment] = _renewal_payments(subscription)
    subs.cancel(str(subscription.public_id), reason="player asked", at_period_end=False)
    return payment


def test_the_refund_of_an_unwanted_renewal_is_made_once_however_often_its_task_runs(subs: Subs) -> None:
    from subscriptions.tasks import refund_unwanted_charge

    payment = _cancelled_while_at_the_carrier(subs)
    with subs.shop.after_commit(execute=True):
        record_charge_result(payment_id=payment.pk, result=CarrierResult(outcome=Outcome.SUCCEEDED))
    charge = SubscriptionCharge.objects.get(payment_id=payment.pk)
    with subs.shop.after_commit(execute=True):
        refund_unwanted_charge(charge.pk)  # delivered again (at least once)
        refund_unwanted_charge(charge.pk)
    assert Refund.objects.filter(payment_id=payment.pk).count() == 1


def _unwanted_charge_refunded_by_its_carrier(subs: Subs) -> tuple[SubscriptionCharge, Payment]:
    """A renewal charged after an immediate cancellation, on a carrier that refunds through its protocol (whose
    answers the test gives): nothing of the refund is run yet."""
    payment = _cancelled_while_at_the_carrier(subs)
    Carrier.objects.filter(pk=subs.shop.carrier.pk).update(protocol=Protocol.CAMARA, supports_refund=True)
    with subs.shop.after_commit():  # the refund's task is queued, not run: the test runs it
        record_charge_result(payment_id=payment.pk, result=CarrierResult(outcome=Outcome.SUCCEEDED))
    return SubscriptionCharge.objects.get(payment_id=payment.pk), payment


def _run_refund_check(subs: Subs, charge: SubscriptionCharge, check: int) -> list[tuple[int, int]]:
    """Run the refund task's check `check` (as its queued message would), without running what it queues;
    returns the checks it queued next, with their waits."""
    before = OutboxMessage.objects.filter(task=REFUND_TASK).count()
    with subs.shop.after_commit():
        refund_unwanted_charge(charge_id=charge.pk, check=check)
    queued = OutboxMessage.objects.filter(task=REFUND_TASK).order_by("id")[before:]
    return [(m.kwargs["check"], m.countdown_seconds) for m in queued]


def _carrier_answers(refund: Refund, outcome: Outcome) -> None:
    result = CarrierResult.failed(ErrorCode.REJECTED) if outcome == Outcome.FAILED else CarrierResult(outcome)
    record_refund_result(refund_id=refund.pk, result=result)


def test_a_refund_of_an_unwanted_renewal_refused_by_the_carrier_is_asked_for_again_after_a_wait(subs: Subs) -> None:
    charge, payment = _unwanted_charge_refunded_by_its_carrier(subs)

    assert _run_refund_check(subs, charge, 0) == [(1, 60)]
    (first,) = Refund.objects.filter(payment_id=payment.pk)
    assert (first.status, first.via_carrier, first.amount_minor) == ("pending", True, 99)
    assert _run_refund_check(subs, charge, 1) == [(2, 300)]  # at the carrier still: looked at again later
    assert Refund.objects.filter(payment_id=payment.pk).count() == 1
    _carrier_answers(first, Outcome.FAILED)

    assert _run_refund_check(subs, charge, 2) == [(3, 1800)]

    second = Refund.objects.filter(payment_id=payment.pk).exclude(pk=first.pk).get()
    assert (second.status, second.amount_minor, second.requested_by) == ("pending", 99, "system")
    _carrier_answers(second, Outcome.SUCCEEDED)
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == (PaymentStatus.REFUNDED, 99)
    assert _run_refund_check(subs, charge, 3) == []  # refunded: no more checks
    assert Refund.objects.filter(payment_id=payment.pk).count() == 2


def test_an_automatic_refund_put_off_by_a_staff_refund_is_asked_for_when_that_one_fails(subs: Subs) -> None:
    charge, payment = _unwanted_charge_refunded_by_its_carrier(subs)
    with subs.shop.after_commit():
        staff = request_refund(payment=payment, amount_minor=None, reason="player asked", actor="ops")

    assert _run_refund_check(subs, charge, 0) == [(1, 60)]  # the amount is held: looked at again, not dropped

    assert list(Refund.objects.filter(payment_id=payment.pk).values_list("pk", flat=True)) == [staff.pk]
    _carrier_answers(staff, Outcome.FAILED)
    assert _run_refund_check(subs, charge, 1) == [(2, 300)]
    automatic = Refund.objects.filter(payment_id=payment.pk).exclude(pk=staff.pk).get()
    assert (automatic.status, automatic.amount_minor, automatic.requested_by) == ("pending", 99, "system")


def test_the_automatic_refund_stops_after_its_last_attempt_and_its_last_check(
    subs: Subs, caplog: pytest.LogCaptureFixture
) -> None:
    charge, payment = _unwanted_charge_refunded_by_its_carrier(subs)
    for check in range(UNWANTED_REFUND_ATTEMPTS):
        assert _run_refund_check(subs, charge, check) == [(check + 1, UNWANTED_REFUND_CHECKS[check])]
        _carrier_answers(Refund.objects.get(payment_id=payment.pk, status="pending"), Outcome.FAILED)

    assert _run_refund_check(subs, charge, UNWANTED_REFUND_ATTEMPTS) == []

    assert list(Refund.objects.filter(payment_id=payment.pk).values_list("status", flat=True)) == ["failed"] * 3
    assert "the automatic refund failed 3 times; refund the payment by hand" in caplog.text
    # A refund still at the carrier at the last check is not waited for any longer.
    Refund.objects.filter(payment_id=payment.pk).update(status="pending")
    assert _run_refund_check(subs, charge, len(UNWANTED_REFUND_CHECKS)) == []
    assert "not confirmed after 6 checks" in caplog.text


# --- after an outage: only the period containing now --------------------------------------------------------


def _daily(subs: Subs) -> Subs:
    plan, offer = make_plan(subs.shop, period=Period.DAILY, code="vip-daily")
    return Subs(shop=subs.shop, plan=plan, offer=offer)


def test_after_an_outage_only_the_current_period_is_charged_and_the_ones_missed_are_recorded(subs: Subs) -> None:
    daily = _daily(subs)
    subscription = daily.active()
    anchor = subscription.anchor_at
    assert anchor is not None
    now = anchor + 4 * DAY + timedelta(hours=5)  # the engine stopped for three days: periods 1 to 3 went by

    run = daily.renew(now)

    assert (run.charged, run.missed) == (1, 3)
    assert renewals_of(subscription) == [(1, 1, "missed"), (2, 1, "missed"), (3, 1, "missed"), (4, 1, "succeeded")]
    assert len(_renewal_payments(subscription)) == 1
    missed = SubscriptionCharge.objects.filter(subscription=subscription, outcome="missed").order_by("period_index")
    assert [(c.period_start, c.period_end) for c in missed] == [bounds(anchor, Period.DAILY, k) for k in (1, 2, 3)]
    subscription.refresh_from_db()
    assert subscription.period_index == 4
    assert (subscription.current_period_start, subscription.entitled_until) == bounds(anchor, Period.DAILY, 4)
    assert daily.renew(now + timedelta(minutes=1)).charged == 0
    assert daily.renew(anchor + 5 * DAY).charged == 1  # and on from there, one period at a time
    assert renewals_of(subscription)[-1] == (5, 1, "succeeded")


def test_each_missed_period_is_told_to_the_app_once_with_its_period(subs: Subs, hooks: Receiver) -> None:
    daily = _daily(subs)
    subscription = daily.active()
    anchor = subscription.anchor_at
    assert anchor is not None
    subscription.carrier.is_active = False
    subscription.carrier.save(update_fields=["is_active"])
    daily.renew(anchor + DAY)  # paused: the engine looks again an hour later
    daily.renew(anchor + 2 * DAY + timedelta(hours=1))  # period 1 ended unpaid
    daily.renew(anchor + 2 * DAY + timedelta(hours=2))  # nothing new ended
    subscription.carrier.is_active = True
    subscription.carrier.save(update_fields=["is_active"])
    daily.renew(anchor + 4 * DAY + timedelta(hours=5))  # periods 2 and 3 ended too; period 4 charged
    daily.renew(anchor + 4 * DAY + timedelta(hours=6))

    missed = [
        delivery.payload["data"]
        for delivery in WebhookDelivery.objects.filter(event_type="subscription.period_missed").order_by("id")
    ]
    assert [(m["period"]["index"], m["period"]["start"], m["period"]["end"]) for m in missed] == [
        (k, *(moment.isoformat() for moment in bounds(anchor, Period.DAILY, k))) for k in (1, 2, 3)
    ]
    assert {(m["id"], m["payment"], m["status"]) for m in missed} == {(str(subscription.public_id), None, "active")}
    assert event_types(subscription) == [
        "subscription.activated",
        "subscription.period_missed",
        "subscription.period_missed",
        "subscription.period_missed",
        "subscription.renewed",
        "subscription.receipt",
    ]


def test_the_database_refuses_to_charge_a_period_recorded_as_missed(subs: Subs) -> None:
    daily = _daily(subs)
    subscription = daily.active()
    assert subscription.anchor_at is not None
    daily.renew(subscription.anchor_at + 3 * DAY)
    late = SubscriptionCharge.objects.get(subscription=subscription, period_index=2)
    assert late.outcome == "missed"
    payment = _renewal_payments(subscription)[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        SubscriptionCharge.objects.create(
            subscription=subscription, kind="renewal", period_index=2, attempt=2, payment=payment
        )


def test_a_declined_daily_period_is_not_retried_after_it_ended_the_current_one_is(subs: Subs) -> None:
    daily = _daily(subs)
    subscription = daily.active()
    end = subscription.current_period_end
    assert end is not None
    balance(subscription, BROKE)
    daily.renew(end)  # period 1 declined: past due, retried a day later
    subscription.refresh_from_db()
    assert (subscription.status, subscription.next_charge_at) == (SubscriptionStatus.PAST_DUE, end + DAY)

    balance(subscription, "+447400123456")
    daily.renew(end + DAY)

    assert renewals_of(subscription) == [(1, 1, "failed"), (1, 2, "missed"), (2, 1, "succeeded")]
    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index) == (SubscriptionStatus.ACTIVE, 2)


def test_a_weekly_renewal_paused_past_its_period_charges_the_current_week_only(subs: Subs) -> None:
    subscription = subs.active()
    due = subscription.current_period_end
    assert due is not None
    subscription.carrier.is_active = False
    subscription.carrier.save(update_fields=["is_active"])
    subs.renew(due)
    subscription.carrier.is_active = True
    subscription.carrier.save(update_fields=["is_active"])

    subs.renew(due + 8 * DAY)  # looked at again once billing is on: week 1 ended unpaid meanwhile

    assert renewals_of(subscription) == [(1, 1, "missed"), (2, 1, "succeeded")]


def test_an_active_subscription_whose_renewal_stays_paused_expires_at_the_end_of_the_retry_window(
    subs: Subs, hooks: Receiver
) -> None:
    subscription = subs.active()
    due = subscription.current_period_end
    assert due is not None
    subscription.carrier.is_active = False
    subscription.carrier.save(update_fields=["is_active"])
    assert subs.renew(due).paused == 1
    assert subs.renew(due + 7 * DAY - timedelta(seconds=1)).paused == 1  # still within the 7 days
    subscription.refresh_from_db()
    assert (subscription.status, subscription.entitled_until) == (SubscriptionStatus.ACTIVE, due)

    run = subs.renew(due + 7 * DAY)

    assert (run.expired, run.missed, run.paused) == (1, 1, 0)
    subscription.refresh_from_db()
    assert (subscription.status, subscription.next_charge_at, subscription.entitled_until) == (
        SubscriptionStatus.EXPIRED,
        None,
        due,
    )
    change = subscription.history.get(to_status=SubscriptionStatus.EXPIRED)
    assert (change.actor, change.reason) == ("system", PAUSED_EXPIRY_REASON)
    assert event_types(subscription)[-2:] == ["subscription.period_missed", "subscription.expired"]
    assert renewals_of(subscription) == [(1, 1, "missed")]
    assert subs.renew(due + 8 * DAY).expired == 0  # ended: never looked at again


def test_a_declined_renewal_after_missed_periods_counts_its_grace_from_its_own_period(subs: Subs) -> None:
    daily = _daily(subs)
    subscription = daily.active()
    anchor = subscription.anchor_at
    assert anchor is not None
    balance(subscription, BROKE)
    daily.renew(anchor + 10 * DAY)  # periods 1 to 9 missed, period 10 declined
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert subscription.entitled_until == anchor + 13 * DAY  # grace from period 10's start, not period 1's
    daily.renew(anchor + 11 * DAY)  # retried, not expired for a retry window counted from period 1
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert renewals_of(subscription)[-2:] == [(10, 2, "missed"), (11, 1, "failed")]


def test_a_declined_renewal_paused_after_missed_periods_keeps_its_retry_window_from_its_own_period(
    subs: Subs,
) -> None:
    daily = _daily(subs)
    subscription = daily.active()
    anchor = subscription.anchor_at
    assert anchor is not None
    balance(subscription, BROKE)
    daily.renew(anchor + 10 * DAY)  # periods 1 to 9 missed, period 10 declined
    subscription.carrier.is_active = False
    subscription.carrier.save(update_fields=["is_active"])

    run = daily.renew(anchor + 11 * DAY)  # paused: its window runs from period 10, not from period 1

    assert (run.expired, run.paused) == (0, 1)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert daily.renew(anchor + 17 * DAY).expired == 1


def test_a_period_whose_charge_awaits_its_outcome_is_neither_missed_nor_overtaken_by_the_next(subs: Subs) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    balance(subscription, UNANSWERED)
    subs.renew(end)  # period 1's charge: sent, no answer yet
    Subscription.objects.filter(pk=subscription.pk).update(next_charge_at=end)  # made due again by hand

    run = subs.renew(end + 8 * DAY)  # in period 2 now

    assert (run.charged, run.missed, run.skipped) == (0, 0, 1)
    assert renewals_of(subscription) == [(1, 1, "pending")]  # its outcome, when it comes, settles period 1
