"""What the partition migration tests of the payments' tables share: moving the schema, and reading a table's
kind, rows and constraint names to compare before and after."""

from collections.abc import Collection

from django.db import connection
from django.db.migrations.executor import MigrationExecutor

Rows = list[tuple[object, ...]]


def migrate_to(target: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)


def latest_payments_migrations() -> list[tuple[str, str]]:
    """Every app's latest migration: moving payments back also unapplies what depends on it (subscriptions,
    later migrations of other apps), which the way back must apply again."""
    leaves: list[tuple[str, str]] = MigrationExecutor(connection).loader.graph.leaf_nodes()
    return leaves


def kind_and_rows(table: str, *, leaving_out: Collection[str] = ("payment_created_at",)) -> tuple[str, Rows]:
    """The table's kind (r plain, p partitioned) and its rows by id, without the columns `leaving_out` (ones
    the plain tables before did not have)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = %s", [table])
        kind = str(cursor.fetchone()[0])
        cursor.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - our own table names
        columns = [column.name for column in cursor.description]
        rows = [
            tuple(value for name, value in zip(columns, row, strict=True) if name not in leaving_out)
            for row in cursor.fetchall()
        ]
    return kind, rows


def names(query: str, table: str) -> list[str]:
    """The first column of `query`'s rows for the table (`%s` stands for it), in order."""
    with connection.cursor() as cursor:
        cursor.execute(query, [table])
        return [str(row[0]) for row in cursor.fetchall()]
