"""Django's PostgreSQL backend, with no wait on the server left unbounded.

`statement_timeout` is enforced by the server. A server that is frozen (stalled on its disk, a paused virtual
machine, SIGSTOP) cancels nothing, and its kernel still takes the bytes sent, so a client waiting for an answer
would wait for ever, on a connection opened before the freeze (persistent connections, CONN_MAX_AGE).

Here, when a statement has waited PROBE_AFTER_SECONDS, its server is probed with a new connection, which a live
server opens within PROBE_TIMEOUT_SECONDS however long its statements run (a long query is left alone). A server
that does not open one is frozen or gone: the connections waiting for it are cut (their socket shut down), and
each waiting statement fails as on a lost connection (OperationalError), which the API answers 503 with
Retry-After. Opening a connection is bounded by DATABASE_CONNECT_TIMEOUT already.

A persistent connection is checked before each request (CONN_HEALTH_CHECKS) without a round trip when it was
answered a moment ago (ANSWERED_WITHIN_SECONDS): a server process that ended its session (a restart,
`pg_terminate_backend`, its crash) has written its notice or had its socket closed, so an idle session whose
socket has nothing to read is usable. A peer gone without a word (a host lost, a network cut, a NAT or load
balancer that forgot an idle connection) leaves the socket quiet, which is why a connection left alone longer
is asked with Django's `SELECT 1`, as is anything else.
"""

import logging
import os
import select
import socket
import threading
import time
from typing import Any

import psycopg
from django.db.backends.postgresql import base

logger = logging.getLogger(__name__)

PROBE_AFTER_SECONDS = 2.0
# Well under the idle timeouts of NATs and load balancers (minutes), after which a forgotten connection is silent.
ANSWERED_WITHIN_SECONDS = 30.0
_CAN_POLL = hasattr(select, "poll")  # not on Windows: there every check is Django's
PROBE_TIMEOUT_SECONDS = 3  # libpq's connect_timeout: whole seconds, at least 2
WATCH_INTERVAL_SECONDS = 0.5
# Arguments of Django's for psycopg's Connection, not for the server.
_NOT_CONNINFO = ("context", "cursor_factory", "prepare_threshold", "autocommit")


class _Watchdog:
    """One thread per process that looks at the statements waiting for their server, and remembers which
    servers a probe found unresponsive until one finds them answering again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[BoundedConnection, float]] = {}
        self._thread: threading.Thread | None = None
        self._probed_at: dict[tuple[str, str], float] = {}  # server -> when a probe last found it answering
        self._unresponsive: dict[tuple[str, str], dict[str, Any]] = {}  # server -> how to probe it again

    def is_unresponsive(self, server: tuple[str, str]) -> bool:
        return server in self._unresponsive

    def watch(self, connection: "BoundedConnection") -> None:
        with self._lock:
            self._waiting[id(connection)] = (connection, time.monotonic())
            self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():  # none yet, or forked without it
            self._thread = threading.Thread(target=self._run, name="database-watchdog", daemon=True)
            self._thread.start()

    def unwatch(self, connection: "BoundedConnection") -> None:
        with self._lock:
            self._waiting.pop(id(connection), None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_SECONDS)
            try:
                self._look()
            except Exception:
                logger.exception("database watchdog: a look at the waiting statements failed")

    def _look(self) -> None:
        for server, params in list(self._unresponsive.items()):
            if _answers(params):
                logger.warning("database server %s:%s answers again", *server)
                del self._unresponsive[server]
                self._probed_at[server] = time.monotonic()
        now = time.monotonic()
        with self._lock:
            waiting = list(self._waiting.values())
        by_server: dict[tuple[str, str], list[tuple[BoundedConnection, float]]] = {}
        for connection, since in waiting:
            if connection.server in self._unresponsive or now - since >= PROBE_AFTER_SECONDS:
                by_server.setdefault(connection.server, []).append((connection, since))
        for server, slow in by_server.items():
            if server not in self._unresponsive:
                if now - self._probed_at.get(server, -PROBE_AFTER_SECONDS) < PROBE_AFTER_SECONDS:
                    continue  # answered a probe a moment ago: its statements are slow, not stuck
                if _answers(slow[0][0].probe_params):
                    self._probed_at[server] = time.monotonic()
                    continue
                self._unresponsive[server] = slow[0][0].probe_params
                logger.warning(
                    "database server %s:%s opened no connection within %d s: unresponsive, its statements are cut",
                    *server,
                    PROBE_TIMEOUT_SECONDS,
                )
            with self._lock:  # only those still waiting on the same statement
                stuck = [c for c, since in slow if self._waiting.get(id(c), (None, None))[1] == since]
            for connection in stuck:
                _cut(connection)


def _answers(params: dict[str, Any]) -> bool:
    try:
        probe = psycopg.connect(**{**params, "connect_timeout": PROBE_TIMEOUT_SECONDS}, autocommit=True)
    except psycopg.errors.ConnectionTimeout:
        return False
    except psycopg.Error:
        return True  # refused for a reason of its own (too many clients...): it answers
    probe.close()
    return True


def _cut(connection: "BoundedConnection") -> None:
    """Shut the connection's socket down: the thread waiting on it wakes up to a lost connection."""
    try:
        duplicate = socket.socket(fileno=os.dup(connection.pgconn.socket))
    except (OSError, psycopg.Error):  # closed meanwhile
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()


def _answered_lately_and_quiet(connection: "BoundedConnection") -> bool:
    if (
        not _CAN_POLL
        or time.monotonic() - connection.answered_at > ANSWERED_WITHIN_SECONDS
        or connection.closed
        or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        or connection.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF
    ):
        return False
    try:
        poll = select.poll()
        poll.register(connection.pgconn.socket, select.POLLIN)
        return not poll.poll(0)
    except (OSError, psycopg.Error):
        return False


def _reset_after_fork() -> None:
    """A forked child (a Celery prefork worker) has no watchdog thread, and a lock that thread held stays held."""
    global _watchdog
    _watchdog = _Watchdog()


def _server(conn_params: dict[str, Any]) -> tuple[str, str]:
    return str(conn_params.get("host") or "local"), str(conn_params.get("port") or 5432)


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_reset_after_fork)


class BoundedConnection(psycopg.Connection[Any]):
    """psycopg's connection, whose waits for the server the watchdog watches."""

    probe_params: dict[str, Any]
    server: tuple[str, str]
    answered_at: float  # time.monotonic() when the server last answered

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is not None:  # bounded by its caller already
            return super().wait(self._noting_answer(gen), interval=interval, timeout=timeout)
        _watchdog.watch(self)
        try:
            return super().wait(self._noting_answer(gen), interval=interval)
        finally:
            _watchdog.unwatch(self)

    def _noting_answer(self, gen: Any) -> Any:
        """`gen`, noting when the server answered if it was waited for: a commit or a change of autocommit on an
        idle session sends nothing, and says nothing of the server."""
        try:
            wait = next(gen)
        except StopIteration as done:
            return done.value
        while True:
            try:
                wait = gen.send((yield wait))
            except StopIteration as done:
                self.answered_at = time.monotonic()
                return done.value


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        """Django's check, without a round trip where the module's docstring says."""
        connection = self.connection
        if isinstance(connection, BoundedConnection) and _answered_lately_and_quiet(connection):
            return True
        return bool(super().is_usable())

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        server = _server(conn_params)
        if _watchdog.is_unresponsive(server):
            # Fail at once rather than after DATABASE_CONNECT_TIMEOUT: the watchdog probes it every half second.
            raise psycopg.OperationalError(f"database server {server[0]}:{server[1]} is unresponsive (probed)")
        connection = super().get_new_connection(conn_params)
        if isinstance(connection, psycopg.Connection) and not self.pool:
            # Django opens psycopg's own class; this one only adds the watch around its waits.
            connection.__class__ = BoundedConnection
            assert isinstance(connection, BoundedConnection)
            connection.probe_params = {k: v for k, v in conn_params.items() if k not in _NOT_CONNINFO}
            connection.server = server
            connection.answered_at = time.monotonic()
        return connection
