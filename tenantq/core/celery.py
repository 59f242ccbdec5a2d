"""The Celery application every tenantq worker, beat and API process shares."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from amqp.exceptions import AMQPError, NotFound
from celery import Celery
from celery.app.amqp import AMQP, Queues
from kombu import Exchange, Queue
from kombu.exceptions import KombuError

from tenantq.core import redis_transport
from tenantq.core.settings import Settings, get_settings

# tenantq priorities run 0 (least urgent) .. 9 (most urgent); Redis-backed Celery treats 0 as the
# *highest*. Every publish goes through to_celery_priority so that inversion lives in one place. On
# RabbitMQ the execution queues have no x-max-priority and the header is ignored: the dispatcher already
# released in priority order into a queue a few messages deep, which the broker keeps (FIFO).
PRIORITY_LEVELS = 10


def to_celery_priority(priority: int) -> int:
    return (PRIORITY_LEVELS - 1) - max(0, min(PRIORITY_LEVELS - 1, int(priority)))


SYSTEM_QUEUE = "tq.system"
# The operator's tasks (billing, webhooks, housekeeping) go to the system queue by name: task_routes, not
# a task's ``queue`` attribute (deprecated in Celery 5, ignored from 6). Tenants' task types never follow
# these routes: the dispatcher publishes each attempt with its execution queue explicit.
SYSTEM_TASK_ROUTES = ("billing.*", "jobs.*", "webhooks.*")

# The longest an attempt may run (the largest plan's max_time_limit_s).
MAX_TIME_LIMIT_S = 3600
# Redis has no real acks: a message taken but not acknowledged within visibility_timeout seconds is
# handed to another worker. It must exceed the longest time limit, or a long attempt would run twice at
# once: the default (TENANTQ_VISIBILITY_TIMEOUT_SECONDS) is MAX_TIME_LIMIT_S + 100. The chaos test lowers
# it to see a killed worker's messages redelivered within seconds.
#
# RabbitMQ has real acks: a consumer's unacknowledged messages go back to the queue the moment its
# connection closes (a SIGKILLed worker's socket is closed by the kernel at once). Its own clock is the
# consumer timeout: a delivery unacknowledged for that long closes the worker's channel and the message
# is redelivered while the attempt may still run. It must exceed the longest time limit, like the
# visibility timeout on Redis: every tenantq queue asks for CONSUMER_TIMEOUT_MS (the per-queue
# ``x-consumer-timeout`` argument, honoured from RabbitMQ 3.12; older servers ignore it and need
# ``consumer_timeout`` in rabbitmq.conf at least this high, see docs/operations.md).
CONSUMER_TIMEOUT_MS = (MAX_TIME_LIMIT_S + 300) * 1000
# How often worker and broker exchange AMQP heartbeats: a worker whose host vanished (no FIN, no RST)
# is declared dead, and its messages redelivered, after about two missed beats.
AMQP_HEARTBEAT_S = 20


def _restore_sweep(visibility_timeout: float) -> dict[str, int]:
    """How often workers look for messages past the visibility timeout (kombu's unacked restore).
    kombu scans every ``interval * throttle`` seconds (10 x 10 by default): fine for an hour-long
    timeout, but with a short one a dead worker's messages would wait up to 100 s more. Sweep about
    five times per timeout, at most every 100 s (the default) and at least every second.

    A sweep holds a Redis mutex that expires after 300 s; a worker SIGKILLed inside a sweep leaves it
    behind and blocks every restore until then. Negligible next to an hour-long timeout, so the
    mutex expiry is capped by the timeout too."""
    period = min(100.0, max(1.0, visibility_timeout / 5))
    interval = min(10, max(1, round(period)))
    return {
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": max(1, round(period / interval)),
        "unacked_mutex_expire": int(min(300, max(5, visibility_timeout))),
    }


def exec_queue(name: str, settings: Settings | None = None) -> Queue:
    """A tenantq Celery queue as the broker declares it. On RabbitMQ: durable, classic (not quorum: see
    docs/operations.md), with the consumer timeout above every time limit; messages are persistent
    (Celery's default delivery mode). Dedicated pools' queues are declared the same way."""
    settings = settings or get_settings()
    if not settings.broker_is_amqp:
        return Queue(name)
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-queue-type": "classic", "x-consumer-timeout": CONSUMER_TIMEOUT_MS},
    )


class _ExecQueues(Queues):
    """Queues named only at run time (a dedicated pool's ``-Q tq.exec.t.<id>``, the dispatcher's publish
    to it) are declared like the configured ones, so every declaration of a queue agrees."""

    def new_missing(self, name: str) -> Queue:
        if not get_settings().broker_is_amqp:
            return super().new_missing(name)  # Celery's own, as before RabbitMQ support
        return exec_queue(name)


class TenantqAMQP(AMQP):
    queues_cls = _ExecQueues


def _broker_options(settings: Settings) -> dict[str, Any]:
    """What depends on the broker: Redis's emulation of acks (visibility timeout, its restore sweep,
    priority lists) or RabbitMQ's publisher confirms."""
    if settings.broker_is_amqp:
        return {
            # send_task returns only once RabbitMQ has taken the message (persistent, into a durable
            # queue); a refused publish (basic.nack) or a lost connection raises, the job stays in the
            # dispatcher's in-flight set and its deadline puts it back in its tenant queue.
            "broker_transport_options": {"confirm_publish": True},
            "broker_heartbeat": AMQP_HEARTBEAT_S,
            "task_default_delivery_mode": "persistent",
        }
    return {
        # Without this a worker holds a prefetched batch and queued messages bypass priority; with
        # acks_late a prefetched message would also sit reserved (invisible to idle workers) behind a
        # long task. On RabbitMQ the prefetch count (1 per pool process) already does this.
        "worker_disable_prefetch": True,
        "broker_transport_options": {
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.visibility_timeout_seconds,
            **_restore_sweep(settings.visibility_timeout_seconds),
        },
    }


def create_celery() -> Celery:
    settings = get_settings()
    # A worker must survive a Redis restart: see tenantq.core.redis_transport.
    redis_transport.install()
    app = Celery(
        "tenantq",
        broker=settings.celery_broker_url,
        backend=settings.celery_result_backend,
        amqp=TenantqAMQP,
    )
    app.conf.update(
        # JSON only: tenants' arguments must never be unpickled by a worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=settings.result_expires_seconds,
        # An attempt is acknowledged only after it finishes; a worker killed mid-task has its message
        # redelivered instead of lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per free pool process keeps the dispatcher's order and fairness (see
        # _broker_options for the rest of it on Redis).
        worker_prefetch_multiplier=1,
        # Fresh children now and then bound the damage of memory leaks or global state left behind by
        # task code; every 10,000 tasks keeps the cost of forking a new child negligible per task.
        worker_max_tasks_per_child=10_000,
        # Hard limit kills the pool child (the only way to stop code stuck in C). This is the ceiling
        # for anything without a limit of its own; tenant jobs always carry a per-job hard limit
        # (bounded by the plan) in the message's options. No global soft limit: a default soft limit
        # would apply to jobs that set only a short hard one and billiard would then not enforce the
        # hard one on time.
        task_time_limit=MAX_TIME_LIMIT_S,
        # On a lost broker connection (a Redis restart) the attempts running go on. Cancelling them
        # (Celery's option) kills the child with SIGTERM, which Celery reports as a *revoke*: the job
        # was marked cancelled although nobody cancelled it, and its message acknowledged, so a Redis
        # blip ended running jobs for good (found by tests/test_chaos.py). Left running, an attempt
        # finishes and records its outcome in SQL; its unacknowledged message comes back only after
        # the visibility timeout, which exceeds every time limit, and is then refused as finished.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Events let `celery inspect`, `celery events` and Flower see tenantq workers unchanged.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        # Storing a result while Redis restarts must wait for it, not fail: a failed store ends the task
        # as an internal error after the function succeeded, so no status signal records the success,
        # and the message is acknowledged, leaving the job 'running' for good (found by test_chaos).
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        task_default_queue=SYSTEM_QUEUE,
        task_routes={pattern: {"queue": SYSTEM_QUEUE} for pattern in SYSTEM_TASK_ROUTES},
        task_queues=[exec_queue(settings.exec_queue, settings), exec_queue(SYSTEM_QUEUE, settings)],
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={},
        **_broker_options(settings),
    )
    return app


app = create_celery()


_BROKER_ERRORS = (OSError, AMQPError, KombuError)


class _AmqpDepth:
    """Ready messages in RabbitMQ queues (a passive queue.declare), over one connection per process.
    The connection sends no heartbeats (nothing would answer them between two reads: it may sit idle for
    long); one that went stale is reopened once per call. A queue the broker does not know holds nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None

    def _reset(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def _read(self, queue: str) -> int:
        if self._conn is None:
            self._conn = app.connection_for_read(heartbeat=0)
            self._conn.ensure_connection(max_retries=1)
        if self._channel is None:
            self._channel = self._conn.channel()
        try:
            return int(self._channel.queue_declare(queue=queue, passive=True).message_count)
        except NotFound:
            self._channel = None  # the broker closed the channel with the error
            return 0

    def __call__(self, queue: str) -> int:
        with self._lock:
            try:
                return self._read(queue)
            except _BROKER_ERRORS:  # a stale connection (broker restarted, idle close): one fresh try
                self._reset()
            try:
                return self._read(queue)
            except _BROKER_ERRORS:
                self._reset()
                raise


amqp_queue_depth = _AmqpDepth()
