"""Waiting for another process's commit, woken by PostgreSQL's LISTEN/NOTIFY (playpay.postgresql.listen)."""

import threading
import time
from typing import Any

import pytest
from django.db import connection, transaction

from playpay.postgresql.listen import listening
from tests.concurrency import other_session


def _notify_later(*channels_and_delays: tuple[str, float]) -> threading.Thread:
    def run() -> None:
        with other_session() as session:
            started = time.monotonic()
            for channel, delay in channels_and_delays:
                time.sleep(max(delay - (time.monotonic() - started), 0))
                session.execute(f'NOTIFY "{channel}"')

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_wait_ends_at_a_notification_of_its_own_channel_and_not_of_another() -> None:
    # The connection listens to another channel too (as one a request before left queued notifications of).
    with (
        listening("test_listen_other", fallback_interval=0.05),
        listening("test_listen_mine", fallback_interval=0.05) as wait,
    ):
        sender = _notify_later(("test_listen_other", 0.3), ("test_listen_mine", 0.8))
        started = time.monotonic()
        wait(10.0)
        woken_after = time.monotonic() - started
        sender.join()
        assert 0.7 <= woken_after < 3.0  # not at the other channel's notification, nor at its 10 s

        started = time.monotonic()
        wait(0.3)  # nothing comes: it ends when told
        assert 0.25 <= time.monotonic() - started < 2.0
    with connection.cursor() as cursor:  # it listens to nothing any more
        cursor.execute("SELECT count(*) FROM pg_listening_channels()")
        assert cursor.fetchone() == (0,)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_a_wait_polls_as_listen_would_only_start_at_its_commit() -> None:
    with transaction.atomic(), listening("test_listen_atomic", fallback_interval=0.05) as wait:
        started = time.monotonic()
        wait(10.0)
        assert time.monotonic() - started < 1.0  # it slept its fallback interval and let the caller look again
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_listening_channels()")
            assert cursor.fetchone() == (0,)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_with_database_listen_off_a_wait_polls_and_listens_to_nothing(settings: Any) -> None:
    settings.DATABASE_LISTEN = False  # behind a pooler that shares sessions between requests
    with listening("test_listen_off", fallback_interval=0.05) as wait:
        started = time.monotonic()
        wait(10.0)
        assert time.monotonic() - started < 1.0
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_listening_channels()")
            assert cursor.fetchone() == (0,)
