"""Celery configuration derived from settings: the broker visibility timeout and its restore sweep on
Redis; durability, confirms and the consumer timeout on RabbitMQ."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tenantq.core.celery import CONSUMER_TIMEOUT_MS, MAX_TIME_LIMIT_S, _restore_sweep, create_celery
from tenantq.core.settings import Settings, reset_settings_cache

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/tq-config"


@pytest.fixture
def on_broker(monkeypatch):
    """A Celery app built with TENANTQ_BROKER_URL set to ``url`` ('' for the Redis default)."""

    def build(url: str):
        monkeypatch.setenv("TENANTQ_BROKER_URL", url)
        reset_settings_cache()
        return create_celery()

    yield build
    monkeypatch.delenv("TENANTQ_BROKER_URL", raising=False)
    reset_settings_cache()


class TestVisibilityTimeout:
    def test_default_exceeds_every_time_limit_and_keeps_kombus_sweep(self, on_broker):
        app = on_broker("")
        options = app.conf.broker_transport_options
        assert options["visibility_timeout"] > MAX_TIME_LIMIT_S
        assert (
            app.conf.result_backend_transport_options["visibility_timeout"] == options["visibility_timeout"]
        )
        assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (10, 10)
        assert options["unacked_mutex_expire"] == 300

    def test_setting_shortens_redelivery_and_the_sweep_with_it(self, monkeypatch):
        monkeypatch.setenv("TENANTQ_BROKER_URL", "")
        monkeypatch.setenv("TENANTQ_VISIBILITY_TIMEOUT_SECONDS", "15")
        reset_settings_cache()
        try:
            options = create_celery().conf.broker_transport_options
        finally:
            monkeypatch.delenv("TENANTQ_VISIBILITY_TIMEOUT_SECONDS")
            reset_settings_cache()
        assert options["visibility_timeout"] == 15
        # Swept every 3 s (not kombu's 100 s), and a mutex left by a killed worker blocks at most 15 s.
        assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == 3
        assert options["unacked_mutex_expire"] == 15

    def test_sweep_period_is_bounded(self):
        assert _restore_sweep(1) == {
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 5,
        }
        sweep = _restore_sweep(60)
        assert sweep["unacked_restore_interval"] * sweep["unacked_restore_throttle"] <= 12

    def test_running_attempts_survive_a_broker_connection_loss(self):
        assert create_celery().conf.worker_cancel_long_running_tasks_on_connection_loss is False


class TestRabbitMQ:
    def test_execution_queues_are_durable_classic_with_a_consumer_timeout_above_every_limit(self, on_broker):
        app = on_broker(AMQP_URL)
        assert app.conf.broker_url == AMQP_URL
        assert app.conf.result_backend.startswith("redis")  # results stay in Redis
        queues = {q.name: q for q in app.conf.task_queues}
        assert set(queues) == {"tq.exec", "tq.system"}
        for q in queues.values():
            assert q.durable and not q.auto_delete and q.exchange.durable
            assert q.queue_arguments == {"x-queue-type": "classic", "x-consumer-timeout": CONSUMER_TIMEOUT_MS}
        assert CONSUMER_TIMEOUT_MS > MAX_TIME_LIMIT_S * 1000

    def test_a_dedicated_pools_queue_is_declared_like_the_others(self, on_broker):
        app = on_broker(AMQP_URL)
        pool = app.amqp.queues["tq.exec.t.some-tenant"]  # unknown: created on first use
        assert pool.durable
        assert pool.queue_arguments["x-consumer-timeout"] == CONSUMER_TIMEOUT_MS
        on_redis = on_broker("").amqp.queues["tq.exec.t.some-tenant"]
        assert not on_redis.queue_arguments and on_redis.exchange.name == "tq.exec.t.some-tenant"

    def test_publishes_are_confirmed_and_persistent_and_no_redis_workarounds(self, on_broker):
        app = on_broker(AMQP_URL)
        assert app.conf.broker_transport_options == {"confirm_publish": True}
        assert app.conf.task_default_delivery_mode == "persistent"
        assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
        assert app.conf.worker_prefetch_multiplier == 1
        assert not app.conf.worker_disable_prefetch  # a Redis-only option (Celery warns elsewhere)

    def test_an_unknown_broker_scheme_is_refused(self):
        with pytest.raises(ValidationError, match="TENANTQ_BROKER_URL must start with one of"):
            Settings(broker_url="kafka://127.0.0.1:9092")
        assert Settings(broker_url="").broker_url is None
        assert Settings(broker_url="amqps://u:p@mq:5671/tq").broker_is_amqp
        assert not Settings(broker_url=None).broker_is_amqp


def test_rabbitmq_version_from_the_servers_connection_properties():
    from tenantq.worker.main import PER_QUEUE_CONSUMER_TIMEOUT_SINCE, rabbitmq_version

    assert rabbitmq_version({"version": b"3.10.8"}) == (3, 10)
    assert rabbitmq_version({"version": "4.0.5"}) == (4, 0)
    assert rabbitmq_version({}) is None
    assert (3, 10) < PER_QUEUE_CONSUMER_TIMEOUT_SINCE <= (3, 12)
