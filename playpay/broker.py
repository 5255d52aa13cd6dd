"""Handing task messages to the broker: bounded, and with less work per message than `Task.apply_async`.

`publish` sends the message `apply_async` would send for a task and a queue (Celery's task protocol, built by
Celery: a worker cannot tell them apart), through a producer from Celery's pool, to the queue by its name. It
leaves out what `apply_async` does per message that PlayPay does not use (routing through `task_routes`, the
publish signals, the task's argument check); kombu declares the queue once per connection. Each wait on the
broker is bounded by BROKER_TIMEOUT_SECONDS (the transport's socket timeouts, see settings), and a failed
publish is tried once more on a fresh connection (a broker that restarted); then `BROKER_ERRORS` is raised.

`RedisTransport` is kombu's Redis transport with one change: kombu's channel builds a new redis-py client for
every message it publishes, and building one registers its response callbacks, about a sixth of a publish's
CPU. A client is only a view on the channel's connection pool, safe to share between threads, so this channel
keeps one per pool. The settings select it for `redis://` and `rediss://` brokers.
"""

import uuid
from typing import Any

import redis
from kombu.exceptions import KombuError
from kombu.transport import redis as kombu_redis

from playpay.celery import app

# What a broker that is down, refuses, or does not answer in time raises through kombu (which wraps some).
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, redis.RedisError, OSError)

# One retry, on a new connection: enough for a connection the broker dropped (a restart), while a broker that
# does not answer costs a caller at most about twice the socket timeout.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def publish(task: str, *, kwargs: dict[str, Any], queue: str, countdown: int = 0) -> None:
    """Send `task(**kwargs)` to `queue` on the broker (due in `countdown` seconds); raises one of `BROKER_ERRORS`
    when the broker does not take it."""
    message = app.amqp.create_task_message(str(uuid.uuid4()), task, (), kwargs, countdown=countdown or None)
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange="",  # the default exchange routes by queue name, as Celery's own publish does here
            routing_key=queue,
            declare=[app.amqp.queues[queue]],
            serializer="json",
            headers=message.headers,
            delivery_mode=2,  # persistent
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            **message.properties,
        )


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
