"""Handing task messages to the broker: bounded, and with less work per message than `Task.apply_async`.

`publish` sends the message `apply_async` would send for a registered task and a queue: Celery's task protocol,
built by Celery (its id, the `eta` of a countdown, the calling task as parent), serialized as the settings say,
through a producer from Celery's pool, to the queue by its name (the default exchange, as Celery's own publish
does for a queue of the direct kind). It leaves out what `apply_async` does per message that PlayPay does not
use: routing through `task_routes`, the publish signals, and the check of the task's arguments. kombu declares
the queue once per connection.

Every wait on a Redis broker is bounded by BROKER_TIMEOUT_SECONDS (the transport's socket timeouts, see
settings), and a failed publish is tried once more on a new connection (a broker that restarted). When that
fails too, `BrokerUnavailable` is raised, and for the next BROKER_TIMEOUT_SECONDS this process raises it at once
instead of waiting on the broker again: during an outage each request waits on it once at most, not once per
message, and what was not handed over is the outbox relay's.

`RedisTransport` is kombu's Redis transport with one change: kombu's channel builds a new redis-py client for
every message it publishes, and building one registers its response callbacks, about a sixth of a publish's
CPU. A client is only a view on the channel's connection pool, safe to share between threads, so this channel
keeps one per pool. The settings select it for `redis://` brokers.
"""

import time
import uuid
from typing import Any

import redis
from amqp.exceptions import AMQPError
from django.conf import settings
from kombu.exceptions import KombuError
from kombu.transport import redis as kombu_redis

from playpay.celery import app

# What a broker that is down, refuses, or does not answer in time raises through kombu (which wraps some), and
# what py-amqp raises itself (RabbitMQ refusing a declaration or the credentials).
_BROKER_FAILURES: tuple[type[BaseException], ...] = (KombuError, redis.RedisError, AMQPError, OSError)

# One retry, on a new connection: enough for a connection the broker dropped (a restart), while a broker that
# does not answer costs a caller at most about twice the socket timeout.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class BrokerUnavailable(Exception):
    """The broker did not take a message (down, refusing, or silent past BROKER_TIMEOUT_SECONDS)."""


_failed_until = 0.0  # time.monotonic() until which this process does not wait on the broker again


def publish(task: str, *, kwargs: dict[str, Any], queue: str, countdown: int = 0) -> None:
    """Send `task(**kwargs)` to `queue` on the broker (due in `countdown` seconds); raises `BrokerUnavailable`
    when the broker does not take it, and KeyError for a task this process does not know."""
    global _failed_until
    app.tasks[task]  # a task that is not registered would be dropped by the worker: refused here instead
    if time.monotonic() < _failed_until:
        raise BrokerUnavailable("the broker failed a moment ago; not waiting on it again yet")
    parent = app.current_worker_task
    message = app.amqp.create_task_message(
        str(uuid.uuid4()),
        task,
        (),
        kwargs,
        countdown=countdown or None,
        root_id=(parent.request.root_id or parent.request.id) if parent else None,
        parent_id=parent.request.id if parent else None,
    )
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                declare=[app.amqp.queues[queue]],
                serializer=app.conf.task_serializer,
                compression=app.conf.task_compression,
                headers=message.headers,
                delivery_mode=2,  # persistent
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                **message.properties,
            )
    except _BROKER_FAILURES as error:
        _failed_until = time.monotonic() + settings.BROKER_TIMEOUT_SECONDS
        raise BrokerUnavailable(repr(error)) from error


class _Channel(kombu_redis.Channel):
    _shared_client: Any = None
    _shared_client_pool: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's event loop: kombu keeps that one itself
            return super()._create_client(asynchronous=True)  # type: ignore[misc]  # not in kombu's stubs
        pool = self.pool
        if self._shared_client is None or self._shared_client_pool is not pool:
            self._shared_client, self._shared_client_pool = super()._create_client(), pool  # type: ignore[misc]
        return self._shared_client


class RedisTransport(kombu_redis.Transport):
    Channel = _Channel
