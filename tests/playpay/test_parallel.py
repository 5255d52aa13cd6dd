"""A read cut into parts: at once on connections of their own, in one snapshot; one after the other inside a
transaction; a failing part stops the others and its error is raised."""

import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

from playpay.parallel import Parts, PartStopped, in_one_snapshot, runs_at_once

pytestmark = pytest.mark.postgres


def backend(shared: Parts) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def other_connection() -> psycopg.Connection[Any]:
    settings = connection.settings_dict
    return psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"], port=settings["PORT"], autocommit=True
    )


def sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_parts_run_at_once_on_connections_of_their_own_and_see_one_snapshot() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE test_parallel_rows (n integer)")
        cursor.execute("INSERT INTO test_parallel_rows VALUES (1)")
    first_counted = threading.Event()
    before = sessions()

    def first(shared: Parts) -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM test_parallel_rows")
            counted = int(cursor.fetchone()[0])
        with other_connection() as writer:  # committed after the parts' snapshot was taken
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
        assert sessions() <= before  # the second part's connection was closed
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE test_parallel_rows")


@pytest.mark.django_db
def test_inside_a_transaction_the_parts_run_one_after_the_other_on_its_connection() -> None:
    assert connection.in_atomic_block
    assert not runs_at_once()
    pids = in_one_snapshot([backend, backend, backend])
    assert len(set(pids)) == 1


@pytest.mark.django_db(transaction=True)
def test_a_failing_part_stops_the_others_and_its_error_is_raised() -> None:
    batches: list[int] = []

    def slow(shared: Parts) -> None:  # ten seconds unless stopped
        for batch in range(1000):
            shared.check()
            batches.append(batch)
            time.sleep(0.01)

    def failing(shared: Parts) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")

    before = sessions()
    with pytest.raises(Exception, match="division by zero"):
        in_one_snapshot([slow, failing])
    assert len(batches) < 500  # stopped at its next batch
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("snapshot-part")]
    assert sessions() <= before
    with transaction.atomic(), connection.cursor() as cursor:  # this connection is usable again
        cursor.execute("SELECT 1")

    def stops(shared: Parts) -> None:
        raise PartStopped

    with pytest.raises(ValueError, match="own error"):  # a part's own error, not the stop it caused
        in_one_snapshot([stops, lambda shared: (_ for _ in ()).throw(ValueError("own error"))])
