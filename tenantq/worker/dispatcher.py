"""The dispatcher: releases runnable jobs from per-tenant queues into the shared execution queue.

It keeps the Celery execution queue shallow (``dispatch_depth``) so that the order in which tenants
and priorities are served is decided here, late, rather than by whatever sits in a long broker list.
Tenants are served round-robin, one job each per turn; a tenant's own jobs leave in priority order.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import redis

from tenantq.platform.redis import get_redis
from tenantq.platform.settings import get_settings
from tenantq.worker.celery_app import PRIORITY_LEVELS, app, to_celery_priority
from tenantq.worker.queues import TenantQueues

log = logging.getLogger("tenantq.dispatcher")


def exec_queue_depth(client: redis.Redis, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    for level in range(1, PRIORITY_LEVELS):
        pipe.llen(f"{queue}:{level}")
    return sum(pipe.execute())


def publish(message: dict[str, Any], queue: str) -> None:
    """Hand one job to Celery. ``message["options"]`` carries per-job Celery options (time limits,
    expires) straight through to ``send_task``."""
    job = message["job"]
    app.send_task(
        message["task"],
        kwargs={"job": job, "args": message["args"]},
        task_id=message.get("task_id") or job["id"],
        queue=queue,
        priority=to_celery_priority(job.get("priority", 5)),
        **(message.get("options") or {}),
    )


class Dispatcher:
    def __init__(self, client: redis.Redis | None = None, queue: str | None = None, depth: int | None = None):
        settings = get_settings()
        self.r = client or get_redis()
        self.queues = TenantQueues(self.r)
        self.queue = queue or settings.exec_queue
        self.depth = depth or settings.dispatch_depth
        self.stop_event = threading.Event()
        self._cursor = 0

    def tick(self) -> int:
        """One pass: promote due delayed jobs, then fill the execution queue. Returns jobs released."""
        self.queues.promote_due()
        room = self.depth - exec_queue_depth(self.r, self.queue)
        released = 0
        while room > 0:
            # Paused tenants (suspended, or paused by the operator) keep their queue but get no turns.
            paused = self.r.smembers("tq:paused")
            tenants = [t for t in self.queues.active_tenants() if t not in paused]
            if not tenants:
                break
            progressed = False
            start = self._cursor % len(tenants)
            for tenant in tenants[start:] + tenants[:start]:
                if room <= 0:
                    break
                for message in self.queues.pop(tenant, 1):
                    publish(message, self.queue)
                    released += 1
                    room -= 1
                    progressed = True
            self._cursor += 1
            if not progressed:
                break
        return released

    def run_forever(self, idle_sleep: float = 0.02) -> None:
        log.info("dispatcher started (queue=%s depth=%s)", self.queue, self.depth)
        last_beat = float("-inf")
        while not self.stop_event.is_set():
            try:
                released = self.tick()
                if time.monotonic() - last_beat >= 1.0:  # liveness for /metrics and alerts, once a second
                    self.r.set("tq:dispatcher:heartbeat", time.time())
                    last_beat = time.monotonic()
            except redis.ConnectionError as exc:
                log.warning("redis unavailable, retrying: %s", exc)
                self.stop_event.wait(1.0)
                continue
            if released == 0:
                self.stop_event.wait(idle_sleep)
        log.info("dispatcher stopped")


def main() -> None:
    dispatcher = Dispatcher()

    def _stop(_signum, _frame):
        dispatcher.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    dispatcher.run_forever()
