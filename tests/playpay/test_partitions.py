"""Partition creation (PostgreSQL): run twice at once, the one that waited for the other's lock creates only what is
still missing; the months ahead are created on a fence, without reading the default partition under the table's
lock; a fence that cannot be had leaves its months to the next run."""

import threading
import time
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from funnel.models import FunnelEvent
from payments.models import PaymentStatus, PaymentStatusChange
from payments.partitions import HISTORY
from playpay.partitions import PartitionedTable, add_months, get, month_start
from tests.factories import AppFactory, PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WAIT = 20.0  # seconds; far above what either side needs, a bound for a hang only


def waiting_for_a_lock(cursor: CursorWrapper) -> bool:
    cursor.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid() "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return bool(cursor.fetchone()[0])


def test_a_run_that_waited_for_another_creates_only_what_is_still_missing() -> None:
    table = get("funnel_funnelevent")
    first = add_months(month_start(timezone.now()), 240)  # months no other test makes
    now = datetime(first.year, first.month, 15, tzinfo=UTC)
    other_month = add_months(first, 1)
    locked, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def other_run() -> None:
        """The other run: holds the table's lock and creates one of the months until this one waits for it."""
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {table.table} IN ACCESS EXCLUSIVE MODE")
                table.create_partition(cursor, other_month)
                locked.set()
                deadline = time.monotonic() + WAIT
                while not waiting_for_a_lock(cursor):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the second run never waited for the lock")
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)
        finally:
            locked.set()
            done.set()
            connection.close()

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert locked.wait(WAIT)
        created = table.ensure(now=now, months_ahead=2)
        assert done.wait(WAIT)
        assert failures == []
        assert created == [table.partition_name(first), table.partition_name(add_months(first, 2))]
        assert {table.partition_name(add_months(first, n)) for n in range(3)} <= set(table.partitions())
    finally:
        thread.join(WAIT)
        drop_partitions_from(table, first)


def drop_partitions_from(table: PartitionedTable, first: date) -> None:
    with connections["default"].cursor() as cursor:
        for month in table.months():
            if month >= first:
                cursor.execute(f"DROP TABLE {table.partition_name(month)}")


def events_in(partition: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {partition}")  # noqa: S608 - a partition name of ours
        return int(cursor.fetchone()[0])


def test_months_ahead_are_created_without_reading_the_default_partition_which_keeps_its_rows() -> None:
    table = get("funnel_funnelevent")
    old = datetime(2001, 1, 10, tzinfo=UTC)  # far past MONTHS_BACK: its row stays in the default partition
    FunnelEvent.objects.create(
        app=AppFactory.create(), journey_id="j", event_id="e", step="open", occurred_at=old, source="game"
    )
    first = add_months(month_start(timezone.now()), 300)  # months no other test makes
    messages: list[str] = []
    connection.ensure_connection()
    raw = connection.connection
    assert raw is not None

    def keep(diagnostic: Any) -> None:
        messages.append(diagnostic.message_primary or "")

    raw.add_notice_handler(keep)
    with connection.cursor() as cursor:
        cursor.execute("SET client_min_messages = debug1")
    try:
        created = table.ensure(now=datetime(first.year, first.month, 15, tzinfo=UTC), months_ahead=2)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET client_min_messages")
        raw.remove_notice_handler(keep)
    try:
        assert created == [table.partition_name(add_months(first, n)) for n in range(3)]
        implied = [message for message in messages if "is implied by existing constraints" in message]
        # The months after the current one were proven absent from the default partition beforehand; the
        # current one (not fenced: its rows are the everyday ones) was checked by reading it, as before.
        assert len(implied) == 2, messages
        assert all(table.default_partition in message for message in implied)
        assert events_in(table.default_partition) == 1
        assert not table.has_fence()  # dropped with the partitions made: an archived month's rows go back there
    finally:
        drop_partitions_from(table, first)


def test_a_fence_that_rows_of_its_months_contradict_is_not_left_standing() -> None:
    table = get("funnel_funnelevent")
    month = date(2001, 1, 1)
    FunnelEvent.objects.create(
        app=AppFactory.create(),
        journey_id="j",
        event_id="e",
        step="open",
        occurred_at=datetime(2001, 1, 10, tzinfo=UTC),
        source="game",
    )
    assert table.fence_default([month]) is False
    assert not table.has_fence()
    assert table.fence_default([add_months(month, 1)]) is True  # a month without rows there: it stands
    assert table.has_fence()
    table.drop_fence()
    assert not table.has_fence()


def test_while_the_fence_stands_a_row_of_its_months_is_refused_and_rows_of_other_months_go_in() -> None:
    table = get("funnel_funnelevent")
    fenced = add_months(month_start(timezone.now()), 330)  # a month no other test makes
    app = AppFactory.create()

    def event(n: int, month: date) -> None:
        FunnelEvent.objects.create(
            app=app,
            journey_id="j",
            event_id=f"e{n}",
            step="open",
            occurred_at=datetime(month.year, month.month, 5, tzinfo=UTC),
            source="game",
        )

    assert table.fence_default([fenced]) is True
    try:
        with pytest.raises(IntegrityError, match=table.default_fence), transaction.atomic():
            event(1, fenced)  # no partition of its own, and the default partition no longer takes it
        event(2, date(2001, 1, 1))
        assert events_in(table.default_partition) == 1
    finally:
        table.drop_fence()


def test_months_ahead_are_created_without_reading_the_default_partition_under_the_tables_lock() -> None:
    table = HISTORY  # moves nothing out of its default partition, which holds the oldest payments' rows
    payment = PaymentFactory.create(created_at=datetime(2001, 1, 10, tzinfo=UTC))
    PaymentStatusChange.objects.create(payment=payment, to_status=PaymentStatus.CREATED, actor="system")
    assert events_in(table.default_partition) == 1
    first = add_months(month_start(timezone.now()), 320)  # months no other test makes
    with transaction.atomic(), connection.cursor() as cursor:  # this month's partition exists, as the job keeps it
        cursor.execute(f"LOCK TABLE {table.table} IN ACCESS EXCLUSIVE MODE")
        table.create_partition(cursor, first)
    default = table.default_partition
    locked = False
    # Reads of the default partition counted by this connection, after each statement of the locked transaction.
    scans: list[int] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        nonlocal locked
        result = execute(sql, params, many, context)
        locked = locked or sql.startswith(f"LOCK TABLE {table.table} ")
        if locked:
            # The counts this connection has not reported to pg_stat_user_tables yet (it reports them only
            # between transactions): the current transaction's, on top of those of the ones before it.
            with context["connection"].connection.cursor() as raw:
                raw.execute(
                    "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables "
                    "WHERE relid = %s::regclass",
                    [default],
                )
                scans.append(int(raw.fetchone()[0]))
            locked = "DROP CONSTRAINT" not in sql  # the fence goes last, in the same transaction
        return result

    try:
        with connection.execute_wrapper(watch):
            created = table.ensure(now=datetime(first.year, first.month, 15, tzinfo=UTC), months_ahead=2)
        assert created == [table.partition_name(add_months(first, n)) for n in (1, 2)]
        assert scans, "the table's lock was never taken"
        assert scans[-1] - scans[0] == 0  # from the LOCK on
        assert events_in(default) == 1  # left there
        assert not table.has_fence()
    finally:
        drop_partitions_from(table, first)


def test_months_whose_fence_a_row_arriving_meanwhile_defeats_wait_for_the_next_run_which_moves_it() -> None:
    table = get("funnel_funnelevent")
    first = add_months(month_start(timezone.now()), 340)  # months no other test makes
    late = add_months(first, 1)
    now = datetime(first.year, first.month, 15, tzinfo=UTC)
    with transaction.atomic(), connection.cursor() as cursor:  # this month's partition exists, as the job keeps it
        cursor.execute(f"LOCK TABLE {table.table} IN ACCESS EXCLUSIVE MODE")
        table.create_partition(cursor, first)
    app = AppFactory.create()

    def row_arrives(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if "ADD CONSTRAINT" in sql:  # after the default partition was read, before the fence stands
            FunnelEvent.objects.create(
                app=app,
                journey_id="j",
                event_id="e",
                step="open",
                occurred_at=datetime(late.year, late.month, 2, tzinfo=UTC),
                source="game",
            )
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(row_arrives), pytest.raises(RuntimeError, match="not fenced"):
            table.ensure(now=now, months_ahead=2)
        assert {table.partition_name(late), table.partition_name(add_months(first, 2))}.isdisjoint(table.partitions())
        assert not table.has_fence()
        assert events_in(table.default_partition) == 1  # taken in: the fence no longer stands
        # The next run finds the row and moves its month out; the other month is fenced and made.
        assert table.ensure(now=now, months_ahead=2) == [
            table.partition_name(late),
            table.partition_name(add_months(first, 2)),
        ]
        assert events_in(table.partition_name(late)) == 1
        assert events_in(table.default_partition) == 0
    finally:
        drop_partitions_from(table, first)
