"""Rows that are only inserted, on the hot paths, written without the model layer's `save()`.

`save()` compiles an INSERT for every row (the fields, the query, the compiler) and runs it alone: on
the payment path that was a quarter of a request's Python, for four rows. `insert_rows` writes model
instances built as usual (their defaults, `auto_now_add` times, foreign keys) with one INSERT per model,
made once per process from the model's fields, and sends several rows' statements in one round trip where
the database takes them (PostgreSQL); each row gets its primary key back (RETURNING).

What `save()` would add is not done: no signals are sent, and a model's own `save()` is not called, so a
model whose `save()` does more than store its fields must not be written here; nor one of multi-table
inheritance, or with fields the database computes (refused when its statement is made). A failed statement (a
unique key taken) raises IntegrityError as `save()` would, and marks the transaction for rollback.
"""

from dataclasses import dataclass
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Field, Model


@dataclass(frozen=True)
class _Insert:
    sql: str  # INSERT INTO table (columns) VALUES (%s, ...) RETURNING pk
    fields: tuple[Field[Any, Any], ...]


_INSERTS: dict[tuple[type[Model], str], _Insert] = {}


def _insert(model: type[Model], alias: str) -> _Insert:
    known = _INSERTS.get((model, alias))
    if known is None:
        meta = model._meta
        assert meta.pk is not None
        assert not meta.parents, f"{model.__name__}: a child table of multi-table inheritance is not written here"
        fields = tuple(field for field in meta.local_concrete_fields if field is not meta.pk or not field.db_returning)
        computed = [f.name for f in fields if f.generated or f.db_returning or f.has_db_default()]
        assert not computed, f"{model.__name__}: fields computed by the database are not written here: {computed}"
        quote = connections[alias].ops.quote_name
        columns = ", ".join(quote(str(field.column)) for field in fields)
        values = ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({values})"  # noqa: S608
        if connections[alias].features.can_return_columns_from_insert:  # SQLite before 3.35 cannot
            sql += f" RETURNING {quote(str(meta.pk.column))}"
        known = _INSERTS[(model, alias)] = _Insert(sql, fields)
    return known


def insert_rows(*rows: Model) -> None:
    """Insert `rows` (new model instances, all of one database, in this order) and set their primary keys.
    On PostgreSQL in one round trip; elsewhere one statement each. Call inside the transaction they belong to."""
    if not rows:
        return
    alias = router.db_for_write(type(rows[0]))
    connection = connections[alias]
    statements = [_insert(type(row), alias) for row in rows]
    params = [
        [field.get_db_prep_save(field.pre_save(row, add=True), connection=connection) for field in statement.fields]
        for row, statement in zip(rows, statements, strict=True)
    ]
    # As save(): a failed statement marks the atomic block for rollback (the transaction is unusable).
    with transaction.mark_for_rollback_on_error(alias), connection.cursor() as cursor:
        # Several statements in one string need the parameters bound here (psycopg's client-side binding, Django's
        # default); with server-side binding each goes alone.
        if connection.vendor == "postgresql" and not getattr(connection.features, "uses_server_side_binding", True):
            cursor.execute("; ".join(statement.sql for statement in statements), [p for each in params for p in each])
            for index, row in enumerate(rows):
                if index and not cursor.nextset():
                    raise RuntimeError("an INSERT of the round trip gave no result")
                row.pk = cursor.fetchone()[0]
        else:
            returning = connection.features.can_return_columns_from_insert
            for row, statement, values in zip(rows, statements, params, strict=True):
                cursor.execute(statement.sql, values)
                row.pk = cursor.fetchone()[0] if returning else cursor.lastrowid
    for row in rows:
        row._state.adding = False
        row._state.db = alias
