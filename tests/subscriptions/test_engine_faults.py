"""The renewal engine charges each period once under faults, on PostgreSQL with real processes: two engines
over the same due set at once, and an engine killed (SIGKILL) in the middle of a batch then run again."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone

from payments.models import OutboxMessage, Payment, PaymentFlow, PaymentStatus
from payments.services import outbox, resolver
from subscriptions.models import Subscription, SubscriptionCharge
from subscriptions.periods import Period
from subscriptions.services.renewals import run_renewals
from tests.subscriptions.conftest import Subs, make_plan
from tests.subscriptions.test_renewals import renewals_of

pytestmark = [pytest.mark.postgres, pytest.mark.journal, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
DAY = timedelta(days=1)
ANCHOR = datetime.fromisoformat("2026-01-31T10:00:00+00:00")

# One engine run in its own process. Faults are injected around the step that opens a period's charge:
# ENGINE_SLOW (seconds) makes each one take longer, so that two engines surely interleave; ENGINE_KILL_AT (n)
# kills the process (kill -9) as it is about to open the n-th, inside its batch's transaction;
# ENGINE_KILL_AFTER_CARRIER_CHARGE (n) kills it when the carrier has made the n-th charge, before the answer
# is recorded (the batch committed, its carrier work half done).
ENGINE = """
import os, signal, sys, time
import django
django.setup()
from datetime import datetime
from subscriptions.services import renewals

opened = renewals._open_charge
calls = 0

def opening(*args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ.get("ENGINE_KILL_AT") or 0):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("ENGINE_SLOW") or 0))
    return opened(*args, **kwargs)

renewals._open_charge = opening

from sandbox.adapter import SandboxAdapter

charge = SandboxAdapter.charge
charges = 0

def charging(self, request):
    global charges
    answer = charge(self, request)
    charges += 1
    if charges == int(os.environ.get("ENGINE_KILL_AFTER_CARRIER_CHARGE") or 0):
        os.kill(os.getpid(), signal.SIGKILL)  # the carrier charged; its answer is lost with the process
    return answer

SandboxAdapter.charge = charging
time.sleep(max(float(os.environ.get("ENGINE_START_AT") or 0) - time.time(), 0))
now = datetime.fromisoformat(os.environ["ENGINE_NOW"])
run = renewals.run_renewals(now=now, batch_size=int(os.environ["ENGINE_BATCH"]))
print(run.charged, run.missed)
"""


def _engine(now: datetime, *, batch: int, **faults: str) -> subprocess.Popen[str]:
    db, journal = connection.settings_dict, connections["journal"].settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "playpay.settings",
        # This run's test databases (a pytest-xdist worker has its own), never the ones the test runner was given.
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "JOURNAL_URL": f"postgres://{journal['USER']}@{journal['HOST']}:{journal['PORT']}/{journal['NAME']}",
        "CELERY_BROKER_URL": "",  # the carrier work runs in the engine's process, after each batch's commit
        "ENGINE_NOW": now.isoformat(),
        "ENGINE_BATCH": str(batch),
        **faults,
    }
    return subprocess.Popen(
        [sys.executable, "-c", ENGINE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _due(subs: Subs, count: int, *, period: str) -> list[Subscription]:
    """Subscriptions of a plan of `period`, paid for their first period since ANCHOR."""
    plan, offer = make_plan(subs.shop, period=period, code=f"engine-{period}")
    return Subs(shop=subs.shop, plan=plan, offer=offer).bulk_active(count, anchor=ANCHOR)


def _charged_once_each(subscriptions: list[Subscription], expected: list[tuple[int, int, str]]) -> None:
    for subscription in subscriptions:
        assert renewals_of(subscription) == expected, subscription.pk
    succeeded = [e for e in expected if e[2] == "succeeded"]
    payments = Payment.objects.filter(flow=PaymentFlow.ONE_CLICK)
    assert payments.count() == payments.filter(status=PaymentStatus.SUCCEEDED).count()
    assert payments.count() == len(subscriptions) * len(succeeded)
    # One payment per charge row, none shared, none without its row.
    linked = SubscriptionCharge.objects.filter(kind="renewal", payment__isnull=False)
    assert sorted(linked.values_list("payment_id", flat=True)) == sorted(payments.values_list("id", flat=True))


def test_two_engine_processes_over_the_same_overdue_set_charge_each_current_period_once(
    make_subs: Callable[..., Subs],
) -> None:
    subscriptions = _due(make_subs(), 40, period=Period.DAILY)
    now = ANCHOR + 4 * DAY + timedelta(hours=1)  # three days without an engine: periods 1 to 3 went by
    start_at = str(time.time() + 5)  # both past Django's start-up before either takes a row
    engines = [_engine(now, batch=3, ENGINE_SLOW="0.02", ENGINE_START_AT=start_at) for _ in range(2)]
    outputs = [engine.communicate(timeout=120) for engine in engines]
    for engine, (_out, err) in zip(engines, outputs, strict=True):
        assert engine.returncode == 0, err

    runs = [tuple(int(n) for n in out.split()) for out, _ in outputs]
    assert sum(charged for charged, _ in runs) == 40
    assert sum(missed for _, missed in runs) == 3 * 40
    assert all(charged > 0 for charged, _ in runs), runs  # both engines took rows: they did run at once
    _charged_once_each(subscriptions, [(1, 1, "missed"), (2, 1, "missed"), (3, 1, "missed"), (4, 1, "succeeded")])
    assert set(Subscription.objects.values_list("period_index", flat=True)) == {4}


def test_an_engine_killed_in_the_middle_of_a_batch_leaves_nothing_charged_twice_or_skipped(
    make_subs: Callable[..., Subs],
) -> None:
    subscriptions = _due(make_subs(), 20, period=Period.WEEKLY)
    now = ANCHOR + 7 * DAY + timedelta(minutes=5)

    killed = _engine(now, batch=5, ENGINE_KILL_AT="8")  # batch 1 committed and charged; batch 2 at its 3rd
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, err

    # What the dead engine committed stands (its first batch, charged); its open batch left nothing.
    assert SubscriptionCharge.objects.filter(kind="renewal").count() == 5
    assert Payment.objects.filter(flow=PaymentFlow.ONE_CLICK, status=PaymentStatus.SUCCEEDED).count() == 5
    assert Subscription.objects.filter(period_index=1).count() == 5
    assert Subscription.objects.filter(next_charge_at__lte=now).count() == 15  # due again, none lost

    again = _engine(now, batch=5)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert out.split() == ["15", "0"]
    assert run_renewals(now=now + timedelta(minutes=1)).charged == 0  # and nothing more is due
    _charged_once_each(subscriptions, [(1, 1, "succeeded")])
    assert set(Subscription.objects.values_list("period_index", flat=True)) == {1}


def test_an_engine_killed_while_the_carrier_charges_its_batch_leaves_each_period_charged_once(
    make_subs: Callable[..., Subs], settings: Any
) -> None:
    subscriptions = _due(make_subs(), 10, period=Period.WEEKLY)
    now = ANCHOR + 7 * DAY + timedelta(minutes=5)

    killed = _engine(now, batch=5, ENGINE_KILL_AFTER_CARRIER_CHARGE="3")
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, err

    # Batch 1 committed: two renewals settled, the third charged by the carrier with its answer lost, the last
    # two never sent; batch 2 never started. Three outbox messages are unsent: the last two's, and the third's,
    # whose task (run in-process) died before the message was marked sent.
    renewal_payments = Payment.objects.filter(flow=PaymentFlow.ONE_CLICK)
    assert sorted(renewal_payments.values_list("status", flat=True)) == [
        "charging",
        "created",
        "created",
        "succeeded",
        "succeeded",
    ]
    unknown = renewal_payments.get(status="charging")
    assert unknown.outcome_unknown_since is not None
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 3

    # What runs next: the outbox relay, the resolver of unknown outcomes, and the engine again.
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(minutes=1))
    assert outbox.relay_pending() == 3  # the third's task again: its payment moved on, it does nothing
    settings.OUTCOME_RESOLVE_AFTER_SECONDS = 0
    assert resolver.unknown_outcomes() == 1  # the carrier says it charged: recorded, not charged again
    assert run_renewals(now=now).charged == 5

    _charged_once_each(subscriptions, [(1, 1, "succeeded")])
    unknown.refresh_from_db()
    assert (unknown.status, unknown.charge_attempts) == (PaymentStatus.SUCCEEDED, 1)
    assert set(Subscription.objects.values_list("period_index", flat=True)) == {1}
