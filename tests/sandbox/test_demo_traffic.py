"""demo_traffic plays game backends and players against a running server, over HTTP."""

import importlib
import time
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from funnel.models import FunnelEvent
from payments.models import Payment, PaymentFlow, Refund
from playpay.beat import schedule
from sandbox.demo import DEMO_APP, DEMO_PLAN, DEMO_TRAFFIC_KEY_LABEL, seed_demo_data, takes_subscriptions
from sandbox.simulators import aggregator as aggregator_sim
from subscriptions.models import Subscription, SubscriptionCharge
from tenants.models import ApiKey
from tests.factories import CountryFactory

renewal_beat = importlib.import_module("subscriptions.migrations.0003_schedule_renewals")
aggregator_beat = importlib.import_module("sandbox.migrations.0002_schedule_aggregator_renewals")

# The live server answers from another thread: it sees only what the test commits.
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo(live_server: Any, settings: Any) -> Any:
    settings.PUBLIC_BASE_URL = live_server.url  # the simulated carriers are served by the live server
    # An earlier transactional test may have emptied the migrated countries.
    CountryFactory.create(code="GB", name="United Kingdom", currency="GBP", dialing_code="44")
    CountryFactory.create(code="ES", name="Spain", currency="EUR", dialing_code="34")
    return seed_demo_data()


def run(*args: str) -> str:
    out = StringIO()
    call_command("demo_traffic", *args, stdout=out)
    return out.getvalue()


def test_demo_traffic_makes_payments_funnel_events_declines_and_refunds(demo: Any, live_server: Any) -> None:
    output = run(
        f"--base-url={live_server.url}",
        f"--api-key={demo.raw_key}",
        "--count=14",
        "--rate=50",
        "--duration=120",
        "--failure-share=0.3",
        "--refund-share=0.5",
        "--subscription-share=0",  # purchases only: subscriptions have a test of their own
        "--seed=11",
    )

    payments = Payment.objects.filter(app=demo.app)
    assert "players: 14" in output
    assert f"payments: {payments.count()} (" in output
    assert payments.count() >= 5
    assert payments.filter(status__in=["succeeded", "partially_refunded", "refunded"]).exists()
    assert payments.filter(status="failed").exists()
    # Declines come from the simulators' scenario numbers, not from errors of the requests.
    assert set(payments.filter(status="failed").values_list("msisdn", flat=True)) <= {
        msisdn for msisdn in payments.values_list("msisdn", flat=True) if msisdn[-4:] in {"0002", "0003", "0004"}
    }
    assert "errors: none" in output
    assert set(payments.values_list("flow", flat=True)) == {"pin", "one_click"}

    game_events = FunnelEvent.objects.filter(app=demo.app, source=FunnelEvent.Source.GAME)
    assert f"funnel events accepted: {game_events.count()}" in output
    assert game_events.filter(step="store_opened").count() == 14  # every player opened the store
    # Each payment continues its player's journey.
    assert set(payments.values_list("journey_id", flat=True)) <= set(game_events.values_list("journey_id", flat=True))

    refunds = Refund.objects.filter(payment__app=demo.app)
    assert refunds.exists()
    assert f"refunds: {refunds.count()}" in output
    assert all(refund.reason.startswith("demo:") for refund in refunds)


def test_demo_traffic_subscribes_players_by_pin_and_the_scheduler_renews_them(demo: Any, live_server: Any) -> None:
    output = run(
        f"--base-url={live_server.url}",
        f"--api-key={demo.raw_key}",
        "--count=16",
        "--rate=50",
        "--duration=120",
        "--subscription-share=0.5",
        "--failure-share=0.25",
        "--seed=7",
    )
    subscriptions = Subscription.objects.filter(app=demo.app).select_related("carrier", "plan")
    assert "errors: none" in output
    assert f"subscriptions: {subscriptions.count()} (" in output
    assert subscriptions.count() >= 3
    for subscription in subscriptions:
        assert subscription.plan.code == DEMO_PLAN
        carrier = subscription.carrier
        assert carrier.supports_subscriptions
        assert takes_subscriptions(carrier.protocol)
        assert subscription.metadata["source"] == "demo_traffic"
        # The opt-in continues its player's journey, with its own steps.
        steps = FunnelEvent.objects.filter(app=demo.app, journey_id=subscription.journey_id).values_list(
            "step", flat=True
        )
        assert {"store_opened", "subscription_opt_in_started"} <= set(steps)
        opt_in = SubscriptionCharge.objects.get(subscription=subscription, kind="opt_in")
        assert opt_in.payment is not None
        assert opt_in.payment.flow == PaymentFlow.PIN  # the double opt-in
    active = subscriptions.filter(status="active")
    assert active.exists()
    # Each carrier that takes subscriptions in turn: the aggregator's too, which holds their renewals itself.
    at_aggregator = active.filter(carrier__slug="aggregator-gb")
    assert at_aggregator.exists()
    assert set(at_aggregator.values_list("carrier_managed", flat=True)) == {True}
    assert "" not in set(at_aggregator.values_list("carrier_reference", flat=True))
    # Declined numbers end their opt-in; the others are subscribed.
    declined = subscriptions.exclude(status="active")
    assert declined.exists()  # the seed and the failure share give some
    assert {s.msisdn[-4:] in {"0002", "0003", "0004"} for s in declined} == {True}
    assert {s.msisdn[-4:] in {"0002", "0003", "0004"} for s in active} == {False}

    # A day later: the embedded default's scheduler runs the renewal engine's periodic task, and the aggregator's
    # simulator its own schedule (a day passes for it: its schedule moves a day earlier).
    Subscription.objects.filter(pk__in=active.values("pk"), carrier_managed=False).update(next_charge_at=timezone.now())
    for reference in at_aggregator.values_list("carrier_reference", flat=True):
        aggregator_sim.time_passes(reference, seconds=24 * 3600)
    # An earlier transactional test may have flushed the migrations' entries.
    schedule(apps, [*renewal_beat.ENTRIES, *aggregator_beat.ENTRIES])
    jobs = ["subscriptions.tasks.renew_due_subscriptions", "sandbox.tasks.run_aggregator_schedule"]
    PeriodicTask.objects.exclude(task__in=jobs).update(enabled=False)
    call_command("run_scheduler", "--once", stdout=StringIO())
    renewals = SubscriptionCharge.objects.filter(subscription__in=active, kind="renewal", period_index=1)
    deadline = time.monotonic() + 10  # an asynchronous carrier states its outcome (or its renewal) by callback
    while (
        renewals.filter(outcome="pending").exists() or renewals.count() < active.count()
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert renewals.count() == active.count()
    assert set(renewals.values_list("outcome", flat=True)) == {"succeeded"}
    assert set(active.values_list("status", "period_index")) == {("active", 1)}


def test_demo_traffic_issues_its_own_key_of_the_demo_app_when_given_none(
    demo: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLAYPAY_API_KEY", raising=False)
    for _ in range(2):
        output = run(f"--base-url={live_server.url}", "--api-key=", "--count=2", "--rate=50", "--seed=3")
        assert "players: 2" in output
    keys = ApiKey.objects.filter(app__name=DEMO_APP, label=DEMO_TRAFFIC_KEY_LABEL)
    assert keys.count() == 2
    assert keys.filter(revoked_at__isnull=True).count() == 1  # the earlier run's key is revoked
    assert ApiKey.objects.get(app__name=DEMO_APP, label="seed_demo").is_active  # the key seed_demo printed still works


def test_demo_traffic_stops_with_a_clear_error_when_the_key_is_refused(demo: Any, live_server: Any) -> None:
    with pytest.raises(CommandError, match="refused the key"):
        run(f"--base-url={live_server.url}", "--api-key=pp_000000000000_wrong", "--count=1")
    assert not Payment.objects.exists()
