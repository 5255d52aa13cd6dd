"""The Redis broker's transport (playpay.broker): one redis-py client per connection pool, not one per message."""

import pytest

from playpay import broker
from playpay.celery import app as celery_app


@pytest.mark.broker
def test_a_redis_channel_publishes_through_one_client_until_its_pool_changes() -> None:
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, broker.RedisTransport.Channel)  # the settings select it for a Redis broker
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool
        # As kombu does when it drops a connection's pool: the next client is on the new pool.
        channel._pool = None  # type: ignore[attr-defined]
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool is not first.connection_pool
        assert channel._create_client(asynchronous=True) is not second  # the consumer's own, as kombu keeps it
