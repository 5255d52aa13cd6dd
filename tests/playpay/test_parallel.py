"""A read cut into parts: at once on connections of their own, in one snapshot, with the caller's statement
timeout; one after the other inside a transaction; a failing part cancels the others and its error is raised."""

import threading
import time

import pytest
from django.db import DataError, connection, transaction

from playpay.parallel import Parts, PartStopped, in_one_snapshot, runs_at_once
from tests.concurrency import client_sessions, other_session, sessions_drop_to

pytestmark = pytest.mark.postgres


def backend(shared: Parts) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def statement_timeout(shared: Parts) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return str(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_parts_run_at_once_on_connections_of_their_own_and_see_one_snapshot() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE test_parallel_rows (n integer)")
        cursor.execute("INSERT INTO test_parallel_rows VALUES (1)")
    first_counted = threading.Event()
    before = client_sessions()

    def first(shared: Parts) -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM test_parallel_rows")
            counted = int(cursor.fetchone()[0])
        with other_session() as writer:  # committed after the parts' snapshot was taken
            writer.execute("INSERT INTO test_parallel_rows VALUES (2)")
        first_counted.set()
        return backend(shared), counted

    def second(shared: Parts) -> tuple[int, int]:
        assert first_counted.wait(30)  # both parts are running at this moment
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM test_parallel_rows")
            return backend(shared), int(cursor.fetchone()[0])

    try:
        assert runs_at_once()
        (pid_1, count_1), (pid_2, count_2) = in_one_snapshot([first, second])
        assert pid_1 != pid_2
        assert (count_1, count_2) == (1, 1)  # the row committed meanwhile is in neither part's snapshot
        assert sessions_drop_to(before)  # the second part's connection was closed
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE test_parallel_rows")


@pytest.mark.django_db(transaction=True)
def test_every_part_has_the_callers_statement_timeout_and_the_first_may_wait_idle_for_the_others() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = '7s'")
        # The server ends a session idle in a transaction this long; the first part waits so for the second.
        cursor.execute("SET idle_in_transaction_session_timeout = '200ms'")

    def slow(shared: Parts) -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.6)")
        return statement_timeout(shared)

    try:
        assert in_one_snapshot([statement_timeout, slow, statement_timeout]) == ["7s", "7s", "7s"]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")
            cursor.execute("RESET idle_in_transaction_session_timeout")


@pytest.mark.django_db
def test_inside_a_transaction_the_parts_run_one_after_the_other_on_its_connection() -> None:
    assert connection.in_atomic_block
    assert not runs_at_once()
    pids = in_one_snapshot([backend, backend, backend])
    assert len(set(pids)) == 1


@pytest.mark.django_db(transaction=True)
def test_a_failing_part_cancels_the_others_statements_and_its_error_is_raised() -> None:
    before = client_sessions()

    def long_statement(shared: Parts) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(60)")

    def failing(shared: Parts) -> None:
        time.sleep(0.3)  # while the others' statements run
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")

    started = time.monotonic()
    with pytest.raises(DataError, match="division by zero"):  # not the cancels it caused
        in_one_snapshot([long_statement, failing, long_statement])
    assert time.monotonic() - started < 20
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("snapshot-part")]
    assert sessions_drop_to(before)
    with transaction.atomic(), connection.cursor() as cursor:  # this connection is usable again
        cursor.execute("SELECT 1")


@pytest.mark.django_db(transaction=True)
def test_a_part_between_its_batches_stops_once_another_failed() -> None:
    batches: list[int] = []
    running = threading.Event()

    def batched(shared: Parts) -> None:  # ten seconds unless stopped
        for batch in range(1000):
            shared.check()
            batches.append(batch)
            if batch == 4:
                running.set()
            time.sleep(0.01)

    def failing(shared: Parts) -> None:
        assert running.wait(10)  # fails while the other is between its batches
        raise ValueError("own error")

    with pytest.raises(ValueError, match="own error"):
        in_one_snapshot([batched, failing])
    assert 5 <= len(batches) < 500

    def stops(shared: Parts) -> None:
        raise PartStopped

    with pytest.raises(PartStopped):  # nothing else failed: the stop itself
        in_one_snapshot([stops, backend])
