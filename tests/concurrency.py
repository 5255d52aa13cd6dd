"""The same work in several threads released at once, as concurrent requests, workers or schedulers would run it."""

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from django.db import connection, connections

T = TypeVar("T")


def at_once(work: Callable[[], T], *, times: int, timeout: float = 60.0) -> list[T]:
    """`work()` in `times` threads released together by a barrier; what each returned (in the order they ended).
    Each thread closes its own database connections. A thread's exception is raised here once all have ended."""
    start = threading.Barrier(times)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=timeout)
            results.append(work())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), f"work still running after {timeout} s"
    return results


def client_sessions() -> int:
    """Client sessions connected to this test's database, besides this one (autovacuum and the like left out)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def sessions_drop_to(count: int, *, timeout: float = 10.0) -> bool:
    """Whether the other client sessions are `count` or fewer within `timeout` seconds: a closed connection's
    server process ends a moment after the client closed it."""
    deadline = time.monotonic() + timeout
    while client_sessions() > count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def other_session(*, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A session of its own on the test database, outside Django's connections."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params, autocommit=autocommit)
