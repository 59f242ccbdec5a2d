"""The API process's side of job events: one Redis subscriber per process, fanning out to its waiters.

Every long-poll (``GET /v1/jobs/{id}?wait=``) and event stream (``GET /v1/jobs/{id}/events``) of the
process registers an ``asyncio.Queue`` under its job id; the hub's single pub/sub connection reads
``tq:jobs:events`` and puts each message into the queues of its job. A waiting client therefore costs
a coroutine, a queue and its HTTP connection: no thread, no database connection, no Redis connection and
no timer of its own. The hub starts with the first waiter of the event loop and stops with the app.

After a reconnect (Redis restarted, network blip) every waiter gets ``RESYNC``: messages published
while the hub was away are lost, so each waiter re-reads its job from SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from tenantq.core.keys import JOB_EVENTS
from tenantq.core.settings import get_settings

log = logging.getLogger("tenantq.jobs.waiters")

# Put into every waiter's queue after the hub (re)subscribed: "you may have missed something".
RESYNC: dict[str, Any] = {"kind": "resync"}
# A waiter that falls this far behind (a stream whose client reads slowly) gets RESYNC instead.
QUEUE_BOUND = 256


class JobEventHub:
    """One subscriber per event loop (that is, per API process)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._waiters: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(len(queues) for queues in self._waiters.values())

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        """A queue that receives the job's messages while the block runs. Register *before* reading
        the job, so that no change between the read and the wait goes unheard."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_BOUND)
        self._waiters.setdefault(job_id, set()).add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tenantq-job-events")
        try:
            yield queue
        finally:
            queues = self._waiters.get(job_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._waiters[job_id]

    @property
    def subscribed(self) -> bool:
        return self._ready.is_set()

    def _deliver(self, message: dict[str, Any], queues: set[asyncio.Queue[dict[str, Any]]]) -> None:
        for queue in list(queues):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # Drop what is queued and ask it to re-read: the job row has the latest status.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)

    def _dispatch(self, data: Any) -> None:
        try:
            message = json.loads(data)
            queues = self._waiters.get(message["job"])
        except (ValueError, TypeError, KeyError):
            log.warning("ignored a malformed job event: %.200r", data)
            return
        if queues:
            self._deliver(message, queues)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            client = aioredis.Redis.from_url(self._url, decode_responses=True, socket_connect_timeout=5)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(JOB_EVENTS)
                self._ready.set()
                delay = 0.1
                for queues in list(self._waiters.values()):
                    self._deliver(RESYNC, queues)
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        self._dispatch(item["data"])
            except (redis.RedisError, OSError) as exc:
                self._ready.clear()
                log.warning("job event subscriber lost Redis (%s); reconnecting in %.1fs", exc, delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._ready.clear()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobEventHub] = weakref.WeakKeyDictionary()


def get_hub() -> JobEventHub:
    """The hub of the running event loop (an API process has one loop; the tests start several)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = JobEventHub(get_settings().effective_redis_url)
    return hub


async def close_hub() -> None:
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.close()
