"""The ledger figures a payment keeps (payments.figures): those its ledger lines add up to, entry after entry,
and filled or mended by the recount (the migration that added them, `manage.py recount_payment_figures`)."""

import io
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction

from payments.figures import FIGURES, KEPT, KEPT_SUMS, POSTED_AT, account_kind
from payments.models import LedgerEntry, Payment, PaymentStatus, Reversal
from payments.services import ledger
from payments.services.ledger import recount_payment_figures
from tests.concurrency import other_session
from tests.conftest import MSISDN, Shop
from tests.processes import django
from tests.reporting.test_finance_figures import play_random_history, taxed_shop

pytestmark = pytest.mark.django_db


def kept(payment: Payment) -> dict[str, Any]:
    return {name: getattr(payment, name) for name in KEPT}


def added_up_by_hand(payment: Payment) -> dict[str, Any]:
    """What the payment's ledger lines add up to, line by line in Python: the account kinds' signs of each
    figure, what entries other than the charge paid back of the gross, the last posting of each kind."""
    counted: dict[str, Any] = dict.fromkeys(KEPT_SUMS, 0) | dict.fromkeys(POSTED_AT.values())
    for entry in LedgerEntry.objects.filter(payment=payment).prefetch_related("lines"):
        for line in entry.lines.all():
            kind = account_kind(line.account)
            for name, signs in FIGURES.items():
                counted[f"{name}_minor"] += signs.get(kind, 0) * line.amount_minor
            if entry.kind != LedgerEntry.Kind.CHARGE:
                counted["paid_back_minor"] -= FIGURES["gross"].get(kind, 0) * line.amount_minor
        field = POSTED_AT[entry.kind]
        latest: datetime | None = counted[field]
        counted[field] = entry.created_at if latest is None else max(latest, entry.created_at)
    return counted


@pytest.fixture
def history(make_shop: Callable[..., Shop]) -> list[Payment]:
    """Charges of random price points, some refunded in random parts (by the carrier or by the platform), some
    reversed, some failed."""
    seed = random.randrange(1_000_000)
    print(f"random history seed {seed}")  # to replay a failure
    rng = random.Random(seed)
    play_random_history(taxed_shop(make_shop, prefix="4474", refunds=True), rng, payments=8, msisdn=MSISDN)
    platform_pays = taxed_shop(make_shop, prefix="4475", refunds=False)
    play_random_history(platform_pays, rng, payments=8, msisdn="+447512345678")
    return list(Payment.objects.order_by("pk"))


@pytest.mark.postgres
def test_every_payment_keeps_the_figures_its_ledger_lines_add_up_to(history: list[Payment]) -> None:
    assert len(history) == 16
    for payment in history:
        assert kept(payment) == added_up_by_hand(payment), payment.public_id
        assert payment.gross_minor == payment.amount_minor - payment.paid_back_minor  # what the player kept paid
        assert payment.charged_at is not None
    assert any(payment.refunded_at for payment in history)
    assert any(payment.reversed_at for payment in history)
    assert {payment.paid_back_minor > 0 for payment in history} == {True, False}
    assert recount_payment_figures() == 0  # nothing to mend


@pytest.mark.postgres
def test_the_recount_fills_the_figures_of_payments_posted_before_they_were_kept(history: list[Payment]) -> None:
    # As the migration that added the fields found them: zeros and no times, whatever the ledger holds.
    before = {payment.pk: kept(payment) for payment in history}
    unkept = [payment.pk for payment in history[::2]]
    Payment.objects.filter(pk__in=unkept).update(**dict.fromkeys(KEPT_SUMS, 0), **dict.fromkeys(POSTED_AT.values()))
    out = io.StringIO()
    call_command("recount_payment_figures", stdout=out)
    assert out.getvalue().startswith(f"{len(unkept)} payment(s) held figures other than their ledger lines'")
    assert {payment.pk: kept(payment) for payment in Payment.objects.order_by("pk")} == before
    assert recount_payment_figures() == 0


@pytest.mark.postgres
def test_the_recount_of_a_period_leaves_the_payments_of_other_days_alone(history: list[Payment]) -> None:
    Payment.objects.update(gross_minor=-1)
    day = history[0].created_at.date()
    out = io.StringIO()
    call_command("recount_payment_figures", "--from", "2001-01-01", "--to", "2001-01-31", stdout=out)
    assert out.getvalue().startswith("0 payment(s)")
    assert set(Payment.objects.values_list("gross_minor", flat=True)) == {-1}
    call_command("recount_payment_figures", "--from", day.isoformat(), "--to", day.isoformat(), stdout=out)
    assert -1 not in set(Payment.objects.values_list("gross_minor", flat=True))


@pytest.mark.postgres
@pytest.mark.journal  # the payment paid through the API is journaled
@pytest.mark.django_db(transaction=True)  # the poster and the recount have connections of their own
def test_the_recount_waits_for_an_entry_being_posted_and_keeps_its_figures(shop: Shop) -> None:
    paid = shop.pay("r-1", flow="one_click")
    assert paid["status"] == PaymentStatus.SUCCEEDED
    payment = Payment.objects.get(public_id=paid["id"])
    # Figures not kept yet (as the migration finds them), while a reversal is being posted to the payment.
    Payment.objects.filter(pk=payment.pk).update(**dict.fromkeys(KEPT_SUMS, 0), charged_at=None)
    posted, commit = threading.Event(), threading.Event()
    corrected: list[int] = []

    def post_a_reversal() -> None:
        try:
            with transaction.atomic():
                locked = Payment.objects.select_for_update().get(pk=payment.pk)
                reversal = Reversal(payment=locked, payment_created_at=locked.created_at, via_carrier=True, reason="r")
                ledger.post_reversal(reversal)
                posted.set()
                assert commit.wait(30)
        finally:
            connections.close_all()

    def recount() -> None:
        try:
            at = payment.created_at
            corrected.append(recount_payment_figures(created_from=at, created_before=at + timedelta(seconds=1)))
        finally:
            connections.close_all()

    poster, recounter = threading.Thread(target=post_a_reversal), threading.Thread(target=recount)
    poster.start()
    assert posted.wait(30)
    recounter.start()
    with other_session() as watcher:  # the recount waits for the poster's lock on the payment
        deadline = time.monotonic() + 30
        while not watcher.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            # By its start: the end of a long query is cut there.
            " AND (query LIKE 'SELECT p.id FROM payments_payment p, %' OR query LIKE 'UPDATE payments_payment p %')"
        ).fetchone():
            assert time.monotonic() < deadline, "the recount did not wait for the payment's lock"
            time.sleep(0.05)
    commit.set()
    poster.join(30)
    recounter.join(30)
    assert corrected == [1]
    payment.refresh_from_db()
    assert kept(payment) == added_up_by_hand(payment)
    assert payment.reversed_at is not None
    assert payment.gross_minor == 0 == payment.net_minor


@pytest.mark.postgres
def test_the_figures_sums_default_to_zero_in_the_database_for_a_previous_release_s_inserts() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, column_default FROM information_schema.columns"
            " WHERE table_name = 'payments_payment' AND column_name = ANY(%s)",
            [list(KEPT_SUMS)],
        )
        assert dict(cursor.fetchall()) == dict.fromkeys(KEPT_SUMS, "0")


KEPT_SCRIPT = """
from payments.figures import KEPT
from payments.models import Payment
from payments.services import ledger
from tests.factories import PaymentFactory
payment = PaymentFactory.create(status="succeeded", amount_minor=499)
ledger.post_charge(payment)
kept = Payment.objects.values(*KEPT).get(pk=payment.pk)
added = kept["net_minor"] + kept["tax_minor"] + kept["carrier_share_minor"]
print(kept["gross_minor"], added, kept["charged_at"] is not None)
Payment.objects.update(gross_minor=0, net_minor=0, charged_at=None)
print(ledger.recount_payment_figures(), Payment.objects.values(*KEPT).get(pk=payment.pk) == kept)
print(ledger.recount_payment_figures())
"""


@pytest.mark.postgres
def test_the_figures_are_kept_and_recounted_alike_in_the_embedded_default(tmp_path: Path) -> None:
    env = {"PLAYPAY_VAR_DIR": str(tmp_path)}
    assert django(["migrate", "-v", "0"], env).returncode == 0
    embedded = django(["shell", "-c", KEPT_SCRIPT], env)
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.splitlines()[-3:] == ["499 499 True", "1 True", "0"]
