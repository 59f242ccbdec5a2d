"""The Redis broker transport survives Celery's teardown of a connection lost to a Redis restart.

Replays, against a private redis-server, what Celery's consumer does when it notices a lost broker
connection (``on_connection_error_after_connected``: ``collect()`` then ``close()``) in the state that
made kombu's stock transport raise ``AttributeError: 'NoneType' object has no attribute 'hostname'``
and stop the worker (see ``tenantq.core.redis_transport``): a task message delivered and not yet
acknowledged (an attempt running), a BRPOP in flight on the tasks' channel, and a second channel with
an auto-delete fanout queue (Celery's remote control).
"""

from __future__ import annotations

import kombu
import pytest
import redis as redis_lib
from kombu import Exchange, Queue
from kombu.transport import redis as kombu_redis

from tenantq.core import redis_transport
from tests.conftest import RedisServer

QUEUE = "tq.transport-test"


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def lose_connection_with_an_attempt_running(
    server: RedisServer, transport: type
) -> tuple[kombu.Connection, kombu.Message]:
    """A consumer holding one unacknowledged message when Redis stops; returns the connection and the
    message. Redis is stopped when this returns."""
    with kombu.Connection(server.url) as producer:
        producer.SimpleQueue(QUEUE).put({"job": 1})
    conn = kombu.Connection(server.url, transport=transport, transport_options={"visibility_timeout": 3600})
    delivered: list[kombu.Message] = []
    conn.Consumer(Queue(QUEUE), callbacks=[lambda _body, message: delivered.append(message)]).consume()
    conn.drain_events(timeout=5)
    assert len(delivered) == 1
    control = conn.channel()
    pidbox = Queue("w.pidbox", Exchange("pidbox", type="fanout"), auto_delete=True)
    conn.Consumer(pidbox, channel=control, callbacks=[lambda *_: None], no_ack=True).consume()
    conn.default_channel._brpop_start()  # the poller's next BRPOP, sent before the loss is noticed
    assert conn.default_channel._in_poll is not None
    server.stop()
    return conn, delivered[0]


def celery_teardown(conn: kombu.Connection) -> None:
    """What Celery's consumer does with the lost connection, errors handled as Celery handles them."""
    conn.collect(socket_timeout=0.5)
    kombu.common.ignore_errors(conn, conn.close)


def test_tenantq_connections_use_the_tenantq_transport(platform_env):
    from tenantq.core.celery import app
    from tenantq.core.settings import get_settings

    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"):
        with kombu.Connection(url) as conn:
            assert isinstance(conn.transport, redis_transport.Transport), url
    with app.connection_for_read() as conn:  # the broker of this run: Redis, or RabbitMQ (tests.brokers)
        on_redis = isinstance(conn.transport, redis_transport.Transport)
    assert on_redis is not get_settings().broker_is_amqp


def test_kombus_own_transport_still_fails_this_way(private_redis):
    """The trigger is real: if kombu fixes it, this fails and the workaround can go."""
    conn, _message = lose_connection_with_an_attempt_running(private_redis, kombu_redis.Transport)
    with pytest.raises(AttributeError, match="hostname"):
        celery_teardown(conn)


def test_teardown_after_a_lost_connection_raises_nothing_and_the_attempt_acknowledges(private_redis):
    conn, message = lose_connection_with_an_attempt_running(private_redis, redis_transport.Transport)
    celery_teardown(conn)  # the restore failed with ConnectionError (Redis down), handled
    private_redis.start()
    message.ack()  # the running attempt finishes on the old channel once Redis is back
    client = redis_lib.Redis(port=private_redis.port)
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    assert sum(client.llen(key) for key in client.keys(f"{QUEUE}*")) == 0  # not delivered twice


def test_a_channel_that_never_connected_raises_a_connection_error_not_an_attribute_error(private_redis):
    conn = kombu.Connection(private_redis.url, transport=redis_transport.Transport)
    channel = conn.default_channel
    channel._tq_connparams.clear()
    conn.collect()
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        channel._connparams()
