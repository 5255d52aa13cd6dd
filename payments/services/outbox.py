"""Transactional outbox: background work that must follow a commit is never lost.

`enqueue` writes the task into the outbox inside the caller's transaction. Right
after the commit it is sent to the broker; if the process dies in between, or the
broker does not take it then (down, or no answer within BROKER_TIMEOUT_SECONDS),
the periodic `relay_pending` sends it. Tasks are idempotent, so sending one twice is safe.
"""

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from payments.models import OutboxMessage
from playpay.broker import BrokerUnavailable, publish
from playpay.celery import app as celery_app
from playpay.inserts import insert_rows

logger = logging.getLogger(__name__)

# An unsent message younger than this is probably about to be sent by its own process (which may be waiting on
# the broker for twice BROKER_TIMEOUT_SECONDS): `relay_grace()`.
RELAY_GRACE = timedelta(seconds=10)


def relay_grace() -> timedelta:
    return max(RELAY_GRACE, timedelta(seconds=3 * settings.BROKER_TIMEOUT_SECONDS))


def runs_in_process() -> bool:
    """Whether queued tasks run in this process, at the commit (the embedded default, no broker)."""
    return bool(celery_app.conf.task_always_eager)


def new_message(task: str, *, queue: str, countdown: int = 0, **kwargs: Any) -> OutboxMessage:
    """`task(**kwargs)` for `queue`, not written yet: `write` writes it, or `insert_rows` with the other rows
    of its transaction, followed by `send_after_commit`."""
    return OutboxMessage(task=task, kwargs=kwargs, queue=queue, countdown_seconds=countdown)


def enqueue(task: str, *, queue: str, countdown: int = 0, **kwargs: Any) -> OutboxMessage:
    """Record `task(**kwargs)` for `queue`; call inside the transaction that makes it necessary."""
    return write(new_message(task, queue=queue, countdown=countdown, **kwargs))


def write(message: OutboxMessage) -> OutboxMessage:
    """Write a new message in the current transaction; it is sent right after the commit."""
    _require_transaction()
    insert_rows(message)
    send_after_commit(message)
    return message


def send_after_commit(message: OutboxMessage) -> None:
    """Send `message`, written in the current transaction, right after its commit."""
    _require_transaction()
    transaction.on_commit(lambda: _send_or_leave_to_the_relay(message))


def _send_or_leave_to_the_relay(message: OutboxMessage) -> None:
    if runs_in_process():
        send(message)  # the task runs here: its errors are the request's, as they would be without the outbox
        return
    # The transaction is committed: a message that is not handed over fails nothing, the relay sends it.
    try:
        send(message)
    except BrokerUnavailable as error:
        logger.warning("outbox message %s (%s) not sent, the relay will send it: %s", message.pk, message.task, error)
    except Exception:
        logger.exception("outbox message %s (%s) not sent, the relay will try it again", message.pk, message.task)


def _require_transaction() -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox messages are written inside transaction.atomic()")


def send(message: OutboxMessage) -> None:
    """Send one message to the broker, then mark it sent (at-least-once); raises `BrokerUnavailable` when the
    broker does not take it. Without a broker the task runs here instead."""
    if runs_in_process():
        # Through the registered task, which runs it at once (the embedded default).
        options: dict[str, Any] = {"countdown": message.countdown_seconds} if message.countdown_seconds else {}
        celery_app.tasks[message.task].apply_async(kwargs=message.kwargs, queue=message.queue, **options)
    else:
        publish(message.task, kwargs=message.kwargs, queue=message.queue, countdown=message.countdown_seconds)
    _mark_sent(message)


def _mark_sent(message: OutboxMessage) -> None:
    """One UPDATE written out (once per task sent, so no ORM query to build), its value stored as the ORM would."""
    quote, meta = connection.ops.quote_name, OutboxMessage._meta
    sent_at = meta.get_field("sent_at")
    assert meta.pk is not None
    column, pk = quote(str(sent_at.column)), quote(str(meta.pk.column))
    statement = f"UPDATE {quote(meta.db_table)} SET {column} = %s WHERE {pk} = %s"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(statement, [sent_at.get_db_prep_value(timezone.now(), connection), message.pk])


def relay_pending(*, limit: int = 1000) -> int:
    """Send messages whose process died between commit and send, or that the broker did not take then; returns
    how many. A broker that does not take one ends the run (raises): the next run starts where it stopped."""
    cutoff = timezone.now() - relay_grace()
    messages = list(OutboxMessage.objects.filter(sent_at__isnull=True, created_at__lt=cutoff).order_by("id")[:limit])
    for message in messages:
        send(message)
    return len(messages)


def purge_sent(*, older_than: timedelta = timedelta(days=7)) -> int:
    deleted, _ = OutboxMessage.objects.filter(sent_at__lt=timezone.now() - older_than).delete()
    return int(deleted)
