"""The outbox: a job committed in SQL but never enqueued in Redis runs within seconds.

Every path that creates or re-queues a job commits its row, then enqueues it in Redis: a submission
(``POST /v1/jobs``, the batch, a schedule firing), a workflow's first step, the next step a worker (or
the dispatcher's settler) creates when a step finishes, a re-run. A process that dies between the two
(SIGKILL, OOM, a node lost) leaves a job SQL holds as ``queued`` that no queue has. So before the
commit the creator notes the job here (``tq:outbox``, with its tenant), and the enqueue takes the note
away in its own Redis call (``TenantQueues.enqueue``/``enqueue_many``/``schedule_many``: no extra
round trip after the commit). The leading dispatcher sweeps notes older than ``SWEEP_AGE_S`` every
``SWEEP_EVERY_S`` (``tenantq.platform.jobs.tasks.sweep_outbox``): a job SQL has as ``queued`` or
``scheduled`` and Redis has nowhere is enqueued as its next attempt (``service.next_attempt``, the
same numbers a re-run uses); a note whose job is running or finished is dropped; a note without a job
(the commit never happened) is dropped once ``ABANDON_AFTER_S`` old.

A note costs one Redis round trip before the commit. A request whose note cannot be written is refused
(503 ``queue_unavailable``, nothing committed), exactly as an enqueue that fails; a worker creating a
workflow's next step goes on without it (``note_quietly``): its enqueue comes next, and the lost-job
reconciler (``TENANTQ_LOST_JOB_GRACE_SECONDS``) still covers a death in between.

Redis keys owned here: ``tq:outbox`` (ZSET job id -> unix time noted), ``tq:outbox:t`` (HASH job id ->
tenant id).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import cast

import redis

from tenantq.core.keys import OUTBOX, OUTBOX_TENANT
from tenantq.platform.jobs.models import Job

log = logging.getLogger("tenantq.jobs")

SWEEP_EVERY_S = 2.0
SWEEP_AGE_S = 3.0  # younger notes belong to submissions still on their way to the enqueue
ABANDON_AFTER_S = 120.0


def note(client: redis.Redis, jobs: Iterable[Job]) -> None:
    """Note ``jobs`` (their ids must be known: set, or flushed) before the commit that creates or
    re-queues them. Raises ``redis.RedisError`` if the note could not be written."""
    pairs = [(job.id, job.tenant_id) for job in jobs]
    if not pairs:
        return
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.hset(OUTBOX_TENANT, mapping=dict(pairs))
    pipe.zadd(OUTBOX, {job_id: now for job_id, _ in pairs})
    pipe.execute()


def clear(client: redis.Redis, job_ids: Iterable[str]) -> None:
    """Drop notes the sweep settled (an enqueue drops its own note)."""
    ids = list(job_ids)
    if not ids:
        return
    pipe = client.pipeline(transaction=True)
    pipe.zrem(OUTBOX, *ids)
    pipe.hdel(OUTBOX_TENANT, *ids)
    pipe.execute()


def note_quietly(client: redis.Redis, jobs: Iterable[Job]) -> bool:
    """:func:`note` where refusing is not an option (a worker finishing a workflow step): a note that
    cannot be written is logged, and the lost-job reconciler remains the backstop for those jobs."""
    items = list(jobs)
    try:
        note(client, items)
    except redis.RedisError as exc:
        log.warning("outbox: jobs %s not noted (%s)", ", ".join(job.id for job in items), exc)
        return False
    return True


def due(client: redis.Redis, limit: int = 500) -> list[tuple[str, float]]:
    """Notes older than ``SWEEP_AGE_S``: (job id, noted at), oldest first."""
    cutoff = time.time() - SWEEP_AGE_S
    rows = cast(
        list[tuple[str, float]],
        client.zrangebyscore(OUTBOX, "-inf", cutoff, start=0, num=limit, withscores=True),
    )
    return [(str(job_id), float(at)) for job_id, at in rows]


def size(client: redis.Redis) -> int:
    return int(client.zcard(OUTBOX))
