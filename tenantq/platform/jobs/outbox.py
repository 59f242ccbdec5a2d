"""The submission outbox: a job committed in SQL but never enqueued in Redis runs within seconds.

Submitting commits the job's row, then enqueues it in Redis. A process that dies between the two
(SIGKILL, OOM, a node lost) leaves a job SQL holds as ``queued`` that no queue has; the client saw a
connection error (and, with an idempotency key, its retry answers with that same job). Before the
commit the API notes the job here (``tq:outbox``, with its tenant); after the enqueue it takes the note
away. The leading dispatcher sweeps notes older than ``SWEEP_AGE_S`` every ``SWEEP_EVERY_S``
(``tenantq.platform.jobs.tasks.sweep_outbox``): a job SQL has as ``queued`` or ``scheduled`` and Redis
has nowhere is enqueued; a note whose job is running or finished is dropped; a note without a job
(the commit never happened) is dropped once ``ABANDON_AFTER_S`` old.

A note costs one Redis round trip before the commit and one after the enqueue. A note that could not
be written refuses the submission (503 ``queue_unavailable``), exactly as an enqueue that fails.

Redis keys owned here: ``tq:outbox`` (ZSET job id -> unix time noted), ``tq:outbox:t`` (HASH job id ->
tenant id).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import cast

import redis

from tenantq.core.keys import OUTBOX, OUTBOX_TENANT

SWEEP_EVERY_S = 2.0
SWEEP_AGE_S = 3.0  # younger notes belong to submissions still on their way to the enqueue
ABANDON_AFTER_S = 120.0


def note(client: redis.Redis, items: Iterable[tuple[str, str]]) -> None:
    """Note (job id, tenant id) pairs before their commit."""
    pairs = list(items)
    if not pairs:
        return
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.hset(OUTBOX_TENANT, mapping=dict(pairs))
    pipe.zadd(OUTBOX, {job_id: now for job_id, _ in pairs})
    pipe.execute()


def clear(client: redis.Redis, job_ids: Iterable[str]) -> None:
    ids = list(job_ids)
    if not ids:
        return
    pipe = client.pipeline(transaction=True)
    pipe.zrem(OUTBOX, *ids)
    pipe.hdel(OUTBOX_TENANT, *ids)
    pipe.execute()


def clear_quietly(client: redis.Redis, job_ids: Iterable[str]) -> None:
    """:func:`clear` after a successful enqueue: a note left behind only costs the sweep a look."""
    with contextlib.suppress(redis.RedisError):
        clear(client, job_ids)


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
