"""Reading a COPY's rows in batches (`playpay.tables.copy_out_batches`): every row once, in order, each as
PostgreSQL wrote it, and the connection left ready for the next statement, or the server's error raised."""

import psycopg
import pytest
from django.db import connection, transaction

from playpay.tables import copy_out_batches

# Rows with line breaks inside quoted values, quotes, NULLs and empty texts: each stays one row.
COPY_ROWS = (
    "COPY (SELECT n, CASE WHEN n %% 3 = 0 THEN E'two\\nlines' WHEN n %% 3 = 1 THEN 'say \"hi\"' END,"
    " repeat('x', n %% 50) FROM generate_series(1, %s) AS n ORDER BY n) TO STDOUT (FORMAT csv)"
)


def expected_row(n: int) -> bytes:
    text = {0: '"two\nlines"', 1: '"say ""hi"""', 2: ""}[n % 3]
    last = "x" * (n % 50) or '""'  # an empty text is quoted: it is not a NULL
    return f"{n},{text},{last}\n".encode()


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize(("rows", "batch"), [(0, 7), (1, 7), (7, 7), (2500, 7), (2500, 1000)])
def test_every_row_of_a_copy_comes_once_in_order_in_batches_of_the_size_asked(rows: int, batch: int) -> None:
    with connection.cursor() as cursor:
        with cursor.cursor.copy(COPY_ROWS, (rows,)) as copy:
            batches = [[bytes(row) for row in got] for got in copy_out_batches(copy, rows=batch, timeout=10)]
        # The COPY's end was read: the connection takes the next statement.
        cursor.execute("SELECT 42")
        assert cursor.fetchone() == (42,)
    assert [row for got in batches for row in got] == [expected_row(n) for n in range(1, rows + 1)]
    assert all(len(got) == batch for got in batches[:-1])
    assert not batches or 0 < len(batches[-1]) <= batch


def read_all(statement: str, received: list[int]) -> None:
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for got in copy_out_batches(copy, rows=100, timeout=10):
            received.append(len(got))


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_copy_the_server_fails_midway_raises_its_error() -> None:
    # The rows before the 20,000th are sent (the server flushes as its buffer fills), then the error.
    failing = "COPY (SELECT n, 1 / (20000 - n) FROM generate_series(1, 30000) AS n) TO STDOUT (FORMAT csv)"
    received: list[int] = []
    with transaction.atomic():
        with pytest.raises(psycopg.errors.DivisionByZero):
            read_all(failing, received)
        transaction.set_rollback(True)
    assert 0 < sum(received) < 20000
    with connection.cursor() as cursor:  # the failed transaction was rolled back; the connection works
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
