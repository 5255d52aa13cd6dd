"""The ClickHouse connection (clickhouse-connect, from CLICKHOUSE_URL) and the analytics tables.

Tables are MergeTree tables in CLICKHOUSE_DATABASE. Every shipped batch may arrive twice (a batch is sent
again when its shipping mark could not be moved after ClickHouse took it), so each table collapses
repeats: identical blocks are dropped at insert time (`non_replicated_deduplication_window`; replicated
tables do this by default), and rows with the same key are merged away by ReplacingMergeTree, keeping the
latest `updated_at` of a journey or payment. Readers that count rows read with FINAL.
"""

import math
import threading
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import urllib3
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from django.conf import settings

# Identical batches inserted again within this many latest inserts of a table are dropped by ClickHouse.
DEDUPLICATION_WINDOW = 1000

TABLES = {
    "funnel_events": """
        CREATE TABLE IF NOT EXISTS {db}.funnel_events (
            id UInt64,
            app_id UInt32,
            journey_id String,
            event_id String,
            step LowCardinality(String),
            occurred_at DateTime64(6, 'UTC'),
            received_at DateTime64(6, 'UTC'),
            source LowCardinality(String),
            error_code LowCardinality(String)
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (app_id, journey_id, occurred_at, id)
        SETTINGS non_replicated_deduplication_window = {window}
    """,
    # Not partitioned: a late event can move a journey's start to another month, and ReplacingMergeTree
    # only merges rows of one partition.
    "funnel_journeys": """
        CREATE TABLE IF NOT EXISTS {db}.funnel_journeys (
            id UInt64,
            app_id UInt32,
            journey_id String,
            started_at DateTime64(6, 'UTC'),
            carrier LowCardinality(String),
            country LowCardinality(String),
            price_point LowCardinality(String),
            flow LowCardinality(String),
            outcome LowCardinality(String),
            updated_at DateTime64(6, 'UTC')
        )
        ENGINE = ReplacingMergeTree(updated_at)
        ORDER BY (app_id, journey_id)
        SETTINGS non_replicated_deduplication_window = {window}
    """,
    "payments": """
        CREATE TABLE IF NOT EXISTS {db}.payments (
            id UInt64,
            public_id UUID,
            app_id UInt32,
            carrier LowCardinality(String),
            country LowCardinality(String),
            price_point LowCardinality(String),
            flow LowCardinality(String),
            currency LowCardinality(String),
            amount_minor Int64,
            refunded_minor Int64,
            status LowCardinality(String),
            failure_code LowCardinality(String),
            created_at DateTime64(6, 'UTC'),
            updated_at DateTime64(6, 'UTC')
        )
        ENGINE = ReplacingMergeTree(updated_at)
        PARTITION BY toYYYYMM(created_at)
        ORDER BY (app_id, created_at, id)
        SETTINGS non_replicated_deduplication_window = {window}
    """,
}

# ClickHouse's error when a statement ran past its max_execution_time.
TIMEOUT_EXCEEDED = 159

_clients: dict[tuple[str, float], Client] = {}
_lock = threading.Lock()


def is_configured() -> bool:
    return bool(settings.CLICKHOUSE_URL)


def database() -> str:
    return settings.CLICKHOUSE_DATABASE


def client(*, timeout_s: float | None = None) -> Client:
    """A client of CLICKHOUSE_URL, shared by the threads of this process; every call is bounded by
    CLICKHOUSE_CONNECT_TIMEOUT and `timeout_s` seconds (default CLICKHOUSE_QUERY_TIMEOUT), which ClickHouse
    itself enforces (max_execution_time, `is_timeout` tells its error) and the client waits a little longer
    than. One client per bound: a client's own timeout is shared by all the threads that use it."""
    url = settings.CLICKHOUSE_URL
    timeout = float(settings.CLICKHOUSE_QUERY_TIMEOUT if timeout_s is None else timeout_s)
    with _lock:
        if (url, timeout) not in _clients:
            _clients[url, timeout] = _connect(url, timeout)
        return _clients[url, timeout]


def _connect(url: str, timeout: float) -> Client:
    options: dict[str, Any] = {"settings": {"max_execution_time": timeout}}
    if urlsplit(url).scheme != "chdb":  # embedded ClickHouse runs in this process: no connection to time out
        options.update(
            connect_timeout=settings.CLICKHOUSE_CONNECT_TIMEOUT,
            # The server stops a statement at max_execution_time; the client waits a little longer for that answer.
            send_receive_timeout=math.ceil(timeout) + 5,
            query_retries=0,
            # No session: one client serves many threads at once.
            autogenerate_session_id=False,
        )
    return clickhouse_connect.get_client(dsn=url, **options)


def is_timeout(error: BaseException) -> bool:
    """Whether a ClickHouse call failed for time: the statement ran past its max_execution_time, or the
    answer did not come within the client's own bound."""
    if isinstance(error, ClickHouseError) and (
        error.code == TIMEOUT_EXCEEDED or error.name == "TIMEOUT_EXCEEDED" or "(TIMEOUT_EXCEEDED)" in str(error)
    ):
        return True
    return any(isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError)) for cause in _causes(error))


def _causes(error: BaseException) -> list[BaseException]:
    """What `error` was raised from, and so on down (a bounded walk): the exceptions' causes and contexts, and the
    reason urllib3 gives a MaxRetryError (a read timeout wrapped when the client retries)."""
    found: list[BaseException] = []
    pending = [error.__cause__, error.__context__]
    while pending and len(found) < 20:
        cause = pending.pop(0)
        if cause is None or cause in found:
            continue
        found.append(cause)
        reason = cause.reason if isinstance(cause, urllib3.exceptions.MaxRetryError) else None
        pending += [reason, cause.__cause__, cause.__context__]
    return found


def ensure_schema() -> None:
    """Create the database and the tables when missing (every shipping run does; it is cheap)."""
    db = database()
    ch = client()
    ch.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    for ddl in TABLES.values():
        ch.command(ddl.format(db=db, window=DEDUPLICATION_WINDOW))
