"""The payments' status history at volume (PostgreSQL): partitioned by its payment's month, so that a payment's
whole history sits in one partition; rows of a month without a partition wait in the default one until the
job gives the month its own; the migration of an existing database keeps every row."""

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from payments.models import Payment, PaymentFlow, PaymentStatus, PaymentStatusChange
from payments.partitions import HISTORY
from payments.services.state_machine import record_creation, transition
from playpay.partitions import add_months, ensure_all, month_start
from tests.factories import PaymentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def partitions_of(payment: Payment) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM payments_paymentstatuschange WHERE payment_id = %s",
            [payment.pk],
        )
        return {row[0] for row in cursor.fetchall()}


def walk(payment: Payment) -> None:
    record_creation(payment, actor="test")
    with transaction.atomic():
        transition(payment, PaymentStatus.PIN_SENT, actor="test")


def test_a_payments_history_lands_in_the_partition_of_the_payments_month() -> None:
    payment = PaymentFactory.create(flow=PaymentFlow.PIN)
    walk(payment)
    assert partitions_of(payment) == {HISTORY.partition_name(month_start(payment.created_at))}
    assert all(change.payment_created_at == payment.created_at for change in payment.history.all())


def test_history_of_a_month_without_partition_waits_in_the_default_one_until_the_job_moves_it() -> None:
    month = add_months(month_start(timezone.now()), -3)
    payment = PaymentFactory.create(flow=PaymentFlow.PIN)
    Payment.objects.filter(pk=payment.pk).update(created_at=datetime(month.year, month.month, 9, tzinfo=UTC))
    payment.refresh_from_db()
    walk(payment)
    assert partitions_of(payment) == {HISTORY.default_partition}
    assert HISTORY.partition_name(month) in ensure_all()
    assert partitions_of(payment) == {HISTORY.partition_name(month)}
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


@pytest.mark.django_db(transaction=True)
def test_migrating_an_existing_database_keeps_the_history_its_ids_and_its_payment_key_both_ways() -> None:
    from django.db.migrations.executor import MigrationExecutor

    before = [("payments", "0018_public_ids_time_ordered")]
    partitioned = [("payments", "0019_status_history_partitioned_by_payment_month")]

    def migrate(target: list[tuple[str, str]]) -> None:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(target)

    def table() -> tuple[str, list[tuple[int, int, str]], list[str]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'payments_paymentstatuschange'")
            kind = cursor.fetchone()[0]
            cursor.execute("SELECT id, payment_id, to_status FROM payments_paymentstatuschange ORDER BY id")
            rows = cursor.fetchall()
            cursor.execute(
                "SELECT conname FROM pg_constraint WHERE contype = 'f' "
                "AND conrelid = 'payments_paymentstatuschange'::regclass AND conparentid = 0"
            )
            return kind, rows, [row[0] for row in cursor.fetchall()]

    old = PaymentFactory.create(flow=PaymentFlow.PIN)
    Payment.objects.filter(pk=old.pk).update(created_at=datetime(2019, 6, 1, tzinfo=UTC))  # before every partition
    old.refresh_from_db()
    recent = PaymentFactory.create(flow=PaymentFlow.PIN)
    for payment in (old, recent):
        walk(payment)
    kind, rows, keys = table()
    assert kind == "p"
    assert len(rows) == 4
    assert len(keys) == 1
    try:
        migrate(before)
        assert table() == ("r", rows, keys)
        migrate(partitioned)
        assert table() == ("p", rows, keys)
        assert partitions_of(old) == {HISTORY.default_partition}
        assert partitions_of(recent) == {HISTORY.partition_name(month_start(recent.created_at))}
        assert {change.payment_created_at for change in old.history.all()} == {old.created_at}
        with transaction.atomic():  # the id sequence carries on after the copied ids
            change = transition(Payment.objects.select_for_update().get(pk=recent.pk), PaymentStatus.FAILED, actor="t")
        assert change.pk > max(row[0] for row in rows)
    finally:
        migrate(partitioned)
