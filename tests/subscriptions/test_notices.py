"""Reminders before a monthly plan's renewal and receipts after each renewal: webhooks to the app, sent once
per period however often the engine runs."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from payments.models import WebhookDelivery
from subscriptions.models import Subscription, SubscriptionCharge, SubscriptionNotice
from subscriptions.periods import Period
from subscriptions.services.notices import send_receipt
from tests.payments.test_webhooks import Receiver
from tests.subscriptions.conftest import Subs, event_types, make_plan

pytestmark = pytest.mark.django_db

ANCHOR = datetime(2026, 1, 10, 9, 30, tzinfo=UTC)
RENEWS_AT = datetime(2026, 2, 10, 9, 30, tzinfo=UTC)  # the first period's end


def monthly(subs: Subs) -> tuple[Subs, Subscription]:
    plan, offer = make_plan(subs.shop, period=Period.MONTHLY, code="vip-monthly")
    monthly_subs = Subs(shop=subs.shop, plan=plan, offer=offer)
    (subscription,) = monthly_subs.bulk_active(1, anchor=ANCHOR)
    return monthly_subs, subscription


def payloads(subscription: Subscription, event: str) -> list[dict[str, object]]:
    deliveries = WebhookDelivery.objects.filter(event_type=f"subscription.{event}").order_by("id")
    return [d.payload["data"] for d in deliveries if d.payload["data"]["id"] == str(subscription.public_id)]


def test_a_monthly_renewal_is_reminded_48_hours_ahead_once_however_often_the_engine_runs(
    subs: Subs, hooks: Receiver
) -> None:
    monthly_subs, subscription = monthly(subs)
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=48, seconds=1)).reminded == 0
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=48)).reminded == 1
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=47)).reminded == 0
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=1)).reminded == 0
    (reminder,) = payloads(subscription, "reminder")
    assert reminder["renews_at"] == RENEWS_AT.isoformat()
    assert (reminder["renewal_period_index"], reminder["amount_minor"], reminder["currency"]) == (
        1,
        subscription.amount_minor,
        subscription.currency,
    )
    assert list(SubscriptionNotice.objects.values_list("period_index", "kind")) == [(1, "reminder")]


def test_the_next_period_is_reminded_again_after_a_renewal(subs: Subs, hooks: Receiver) -> None:
    monthly_subs, subscription = monthly(subs)
    monthly_subs.renew(RENEWS_AT - timedelta(hours=47))
    monthly_subs.renew(RENEWS_AT)
    subscription.refresh_from_db()
    assert subscription.period_index == 1
    assert subscription.current_period_end is not None
    assert monthly_subs.renew(subscription.current_period_end - timedelta(hours=47)).reminded == 1
    assert [r["renewal_period_index"] for r in payloads(subscription, "reminder")] == [1, 2]


def test_a_reminder_whose_time_passed_while_the_engine_was_stopped_is_sent_late_a_day_ahead_or_more(
    subs: Subs, hooks: Receiver
) -> None:
    monthly_subs, subscription = monthly(subs)
    run = monthly_subs.renew(RENEWS_AT - timedelta(hours=24, seconds=1))  # the engine stopped 48 h to 24 h ahead
    assert (run.reminded, run.reminders_skipped) == (1, 0)
    (reminder,) = payloads(subscription, "reminder")
    assert (reminder["renews_at"], reminder["renewal_period_index"]) == (RENEWS_AT.isoformat(), 1)
    assert SubscriptionNotice.objects.get().skipped_reason == ""


def test_a_reminder_too_close_to_the_renewal_is_not_sent_and_recorded_as_skipped_with_why(
    subs: Subs, hooks: Receiver
) -> None:
    monthly_subs, subscription = monthly(subs)
    run = monthly_subs.renew(RENEWS_AT - timedelta(hours=23))  # back under the 24 h minimum notice
    assert (run.reminded, run.reminders_skipped) == (0, 1)
    notice = SubscriptionNotice.objects.get()
    assert (notice.period_index, notice.kind) == (1, "reminder")
    assert "23.0 h away" in notice.skipped_reason
    assert "24 h minimum" in notice.skipped_reason
    again = monthly_subs.renew(RENEWS_AT - timedelta(hours=22))
    assert (again.reminded, again.reminders_skipped) == (0, 0)
    assert payloads(subscription, "reminder") == []
    with override_settings(SUBSCRIPTION_REMINDER_MIN_HOURS=0):  # no minimum: sent while the renewal is ahead
        monthly_subs.bulk_active(1, anchor=ANCHOR)
        assert monthly_subs.renew(RENEWS_AT - timedelta(hours=1)).reminded == 1


@override_settings(SUBSCRIPTION_REMINDER_HOURS=24)
def test_a_notice_no_longer_than_the_late_minimum_still_sends_reminders_on_time_and_late_up_to_half_of_it(
    subs: Subs, hooks: Receiver
) -> None:
    monthly_subs, on_time = monthly(subs)  # renews 24 h after the run
    (late,) = monthly_subs.bulk_active(1, anchor=ANCHOR - timedelta(hours=11))  # 13 h after: over half the notice
    (too_late,) = monthly_subs.bulk_active(1, anchor=ANCHOR - timedelta(hours=13))  # 11 h after: under it
    run = monthly_subs.renew(RENEWS_AT - timedelta(hours=24))
    assert (run.reminded, run.reminders_skipped) == (2, 1)
    assert [r["renewal_period_index"] for r in payloads(on_time, "reminder")] == [1]
    assert [r["renewal_period_index"] for r in payloads(late, "reminder")] == [1]
    assert payloads(too_late, "reminder") == []
    assert "12 h minimum" in SubscriptionNotice.objects.get(subscription=too_late).skipped_reason


def test_a_renewal_due_when_the_engine_comes_back_is_charged_with_its_reminder_recorded_as_skipped(
    subs: Subs, hooks: Receiver
) -> None:
    monthly_subs, subscription = monthly(subs)
    run = monthly_subs.renew(RENEWS_AT + timedelta(hours=2))
    assert (run.charged, run.reminded, run.reminders_skipped) == (1, 0, 1)
    notice = SubscriptionNotice.objects.get(kind="reminder")
    assert notice.period_index == 1
    assert "due before the reminder could be sent" in notice.skipped_reason
    subscription.refresh_from_db()
    assert subscription.period_index == 1
    assert subscription.current_period_end is not None
    # The next period's reminder is sent on time again.
    assert monthly_subs.renew(subscription.current_period_end - timedelta(hours=48)).reminded == 1
    assert [r["renewal_period_index"] for r in payloads(subscription, "reminder")] == [2]


def test_no_reminder_for_a_weekly_plan_a_cancellation_at_the_period_end_or_when_switched_off(
    subs: Subs, hooks: Receiver
) -> None:
    (weekly,) = subs.bulk_active(1, anchor=ANCHOR)
    assert weekly.current_period_end is not None
    assert subs.renew(weekly.current_period_end - timedelta(hours=1)).reminded == 0
    monthly_subs, subscription = monthly(subs)
    Subscription.objects.filter(pk=subscription.pk).update(cancel_at_period_end=True)
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=1)).reminded == 0
    Subscription.objects.filter(pk=subscription.pk).update(cancel_at_period_end=False)
    with override_settings(SUBSCRIPTION_REMINDER_HOURS=0):
        assert monthly_subs.renew(RENEWS_AT - timedelta(hours=1)).reminded == 0
    assert not SubscriptionNotice.objects.filter(kind="reminder").exists()


def test_a_successful_renewal_sends_one_receipt_even_when_the_engine_runs_twice(subs: Subs, hooks: Receiver) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    subs.renew(end)
    subs.renew(end)
    subs.renew(end + timedelta(hours=1))
    charge = SubscriptionCharge.objects.get(subscription=subscription, kind="renewal", outcome="succeeded")
    send_receipt(subscription, charge, at=end)  # sent again by hand: refused by the notice's uniqueness
    (receipt,) = payloads(subscription, "receipt")
    assert charge.payment is not None
    assert receipt["payment"] == str(charge.payment.public_id)
    assert (receipt["amount_minor"], receipt["currency"]) == (charge.payment.amount_minor, charge.payment.currency)
    assert receipt["period"] == {"index": 1, "start": end.isoformat(), "end": (end + timedelta(days=7)).isoformat()}
    assert event_types(subscription).count("subscription.receipt") == 1
    assert list(SubscriptionNotice.objects.values_list("period_index", "kind")) == [(1, "receipt")]


def test_a_declined_renewal_sends_no_receipt(subs: Subs, hooks: Receiver) -> None:
    subscription = subs.active()
    end = subscription.current_period_end
    assert end is not None
    Subscription.objects.filter(pk=subscription.pk).update(msisdn=subscription.msisdn[:-4] + "0002")  # broke
    subs.renew(end)
    (renewal,) = SubscriptionCharge.objects.filter(subscription=subscription, kind="renewal")
    assert (renewal.outcome, renewal.failure_code) == ("failed", "insufficient_funds")  # tried, and declined
    subscription.refresh_from_db()
    assert subscription.status == "past_due"
    assert "subscription.renewal_failed" in event_types(subscription)
    assert "subscription.receipt" not in event_types(subscription)
    assert not SubscriptionNotice.objects.exists()


def test_a_renewal_that_will_not_be_charged_is_not_announced(subs: Subs, hooks: Receiver) -> None:
    monthly_subs, subscription = monthly(subs)
    subscription.carrier.is_active = False  # billing through the carrier switched off: the renewal pauses
    subscription.carrier.save(update_fields=["is_active"])
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=47)).reminded == 0
    subscription.carrier.is_active = True
    subscription.carrier.save(update_fields=["is_active"])
    price_point = subscription.price_point
    price_point.amount_minor += 100  # the agreed price is no longer the price point's
    price_point.save(update_fields=["amount_minor"])
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=47)).reminded == 0
    price_point.amount_minor -= 100
    price_point.save(update_fields=["amount_minor"])
    assert monthly_subs.renew(RENEWS_AT - timedelta(hours=47)).reminded == 1
