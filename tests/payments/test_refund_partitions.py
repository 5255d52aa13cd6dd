"""Refunds and reversals at volume (PostgreSQL): partitioned by their payment's month like its history and
ledger; one reversal per payment and the ledger's reference to its refund hold across partitions; a month
leaves lines first, then entries, then refunds; the migration of an existing database keeps every row and
key, both ways."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from payments.models import LedgerEntry, Payment, PaymentFlow, PaymentStatus, Refund, Reversal
from payments.partitions import ENTRIES, LINES, REFUNDS, REVERSALS
from payments.services.refunds import request_refund, request_reversal
from payments.services.state_machine import record_creation, transition
from playpay.partitions import add_months, month_start, read_archive
from tests.factories import PaymentFactory
from tests.payments.partition_helpers import Rows, kind_and_rows, latest_payments_migrations, migrate_to, names

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def paid(created_at: datetime | None = None) -> Payment:
    """A succeeded one-click payment with its charge posted, on a carrier that can neither refund nor reverse
    (the platform pays back at once: refunds and reversals settle and post in the same call)."""
    payment = PaymentFactory.create(flow=PaymentFlow.ONE_CLICK, created_at=created_at)
    payment.carrier.supports_refund = payment.carrier.supports_reversal = False
    payment.carrier.save()
    record_creation(payment, actor="test")
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        transition(locked, PaymentStatus.CHARGING, actor="test")
        transition(locked, PaymentStatus.SUCCEEDED, actor="test")
    return Payment.objects.get(pk=payment.pk)


def partitions_of(model: type[Refund | Reversal | LedgerEntry], payment: Payment) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {model._meta.db_table} WHERE payment_id = %s",  # noqa: S608
            [payment.pk],
        )
        return {row[0] for row in cursor.fetchall()}


def as_committed() -> None:
    """Run the deferred checks now (foreign keys, balances), as a commit would."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_refunds_and_reversals_land_in_the_partition_of_the_payments_month() -> None:
    refunded, reversed_ = paid(), paid()
    refund = request_refund(payment=refunded, amount_minor=None, reason="goodwill", actor="test")
    reversal = request_reversal(payment=reversed_, reason="not delivered", actor="test")
    as_committed()
    assert (refund.status, reversal.status) == (Refund.Status.SUCCEEDED, Reversal.Status.SUCCEEDED)
    assert refund.payment_created_at == refunded.created_at
    assert reversal.payment_created_at == reversed_.created_at
    assert partitions_of(Refund, refunded) == {REFUNDS.partition_name(month_start(refunded.created_at))}
    assert partitions_of(Reversal, reversed_) == {REVERSALS.partition_name(month_start(reversed_.created_at))}
    entry = LedgerEntry.objects.get(refund=refund)  # the entry finds its refund through the composite key
    assert entry.payment_created_at == refund.payment_created_at


def test_refunds_and_reversals_written_without_the_payments_month_get_it_from_the_payment() -> None:
    payment = PaymentFactory.create(status=PaymentStatus.SUCCEEDED)
    refund = Refund.objects.create(
        payment_id=payment.pk, amount_minor=1, currency=payment.currency, reason="r", requested_by="t"
    )
    reversal = Reversal.objects.create(payment_id=payment.pk, reason="r", requested_by="t")
    assert refund.payment_created_at == reversal.payment_created_at == payment.created_at


def test_a_second_reversal_of_a_payment_is_refused() -> None:
    payment = paid()
    request_reversal(payment=payment, reason="not delivered", actor="test")
    with pytest.raises(IntegrityError), transaction.atomic():
        Reversal.objects.create(payment=payment, reason="again", requested_by="t")
    assert Reversal.objects.filter(payment=payment).count() == 1


def test_a_refund_public_id_is_refused_a_second_time() -> None:
    payment = PaymentFactory.create(status=PaymentStatus.SUCCEEDED)
    first = Refund.objects.create(
        payment=payment, amount_minor=1, currency=payment.currency, reason="r", requested_by="t"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Refund.objects.create(
            payment=payment,
            public_id=first.public_id,
            amount_minor=1,
            currency=payment.currency,
            reason="r",
            requested_by="t",
        )


def test_a_ledger_entry_naming_a_refund_in_another_month_is_refused() -> None:
    payment = paid()
    refund = request_refund(payment=payment, amount_minor=None, reason="goodwill", actor="test")
    as_committed()
    other_month = add_months(month_start(payment.created_at), -1)
    insert = (
        "INSERT INTO payments_ledgerentry (kind, payment_id, payment_created_at, refund_id, memo, created_at) "
        "VALUES ('refund', %s, %s, %s, 'made up', now())"
    )
    elsewhere = datetime(other_month.year, other_month.month, 2, tzinfo=UTC)
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:  # checked at once
        cursor.execute(insert, [payment.pk, elsewhere, refund.pk])


def old_month_with_a_refund_and_a_reversal() -> tuple[datetime, Payment, Payment]:
    month = add_months(month_start(timezone.now()), -14)
    for table in (ENTRIES, LINES, REFUNDS, REVERSALS):
        table.ensure(since=month)
    created_at = datetime(month.year, month.month, 3, tzinfo=UTC)
    refunded, reversed_ = paid(created_at), paid(created_at)
    request_refund(payment=refunded, amount_minor=None, reason="goodwill", actor="test")
    request_reversal(payment=reversed_, reason="not delivered", actor="test")
    as_committed()
    return created_at, refunded, reversed_


def test_a_month_of_refunds_is_archived_after_the_ledger_and_cannot_leave_before_it(tmp_path: Path) -> None:
    created_at, refunded, reversed_ = old_month_with_a_refund_and_a_reversal()
    month = month_start(created_at)
    with pytest.raises(IntegrityError), transaction.atomic():  # the month's ledger entries refer to its refunds
        REFUNDS.archive(month, tmp_path)
    assert Refund.objects.filter(payment=refunded).exists()
    LINES.archive(month, tmp_path)
    ENTRIES.archive(month, tmp_path)
    refunds = REFUNDS.archive(month, tmp_path)
    reversals = REVERSALS.archive(month, tmp_path)
    assert [row["payment_id"] for row in read_archive(refunds.path)] == [str(refunded.pk)]
    assert [row["payment_id"] for row in read_archive(reversals.path)] == [str(reversed_.pk)]
    assert not Refund.objects.filter(payment=refunded).exists()
    assert not Reversal.objects.filter(payment=reversed_).exists()


def test_archiving_refunds_before_their_ledger_entries_is_refused_with_the_order_to_follow(tmp_path: Path) -> None:
    _, refunded, _ = old_month_with_a_refund_and_a_reversal()
    with pytest.raises(CommandError, match="ledger entries before refunds"):
        call_command("archive_partitions", "--table", REFUNDS.table, "--older-than-days", "365", "--dir", str(tmp_path))
    assert Refund.objects.filter(payment=refunded).exists()


TABLES = ("payments_refund", "payments_reversal", "payments_ledgerentry")


def tables_state() -> dict[str, tuple[str, Rows, list[str]]]:
    """Per table: its kind (r plain, p partitioned), its rows, and the names of its keys (unique, foreign)."""
    keys = (
        "SELECT conname FROM pg_constraint WHERE contype IN ('u', 'f') AND conrelid = %s::regclass "
        "AND conparentid = 0 ORDER BY 1"
    )
    return {table: (*kind_and_rows(table), names(keys, table)) for table in TABLES}


@pytest.mark.django_db(transaction=True)
def test_migrating_refunds_and_reversals_keeps_rows_ids_and_keys_both_ways() -> None:
    before = [("payments", "0020_ledger_partitioned_by_payment_month")]
    latest = latest_payments_migrations()  # and back there after

    old = paid(datetime(2019, 6, 1, tzinfo=UTC))  # before every partition: the default ones
    recent = paid()
    old_refund = request_refund(payment=old, amount_minor=1, reason="goodwill", actor="test")
    request_refund(payment=recent, amount_minor=None, reason="goodwill", actor="test")
    reversed_ = paid()
    request_reversal(payment=reversed_, reason="not delivered", actor="test")
    partitioned = tables_state()
    assert {kind for kind, _, _ in partitioned.values()} == {"p"}
    assert [len(rows) for _, rows, _ in partitioned.values()] == [2, 1, 6]  # 3 charges, 2 refunds, 1 reversal
    try:
        migrate_to(before)
        plain = tables_state()
        for table in ("payments_refund", "payments_reversal"):
            assert plain[table] == ("r", *partitioned[table][1:])
        assert plain["payments_ledgerentry"] == partitioned["payments_ledgerentry"]  # partitioned before too
        migrate_to(latest)
        assert tables_state() == partitioned
        assert partitions_of(Refund, old) == {REFUNDS.default_partition}
        assert partitions_of(Reversal, reversed_) == {REVERSALS.partition_name(month_start(reversed_.created_at))}
        with pytest.raises(IntegrityError), transaction.atomic():  # one reversal per payment, still
            Reversal.objects.create(payment=reversed_, reason="again", requested_by="t")
        refund = request_refund(payment=Payment.objects.get(pk=old.pk), amount_minor=1, reason="again", actor="t")
        assert refund.pk > old_refund.pk  # the id sequence carries on after the copied ids
        assert LedgerEntry.objects.get(refund=refund).payment_created_at == old.created_at
    finally:
        migrate_to(latest)
