"""Carrier-managed renewals on the aggregator, against its simulator over real HTTP: the aggregator holds the
schedule, charges each period and tells of it by signed callback; PlayPay records what it is told."""

import importlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from typing import Any

import httpx
import pytest
from celery.contrib.testing.worker import start_worker
from django.apps import apps
from django.core.management import call_command
from django.db.models import Sum
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from carriers.adapters.aggregator import sign
from carriers.models import Carrier
from payments.models import CarrierNotification, LedgerEntry, LedgerLine, Payment, PaymentStatus, Refund
from playpay.beat import schedule
from playpay.celery import app as celery_app
from sandbox.simulators import aggregator as aggregator_sim
from sandbox.simulators.core import Decline, simulator
from sandbox.tasks import run_aggregator_schedule
from subscriptions.models import Plan, PlanOffer, Subscription, SubscriptionCharge
from subscriptions.services.carrier_managed import (
    CANCEL_RETRY_WAITS,
    check_overdue,
    register_at_carrier,
    resend_cancellations,
)
from subscriptions.services.renewals import run_renewals
from tenants.services import issue_api_key
from tests.concurrency import at_once
from tests.conftest import MSISDN, StaffClient
from tests.factories import AppFactory
from tests.payments.carrier_helpers import last_pin, simulated_carrier, wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True)]

OVERDUE = timedelta(minutes=360)  # SUBSCRIPTION_CARRIER_OVERDUE_MINUTES
SCHEDULE = importlib.import_module("sandbox.migrations.0002_schedule_aggregator_renewals")


@dataclass
class Aggregator:
    live: str
    carrier: Carrier
    client: APIClient

    @property
    def callback_url(self) -> str:
        return f"{self.live}/api/v1/carriers/{self.carrier.slug}/notifications/"

    def opt_in(self, msisdn: str = MSISDN) -> Subscription:
        """Subscribe and confirm the PIN: active, and handed to the aggregator."""
        body = {"user_ref": "player-1", "msisdn": msisdn, "plan": "vip-weekly"}
        created = self.client.post("/api/v1/subscriptions/", body, format="json", HTTP_IDEMPOTENCY_KEY=msisdn)
        assert created.status_code == 201, created.content
        public_id = created.json()["id"]
        pin = last_pin("aggregator", msisdn)
        # The aggregator tells of the PIN it sent by callback: the PIN is taken once the payment knows.
        opt_in = SubscriptionCharge.objects.get(subscription__public_id=public_id, kind="opt_in")
        wait_for_status(str(payment_of(opt_in).public_id), PaymentStatus.PIN_SENT)
        confirmed = self.client.post(f"/api/v1/subscriptions/{public_id}/confirm/", {"pin": pin}, format="json")
        assert confirmed.status_code < 300, confirmed.content
        wait_for(
            lambda: (
                Subscription.objects.filter(public_id=public_id, status="active").exclude(carrier_reference="").exists()
            ),
            what="activation and registration at the aggregator",
        )
        return Subscription.objects.get(public_id=public_id)

    def post(self, event: dict[str, Any], *, secret: str = aggregator_sim.CALLBACK_SECRET) -> httpx.Response:
        """A subscription event posted as the aggregator does (signed with `secret`)."""
        body, headers = aggregator_sim.signed(event)
        if secret != aggregator_sim.CALLBACK_SECRET:
            headers["X-Signature"] = sign(secret, headers["X-Timestamp"], body)
        return httpx.post(self.callback_url, content=body, headers=headers, timeout=10)


@pytest.fixture
def aggregator(live_server: Any, settings: Any) -> Aggregator:
    settings.PUBLIC_BASE_URL = live_server.url
    carrier = simulated_carrier(
        live_server.url,
        "aggregator",
        supports_subscriptions=True,
        supports_one_click=True,
        insufficient_funds_retry_minutes="",
    )
    app = AppFactory.create()
    plan = Plan.objects.create(app=app, code="vip-weekly", name="VIP pass", period="weekly")
    PlanOffer.objects.create(plan=plan, carrier=carrier, price_point=carrier.price_points.get())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issue_api_key(app=app).raw_key}")
    return Aggregator(live=str(live_server.url), carrier=carrier, client=client)


def renewals(subscription: Subscription) -> list[SubscriptionCharge]:
    return list(subscription.charges.filter(kind="renewal").order_by("id"))


def payment_of(charge: SubscriptionCharge) -> Payment:
    assert charge.payment_id is not None
    return Payment.objects.get(pk=charge.payment_id)


def test_an_opt_in_on_the_aggregator_hands_its_renewals_to_the_aggregator(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()

    assert subscription.carrier_managed
    held = simulator("aggregator").records[subscription.carrier_reference]
    assert held["merchant_reference"] == str(subscription.public_id)
    assert subscription.anchor_at is not None
    assert (held["period"], held["anchor"]) == ("weekly", int(subscription.anchor_at.timestamp()))
    assert (held["amount"], held["currency"]) == (99, "GBP")
    assert held["callback_url"] == aggregator.callback_url
    end = subscription.current_period_end
    assert end is not None
    # PlayPay charges none of its periods: `next_charge_at` is when it would ask the aggregator, late news.
    assert subscription.next_charge_at == end + OVERDUE
    assert run_renewals(now=end + timedelta(days=2)).charged == 0
    assert renewals(subscription) == []
    assert simulator("aggregator").records[subscription.carrier_reference]["periods_paid"] == 0


def test_a_renewal_callback_records_the_period_its_payment_and_ledger(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    event = aggregator_sim.renew(subscription.carrier_reference)
    assert event is not None

    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, period_index=1).exists(), what="the renewal")
    [charge] = renewals(subscription)
    assert (charge.outcome, charge.period_index, charge.attempt) == ("succeeded", 1, 1)
    payment = payment_of(charge)
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.carrier_reference == event["data"]["charge_id"]
    assert (payment.amount_minor, payment.currency) == (99, "GBP")
    assert payment.metadata == {"subscription": str(subscription.public_id), "period": 1}
    [entry] = LedgerEntry.objects.filter(payment=payment)
    assert entry.kind == LedgerEntry.Kind.CHARGE
    lines = LedgerLine.objects.filter(entry=entry)
    assert lines.count() >= 2
    assert lines.aggregate(total=Sum("amount_minor"))["total"] == 0  # balanced
    subscription.refresh_from_db()
    assert subscription.status == "active"
    assert charge.period_end is not None
    assert subscription.current_period_end == charge.period_end == subscription.entitled_until
    assert subscription.next_charge_at == charge.period_end + OVERDUE
    assert CarrierNotification.objects.get(notification_id=event["event_id"]).result.startswith("period 1 succeeded")


def test_a_duplicate_callback_changes_nothing(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    event = aggregator_sim.renew(subscription.carrier_reference, lost=True)
    assert event is not None

    first, second = aggregator.post(event), aggregator.post(event)

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["result"].startswith("duplicate")
    [charge] = renewals(subscription)
    assert charge.outcome == "succeeded"
    assert Payment.objects.filter(metadata__subscription=str(subscription.public_id)).count() == 2  # opt-in, period 1
    assert LedgerEntry.objects.filter(payment=payment_of(charge)).count() == 1


def test_a_renewal_told_after_the_cancellation_is_recorded_and_the_subscription_stays_cancelled(
    aggregator: Aggregator,
) -> None:
    subscription = aggregator.opt_in()
    late = aggregator_sim.renew(subscription.carrier_reference, lost=True)
    assert late is not None
    aggregator_sim.stop(subscription.carrier_reference)  # the player's STOP, told at once
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="cancelled").exists(), what="the STOP")

    answer = aggregator.post(late)

    assert answer.status_code == 200, answer.content
    [charge] = renewals(subscription)
    assert (charge.outcome, charge.period_index) == ("succeeded", 1)
    assert payment_of(charge).status == PaymentStatus.SUCCEEDED
    subscription.refresh_from_db()
    assert subscription.status == "cancelled"
    assert subscription.period_index == 0
    assert subscription.cancel_reason == "STOP at the carrier"
    assert not Refund.objects.exists()  # the aggregator charged it by its schedule: not PlayPay's to undo


def test_an_old_periods_notice_never_moves_the_subscription_back(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    first = aggregator_sim.renew(subscription.carrier_reference, lost=True)
    assert first is not None
    aggregator_sim.renew(subscription.carrier_reference)
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, period_index=2).exists(), what="period 2")
    subscription.refresh_from_db()
    entitled = subscription.entitled_until

    assert aggregator.post(first).status_code == 200

    subscription.refresh_from_db()
    assert (subscription.status, subscription.period_index, subscription.entitled_until) == ("active", 2, entitled)
    assert sorted((c.period_index, c.outcome) for c in renewals(subscription)) == [(1, "succeeded"), (2, "succeeded")]


def test_a_declined_renewal_makes_it_past_due_and_playpay_retries_nothing(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    aggregator_sim.renew(subscription.carrier_reference, decline=Decline.INSUFFICIENT_FUNDS)

    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="past_due").exists(), what="past_due")
    [charge] = renewals(subscription)
    assert (charge.outcome, charge.failure_code) == ("failed", "insufficient_funds")
    assert payment_of(charge).status == PaymentStatus.FAILED
    assert not LedgerEntry.objects.filter(payment=payment_of(charge)).exists()
    subscription.refresh_from_db()
    assert charge.period_start is not None
    assert subscription.entitled_until == charge.period_start + timedelta(days=3)  # SUBSCRIPTION_GRACE_DAYS
    assert run_renewals(now=charge.period_start + timedelta(days=1)).charged == 0
    assert len(renewals(subscription)) == 1

    # The aggregator's own retry succeeds: the period is paid, the subscription active again.
    aggregator_sim.renew(subscription.carrier_reference)
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="active").exists(), what="the retry")
    assert [(c.attempt, c.outcome) for c in renewals(subscription)] == [(1, "failed"), (2, "succeeded")]


def test_a_callback_with_a_bad_signature_is_refused_and_changes_nothing(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    event = aggregator_sim.renew(subscription.carrier_reference, lost=True)
    assert event is not None

    answer = aggregator.post(event, secret="not-the-callback-secret")

    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == "notification_signature_invalid"
    assert not CarrierNotification.objects.filter(notification_id=event["event_id"]).exists()
    assert renewals(subscription) == []
    subscription.refresh_from_db()
    assert subscription.period_index == 0
    # The real one, later, is applied: the refusal recorded nothing that would make it a duplicate.
    assert aggregator.post(event).json()["result"].startswith("period 1 succeeded")


def test_an_overdue_renewal_is_asked_about_and_what_the_aggregator_lists_is_recorded(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    lost = aggregator_sim.renew(subscription.carrier_reference, lost=True)  # its callback never arrives
    assert lost is not None
    end = subscription.current_period_end
    assert end is not None

    assert check_overdue(now=end + OVERDUE - timedelta(minutes=1)) == 0  # not overdue yet
    assert renewals(subscription) == []
    assert check_overdue(now=end + OVERDUE) == 1

    [charge] = renewals(subscription)
    assert (charge.outcome, charge.period_index) == ("succeeded", 1)
    assert payment_of(charge).status == PaymentStatus.SUCCEEDED
    subscription.refresh_from_db()
    assert subscription.period_index == 1
    assert charge.period_end is not None
    assert subscription.next_charge_at == charge.period_end + OVERDUE
    assert CarrierNotification.objects.get(notification_id=lost["event_id"]).result.startswith("from the status query")
    # The callback arriving after all is a duplicate.
    assert aggregator.post(lost).json()["result"].startswith("duplicate")

    # A STOP whose callback is lost too: the next overdue check finds the subscription cancelled.
    aggregator_sim.stop(subscription.carrier_reference, lost=True)
    assert check_overdue(now=charge.period_end + OVERDUE) == 1
    subscription.refresh_from_db()
    assert subscription.status == "cancelled"
    assert len(renewals(subscription)) == 1


def test_an_overdue_check_with_nothing_new_asks_again_an_interval_later(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    end = subscription.current_period_end
    assert end is not None

    assert check_overdue(now=end + OVERDUE) == 1

    subscription.refresh_from_db()
    assert subscription.next_charge_at == end + 2 * OVERDUE
    assert (subscription.status, subscription.period_index) == ("active", 0)
    assert check_overdue(now=end + OVERDUE) == 0


def test_an_app_cancelling_now_stops_the_renewals_at_the_aggregator(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()

    body = {"at_period_end": False, "reason": "player asked"}
    answer = aggregator.client.post(f"/api/v1/subscriptions/{subscription.public_id}/cancel/", body, format="json")

    assert answer.status_code == 200, answer.content
    assert answer.json()["status"] == "cancelled"
    wait_for(
        lambda: simulator("aggregator").records[subscription.carrier_reference]["status"] == "cancelled",
        what="the cancellation at the aggregator",
    )
    assert aggregator_sim.renew(subscription.carrier_reference) is None  # no period is charged after it
    # The aggregator's own notice of it changes nothing more.
    wait_for(
        lambda: CarrierNotification.objects.filter(result="ignored: already cancelled").exists(),
        what="the aggregator's cancellation notice",
    )
    subscription.refresh_from_db()
    assert subscription.status == "cancelled"
    assert subscription.cancel_reason == "player asked"


def unreachable(carrier: Carrier) -> str:
    """The carrier's endpoint moved to a closed port (the aggregator down); returns the real one."""
    endpoint = carrier.endpoint
    Carrier.objects.filter(pk=carrier.pk).update(endpoint="http://127.0.0.1:9/simulators/aggregator")
    return endpoint


def test_a_cancellation_the_aggregator_did_not_confirm_is_told_again_until_it_is(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    endpoint = unreachable(aggregator.carrier)
    body = {"at_period_end": False, "reason": "player asked"}
    answer = aggregator.client.post(f"/api/v1/subscriptions/{subscription.public_id}/cancel/", body, format="json")
    assert answer.json()["status"] == "cancelled"
    subscription.refresh_from_db()
    # Not confirmed: booked again a minute later, and the aggregator still renews it.
    assert subscription.carrier_cancel_attempts == 1
    assert subscription.carrier_cancel_due_at is not None
    told_at = subscription.carrier_cancel_due_at - timedelta(seconds=CANCEL_RETRY_WAITS[0])
    assert abs((told_at - timezone.now()).total_seconds()) < 30
    assert simulator("aggregator").records[subscription.carrier_reference]["status"] == "active"
    Carrier.objects.filter(pk=aggregator.carrier.pk).update(endpoint=endpoint)  # the aggregator is back

    assert resend_cancellations(now=timezone.now()) == 0  # not yet
    time_passes(subscription)
    assert resend_cancellations(now=timezone.now()) == 1  # queued on the carrier's queue, sent at the commit
    assert simulator("aggregator").records[subscription.carrier_reference]["status"] == "cancelled"
    confirmed = Subscription.objects.values_list("carrier_cancel_due_at", "carrier_cancel_attempts").get(
        pk=subscription.pk
    )
    assert confirmed == (None, 0)
    assert resend_cancellations(now=timezone.now() + timedelta(days=2)) == 0  # confirmed: never told again


def test_a_subscription_cancelled_before_the_aggregator_took_it_is_cancelled_there_once_it_does(
    aggregator: Aggregator,
) -> None:
    subscription = aggregator.opt_in()
    reference = subscription.carrier_reference
    # As if the hand-over had failed (the aggregator down at activation): PlayPay has no id for it yet.
    Subscription.objects.filter(pk=subscription.pk).update(carrier_reference="")
    body = {"at_period_end": True, "reason": "player asked"}
    answer = aggregator.client.post(f"/api/v1/subscriptions/{subscription.public_id}/cancel/", body, format="json")
    assert answer.status_code == 200, answer.content
    assert Subscription.objects.get(pk=subscription.pk).carrier_cancel_due_at is None  # nothing to tell it yet
    # The overdue check hands it over (the aggregator answers the repeat with the same id), and tells it at once.
    assert register_at_carrier(subscription_id=subscription.pk)
    assert Subscription.objects.get(pk=subscription.pk).carrier_reference == reference
    wait_for(
        lambda: simulator("aggregator").records[reference]["status"] == "cancelled",
        what="the cancellation at the aggregator",
    )


def time_passes(subscription: Subscription) -> None:
    """The next try of its cancellation comes due (the clock moved on)."""
    Subscription.objects.filter(pk=subscription.pk).update(carrier_cancel_due_at=timezone.now() - timedelta(seconds=1))


def test_a_cancellation_never_confirmed_is_left_to_staff_after_the_last_try(
    aggregator: Aggregator, caplog: pytest.LogCaptureFixture, staff_client: StaffClient
) -> None:
    subscription = aggregator.opt_in()
    unreachable(aggregator.carrier)
    body = {"at_period_end": False, "reason": "player asked"}
    aggregator.client.post(f"/api/v1/subscriptions/{subscription.public_id}/cancel/", body, format="json")
    for _ in CANCEL_RETRY_WAITS:
        time_passes(subscription)
        assert resend_cancellations(now=timezone.now()) == 1
    subscription.refresh_from_db()
    assert subscription.carrier_cancel_attempts == len(CANCEL_RETRY_WAITS) + 1
    assert subscription.carrier_cancel_due_at is None  # not told again: an error for staff instead
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("cancel it at the carrier by hand" in message for message in errors), errors
    page = staff_client("operations").get(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert "the carrier never confirmed the cancellation: cancel it at the carrier by hand" in page.content.decode()
    assert resend_cancellations(now=timezone.now() + timedelta(days=30)) == 0


def test_an_app_cancelling_at_the_periods_end_stays_entitled_until_then(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    end = subscription.current_period_end
    assert end is not None

    body = {"at_period_end": True, "reason": "player asked"}
    answer = aggregator.client.post(f"/api/v1/subscriptions/{subscription.public_id}/cancel/", body, format="json")

    assert answer.status_code == 200, answer.content
    wait_for(
        lambda: CarrierNotification.objects.filter(result__startswith="noted: cancelled at the carrier").exists(),
        what="the aggregator's cancellation notice",
    )
    assert simulator("aggregator").records[subscription.carrier_reference]["status"] == "cancelled"
    subscription.refresh_from_db()
    assert (subscription.status, subscription.entitled_until) == ("active", end)

    assert check_overdue(now=end - timedelta(seconds=1)) == 0
    assert check_overdue(now=end) == 1
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancelled_at, subscription.next_charge_at) == ("cancelled", end, None)


@pytest.mark.parametrize(
    "change",
    [{"period": 10**9}, {"period": "1"}, {"charge_id": "ch_\u0000"}, {"subscription_id": None}, {"amount": -99}],
)
def test_a_signed_subscription_event_that_is_not_one_is_refused_and_changes_nothing(
    aggregator: Aggregator, change: dict[str, Any]
) -> None:
    subscription = aggregator.opt_in()
    event = aggregator_sim.renew(subscription.carrier_reference, lost=True)
    assert event is not None
    garbled = {**event, "data": {**event["data"], **change}}

    answer = aggregator.post(garbled)

    assert answer.status_code == 400, answer.content
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert not CarrierNotification.objects.filter(notification_id=event["event_id"]).exists()
    assert renewals(subscription) == []


@pytest.mark.parametrize(
    ("ending", "code"), [("0022", "unknown_subscriber"), ("0023", "user_barred")], ids=["ported out", "barred"]
)
def test_a_number_ported_out_or_barred_after_its_first_period_ends_here_and_at_the_aggregator(
    aggregator: Aggregator, ending: str, code: str
) -> None:
    """The simulator's numbers ending 0022 and 0023 pay their first charge, then are unknown (ported out) or
    barred: the aggregator's declined renewal ends the subscription, and the aggregator is told to stop."""
    subscription = aggregator.opt_in(MSISDN[:-4] + ending)
    aggregator_sim.renew(subscription.carrier_reference)  # the number's second charge, declined

    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="expired").exists(), what="the end")
    [charge] = renewals(subscription)
    assert (charge.outcome, charge.failure_code) == ("failed", code)
    last = Subscription.objects.get(pk=subscription.pk).history.last()
    assert last is not None
    assert last.reason.startswith(f"renewal failed: {code} (")
    wait_for(
        lambda: simulator("aggregator").records[subscription.carrier_reference]["status"] == "cancelled",
        what="the cancellation at the aggregator",
    )
    assert aggregator_sim.renew(subscription.carrier_reference) is None  # it retries nothing more


# --- the aggregator's own schedule: its simulator charges due periods by itself, through a periodic job ---------


def time_passes_at_the_aggregator(reference: str, *, weeks: int = 1) -> None:
    aggregator_sim.time_passes(reference, seconds=int(timedelta(weeks=weeks).total_seconds()))


def run_the_periodic_job() -> str:
    """The simulator's periodic job, alone, as the embedded default's scheduler runs the beat entries; its output."""
    schedule(apps, SCHEDULE.ENTRIES)  # an earlier transactional test may have flushed the migration's entry
    PeriodicTask.objects.exclude(task="sandbox.tasks.run_aggregator_schedule").update(enabled=False)
    out, err = StringIO(), StringIO()
    call_command("run_scheduler", "--once", stdout=out, stderr=err)
    assert "failed" not in err.getvalue(), err.getvalue()  # a job that raised is not a job that found nothing due
    return out.getvalue()


JOB = SCHEDULE.ENTRIES[0][0]


def test_the_aggregators_periodic_job_charges_a_due_period_once(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    reference = subscription.carrier_reference
    assert JOB not in run_the_periodic_job()  # period 1 starts in a week: nothing is due
    assert simulator("aggregator").records[reference]["periods_paid"] == 0

    time_passes_at_the_aggregator(reference)
    first, second = run_the_periodic_job(), run_the_periodic_job()

    assert f"{JOB}: 1" in first
    assert JOB not in second  # the job run again charges nothing more
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, period_index=1).exists(), what="the callback")
    [charge] = renewals(subscription)
    assert (charge.outcome, charge.period_index) == ("succeeded", 1)
    held = simulator("aggregator").records[reference]
    assert [(event["type"], event["data"]["period"]) for event in held["events"]] == [("subscription.renewed", 1)]
    assert held["periods_paid"] == 1
    assert len(simulator("aggregator").charges[held["msisdn"]]) == 2  # the opt-in and period 1, each once
    # Posted signed to PlayPay's callback endpoint, and recorded there.
    notice = CarrierNotification.objects.get(notification_id=held["events"][0]["event_id"])
    assert notice.result.startswith("period 1 succeeded")


def test_two_runs_of_the_job_at_once_charge_a_due_period_once(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    time_passes_at_the_aggregator(subscription.carrier_reference)
    made = at_once(run_aggregator_schedule, times=2)

    assert sorted(made) == [0, 1]
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, period_index=1).exists(), what="the callback")
    assert [(c.period_index, c.outcome) for c in renewals(subscription)] == [(1, "succeeded")]
    assert len(simulator("aggregator").records[subscription.carrier_reference]["events"]) == 1


def test_one_subscription_the_schedule_cannot_handle_does_not_hold_up_the_others(
    aggregator: Aggregator, caplog: pytest.LogCaptureFixture
) -> None:
    broken, sound = aggregator.opt_in(MSISDN[:-4] + "7001"), aggregator.opt_in(MSISDN[:-4] + "7002")
    for subscription in (broken, sound):
        time_passes_at_the_aggregator(subscription.carrier_reference)
    simulator("aggregator").records.update(broken.carrier_reference, anchor="not a time")  # a record gone bad

    assert aggregator_sim.run_schedule(timezone.now()) == 1

    assert "the schedule failed for" in caplog.text
    wait_for(lambda: Subscription.objects.filter(pk=sound.pk, period_index=1).exists(), what="the sound one's renewal")
    assert simulator("aggregator").records[broken.carrier_reference]["periods_paid"] == 0


def test_a_subscription_stopped_at_the_aggregator_is_not_renewed_by_its_schedule(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    reference = subscription.carrier_reference
    time_passes_at_the_aggregator(reference)  # period 1 is due…
    aggregator_sim.stop(reference)  # …and the player sends STOP before the job runs
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="cancelled").exists(), what="the STOP")

    assert JOB not in run_the_periodic_job()
    time_passes_at_the_aggregator(reference, weeks=3)
    assert aggregator_sim.run_schedule(timezone.now()) == 0

    held = simulator("aggregator").records[reference]
    assert [event["type"] for event in held["events"]] == ["subscription.cancelled"]
    assert (held["status"], held["periods_paid"]) == ("cancelled", 0)
    assert len(simulator("aggregator").charges[held["msisdn"]]) == 1  # the opt-in only
    assert renewals(subscription) == []


def test_a_declined_period_is_tried_again_a_day_later_not_at_every_run(aggregator: Aggregator) -> None:
    # The simulator's 0021: the opt-in paid, the 2nd charge declined for insufficient funds, the 3rd paid.
    subscription = aggregator.opt_in(MSISDN[:-4] + "0021")
    reference = subscription.carrier_reference
    time_passes_at_the_aggregator(reference)
    now = timezone.now()

    assert aggregator_sim.run_schedule(now) == 1
    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="past_due").exists(), what="past_due")
    assert aggregator_sim.run_schedule(now + timedelta(minutes=1)) == 0
    assert aggregator_sim.run_schedule(now + timedelta(hours=23)) == 0
    assert aggregator_sim.run_schedule(now + timedelta(days=1)) == 1

    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, status="active").exists(), what="the retry")
    assert [(c.period_index, c.attempt, c.outcome) for c in renewals(subscription)] == [
        (1, 1, "failed"),
        (1, 2, "succeeded"),
    ]


def test_periods_that_ended_while_the_schedule_did_not_run_are_never_charged_late(aggregator: Aggregator) -> None:
    subscription = aggregator.opt_in()
    time_passes_at_the_aggregator(subscription.carrier_reference, weeks=3)  # periods 1 and 2 over, 3 has begun

    assert aggregator_sim.run_schedule(timezone.now()) == 1
    assert aggregator_sim.run_schedule(timezone.now()) == 0

    wait_for(lambda: Subscription.objects.filter(pk=subscription.pk, period_index=3).exists(), what="period 3")
    assert [(c.period_index, c.outcome) for c in renewals(subscription)] == [(3, "succeeded")]
    held = simulator("aggregator").records[subscription.carrier_reference]
    assert [event["data"]["period"] for event in held["events"]] == [3]


def signed_post(aggregator: Aggregator, path: str, body: dict[str, Any]) -> httpx.Response:
    """A merchant's signed POST to the aggregator simulator's API (`path` under /v1/)."""
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time()))
    headers = {
        "X-Merchant-Id": aggregator_sim.MERCHANT_ID,
        "X-Timestamp": timestamp,
        "Content-Type": "application/json",
    }
    headers["X-Signature"] = sign(aggregator_sim.API_SECRET, timestamp, raw)
    return httpx.post(f"{aggregator.live}/simulators/aggregator/v1/{path}", content=raw, headers=headers)


def test_the_aggregator_refuses_a_charge_whose_amount_no_integer_holds(aggregator: Aggregator) -> None:
    body = {"merchant_reference": "pay-inf", "msisdn": MSISDN, "amount": 1e400, "currency": "GBP", "flow": "pin"}
    answer = signed_post(aggregator, "charges", body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("anchor", "status"),
    [(10**20, 400), (0, 400), (-(10**12), 400), (1e400, 400), (None, 201)],
    ids=["beyond any calendar", "1970", "before any calendar", "1e400 (infinity)", "now"],
)
def test_the_aggregator_refuses_an_anchor_its_schedule_could_not_count(
    aggregator: Aggregator, anchor: float | None, status: int
) -> None:
    """One subscription whose periods cannot be counted would stop the job for every other one."""
    body = {"merchant_reference": "sub-anchor", "msisdn": MSISDN, "amount": 99, "currency": "GBP", "period": "monthly"}
    answer = signed_post(aggregator, "subscriptions", body | {"anchor": int(time.time()) if anchor is None else anchor})

    assert answer.status_code == status, answer.text
    held = simulator("aggregator").records.count(aggregator_sim.SUBSCRIPTION_PREFIX)
    assert held == (1 if status == 201 else 0)
    assert aggregator_sim.run_schedule(timezone.now()) == 0  # nothing due, and the job runs


@pytest.mark.broker
def test_the_schedules_beat_entry_runs_on_a_celery_worker_through_the_broker(aggregator: Aggregator) -> None:
    """The production topology: beat sends the entry's task to the broker, a worker runs it."""
    celery_app.conf.task_always_eager = True  # the opt-in's own tasks at once (the test's fixture restores it)
    subscription = aggregator.opt_in()
    celery_app.conf.task_always_eager = False
    schedule(apps, SCHEDULE.ENTRIES)
    entry = PeriodicTask.objects.get(name=JOB)
    assert entry.enabled
    assert entry.task in celery_app.tasks
    time_passes_at_the_aggregator(subscription.carrier_reference)
    # A queue of its own: nothing an earlier test left on the default queue runs first.
    queue = f"test-aggregator-schedule-{uuid.uuid4().hex[:8]}"

    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        celery_app.send_task(entry.task, queue=queue)  # as beat sends it when the entry is due
        wait_for(
            lambda: Subscription.objects.filter(pk=subscription.pk, period_index=1).exists(),
            timeout=30,
            what="the renewal charged by the worker's run and told by callback",
        )

    assert [(c.period_index, c.outcome) for c in renewals(subscription)] == [(1, "succeeded")]
