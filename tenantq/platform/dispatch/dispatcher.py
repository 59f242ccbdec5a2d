"""The dispatcher: releases runnable jobs from per-tenant queues into shallow Celery execution queues.

Why a dispatcher: a Celery worker consuming one queue per tenant slows down with the number of queues
(every fetch is a BRPOP over all keys: 961 tasks/s with 1 queue, ~130/s with 1,000), kombu's
round-robin is unweighted, and Celery's ``rate_limit`` is per worker. So tenants' jobs wait in their own
Redis queues and one process decides, late, which job runs next:

- Weighted fair share by stride scheduling: each backlogged tenant has a *pass* value; the tenant with
  the smallest pass gets the next release and its pass grows by ``1 / weight``. Over any window a
  backlogged tenant gets ``weight / sum(weights)`` of the releases. A tenant that (re)appears starts at
  the current virtual time, so idling never builds up credit, and a tenant held back by its own limits
  keeps at most one turn of credit.
- Each release is one Lua call (``queues._DISPATCH``) that checks pause, the hard compute quota,
  concurrency lease, token bucket and leadership, pops the tenant's most urgent job and records it in
  flight: the limits hold cluster-wide and two dispatchers can never release the same job.
- Compute quota: a tenant with hard limits whose period CPU counter (``tq:quota:{tenant}:{period}:
  compute_ms``, written by the worker as each attempt ends) reached its plan's included compute
  seconds gets nothing released: its queued jobs are *held*, not started (``GET /v1/queue`` says so).
  Jobs released before are not stopped, so the overshoot is bounded by the jobs already running
  (at most the concurrency cap).
- The execution queues stay shallow, filled to the free worker slots behind them plus one
  (``dispatch.slots``; ``dispatch_depth`` is the ceiling), so fairness and priority are decided
  here, not by a long broker list.
- Highly available: a leader lock (``tq:dispatcher:leader``, value = this instance's id, TTL
  ``leader_ttl_seconds``) renewed by the leader; standbys poll and take over when it expires. Every
  release re-checks the lock inside its Lua call (fencing), so a paused ex-leader cannot release.
- Crash safety: pop -> in-flight ZSET with a deadline -> publish -> ack. The reconciler (leader only)
  re-queues in-flight entries past their deadline and SQL ``queued`` jobs missing from Redis; the
  worker's start guard (``limits.start_guard``) makes a duplicate publish harmless.

- Chores (leader only, on a thread of their own so a stalled database never holds up releases): the
  layers above hand the dispatcher periodic work through ``chores``: settling attempt outcomes the
  workers kept in Redis during a database outage, and sweeping the submission outbox.

Redis keys used here besides ``queues``/``limits``: ``tq:dispatcher:leader`` (lock), ``tq:wake`` (a
one-element list pushed on enqueue so an idle dispatcher wakes at once), ``tq:route`` (``routing``).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from tenantq.core import keys
from tenantq.core.celery import (
    CONSUMER_TIMEOUT_MS,
    PRIORITY_LEVELS,
    amqp_queue_depth,
    app,
    to_celery_priority,
)
from tenantq.core.db import utcnow
from tenantq.core.periods import current_period
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch import routing, slots
from tenantq.platform.dispatch.limits import LimitsCache, TenantLimits
from tenantq.platform.dispatch.models import AT_CAP, EMPTY, HELD, NOT_LEADER, RATE_LIMITED, Released
from tenantq.platform.dispatch.repository import DISPATCHED_AT, TenantQueues
from tenantq.platform.dispatch.repository import WAKE as WAKE_KEY

log = logging.getLogger("tenantq.dispatcher")

LEADER_KEY = keys.DISPATCHER_LEADER
HELD_RECHECK_S = 1.0  # a tenant held by its compute quota is looked at again this often

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Released jobs kept in hand per execution queue beyond its free slots (see Dispatcher._room).
SPARE = 1

_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def exec_queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery execution queue, not yet taken by a worker: the queue's ready
    messages on RabbitMQ, else the lengths of its priority lists in the broker Redis (``client``)."""
    if get_settings().broker_is_amqp:
        return amqp_queue_depth(queue)
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    for level in range(1, PRIORITY_LEVELS):
        pipe.llen(f"{queue}:{level}")
    return sum(pipe.execute())


def publish(message: dict[str, Any], queue: str) -> None:
    """Hand one job to Celery. ``message["options"]`` carries per-job Celery options (time limits,
    expires) straight through to ``send_task``. On RabbitMQ it returns once the broker confirmed the
    message (publisher confirms, see ``tenantq.core.celery``)."""
    job = message["job"]
    app.send_task(
        message["task"],
        kwargs={"job": job, "args": message["args"]},
        task_id=message.get("task_id") or job["id"],
        queue=queue,
        priority=to_celery_priority(job.get("priority", 5)),
        # A job's result lives in SQL (task types are registered with ignore_result): without this the
        # sender registers every task id with the result backend's consumer (about 5% of the
        # dispatcher's time per job, measured with py-spy under bench.overhead).
        ignore_result=True,
        **(message.get("options") or {}),
    )


Publisher = Callable[[dict[str, Any], str], None]


def released_message(item: Released, cap: int) -> dict[str, Any]:
    """The message that runs a released job: its dispatch token (the start guard tells a redelivery
    from a duplicate by it), the tenant's concurrency cap (so the guard needs no database read) and
    the time it was enqueued (the worker records the queue wait)."""
    message = item.message
    job = dict(message["job"])
    job["dispatch"] = item.token
    job["cap"] = cap
    if message.get("enqueued_at"):
        job["enqueued_at"] = message["enqueued_at"]
    return {**message, "job": job}


@dataclass(frozen=True)
class QueuedJob:
    """A job SQL holds as ``queued``, with the message that runs its next attempt."""

    tenant_id: str
    job_id: str
    priority: int
    message: dict[str, Any]


# (created before, at most this many) -> SQL's queued jobs, oldest first. The jobs layer sits above
# this one and provides it (``tenantq.platform.jobs.tasks.queued_before``).
QueuedInSql = Callable[[datetime, int], list[QueuedJob]]


@dataclass(frozen=True)
class Chore:
    """Periodic work the leader runs on the chore thread: ``run()`` every ``every_s`` seconds."""

    name: str
    every_s: float
    run: Callable[[], int]


# Longest sleep of a backlogged dispatcher between attempt ends (see _idle_wait).
BACKLOG_WAKE_TIMEOUT_S = 0.05


class Dispatcher:
    def __init__(
        self,
        client: redis.Redis | None = None,
        queue: str | None = None,
        depth: int | None = None,
        *,
        publisher: Publisher | None = None,
        limits: LimitsCache | None = None,
        instance_id: str | None = None,
        use_leader_lock: bool = True,
        queued_in_sql: QueuedInSql | None = None,
        queue_depth: Callable[[str], int] | None = None,
        chores: Sequence[Chore] = (),
    ):
        settings = get_settings()
        self.r = client or get_redis()
        self.queues = TenantQueues(self.r)
        self.queue = queue or settings.exec_queue
        self.depth = depth or settings.dispatch_depth
        self.publisher = publisher or publish
        # Messages waiting in an execution queue: the broker's count by default. A dispatcher whose
        # publisher sends nowhere (tests, benches) passes what its own publisher left waiting.
        self.queue_depth = queue_depth or (lambda q: exec_queue_depth(self.r, q))
        self.limits = limits or LimitsCache()
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.use_leader_lock = use_leader_lock
        # Without it the reconciler re-queues from Redis only (a dispatcher in a test, a bench).
        self.queued_in_sql = queued_in_sql
        self.chores = list(chores)
        self.leader_ttl = settings.leader_ttl_seconds
        self.lease_ttl = settings.lease_ttl_seconds
        self.inflight_deadline = settings.inflight_deadline_seconds
        self.lost_grace = settings.lost_job_grace_seconds
        # A job published this long ago and still not started is published again (the start guard
        # skips whichever copy comes second). On Redis, after the grace: a message taken by a worker
        # that died before starting it is stuck in kombu's unacked set until the visibility timeout.
        # RabbitMQ confirmed the message and hands it back as soon as such a worker's connection
        # closes; only a message the broker itself lost needs it, so wait out the consumer timeout
        # (nothing can hold a delivery longer).
        self.republish_after = (
            max(self.lost_grace, CONSUMER_TIMEOUT_MS / 1000) if settings.broker_is_amqp else self.lost_grace
        )
        self.reconcile_every = max(1.0, min(10.0, self.inflight_deadline / 3))
        self.stop_event = threading.Event()
        self.is_leader = False
        self._renewed_at = 0.0
        self._reconciled_at = 0.0
        self._routes: dict[str, str] = {}
        self._routes_at = 0.0
        # Stride scheduling state: pass per tenant, global virtual time.
        self.passes: dict[str, float] = {}
        self.vtime = 0.0
        self.blocked_until: dict[str, float] = {}
        self._backlogged = False
        self.target_depth: dict[str, int] = {}
        self._free: dict[str, int] | None = None
        self._filled: dict[str, bool] = {}
        self.released_total = 0
        self.decisions: list[str] | None = None  # set to [] to record release order (tests, bench)
        self._renew = self.r.register_script(_RENEW)
        self._resign = self.r.register_script(_RESIGN)

    # -- leadership -------------------------------------------------------------------------------
    def ensure_leader(self) -> bool:
        if not self.use_leader_lock:
            self.is_leader = True
            return True
        now = time.monotonic()
        ttl_ms = int(self.leader_ttl * 1000)
        if self.is_leader:
            if now - self._renewed_at < self.leader_ttl / 3:
                return True
            if self._renew(keys=[LEADER_KEY], args=[self.instance_id, ttl_ms]):
                self._renewed_at = now
                return True
            log.warning("lost the dispatcher leader lock")
            self.is_leader = False
            self.passes.clear()
        if self.r.set(LEADER_KEY, self.instance_id, nx=True, px=ttl_ms):
            log.info("became the dispatcher leader (%s)", self.instance_id)
            self.is_leader = True
            self._renewed_at = now
            self._reconciled_at = 0.0  # reconcile at once: the previous leader may have died mid-release
        return self.is_leader

    def resign(self) -> None:
        if self.use_leader_lock and self.is_leader:
            # Best effort: a lock that is not released expires after its TTL.
            with contextlib.suppress(redis.RedisError):
                self._resign(keys=[LEADER_KEY], args=[self.instance_id])
        self.is_leader = False

    # -- reconciliation ---------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Re-queue what a crash may have stranded. Returns how many jobs were put back."""
        n = self.queues.reclaim_inflight()
        n += self.requeue_lost_sql_jobs()
        if n:
            log.warning("reconciler re-queued %s job(s)", n)
        return n

    def requeue_lost_sql_jobs(self, limit: int = 500) -> int:
        """SQL says queued, Redis has no trace of it (an API crash between commit and enqueue, a Redis
        restart without persistence): queue it again. A job merely waiting in Celery is recognised
        by its publish record; if it is requeued anyway, the start guard skips the second copy."""
        if self.queued_in_sql is None:
            return 0
        jobs = self.queued_in_sql(utcnow() - timedelta(seconds=self.lost_grace), limit)
        if not jobs:
            return 0
        published = self.r.hmget(DISPATCHED_AT, [j.job_id for j in jobs])
        now = time.time()
        count = 0
        for job, at in zip(jobs, published, strict=True):
            if at is not None and now - float(at) < self.republish_after:
                continue
            if self.queues.is_pending(job.tenant_id, job.job_id):
                continue
            self.queues.enqueue(job.tenant_id, job.job_id, job.priority, job.message)
            self.r.hdel(DISPATCHED_AT, job.job_id)
            count += 1
        return count

    # -- scheduling -------------------------------------------------------------------------------
    def _target_queue(self, tenant: str) -> str:
        return self._routes.get(tenant, self.queue)

    def _refresh_routes(self) -> None:
        now = time.monotonic()
        if now - self._routes_at > 1.0:
            self._routes = routing.routes(self.r)
            self._routes_at = now

    def tick(self) -> int:
        """One pass: promote due delayed jobs, then fill the execution queues. Returns jobs released."""
        if not self.ensure_leader():
            return 0
        now = time.monotonic()
        if now - self._reconciled_at > self.reconcile_every:
            self._reconciled_at = now
            try:
                self.reconcile()
            except Exception:  # e.g. the database is away: dispatching goes on without it
                log.exception("reconciliation failed; retrying next round")
        self.queues.promote_due()
        self._refresh_routes()
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(keys.ACTIVE)
        pipe.smembers(keys.PAUSED)
        active, paused = pipe.execute()
        tenants = sorted(t for t in active - paused if self.blocked_until.get(t, 0) <= now)
        # Forget tenants that went idle or were paused: when they come back they start at vtime.
        for t in list(self.passes):
            if t not in active or t in paused:
                del self.passes[t]
        if not tenants:
            return 0
        limits = self.limits.get_many(tenants)
        room: dict[str, int] = {}
        heap: list[tuple[float, str]] = []
        for t in tenants:
            lim = limits.get(t)
            if lim is None:
                continue  # jobs of a deleted tenant: nothing may run them
            stride = 1.0 / lim.weight
            # At most one turn of credit for a tenant that was held back by its own limits.
            self.passes[t] = max(self.passes.get(t, self.vtime), self.vtime - stride)
            heap.append((self.passes[t], t))
        heapq.heapify(heap)
        period = current_period()
        released: list[Released] = []
        topped_up: set[str] = set()
        self._backlogged = False
        self._free = None  # free slots per queue, read once per tick when a queue's room is needed
        try:
            while heap:
                pass_value, t = heapq.heappop(heap)
                queue = self._target_queue(t)
                if queue not in room:
                    room[queue] = self._room(queue)
                if room[queue] <= 0:
                    self._backlogged = True
                    continue  # this tenant's execution queue is full; others may use other queues
                lim = limits[t]
                outcome = self.queues.release(
                    t,
                    cap=lim.concurrency,
                    rate=lim.exec_rate,
                    burst=lim.exec_burst,
                    lease_ttl=self.lease_ttl,
                    inflight_deadline=self.inflight_deadline,
                    leader_key=LEADER_KEY if self.use_leader_lock else "",
                    leader_id=self.instance_id if self.use_leader_lock else "",
                    compute_key=keys.quota_compute_key(t, period) if lim.compute_limit_ms is not None else "",
                    compute_limit_ms=lim.compute_limit_ms or 0,
                )
                if isinstance(outcome, Released):
                    self._publish(outcome, queue, lim)
                    released.append(outcome)
                    topped_up.add(queue)
                    room[queue] -= 1
                    self.vtime = pass_value
                    self.passes[t] = pass_value + 1.0 / lim.weight
                    heapq.heappush(heap, (self.passes[t], t))
                    if self.decisions is not None:
                        self.decisions.append(t)
                    if len(released) % 64 == 0 and not self.ensure_leader():
                        break  # a long tick must not outlive the lock
                    continue
                code, retry_ms = outcome
                if code == NOT_LEADER:
                    self.is_leader = False
                    break
                if code == RATE_LIMITED:
                    self.blocked_until[t] = time.monotonic() + retry_ms / 1000
                elif code == HELD:
                    # Over its hard compute quota: look again in a while (a raised limit, a new period).
                    self.blocked_until[t] = time.monotonic() + HELD_RECHECK_S
                elif code != EMPTY:
                    self._backlogged = self._backlogged or code == AT_CAP
                    # At the cap or paused: look again shortly rather than on every tick.
                    self.blocked_until[t] = time.monotonic() + 0.005
        finally:
            self.queues.ack(released)
            for queue in room:
                self._filled[queue] = queue in topped_up
        self.released_total += len(released)
        return len(released)

    def _room(self, queue: str) -> int:
        """How many more jobs this execution queue may take now.

        Where workers publish their slots (``dispatch.slots``), the queue is kept at the free slots
        behind it plus ``SPARE`` in hand (so a slot freed between two ticks starts its next job at
        once), never above ``dispatch_depth``: an urgent job or a light tenant waits for about one
        job's duration, not for a queue.

        Otherwise the depth adapts between 2 and ``dispatch_depth``: a queue found empty right after it
        was filled means the workers went idle waiting for the dispatcher (deepen by one); a queue still
        full means nobody took anything since the last tick (shallow by one). It settles near the
        smallest depth that keeps the workers busy.
        """
        current = self.queue_depth(queue)
        if self._free is None:
            self._free = slots.free_slots(self.r)
        free = self._free.get(queue)
        if free is not None:
            return min(self.depth, free + SPARE) - current
        target = self.target_depth.get(queue, min(self.depth, 4))
        if current == 0 and self._filled.get(queue):
            target = min(self.depth, target + 1)
        elif current >= target:
            target = max(min(self.depth, 2), target - 1)
        self.target_depth[queue] = target
        return target - current

    def _publish(self, item: Released, queue: str, limits: TenantLimits) -> None:
        self.publisher(released_message(item, limits.concurrency), queue)

    def _idle_wait(self) -> None:
        # Sleep until something is enqueued or a worker's pool process ends an attempt (both push
        # tq:wake), a rate-limited tenant gets a token, or 100 ms pass (delayed jobs are polled).
        now = time.monotonic()
        upcoming = [u - now for u in self.blocked_until.values() if u > now]
        timeout = min([0.1, *upcoming]) if upcoming else 0.1
        if self._backlogged and not upcoming:
            # Backlogged, blocked on room or leases. Where workers publish their slots, the end of each
            # attempt frees its lease and its slot and wakes this loop in the same MULTI, so it sleeps
            # until then; the short timeout covers the ends the main process records (a killed child, a
            # revoke), which do not wake it. Polling every 5 ms instead cost about a fifth of the
            # dispatcher's CPU under a backlog (py-spy, bench.overhead). Without slots: poll briskly.
            timeout = BACKLOG_WAKE_TIMEOUT_S if self._free else 0.005
        if timeout < 0.01:
            self.stop_event.wait(max(0.001, timeout))
            return
        self.r.blpop([WAKE_KEY], timeout=timeout)

    # -- chores ---------------------------------------------------------------------------------------
    def run_chores_once(self, due: dict[str, float]) -> None:
        """Run every chore whose time has come (``due``: name -> next monotonic time)."""
        now = time.monotonic()
        for chore in self.chores:
            if due.get(chore.name, 0.0) > now:
                continue
            due[chore.name] = now + chore.every_s
            try:
                chore.run()
            except Exception as exc:  # noqa: BLE001 - e.g. the database is away: the next round retries
                log.warning("chore %s failed: %s: %s", chore.name, type(exc).__name__, exc)

    def _chore_loop(self) -> None:
        due: dict[str, float] = {}
        step = min([1.0, *(c.every_s for c in self.chores)])
        while not self.stop_event.wait(step):
            if self.is_leader:
                self.run_chores_once(due)

    def run_forever(self) -> None:
        log.info("dispatcher %s started (queue=%s depth=%s)", self.instance_id, self.queue, self.depth)
        if self.chores:
            threading.Thread(target=self._chore_loop, name="tq-dispatcher-chores", daemon=True).start()
        last_beat = float("-inf")
        while not self.stop_event.is_set():
            try:
                released = self.tick()
                if self.is_leader and time.monotonic() - last_beat >= 1.0:
                    # Leader liveness for /metrics and alerts, once a second.
                    self.r.set(keys.DISPATCHER_HEARTBEAT, time.time())
                    last_beat = time.monotonic()
                if not self.is_leader:
                    self.stop_event.wait(max(0.05, self.leader_ttl / 5))
                    continue
                if released == 0:
                    self._idle_wait()
            except redis.ConnectionError as exc:
                log.warning("redis unavailable, retrying: %s", exc)
                self.is_leader = False
                self.stop_event.wait(1.0)
            except Exception:
                log.exception("dispatcher tick failed")
                self.stop_event.wait(1.0)
        self.resign()
        log.info("dispatcher stopped")


def main(queued_in_sql: QueuedInSql, chores: Sequence[Chore] = ()) -> None:
    dispatcher = Dispatcher(queued_in_sql=queued_in_sql, chores=chores)

    def _stop(_signum, _frame):
        dispatcher.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    dispatcher.run_forever()


__all__ = [
    "LEADER_KEY",
    "Chore",
    "Dispatcher",
    "QueuedJob",
    "TenantLimits",
    "exec_queue_depth",
    "main",
    "publish",
    "released_message",
]
