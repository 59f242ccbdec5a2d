"""The bare Celery baseline: the same broker, serializer, acks and prefetch settings as tenantq's app,
none of tenantq (no SQL status, no dispatcher, no limits). Tasks record when they start in Redis."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_BARE_BROKER", "redis://127.0.0.1:6379/1")
QUEUES = [q for q in os.environ.get("BENCH_BARE_QUEUES", "bare.shared").split(",") if q]

app = Celery("bare", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_disable_prefetch=True,
    worker_hijack_root_logger=False,
    broker_transport_options={
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        "visibility_timeout": 3700,
    },
    task_default_queue=QUEUES[0],
)

_r: redis.Redis | None = None


def r() -> redis.Redis:
    global _r
    if _r is None:
        _r = redis.Redis.from_url(BROKER)
    return _r


def _started(key: str) -> None:
    r().hset("bench:start", key, repr(time.time()))


@app.task(name="bare.sleep")
def sleep(seconds: float, key: str) -> None:
    _started(key)
    time.sleep(seconds)


@app.task(name="bare.noop")
def noop(key: str) -> None:
    _started(key)


@app.task(name="bare.rl", rate_limit="20/s")
def rate_limited(key: str) -> None:
    _started(key)
