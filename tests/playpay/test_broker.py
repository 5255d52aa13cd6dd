"""The Redis broker's transport (playpay.broker): one redis-py client per connection pool, not one per message."""

import base64
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

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


@pytest.mark.broker
def test_a_published_message_is_the_one_a_worker_reads_with_its_countdown_as_an_eta() -> None:
    queue = f"test-publish-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC)
    broker.publish("payments.tasks.start_payment", kwargs={"payment_id": 7}, queue=queue, countdown=30)
    prefix = (celery_app.conf.broker_transport_options or {}).get("global_keyprefix", "")
    queued = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).lrange(f"{prefix}{queue}", 0, -1)
    assert len(queued) == 1
    envelope = json.loads(queued[0])
    headers = envelope["headers"]
    assert (headers["task"], headers["parent_id"], headers["root_id"] == headers["id"]) == (
        "payments.tasks.start_payment",
        None,
        True,
    )
    assert before + timedelta(seconds=29) <= datetime.fromisoformat(headers["eta"]) <= before + timedelta(seconds=32)
    assert json.loads(base64.b64decode(envelope["body"]))[:2] == [[], {"payment_id": 7}]
    assert envelope["properties"]["delivery_info"]["routing_key"] == queue


def test_a_task_this_process_does_not_know_is_refused_before_the_broker() -> None:
    with pytest.raises(KeyError):
        broker.publish("payments.tasks.no_such_task", kwargs={}, queue="default")
