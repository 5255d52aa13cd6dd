"""One long read cut into parts that run at once, each on a connection of its own, all in one snapshot.

A reporting statement (an export's rows, a raw funnel) keeps one core busy per connection: PostgreSQL runs
a statement's nodes in one process, and the parallel workers it can add do not reach the costly nodes of
these (formatting, per-journey arrays). Cut into parts that add up (ranges of row ids, journeys by hash),
the read runs on as many connections, one per core.

`in_one_snapshot` runs the parts: the first on this thread's connection, the others on threads of their own,
each in a REPEATABLE READ transaction that imports the first one's snapshot (`pg_export_snapshot`), so the
parts read the database as of one moment, as one statement would. Inside an open transaction (rows other
connections cannot see yet) or elsewhere than PostgreSQL, the parts run one after the other on this
connection instead: the same answer, one core.
"""

import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.db import connection, transaction

T = TypeVar("T")

SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")


class PartStopped(Exception):
    """Raised inside a part that should stop because another one failed (see `Parts.check`)."""


class Parts:
    """What the parts of one read share: `check()`, called by a part between its batches, raises
    PartStopped once another part has failed, so that every part ends soon after the first failure."""

    def __init__(self) -> None:
        self._failed = threading.Event()

    def fail(self) -> None:
        self._failed.set()

    def check(self) -> None:
        if self._failed.is_set():
            raise PartStopped


def runs_at_once() -> bool:
    """Whether `in_one_snapshot` runs its parts at once: on PostgreSQL, outside any transaction."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def in_one_snapshot(parts: Sequence[Callable[[Parts], T]]) -> list[T]:
    """Each part's result, in order: the parts run at once when `runs_at_once()`, else one after the other.

    A part is called with the `Parts` it belongs to, inside its transaction; it may set what its statements
    need with SET LOCAL. When one part raises, the others are told (`Parts.check`) and awaited, and the
    first part's error in order is raised (PartStopped only when nothing else was).
    """
    shared = Parts()
    if len(parts) < 2 or not runs_at_once():
        with transaction.atomic():
            return [part(shared) for part in parts]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT pg_export_snapshot()")
        row = cursor.fetchone()
        snapshot = str(row[0]) if row else ""
        if not SNAPSHOT_ID.fullmatch(snapshot):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        readies = [threading.Event() for _ in parts[1:]]
        first: Future[T] = Future()
        with ThreadPoolExecutor(max_workers=len(readies), thread_name_prefix="snapshot-part") as pool:
            others = [
                pool.submit(_imported, part, snapshot, ready, shared)
                for part, ready in zip(parts[1:], readies, strict=True)
            ]
            try:
                wait = settings.DATABASE_CONNECT_TIMEOUT + 30
                for ready in readies:  # each imports the snapshot while this transaction holds it
                    if not ready.wait(wait):
                        raise TimeoutError(f"a part of the read did not start within {wait} s")
                first.set_result(parts[0](shared))
            except BaseException as error:  # raised below, once the other parts ended
                shared.fail()
                first.set_exception(error)
        # Leaving the pool waited for every part.
        return _results([first, *others])


def _results(futures: "list[Future[T]]") -> list[T]:
    """The results of finished parts, in order; or the first error that is not PartStopped (else the first)."""
    errors = [future.exception() for future in futures]
    raised = [error for error in errors if error is not None]
    if raised:
        raise next((error for error in raised if not isinstance(error, PartStopped)), raised[0])
    return [future.result() for future in futures]


def _imported(part: Callable[[Parts], T], snapshot: str, ready: threading.Event, shared: Parts) -> T:
    """`part` on this thread's own connection, in the transaction of `snapshot`; the connection is closed after."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # checked: hex digits and dashes
            ready.set()
            return part(shared)
    except BaseException:
        shared.fail()
        raise
    finally:
        ready.set()
        connection.close()
