"""Direct release: on an idle system a submitted job goes to its execution queue without the
dispatcher's hop.

On a system with nothing waiting, the dispatcher adds a process hop to every job: the submitter
enqueues and wakes it, it reads the active tenants, the execution queue's depth and the free slots,
releases the job and publishes it. Measured on an idle stack that hop was about a third of the time
from submit to start (docs/architecture.md, "Where idle latency goes"). So the submitter's enqueue is
one Lua call that releases the job itself when no decision is left to make (``TenantQueues.
enqueue_or_release``):

- no tenant has a job waiting in its queue, paused tenants aside: fairness and priority decide
  *which waiting job* goes next, and there is none;
- the job's tenant may run it now: not paused, under its hard compute quota, below its concurrency cap,
  with a token of its execution rate (the dispatcher's own checks, the same Lua functions);
- the workers that consume the tenant's execution queue have a free slot beyond the messages already
  waiting there (``dispatch.slots``), so the job starts at once rather than queueing in the broker.

Otherwise the job is enqueued exactly as before and the dispatcher decides. A direct release is
recorded in flight like the dispatcher's (lease, dispatch token, deadline): the submitter publishes
and acknowledges it. A publish that fails puts the job back at the head of its tenant queue at once;
a submitter that dies in between (or cannot reach Redis to put it back) leaves the in-flight entry,
which the reconciler puts back once the in-flight deadline passes; the start guard makes any second
copy harmless. Where the execution queues live on another broker (RabbitMQ, or a second Redis) their
depth cannot be read in the same call, and every job goes through the dispatcher.
``TENANTQ_DIRECT_RELEASE=false`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis

from tenantq.core import keys
from tenantq.core.celery import PRIORITY_LEVELS
from tenantq.core.periods import current_period
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch import slots
from tenantq.platform.dispatch.dispatcher import publish, released_message
from tenantq.platform.dispatch.limits import TenantLimits
from tenantq.platform.dispatch.repository import TenantQueues

log = logging.getLogger("tenantq.dispatcher")


def available() -> bool:
    """Direct release is on and the execution queues live in the Redis that holds the tenant queues."""
    settings = get_settings()
    return settings.direct_release and (not settings.broker_url or settings.broker_url == settings.redis_url)


def enqueue_or_release(
    queues: TenantQueues, limits: TenantLimits, job_id: str, priority: int, message: dict[str, Any]
) -> bool:
    """Enqueue a job's attempt for the dispatcher, or release and publish it now (see the module).
    True if it was published here. Raises ``redis.RedisError`` only if it could be neither enqueued nor
    released (nothing was written), so the caller may drop the job."""
    settings = get_settings()
    tenant = limits.tenant_id
    hard_quota = limits.compute_limit_ms is not None
    compute_key = keys.quota_compute_key(tenant, current_period()) if hard_quota else ""
    released = queues.enqueue_or_release(
        tenant,
        job_id,
        priority,
        message,
        cap=limits.concurrency,
        rate=limits.exec_rate,
        burst=limits.exec_burst,
        lease_ttl=settings.lease_ttl_seconds,
        inflight_deadline=settings.inflight_deadline_seconds,
        compute_key=compute_key,
        compute_limit_ms=limits.compute_limit_ms or 0,
        default_queue=settings.exec_queue,
        priority_levels=PRIORITY_LEVELS,
        stale_after=slots.STALE_AFTER_S,
    )
    if released is None:
        return False
    item, queue = released
    try:
        publish(released_message(item, limits.concurrency), queue)
    except Exception as exc:  # noqa: BLE001 - the job is committed and in flight: it must not be lost
        log.warning("direct release of job %s not published (%s: %s)", job_id, type(exc).__name__, exc)
        # Back to its tenant queue for the dispatcher at once; if Redis is away too, the in-flight
        # entry stays and the reconciler puts it back after the in-flight deadline.
        with contextlib.suppress(redis.RedisError):
            queues.unrelease(job_id)
        return False
    try:
        queues.ack([item])
    except redis.RedisError as exc:
        # Published: the job runs. Its in-flight entry outlives it, and when the reconciler re-queues
        # it, the start guard skips the copy (another dispatch of a started attempt).
        log.warning("direct release of job %s published but not acknowledged: %s", job_id, exc)
    return True


__all__ = ["available", "enqueue_or_release"]
