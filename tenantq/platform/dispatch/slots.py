"""Free execution slots: workers say how many pool processes they have and how many are busy; the
dispatcher keeps each execution queue filled to about the number of free slots behind it.

Why: every message already in an execution queue is one an urgent job or a light tenant must wait
behind, since fairness and priority are decided at release. A fixed depth is either too shallow
(workers idle between dispatcher ticks) or too deep (a queue in front of everyone). With the free slots
known, a queue holds what the workers can start now plus one in hand, so a new arrival waits for about
one job's duration, not for a queue.

Redis keys (``core.keys``):
- ``tq:slots``       HASH worker hostname -> JSON ``{"size", "queues", "at"}``: written by the worker's
                     main process at start and on every heartbeat, removed at a warm shutdown.
- ``tq:slots:busy``  HASH worker hostname -> pool slots busy. The main process adds 1 when it receives a
                     job's message (``task_received``); the pool process takes 1 at the very end of the
                     attempt's postrun, so the slot counts as busy through the platform's own start and
                     finish bookkeeping too, not only the task body. The main process takes 1 for an
                     attempt whose pool process was killed (no postrun) or that was revoked before it
                     started, and resets the count to 0 whenever it holds no task at all, so a count
                     that drifted heals on the next idle heartbeat.

A worker not seen for ``STALE_AFTER_S`` counts for nothing (it died without a shutdown) and is
forgotten by the dispatcher. A queue that no live worker declared gets ``None``: the dispatcher then
falls back to its adaptive depth (workers of an older version, or tests driving a dispatcher alone).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from tenantq.core.keys import SLOTS, SLOTS_BUSY, WAKE

HEARTBEAT_S = 5.0  # how often a worker refreshes its entry
STALE_AFTER_S = 3 * HEARTBEAT_S + 5


def publish_pool(client: Any, hostname: str, size: int, queues: list[str]) -> None:
    """Worker main process: this worker's pool size and the queues it consumes."""
    client.hset(SLOTS, hostname, json.dumps({"size": int(size), "queues": sorted(queues), "at": time.time()}))


def reset_busy(client: Any, hostname: str) -> None:
    """Worker main process, holding no task at all: no attempt of this worker runs."""
    client.hset(SLOTS_BUSY, hostname, 0)


def add_busy(client: Any, hostname: str, delta: int) -> None:
    """+1 when a worker's main process receives a job's message, -1 when the attempt's postrun ends
    (or its pool process was killed, or it was revoked before it started)."""
    client.hincrby(SLOTS_BUSY, hostname, delta)


def slot_freed(pipe: Any, hostname: str) -> None:
    """The pool process's end of an attempt: its slot is free, and the dispatcher is woken at once
    (``tq:wake``, the list it blocks on) instead of finding the room on its next poll."""
    pipe.hincrby(SLOTS_BUSY, hostname, -1)
    pipe.lpush(WAKE, "1")
    pipe.ltrim(WAKE, 0, 0)


def forget(client: Any, hostname: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hdel(SLOTS, hostname)
    pipe.hdel(SLOTS_BUSY, hostname)
    pipe.execute()


def free_slots(client: Any, now: float | None = None) -> dict[str, int]:
    """Free slots per execution queue, over the live workers consuming it (a worker consuming several
    queues counts its free slots for each). Stale workers are removed. The direct release computes
    the same figure inside its Lua call (``repository._ENQUEUE_OR_RELEASE``): keep them in step."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(SLOTS)
    pipe.hgetall(SLOTS_BUSY)
    pools, busy = pipe.execute()
    free: dict[str, int] = defaultdict(int)
    stale: list[str] = []
    for host, raw in pools.items():
        try:
            pool = json.loads(raw)
            at, size, queues = float(pool["at"]), int(pool["size"]), list(pool["queues"])
        except (ValueError, KeyError, TypeError):
            stale.append(host)
            continue
        if now - at > STALE_AFTER_S:
            stale.append(host)
            continue
        running = min(size, max(0, int(busy.get(host) or 0)))
        for queue in queues:
            free[queue] += size - running
    if stale:
        cleanup = client.pipeline(transaction=False)
        cleanup.hdel(SLOTS, *stale)
        cleanup.hdel(SLOTS_BUSY, *stale)
        cleanup.execute()
    return dict(free)
