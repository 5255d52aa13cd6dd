"""generate_volume: payments at volume that hold together like the services' own, and the screens answer on them."""

import io
from collections import Counter
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.db.models import Count, F, Max, Min, Q, Sum
from django.utils import timezone
from psycopg import sql

from funnel.models import FunnelDefinition, FunnelEvent, FunnelEventKey, Journey
from journal.models import JournalRecord
from payments.models import (
    LedgerEntry,
    LedgerLine,
    Payment,
    PaymentCarrierReference,
    PaymentIdempotencyKey,
    PaymentStatusChange,
    Refund,
    Reversal,
)
from playpay import partitions
from playpay.ids import time_of
from playpay.redaction import msisdn_hash
from reporting.models import Dashboard
from reporting.selectors import PERIODS
from sandbox.volume import JOURNAL, VolumeResult, claim_carrier_references, generate_volume, loaded_tables
from tests.conftest import StaffClient
from tests.factories import PaymentFactory
from tests.payments.test_payment_figures import added_up_by_hand, kept

# Inside the test's transaction the generator writes the journal in the test's thread: no commit needed.
pytestmark = pytest.mark.django_db(databases="__all__")

PAYMENTS = 2000
CHARGED = ("succeeded", "partially_refunded", "refunded", "reversed")


@pytest.fixture
def volume() -> VolumeResult:
    Dashboard.objects.get_or_create(slug="overview", defaults={"title": "Overview"})
    call_command("seed_demo", stdout=io.StringIO())
    # Every trigger fires (the balance of each ledger entry, foreign keys): the rows must pass them.
    return generate_volume(payments=PAYMENTS, months=18, seed=0.42, fire_triggers=True)


def test_generated_payments_have_their_keys_claimed_and_are_found_by_public_id(volume: VolumeResult) -> None:
    keyed = Payment.objects.exclude(idempotency_key="")
    claimed = PaymentIdempotencyKey.objects.values_list("app_id", "key", "payment_id", "payment_created_at")
    assert set(claimed) == set(keyed.values_list("app_id", "idempotency_key", "pk", "created_at"))
    references = PaymentCarrierReference.objects.values_list("carrier_id", "reference", "payment_id")
    assert set(references) == set(
        Payment.objects.exclude(carrier_reference="").values_list("carrier_id", "carrier_reference", "pk")
    )
    for payment in Payment.objects.order_by("?")[:20]:
        assert Payment.objects.with_public_id(payment.public_id).get() == payment  # its months only


@pytest.mark.postgres
def test_a_carrier_reference_drawn_twice_stays_with_the_first_payment_and_leaves_the_other() -> None:
    first = PaymentFactory.create(carrier_reference="r-twice")
    second = PaymentFactory.create(price_point=first.price_point)
    third = PaymentFactory.create(price_point=first.price_point)
    # As the generator writes a month: its payments with the references drawn, then their claims.
    Payment.objects.filter(pk=second.pk).update(carrier_reference="r-twice")
    Payment.objects.filter(pk=third.pk).update(carrier_reference="r-once")
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS volume_chunk")
        cursor.execute(
            "CREATE TEMP TABLE volume_chunk AS SELECT id, created_at AS t0, carrier_id, carrier_reference "
            "FROM payments_payment WHERE id = ANY(%s)",
            [[first.pk, second.pk, third.pk]],
        )
        claim_carrier_references(cursor, {})
        cursor.execute("DROP TABLE volume_chunk")
    references = dict(Payment.objects.values_list("pk", "carrier_reference"))
    assert references == {first.pk: "r-twice", second.pk: "", third.pk: "r-once"}
    owners = dict(PaymentCarrierReference.objects.values_list("reference", "payment_id"))
    assert owners == {"r-twice": first.pk, "r-once": third.pk}


def test_every_charged_payment_has_one_balanced_charge_entry_and_every_entry_balances(volume: VolumeResult) -> None:
    charged = Payment.objects.filter(status__in=CHARGED)
    assert charged.count() > PAYMENTS * 0.7
    charges = LedgerEntry.objects.filter(kind="charge")
    assert charges.count() == charged.count()
    assert set(charges.values_list("payment_id", flat=True)) == set(charged.values_list("pk", flat=True))
    unbalanced = LedgerLine.objects.values("entry_id", "currency").annotate(total=Sum("amount_minor")).exclude(total=0)
    assert not unbalanced.exists()
    assert not LedgerEntry.objects.annotate(line_count=Count("lines")).filter(line_count__lt=2).exists()
    assert LedgerEntry.objects.filter(kind="reversal").count() == Payment.objects.filter(status="reversed").count()
    assert not LedgerEntry.objects.exclude(payment__status__in=CHARGED).exists()


def test_every_payment_keeps_the_figures_of_its_ledger_lines(volume: VolumeResult) -> None:
    posted = Payment.objects.filter(pk__in=LedgerEntry.objects.values("payment_id")).order_by("?")[:200]
    for payment in posted:
        assert kept(payment) == added_up_by_hand(payment), payment.public_id
    charged = Payment.objects.filter(status__in=CHARGED)
    assert not charged.filter(charged_at__isnull=True).exists()
    assert not charged.exclude(gross_minor=F("amount_minor") - F("paid_back_minor")).exists()
    assert charged.filter(paid_back_minor__gt=0).count() == charged.exclude(status="succeeded").count()
    unpaid = Payment.objects.exclude(status__in=CHARGED)
    assert not unpaid.exclude(gross_minor=0, paid_back_minor=0, charged_at=None).exists()


def test_refunds_add_up_to_what_each_payment_says_was_refunded(volume: VolumeResult) -> None:
    refunded = Payment.objects.filter(status__in=("partially_refunded", "refunded"))
    assert refunded.exists()
    sums = {
        row["payment_id"]: row["total"]
        for row in Refund.objects.filter(status="succeeded").values("payment_id").annotate(total=Sum("amount_minor"))
    }
    for payment in Payment.objects.filter(Q(refunded_minor__gt=0) | Q(pk__in=sums)):
        assert sums.get(payment.pk, 0) == payment.refunded_minor, payment.public_id
        if payment.status == "refunded":
            assert payment.refunded_minor == payment.amount_minor
        else:
            assert 0 < payment.refunded_minor < payment.amount_minor
    # Each succeeded refund posted its entry, and refund entries undo no more than the charge.
    assert LedgerEntry.objects.filter(kind="refund").count() == Refund.objects.filter(status="succeeded").count()
    assert Payment.objects.filter(status="partially_refunded", refunded_minor__lte=0).count() == 0
    assert Reversal.objects.count() == Payment.objects.filter(status="reversed").count()


def test_status_history_goes_from_creation_to_the_payments_status(volume: VolumeResult) -> None:
    histories: dict[int, list[tuple[str, str]]] = {}
    for payment_id, from_status, to_status in PaymentStatusChange.objects.order_by("id").values_list(
        "payment_id", "from_status", "to_status"
    ):
        histories.setdefault(payment_id, []).append((from_status, to_status))
    payments = dict(Payment.objects.values_list("pk", "status"))
    assert set(histories) == set(payments)
    for payment_id, changes in histories.items():
        assert changes[0] == ("", "created")
        assert all(earlier[1] == later[0] for earlier, later in pairwise(changes))
        assert changes[-1][1] == payments[payment_id]
    # History times follow each other and end at the payment's last update.
    last = PaymentStatusChange.objects.values("payment_id").annotate(at=Max("created_at"))
    updated = dict(Payment.objects.values_list("pk", "updated_at"))
    assert all(row["at"] == updated[row["payment_id"]] for row in last)


def test_statuses_and_failures_have_realistic_shares(volume: VolumeResult) -> None:
    statuses = Counter(Payment.objects.values_list("status", flat=True))
    assert statuses["succeeded"] > PAYMENTS * 0.75
    assert PAYMENTS * 0.05 < statuses["failed"] < PAYMENTS * 0.2
    assert not Payment.objects.filter(status="failed", failure_code="").exists()
    assert not Payment.objects.exclude(status="failed").exclude(failure_code="").exists()
    assert Payment.objects.filter(status="failed").values("failure_code").distinct().count() >= 4
    assert statuses["refunded"] + statuses["partially_refunded"] > 0
    assert not Payment.objects.filter(status="expired", flow="one_click").exists()
    assert Payment.objects.values("app").distinct().count() >= 10
    assert Payment.objects.values("carrier").distinct().count() == 5
    # More recent months are busier.
    now = timezone.now()
    recent = Payment.objects.filter(created_at__gte=now - timedelta(days=90)).count()
    oldest = Payment.objects.filter(created_at__lt=now - timedelta(days=450)).count()
    assert recent > oldest > 0
    assert not Payment.objects.filter(created_at__gt=now).exists()


def test_journal_records_exist_for_every_payment_and_hash_numbers_as_the_journal_does(volume: VolumeResult) -> None:
    created = JournalRecord.objects.using("journal").filter(kind="api_request", refund_id="")
    created = created.filter(document__data__endpoint="/api/v1/payments/")
    journaled = set(created.values_list("payment_id", flat=True))
    assert journaled == {str(public_id) for public_id in Payment.objects.values_list("public_id", flat=True)}
    assert volume.journal_records == JournalRecord.objects.using("journal").count()
    payment = Payment.objects.exclude(status="created").order_by("?").first()
    assert payment is not None
    records = JournalRecord.objects.using("journal").filter(payment_id=str(payment.public_id))
    assert {"api_request", "carrier_call"} <= set(records.values_list("kind", flat=True))
    first = records.get(kind="api_request", document__data__endpoint="/api/v1/payments/")
    assert first.msisdn_hash == msisdn_hash(payment.msisdn)
    assert first.document["correlation"]["payment_id"] == str(payment.public_id)
    assert payment.msisdn not in str(first.document)  # masked, as the journal's redaction does
    refund = Refund.objects.first()
    assert refund is not None
    assert JournalRecord.objects.using("journal").filter(refund_id=str(refund.public_id)).exists()


def test_funnel_events_and_journeys_span_the_months(volume: VolumeResult) -> None:
    assert volume.events == FunnelEvent.objects.count()
    assert PAYMENTS * 1.8 < volume.events < PAYMENTS * 2.2
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT date_trunc('month', occurred_at)) FROM funnel_funnelevent")
        row = cursor.fetchone()
    assert row is not None
    assert row[0] >= 18
    assert FunnelEventKey.objects.count() == volume.events
    journeys = FunnelEvent.objects.values("app_id", "journey_id").annotate(first=Min("occurred_at"))
    started = {(j.app_id, j.journey_id): j.started_at for j in Journey.objects.all()}
    assert len(started) == journeys.count() == volume.journeys
    assert all(started[(row["app_id"], row["journey_id"])] == row["first"] for row in journeys)
    # A journey that reached a payment carries the payment's carrier and its platform steps.
    payment = Payment.objects.exclude(journey_id="").filter(status="succeeded").first()
    assert payment is not None
    journey = Journey.objects.get(app=payment.app, journey_id=payment.journey_id)
    assert (journey.carrier, journey.outcome) == (payment.carrier.slug, "succeeded")
    steps = set(FunnelEvent.objects.filter(journey_id=payment.journey_id).values_list("step", flat=True))
    assert {"store_opened", "payment_created", "charge_succeeded"} <= steps


def test_rows_sit_in_their_months_partitions_and_public_ids_tell_their_time(volume: VolumeResult) -> None:
    for table in partitions.registered():
        with table.connection.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.default_partition)))
            row = cursor.fetchone()
        assert row is not None
        assert row[0] == 0, f"rows in {table.default_partition}"
    for history in PaymentStatusChange.objects.select_related("payment").order_by("?")[:50]:
        assert history.payment_created_at == history.payment.created_at
    for line in LedgerLine.objects.select_related("entry__payment").order_by("?")[:50]:
        assert line.payment_created_at == line.entry.payment_created_at == line.entry.payment.created_at
    for payment in Payment.objects.order_by("?")[:50]:
        made = time_of(payment.public_id)
        assert made is not None
        assert timedelta(0) <= payment.created_at - made < timedelta(milliseconds=1)
    for refund in Refund.objects.all()[:20]:
        made = time_of(refund.public_id)
        assert made is not None
        assert timedelta(0) <= refund.created_at - made < timedelta(milliseconds=1)


def test_running_it_again_adds_as_much_again(volume: VolumeResult) -> None:
    before = Payment.objects.count(), LedgerEntry.objects.count(), FunnelEvent.objects.count()
    again = generate_volume(payments=300, events=600, months=2)
    assert Payment.objects.count() == before[0] + 300 == PAYMENTS + again.payments
    assert LedgerEntry.objects.count() == before[1] + again.ledger_entries
    assert FunnelEvent.objects.count() == before[2] + again.events
    assert Payment.objects.values("public_id").distinct().count() == PAYMENTS + 300
    unbalanced = LedgerLine.objects.values("entry_id", "currency").annotate(total=Sum("amount_minor")).exclude(total=0)
    assert not unbalanced.exists()


def test_within_ttl_it_writes_only_the_records_the_expiry_job_would_keep(settings: Any) -> None:
    call_command("seed_demo", stdout=io.StringIO())
    settings.JOURNAL_TTL_DAYS = {"api_request": 30, "carrier_call": 200}
    settings.JOURNAL_TTL_DEFAULT_DAYS = 100  # carrier callbacks
    now = timezone.now()
    result = generate_volume(payments=600, months=12, seed=0.1, now=now, journal_within_ttl=True)
    records = JournalRecord.objects.using(JOURNAL)
    assert records.count() == result.journal_records > 0
    oldest = dict(records.values_list("kind").annotate(Min("occurred_at")))
    assert now - timedelta(days=30) <= oldest["api_request"]
    assert now - timedelta(days=200) <= oldest["carrier_call"] < now - timedelta(days=150)
    assert now - timedelta(days=100) <= oldest["carrier_callback"]
    # The payments themselves span the 12 months.
    assert Payment.objects.aggregate(first=Min("created_at"))["first"] < now - timedelta(days=300)


def test_the_screens_answer_on_the_generated_data(volume: VolumeResult, staff_client: StaffClient) -> None:
    client = staff_client("superuser")
    for period in PERIODS:
        response = client.get("/reporting/dashboards/overview/data.json", {"period": period})
        assert response.status_code == 200, (period, response.content[:300])
    now = timezone.now()
    response = client.get(
        "/reporting/datasets/payments/query.json",
        {
            "measures": "payments",
            "group_by": "carrier",
            "bucket": "month",
            "since": (now - timedelta(days=600)).date().isoformat(),
            "until": (now + timedelta(days=1)).date().isoformat(),
        },
    )
    assert response.status_code == 200, response.content[:300]
    assert sum(row["payments"] for row in response.json()["rows"]) == PAYMENTS
    funnel = FunnelDefinition.objects.get(name="Demo store purchase")
    report = client.get(
        f"/admin/funnel/funneldefinition/{funnel.pk}/report/",
        {"since": str((now - timedelta(days=30)).date()), "until": str(now.date()), "breakdown": "carrier"},
    )
    assert report.status_code == 200
    assert b"store_opened" in report.content
    month: dict[str, str] = {
        "since": (now - timedelta(days=30)).date().isoformat(),
        "until": now.date().isoformat(),
    }
    for file_format in ("csv", "xlsx"):
        export = client.get(
            f"/reporting/datasets/payments/export.{file_format}",
            {"measures": "payments,revenue_minor", "group_by": "carrier", "bucket": "day", **month},
        )
        assert export.status_code == 200, export.content[:300]
    job = client.post(
        "/admin/reporting/exportjob/add/",
        {"kind": "transactions", "file_format": "csv", "date_from": month["since"], "date_to": month["until"]},
    )
    assert job.status_code == 302


def test_it_refuses_a_journal_it_cannot_fill(settings: Any) -> None:
    settings.JOURNAL_BACKEND = "mongodb"
    with pytest.raises(CommandError, match="JOURNAL_URL=postgres"):
        call_command("generate_volume", "--payments", "10", stdout=io.StringIO())


def index_definitions(alias: str) -> set[tuple[str, str, str]]:
    """Every index of the filled tables (and of their partitions), as pg_indexes tells them."""
    tables = loaded_tables(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = current_schema()
              AND (tablename = ANY(%s) OR tablename IN (
                  SELECT c.relname FROM pg_inherits JOIN pg_class c ON c.oid = inhrelid
                  WHERE inhparent::regclass::text = ANY(%s)))
            """,
            [tables, tables],
        )
        return set(cursor.fetchall())


def test_a_fast_load_leaves_the_indexes_as_the_migrations_made_them_and_the_same_data() -> None:
    call_command("seed_demo", stdout=io.StringIO())
    # A first load through the indexes makes the months' partitions: then only the fast load can change them.
    first = generate_volume(payments=100, months=4, rebuild_indexes=False)
    before = {alias: index_definitions(alias) for alias in ("default", JOURNAL)}
    assert any("msisdn_hash" in definition for _, _, definition in before[JOURNAL])
    assert len(before["default"]) > 20

    messages: list[str] = []
    result = generate_volume(payments=600, months=4, seed=-0.3, rebuild_indexes=True, progress=messages.append)

    assert any(message.startswith("setting") and "indexes aside" in message for message in messages)
    assert {alias: index_definitions(alias) for alias in ("default", JOURNAL)} == before
    assert Payment.objects.count() == result.payments + first.payments == 700
    charged = Payment.objects.filter(status__in=CHARGED)
    assert LedgerEntry.objects.filter(kind="charge").count() == charged.count() > 400
    unbalanced = LedgerLine.objects.values("entry_id", "currency").annotate(total=Sum("amount_minor")).exclude(total=0)
    assert not unbalanced.exists()
    assert PaymentStatusChange.objects.values("payment_id").distinct().count() == 700
    assert FunnelEventKey.objects.count() == FunnelEvent.objects.count() == result.events + first.events > 1000
    records = JournalRecord.objects.using("journal")
    assert records.count() == result.journal_records + first.journal_records > 1500
    payment = Payment.objects.exclude(status="created").first()
    assert payment is not None
    # The rebuilt indexes answer the journal's lookups.
    assert records.filter(payment_id=str(payment.public_id), msisdn_hash=msisdn_hash(payment.msisdn)).exists()
