"""The payments' status history and ledger at volume (PostgreSQL): partitioned by their payment's month, so that
all of a payment's rows sit in its month's partitions; rows of a month without a partition wait in the default
one until the job gives the month its own; the ledger's guarantees hold across partitions; the migration of an
existing database keeps every row, key and guard."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import IntegrityError, InternalError, connection, transaction
from django.utils import timezone

from payments.errors import ChargeNotInLedger
from payments.models import (
    LedgerEntry,
    LedgerLine,
    Payment,
    PaymentFlow,
    PaymentStatus,
    PaymentStatusChange,
    Refund,
    Reversal,
)
from payments.partitions import ENTRIES, HISTORY, LINES
from payments.services.ledger import post_charge, post_refund
from payments.services.state_machine import record_creation, transition
from playpay.partitions import add_months, ensure_all, month_start, read_archive
from tests.conftest import Shop, assert_problem
from tests.factories import PaymentFactory
from tests.payments.partition_helpers import Rows, kind_and_rows, latest_payments_migrations, migrate_to, names

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def partitions_of(payment: Payment, table: str = "payments_paymentstatuschange") -> set[str]:
    """The partitions of `table` that hold rows of the payment."""
    query = {
        "payments_paymentstatuschange": "SELECT tableoid::regclass::text FROM payments_paymentstatuschange "
        "WHERE payment_id = %s",
        "payments_ledgerentry": "SELECT tableoid::regclass::text FROM payments_ledgerentry WHERE payment_id = %s",
        "payments_ledgerline": "SELECT l.tableoid::regclass::text FROM payments_ledgerline l "
        "JOIN payments_ledgerentry e ON e.id = l.entry_id WHERE e.payment_id = %s",
    }[table]
    with connection.cursor() as cursor:
        cursor.execute(query, [payment.pk])
        return {row[0] for row in cursor.fetchall()}


def charged(payment: Payment) -> None:
    with transaction.atomic():
        post_charge(payment)


def walk(payment: Payment) -> None:
    record_creation(payment, actor="test")
    with transaction.atomic():
        transition(payment, PaymentStatus.PIN_SENT, actor="test")


def test_a_payments_history_lands_in_the_partition_of_the_payments_month() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.PIN)
    walk(payment)
    assert partitions_of(payment) == {HISTORY.partition_name(month_start(payment.created_at))}
    assert all(change.payment_created_at == payment.created_at for change in payment.history.all())


def test_history_of_a_month_without_partition_stays_in_the_default_one() -> None:
    # Only payments older than the partitions (migrated from before them) have no month of their own.
    month = add_months(month_start(timezone.now()), -3)
    payment = PaymentFactory.create(flow=PaymentFlow.PIN)
    Payment.objects.filter(pk=payment.pk).update(created_at=datetime(month.year, month.month, 9, tzinfo=UTC))
    payment.refresh_from_db()
    walk(payment)
    charged(payment)
    assert partitions_of(payment) == {HISTORY.default_partition}
    with connection.cursor() as cursor:  # the entry balances: checked as at the commit
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    created = ensure_all(now=timezone.now() + timedelta(days=200))  # months ahead are still made
    assert HISTORY.partition_name(month_start(timezone.now() + timedelta(days=200))) in created
    assert not {table.partition_name(month) for table in (HISTORY, ENTRIES, LINES)} & set(created)
    assert partitions_of(payment) == {HISTORY.default_partition}
    assert partitions_of(payment, "payments_ledgerline") == {LINES.default_partition}
    assert list(payment.history.values_list("to_status", flat=True)) == ["created", "pin_sent"]


def test_history_written_without_the_payments_month_gets_it_from_the_payment() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.PIN)
    change = PaymentStatusChange.objects.create(payment_id=payment.pk, to_status="created", actor="test")
    assert change.payment_created_at == payment.created_at


def test_history_of_a_payment_that_does_not_exist_is_refused() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.PIN)
    insert = (
        "INSERT INTO payments_paymentstatuschange (payment_id, payment_created_at, from_status, to_status, "
        "actor, reason, created_at) VALUES (%s, %s, '', 'created', 'test', '', now())"
    )
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the key is checked at the insert, not at the commit
        with pytest.raises(IntegrityError), transaction.atomic():
            cursor.execute(insert, [payment.pk + 1000, payment.created_at])


def test_a_payments_ledger_lands_in_the_partitions_of_the_payments_month() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    charged(payment)
    month = month_start(payment.created_at)
    assert partitions_of(payment, "payments_ledgerentry") == {ENTRIES.partition_name(month)}
    assert partitions_of(payment, "payments_ledgerline") == {LINES.partition_name(month)}
    assert sum(LedgerLine.objects.filter(entry__payment=payment).values_list("amount_minor", flat=True)) == 0


def test_a_second_charge_entry_for_a_payment_is_refused_whatever_its_month() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    charged(payment)
    with pytest.raises(IntegrityError), transaction.atomic():
        post_charge(payment)
    # A made-up month for the same payment would be another key: the payment's own month is the only one
    # the ledger ever writes (it takes it from the payment), so the key holds globally.
    assert LedgerEntry.objects.filter(payment=payment, kind=LedgerEntry.Kind.CHARGE).count() == 1


def test_the_ledger_refuses_changes_on_every_partition() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    charged(payment)
    with connection.cursor() as cursor:  # as if committed: no balance check left pending, which TRUNCATE refuses
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    partition = LINES.partition_name(month_start(payment.created_at))  # a name of our own making
    for statement in (
        f"UPDATE {partition} SET account = 'x'",  # noqa: S608
        f"DELETE FROM {partition}",  # noqa: S608
        f"TRUNCATE {partition}",
    ):
        with (
            pytest.raises((IntegrityError, InternalError), match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)


TABLES = ("payments_paymentstatuschange", "payments_ledgerentry", "payments_ledgerline")


FOREIGN_KEYS = (
    "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass AND conparentid = 0 ORDER BY 1"
)


def tables_state() -> dict[str, tuple[str, Rows, list[str], list[str]]]:
    """Per table: its kind (r plain, p partitioned), its rows, its foreign keys and its triggers."""
    return {
        table: (
            *kind_and_rows(table),
            names(FOREIGN_KEYS, table),
            names("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = %s::regclass ORDER BY 1", table),
        )
        for table in TABLES
    }


@pytest.mark.django_db(transaction=True)
def test_migrating_an_existing_database_keeps_rows_ids_keys_and_guards_both_ways() -> None:
    before = [("payments", "0018_public_ids_time_ordered")]
    latest = latest_payments_migrations()  # and back there after

    old = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    Payment.objects.filter(pk=old.pk).update(created_at=datetime(2019, 6, 1, tzinfo=UTC))  # before every partition
    old.refresh_from_db()
    recent = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    for payment in (old, recent):
        walk(payment)
        charged(payment)
    partitioned = tables_state()
    last_change = max(PaymentStatusChange.objects.values_list("id", flat=True))
    assert {kind for kind, *_ in partitioned.values()} == {"p"}
    assert [len(rows) for _, rows, _, _ in partitioned.values()][:2] == [4, 2]
    assert partitioned["payments_ledgerline"][1]
    try:
        migrate_to(before)
        plain = tables_state()
        for table in TABLES:
            assert plain[table][:3] == ("r", *partitioned[table][1:3])
        assert "ledgerline_entry_balanced" in plain["payments_ledgerline"][3]
        migrate_to(latest)
        assert tables_state() == partitioned
        assert partitions_of(old) == {HISTORY.default_partition}
        assert partitions_of(old, "payments_ledgerline") == {LINES.default_partition}
        assert partitions_of(recent, "payments_ledgerentry") == {ENTRIES.partition_name(month_start(recent.created_at))}
        assert {line.payment_created_at for line in LedgerLine.objects.filter(entry__payment=old)} == {old.created_at}
        with transaction.atomic():  # the id sequences carry on after the copied ids
            change = transition(Payment.objects.select_for_update().get(pk=recent.pk), PaymentStatus.FAILED, actor="t")
        assert change.pk > last_change
        with pytest.raises(IntegrityError), transaction.atomic():  # one charge entry per payment, still
            post_charge(Payment.objects.get(pk=old.pk))
    finally:
        migrate_to(latest)


def test_a_ledger_month_is_archived_lines_first_and_its_entries_cannot_leave_before_them(tmp_path: Path) -> None:
    month = add_months(month_start(timezone.now()), -14)
    ENTRIES.ensure(since=month)
    LINES.ensure(since=month)
    payment = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    # Charged (a settled payment: a month leaves only once nothing of it moves).
    Payment.objects.filter(pk=payment.pk).update(
        created_at=datetime(month.year, month.month, 3, tzinfo=UTC), status=PaymentStatus.SUCCEEDED
    )
    payment.refresh_from_db()
    charged(payment)
    with connection.cursor() as cursor:  # as if committed: no balance check left pending
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with pytest.raises(IntegrityError), transaction.atomic():  # lines still refer to the month's entries
        ENTRIES.archive(month, tmp_path)
    assert ENTRIES.partition_name(month) in ENTRIES.partitions()
    lines = LINES.archive(month, tmp_path)
    entries = ENTRIES.archive(month, tmp_path)
    assert entries.rows == 1
    assert lines.rows >= 2
    assert sum(int(row["amount_minor"]) for row in read_archive(lines.path)) == 0  # the entry balanced
    assert [row["kind"] for row in read_archive(entries.path)] == ["charge"]
    assert not LedgerEntry.objects.filter(payment=payment).exists()


def test_archiving_ledger_entries_before_their_lines_is_refused_with_the_order_to_follow(tmp_path: Path) -> None:
    from django.core.management import CommandError, call_command

    month = add_months(month_start(timezone.now()), -14)
    ENTRIES.ensure(since=month)
    LINES.ensure(since=month)
    payment = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK)
    # Charged (a settled payment: a month leaves only once nothing of it moves).
    Payment.objects.filter(pk=payment.pk).update(
        created_at=datetime(month.year, month.month, 3, tzinfo=UTC), status=PaymentStatus.SUCCEEDED
    )
    payment.refresh_from_db()
    charged(payment)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with pytest.raises(CommandError, match="ledger lines before ledger entries"):
        call_command("archive_partitions", "--table", ENTRIES.table, "--older-than-days", "365", "--dir", str(tmp_path))
    assert LedgerEntry.objects.filter(payment=payment).exists()


def test_a_payment_whose_ledger_month_was_archived_is_neither_refunded_nor_reversed(shop: Shop, tmp_path: Path) -> None:
    public_id = shop.pay(flow="one_click")["id"]
    payment = Payment.objects.get(public_id=public_id)
    with connection.cursor() as cursor:  # as if committed: no balance check left pending
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    month = month_start(payment.created_at)
    LINES.archive(month, tmp_path)
    ENTRIES.archive(month, tmp_path)
    refund = shop.client.post(
        f"/api/v1/payments/{public_id}/refunds/", {"reason": "goodwill"}, format="json", HTTP_IDEMPOTENCY_KEY="r1"
    )
    assert "archived" in assert_problem(refund, status=409, code="illegal_transition")["detail"]
    reversal = shop.client.post(f"/api/v1/payments/{public_id}/reversal/", {"reason": "not delivered"}, format="json")
    assert "archived" in assert_problem(reversal, status=409, code="reversal_not_allowed")["detail"]
    # Whatever asks the ledger directly is refused too, before anything is written.
    with pytest.raises(ChargeNotInLedger, match="archived"):
        post_refund(Refund(payment=payment, amount_minor=10, via_carrier=False), refunded_before=0)
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_minor) == (PaymentStatus.SUCCEEDED, 0)
    assert not Refund.objects.filter(payment=payment).exists()
    assert not Reversal.objects.filter(payment=payment).exists()
    assert not LedgerEntry.objects.filter(payment=payment).exists()
