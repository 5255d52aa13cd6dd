"""Waiting for a change another process commits, woken by PostgreSQL's LISTEN/NOTIFY instead of polling.

`listening(channel, fallback_interval)` yields `wait(seconds)`: it returns when a notification on `channel`
comes (PostgreSQL delivers one when the transaction that sent it commits) or after `seconds`, whichever is
first. The caller still looks at what it waits for after each wait, so a notification that was never sent
costs only time. On the default connection, outside a transaction; elsewhere (SQLite, inside `atomic()`,
where LISTEN would only start at the commit, or with DATABASE_LISTEN off, behind a pooler that shares
sessions) `wait` sleeps `fallback_interval` at most: polling.
"""

import contextlib
import time
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import DatabaseError, connection

Wait = Callable[[float], None]


@contextlib.contextmanager
def listening(channel: str, *, fallback_interval: float) -> Iterator[Wait]:
    if not settings.DATABASE_LISTEN or connection.vendor != "postgresql" or connection.in_atomic_block:
        yield lambda seconds: time.sleep(max(min(seconds, fallback_interval), 0))
        return
    with connection.cursor() as cursor:
        cursor.execute(f'LISTEN "{channel}"')
    raw = connection.connection

    def wait(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        # As Django's own statements: a lost server raises Django's OperationalError (a 503 in the API).
        with connection.wrap_database_errors:
            while (left := deadline - time.monotonic()) > 0:
                # Notifications of channels this connection listened to before may still be queued: skipped.
                if any(notify.channel == channel for notify in raw.notifies(timeout=left, stop_after=1)):
                    return

    try:
        yield wait
    finally:
        if connection.connection is raw and not raw.closed:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f'UNLISTEN "{channel}"')
            except DatabaseError:
                connection.close()  # not kept listening for the next request: a new connection has no channels
