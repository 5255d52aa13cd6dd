"""Reports, dashboards and exports read a streaming replica of the main database, when one is set.

`REPORTING_DATABASE_URL` names the replica; the database alias `reporting` exists only then, and
`reporting_alias()` is it, or `default` without one (the embedded default, a small deployment: nothing
changes). Inside `reading_reports()` every ORM read (`ReportingRouter`) and every statement run on
`reporting_connection()` goes to the replica. Writes always go to the primary: a replica takes none, and
what a report writes (an export's progress, its file's record) is read back from the primary.

A replica is a moment behind its primary (replication lag): a report read there does not see what the same
request wrote a moment before. Reports only read, and read what jobs wrote earlier (rollups, rows), so none
of them writes and then reads back inside `reading_reports()`.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper

REPORTING = "reporting"


class _Reading(threading.local):
    depth = 0


_reading = _Reading()


def reporting_alias() -> str:
    """The database reports read: the replica when REPORTING_DATABASE_URL names one, else the main one."""
    return REPORTING if REPORTING in settings.DATABASES else DEFAULT_DB_ALIAS


def reporting_connection() -> BaseDatabaseWrapper:
    return connections[reporting_alias()]


@contextmanager
def reading_reports() -> Iterator[None]:
    """This thread's ORM reads go to `reporting_alias()` while the block runs (blocks may nest)."""
    _reading.depth += 1
    try:
        yield
    finally:
        _reading.depth -= 1


class ReportingRouter:
    """Reads inside `reading_reports()` go to the replica, others to the primary. The journal's router comes
    first: journal records keep their own database, every write goes to `default` or `journal`, and the main
    database's tables migrate on `default` only (a replica follows its primary's schema)."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return REPORTING if _reading.depth > 0 and REPORTING in settings.DATABASES else DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        # The replica holds the primary's rows: an object read from one relates to one read from the other.
        if {obj1._state.db, obj2._state.db} <= {DEFAULT_DB_ALIAS, REPORTING}:
            return True
        return None
