"""One long read cut into parts that run at once, each on a connection of its own, all in one snapshot.

A reporting statement (an export's rows, a raw funnel) keeps one core busy per connection: PostgreSQL runs
a statement's nodes in one process, and the parallel workers it can add do not reach the costly nodes of
these (formatting, per-journey arrays). Cut into parts that add up (ranges of row ids, journeys by hash),
the read runs on as many connections, one per core.

`in_one_snapshot` runs the parts: the first on this thread's connection, the others on threads of their own,
each in a REPEATABLE READ transaction that imports the first one's snapshot (`pg_export_snapshot`), so the
parts read the database as of one moment, as one statement would. Inside an open transaction (rows other
connections cannot see yet) or elsewhere than PostgreSQL, the parts run one after the other on this
connection instead: the same answer, one core. The parts read the database `using` names (a report's is
`playpay.replica.reporting_alias()`: a snapshot exported on a replica is imported there).
"""

import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

T = TypeVar("T")

SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")


class PartStopped(Exception):
    """Raised inside a part that should stop because another one failed (see `Parts.check`)."""


class Parts:
    """What the parts of one read share. When one fails, `fail()` cancels the statements the others are
    running, and `check()`, called by a part between its batches, raises PartStopped: every part ends soon
    after the first failure, not at its own statement's end."""

    def __init__(self, *, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using
        self._failed = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self.first_error: BaseException | None = None  # what made the read fail, not the stops it caused

    def join(self) -> None:
        """Called by a part on the connection it runs on: its statement is cancelled when another part fails."""
        connection = connections[self.using]
        connection.ensure_connection()
        with self._lock:
            self._connections.append(connection.connection)
            failed = self._failed.is_set()
        if failed:
            raise PartStopped

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self._failed.is_set():
                return
            self._failed.set()
            self.first_error = error
            running = list(self._connections)
        for psycopg_connection in running:
            with suppress(Exception):  # a connection already closed has nothing to cancel
                psycopg_connection.cancel_safe(timeout=settings.DATABASE_CONNECT_TIMEOUT)

    def check(self) -> None:
        if self._failed.is_set():
            raise PartStopped


def runs_at_once(*, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether `in_one_snapshot` runs its parts at once: on PostgreSQL, outside any transaction."""
    connection = connections[using]
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def in_one_snapshot(parts: Sequence[Callable[[Parts], T]], *, using: str = DEFAULT_DB_ALIAS) -> list[T]:
    """Each part's result, in order: the parts run at once when `runs_at_once()`, else one after the other.

    A part is called with the `Parts` it belongs to, inside its transaction, with the caller's statement
    timeout; it may set what its statements need with SET LOCAL. When one part raises, the others' statements
    are cancelled and the parts awaited, and the first part's error is raised (not the stops it caused).
    """
    shared = Parts(using=using)
    if len(parts) < 2 or not runs_at_once(using=using):
        with transaction.atomic(using=using):
            return [part(shared) for part in parts]
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # This transaction waits, idle, while the other parts run: the server must not end it meanwhile.
        cursor.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        cursor.execute("SELECT pg_export_snapshot(), current_setting('statement_timeout')")
        snapshot, timeout = cursor.fetchone()
        if not SNAPSHOT_ID.fullmatch(str(snapshot)):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        readies = [threading.Event() for _ in parts[1:]]
        first: list[T] = []  # the first part's result, once it ran
        try:
            with ThreadPoolExecutor(max_workers=len(readies), thread_name_prefix="snapshot-part") as pool:
                others = [
                    pool.submit(_imported, part, str(snapshot), str(timeout), ready, shared)
                    for part, ready in zip(parts[1:], readies, strict=True)
                ]
                try:
                    wait = settings.DATABASE_CONNECT_TIMEOUT + 30
                    for ready in readies:  # each imports the snapshot while this transaction holds it
                        if not ready.wait(wait):
                            raise TimeoutError(f"a part of the read did not start within {wait} s")
                    shared.join()
                    first.append(parts[0](shared))
                except BaseException as error:  # raised below, once the other parts ended
                    shared.fail(error)
        except BaseException as error:  # interrupted while the pool waited for the others: they stop too
            shared.fail(error)
            raise
        if shared.first_error is not None:  # the others' errors are the stops (or cancels) it caused
            raise shared.first_error
        return [*first, *(future.result() for future in others)]


def _imported(part: Callable[[Parts], T], snapshot: str, timeout: str, ready: threading.Event, shared: Parts) -> T:
    """`part` on this thread's own connections, in the transaction of `snapshot` with the caller's statement
    timeout; the thread's connections are closed after."""
    try:
        with transaction.atomic(using=shared.using), connections[shared.using].cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # checked: hex digits and dashes
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
            ready.set()
            shared.join()
            return part(shared)
    except BaseException as error:
        shared.fail(error)
        raise
    finally:
        ready.set()
        connections.close_all()
