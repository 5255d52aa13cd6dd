"""Reads on the hot paths whose SQL is built once per process.

Django builds a queryset's SQL anew for every query, field by field. For a payment read with its app, carrier
and price point (87 columns) that building took about a third of a PIN confirm's CPU, and the carrier work reads
its payment so several times a step. A `CompiledRead` names one shape of read: a base queryset (its joins, its
lock) and, at each call, the values of its filters. The SQL of each set of filter names is built once per
process and database, by the queryset itself; each read then runs that SQL with its own values and turns the
rows into model instances with their related objects as the queryset does (Django's `ModelIterable`: `from_db`,
the related populators, the fields' converters).

Only on PostgreSQL, and only for values psycopg takes as they are (integers, aware datetimes, UUIDs), each found
once among the built statement's parameters; anything else reads through the queryset, as before. A base
queryset holds no values of its own (they would be kept from the first build on): one that does reads through
the queryset, as does one that annotates, prefetches or picks fields (`values()`), which is refused.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Generic, TypeVar

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.transaction import TransactionManagementError

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: tuple[Any, ...]
    slots: tuple[tuple[str, int], ...]  # filter name -> its place among the parameters
    model: type[Model]
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]  # (column, the field's converters, its expression)
    fields: slice  # the base model's columns in a row
    init_list: tuple[str, ...]
    populators: tuple[Any, ...]  # the related objects' (Django's RelatedPopulator)
    for_update: bool


def _taken_as_is(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, datetime):
        return value.tzinfo is not None
    return isinstance(value, int | uuid.UUID)


class CompiledRead(Generic[M]):
    """One shape of read: `base()` (a queryset: its joins, its lock), filtered at each call by keyword values.

    `get(**filters)` answers as `base().get(**filters)` does (DoesNotExist, MultipleObjectsReturned: told
    from two rows, not counted), the SQL built once per process and database for each set of filter names."""

    def __init__(self, base: Callable[[], QuerySet[M]]) -> None:
        self.base = base
        self._statements: dict[tuple[str, tuple[str, ...]], _Statement] = {}
        self._through_queryset: set[tuple[str, tuple[str, ...]]] = set()  # shapes whose base holds values

    def get(self, **filters: Any) -> M:
        """The one row: the model's DoesNotExist when there is none, MultipleObjectsReturned when more."""
        queryset = self.base()
        alias = queryset.db
        if connections[alias].vendor != "postgresql" or not all(_taken_as_is(v) for v in filters.values()):
            return queryset.get(**filters)
        key = (alias, tuple(sorted(filters)))
        statement = self._statements.get(key)
        if statement is None:
            if key in self._through_queryset:
                return queryset.get(**filters)
            built = _build(queryset, filters)
            if built is _Unbuilt.THIS_BASE:  # true of every read of this shape: not built again
                self._through_queryset.add(key)
            if not isinstance(built, _Statement):
                return queryset.get(**filters)
            statement = self._statements[key] = built
        rows: list[M] = _run(statement, alias, filters)
        model: Any = queryset.model
        if not rows:
            raise model.DoesNotExist(f"{model._meta.object_name} matching query does not exist.")
        if len(rows) > 1:
            raise model.MultipleObjectsReturned(f"get() returned more than one {model._meta.object_name}.")
        return rows[0]


class _Unbuilt(Enum):
    THESE_VALUES = "Django builds no SQL for one of the values, or one is found twice among the parameters"
    THIS_BASE = "the base queryset holds values of its own"


def _build(queryset: QuerySet[M], filters: dict[str, Any]) -> _Statement | _Unbuilt:
    """The statement of this shape, or why it is not built."""
    internals: Any = queryset  # the queryset's private state, which the type stubs do not describe
    if queryset.query.annotations or internals._prefetch_related_lookups or internals._fields is not None:
        raise TypeError("a compiled read reads whole rows: no annotations, prefetches or values()")
    if internals._known_related_objects:
        raise TypeError("a compiled read is made from a manager's queryset, not a related manager's")
    # As get(): no ordering, and two rows at most, enough to tell one from several.
    query = queryset.filter(**filters).order_by()[:2].query
    compiler = query.get_compiler(using=queryset.db)
    try:
        sql, params = compiler.as_sql()  # raises outside a transaction for a locking read, as the queryset does
    except (EmptyResultSet, FullResultSet):  # a value no row can match (an id out of range): the queryset says so
        return _Unbuilt.THESE_VALUES
    slots = []
    for name, value in filters.items():
        places = [i for i, param in enumerate(params) if type(param) is type(value) and param == value]
        if len(places) != 1:
            return _Unbuilt.THESE_VALUES
        slots.append((name, places[0]))
    if len(slots) != len(params):  # the base's own values would be kept from this build on
        return _Unbuilt.THIS_BASE
    klass_info = compiler.klass_info
    assert klass_info is not None  # a model's rows were asked for
    columns = klass_info["select_fields"]
    fields = slice(columns[0], columns[-1] + 1)
    converters = compiler.get_converters([column[0] for column in compiler.select[0 : compiler.col_count]])
    return _Statement(
        sql=sql,
        params=tuple(params),
        slots=tuple(slots),
        model=klass_info["model"],
        converters=tuple((column, tuple(each), expression) for column, (each, expression) in converters.items()),
        fields=fields,
        init_list=tuple(column[0].target.attname for column in compiler.select[fields]),
        # Django 5.2's takes three arguments; the type stubs describe a later one.
        populators=tuple(get_related_populators(klass_info, compiler.select, queryset.db)),  # type: ignore[call-arg]
        for_update=query.select_for_update,
    )


def _run(statement: _Statement, alias: str, filters: dict[str, Any]) -> list[Any]:
    connection = connections[alias]
    if statement.for_update and connection.get_autocommit():
        raise TransactionManagementError("select_for_update cannot be used outside of a transaction.")
    params = list(statement.params)
    for name, place in statement.slots:
        params[place] = filters[name]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        rows = [list(row) for row in cursor.fetchall()]
    found = []
    for row in rows:
        for column, converters, expression in statement.converters:  # as SQLCompiler.apply_converters
            for converter in converters:
                row[column] = converter(row[column], expression, connection)
        instance = statement.model.from_db(alias, list(statement.init_list), row[statement.fields])
        for populator in statement.populators:
            populator.populate(row, instance)
        found.append(instance)
    return found
