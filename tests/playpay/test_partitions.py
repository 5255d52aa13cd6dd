"""Partition creation run twice at once (PostgreSQL): the job and `manage.py partitions` both find a month
missing; the one that waited for the other's lock creates only what is still missing, and both succeed."""

import threading
import time
from datetime import UTC, datetime

import pytest
from django.db import connection, connections, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from playpay.partitions import add_months, get, month_start

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
        with connections["default"].cursor() as cursor:
            for month in table.months():
                if month >= first:
                    cursor.execute(f"DROP TABLE {table.partition_name(month)}")
