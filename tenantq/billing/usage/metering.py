"""Usage metering, a step of the worker's attempt pipeline: what every attempt consumed, recorded once.

Hot path (pool child): at the attempt's start :func:`queue_open` allocates the attempt number and
writes an *open attempt* record to Redis; at its end :func:`queue_end`, in one Redis transaction,
removes the open record and appends the attempt's usage events to the stream ``tq:usage``. Both are
queued on the worker's attempt pipeline's own Redis pipeline, which sends each phase's Redis work in
one round trip (:func:`open_attempt` / :func:`close_attempt` do the same alone). The wall and CPU
time billed are the task function's own, measured by the task wrapper (``jobs.bodyclock``). No SQL
runs in the task path: the flusher (``tenantq.billing.usage.buffer``) moves the stream into the
``usage_event`` table.

A child stopped mid-task by SIGTERM still runs its postrun, with no state: :func:`stopped_state` says
why, so the state billed is the same whichever process closes the attempt first:
- a running cancel (``revoke(terminate=True)``; the job carries a cancel marker) -> ``cancelled``;
- the hard time limit (the pool sends SIGTERM first, then SIGKILL) -> ``failed``;
- anything else (a worker's cold shutdown) -> ``terminated``.
Attempts that end without a postrun in the pool child are closed from the open record
(:func:`close_from_outside`, called by the pipeline in the worker's main process), CPU 0:
- hard time limit: ``task_failure`` fires in the worker's main process -> state ``failed``;
- ``revoke(terminate=True)``: ``task_revoked`` fires in the main process -> state ``cancelled``;
- SIGKILL / OOM of the pool child or of the whole worker: nothing fires; the reconciler
  (:func:`reconcile_open_attempts`) closes the attempt as ``lost`` once a later attempt of the same job
  started (the message was redelivered: ``acks_late`` + ``reject_on_worker_lost``) or once it is past its
  deadline (time limit + grace). Wall time runs up to that detection, CPU time is unknown and counted 0.
Those closes are conditional (Lua: only if the open record is still there), so the two signals a hard
time limit sends, or a reconciler racing a late postrun, close the attempt once.

Event ids are deterministic, ``{job_id}:{attempt}:{metric}``; the flusher inserts idempotently, so
duplicate signals, redeliveries and stream replays never double count.

Attempt numbers: the message says which attempt it is (``JobMessage.attempt``), but a redelivered
message says the same thing again. :func:`open_attempt` therefore allocates ``max(message attempt, last
allocated + 1)`` per job, atomically in Redis: a redelivery after a crash becomes the next attempt
instead of colliding with the one that died.

Redis keys (all under ``tq:usage``):
- ``tq:usage``              STREAM of closed attempts (field ``events``: JSON list of usage events).
- ``tq:usage:open``         HASH ``{job_id}:{attempt}`` -> JSON open-attempt record (start, worker, pid,
                            deadline): attempts that started and have not been closed yet.
- ``tq:usage:att:{job_id}`` HASH ``n`` = highest attempt allocated, ``t`` = its start (unix seconds);
                            expires 3 days after the job's last attempt started.

Billable attempts: every attempt that started executing (succeeded, failed, retried, cancelled while
running, lost). Jobs rejected at submission or cancelled before they started never reach a worker and
record nothing. ``jobs`` is recorded once per job, with its first run: attempt 1, or for a job
cancelled before it ever ran and then re-run, the re-run's first attempt (``JobMessage.first_run``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from tenantq.billing.usage.quotas import ADD_IF_EXISTS
from tenantq.core import keys
from tenantq.core.periods import period_of
from tenantq.core.redis import get_redis, with_redis_retries
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.messages import JobMessage

log = logging.getLogger("tenantq.metering")

STREAM = keys.USAGE_STREAM
OPEN = keys.USAGE_OPEN
# Only needed while the job can still be redelivered or retried (retry backoff is capped at minutes, the
# visibility timeout at about an hour): refreshed at every attempt, then it expires.
ATTEMPT_TTL_S = 3 * 24 * 3600
LOST_GRACE_S = 60.0  # past the time limit an open attempt is surely dead (the worker enforces the limit)
SUPERSEDED_GRACE_S = 5.0  # a later attempt started this long ago: the earlier one will not report any more

# Every state an attempt's usage events can carry. All are billable: each one means the attempt ran.
BILLABLE_STATES = ("succeeded", "failed", "retried", "ignored", "rejected", "cancelled", "terminated", "lost")

_POSTRUN_STATES = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "IGNORED": "ignored",
    "REJECTED": "rejected",
    None: "terminated",  # postrun with no state: the child was told to stop (SIGTERM) mid-task
}
# A stopped attempt that ran at least this close to its time limit was stopped by the limit.
TIME_LIMIT_SLACK_S = 0.5


def stopped_state(attempt: OpenAttempt, finished: float, client: redis.Redis) -> str:
    """Why a child stopped mid-task (postrun with no state) was stopped: ``cancelled`` if the job
    carries a cancel marker (a running cancel revokes with SIGTERM), ``failed`` if it ran up to its hard
    time limit (the pool sends SIGTERM first), else ``terminated`` (e.g. a worker's cold shutdown)."""
    try:
        if client.exists(keys.cancel_key(attempt.job_id)):
            return "cancelled"
    except redis.RedisError:
        pass
    time_limit = attempt.deadline - attempt.started - LOST_GRACE_S
    if finished - attempt.started >= time_limit - TIME_LIMIT_SLACK_S:
        return "failed"
    return "terminated"


_ALLOCATE = """
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local a = tonumber(ARGV[1])
if a <= n then a = n + 1 end
redis.call('HSET', KEYS[1], 'n', a, 't', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('HSET', KEYS[2], ARGV[4] .. ':' .. a, ARGV[5])
return a
"""

# Forget an attempt that never ran. If it is still the job's latest, give its number back: otherwise
# every delivery the worker refused (a duplicate dispatch, a replay of a finished attempt) would push
# the next real attempt's number up, and the job's first real attempt would not be attempt 1, the one
# that records ``jobs``, so the job would never be billed as a job. Not when the attempt before it is
# still open (its worker died without reporting): the discarded number is what marks that one as
# superseded, so the reconciler closes it within seconds rather than at its deadline.
_DISCARD = """
if redis.call('HDEL', KEYS[2], ARGV[1] .. ':' .. ARGV[2]) == 1 then
  local a = tonumber(ARGV[2])
  if tonumber(redis.call('HGET', KEYS[1], 'n') or '0') == a
     and redis.call('HEXISTS', KEYS[2], ARGV[1] .. ':' .. (a - 1)) == 0 then
    redis.call('HSET', KEYS[1], 'n', a - 1)
  end
  return 1
end
return 0
"""

# Close an attempt only if it is still open: exactly one of the competing closers records it.
_CLOSE_IF_OPEN = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'events', ARGV[2])
  return 1
end
return 0
"""


def queue_compute(pipe: Any, tenant_id: str, finished: float, compute_ms: int) -> None:
    """Queue, on the pipeline (MULTI) that closes an attempt, the addition of its CPU time to the
    tenant's compute counter of the period it ended in. The counter moves with the usage record, not
    when the flusher gets to it, so the dispatcher holds a tenant over its hard compute quota at once.
    Attempts closed outside the child (time limit, terminate, lost) have CPU 0: nothing to add. An
    EVAL, not a script object's EVALSHA, which would cost a SCRIPT EXISTS round trip per pipeline."""
    if compute_ms > 0:
        period = period_of(datetime.fromtimestamp(finished, UTC))
        pipe.eval(ADD_IF_EXISTS, 1, keys.quota_compute_key(tenant_id, period), compute_ms)


def attempt_opened(job_id: str, attempt: int) -> bool:
    """Did an attempt of this number (or a later one) of the job open its usage record? (A redelivery
    after a crash asks: an opened attempt is billed, as lost if its process died.) Never when
    metering is off."""
    if not metering_enabled():
        return False
    return int(get_redis().hget(attempt_key(job_id), "n") or 0) >= attempt


def queue_close(pipe: Any, attempt: OpenAttempt, events: list[dict[str, Any]]) -> None:
    """Queue the close of an attempt on a Redis pipeline (MULTI: all or nothing): the open record goes,
    the usage events go to the stream, and the attempt's CPU time to the tenant's compute counter."""
    pipe.hdel(OPEN, attempt.field)
    pipe.xadd(STREAM, {"events": json.dumps(events)})
    compute_ms = sum(int(e["quantity"]) for e in events if e["metric"] == "compute_ms")
    if events:
        queue_compute(pipe, attempt.tenant_id, float(events[0]["occurred_at"]), compute_ms)


def metering_enabled() -> bool:
    return get_settings().metering


def attempt_key(job_id: str) -> str:
    return keys.usage_attempt_key(job_id)


def usage_events(
    *,
    job_id: str,
    tenant_id: str,
    task: str,
    attempt: int,
    state: str,
    worker: str | None,
    finished_at: float,
    wall_ms: int,
    compute_ms: int,
    bills_job: bool | None = None,
) -> list[dict[str, Any]]:
    """The events one closed attempt produces: attempts, compute_ms, wall_ms, and jobs on the job's
    first run (attempt 1 unless the message says otherwise, see ``JobMessage.first_run``)."""
    quantities = {"attempts": 1, "compute_ms": max(0, int(compute_ms)), "wall_ms": max(0, int(wall_ms))}
    if bills_job if bills_job is not None else attempt == 1:
        quantities = {"jobs": 1, **quantities}
    return [
        {
            "id": f"{job_id}:{attempt}:{metric}",
            "tenant_id": tenant_id,
            "job_id": job_id,
            "attempt": attempt,
            "task": task,
            "metric": metric,
            "quantity": qty,
            "state": state,
            "worker": worker,
            "occurred_at": finished_at,
        }
        for metric, qty in quantities.items()
    ]


@dataclass
class OpenAttempt:
    """What prerun knows about a running attempt; kept locally (pool child) and in ``tq:usage:open``."""

    job_id: str
    tenant_id: str
    task: str
    attempt: int
    started: float  # unix seconds
    worker: str | None
    pid: int
    deadline: float  # unix seconds after which the attempt is surely over
    first_run: int = 1  # the attempt billed as the job (``JobMessage.first_run``)
    mono: float = 0.0  # monotonic start (local only: wall time immune to clock steps)
    cpu: float = 0.0  # process_time() at start (local only)

    @property
    def bills_job(self) -> bool:
        """Does this attempt record ``jobs``? Only the job's first run does (a redelivery of it gets
        a later number, so it never bills the job twice)."""
        return self.attempt == self.first_run

    @property
    def field(self) -> str:
        return f"{self.job_id}:{self.attempt}"

    def record(self) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "tenant_id": self.tenant_id,
                "task": self.task,
                "started": self.started,
                "worker": self.worker,
                "pid": self.pid,
                "deadline": self.deadline,
                **({"first_run": self.first_run} if self.first_run != 1 else {}),
            }
        )

    @classmethod
    def from_record(cls, field: str, raw: str) -> OpenAttempt:
        data = json.loads(raw)
        attempt = int(field.rsplit(":", 1)[1])
        return cls(
            job_id=data["job_id"],
            tenant_id=data["tenant_id"],
            task=data["task"],
            attempt=attempt,
            started=float(data["started"]),
            worker=data.get("worker"),
            pid=int(data.get("pid") or 0),
            deadline=float(data["deadline"]),
            first_run=int(data.get("first_run") or 1),
        )


class Meter:
    """Open and close attempts against one Redis client. The pipeline's steps below use one per process."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self.r = client or get_redis()
        self._allocate = self.r.register_script(_ALLOCATE)
        self._close_if_open = self.r.register_script(_CLOSE_IF_OPEN)
        self._discard = self.r.register_script(_DISCARD)

    def open(
        self, message: JobMessage, *, worker: str | None, time_limit: float, now: float | None = None
    ) -> OpenAttempt:
        """Open the attempt the message claims, or the next number if that one was opened already."""
        started = time.time() if now is None else now
        attempt = OpenAttempt(
            job_id=message.id,
            tenant_id=message.tenant_id,
            task=message.task,
            attempt=0,
            started=started,
            worker=worker,
            pid=os.getpid(),
            deadline=started + time_limit + LOST_GRACE_S,
            first_run=message.first_run,
        )
        number = int(
            self._allocate(
                keys=[attempt_key(attempt.job_id), OPEN],
                args=[
                    message.attempt,
                    started,
                    ATTEMPT_TTL_S,
                    attempt.job_id,
                    attempt.record(),
                ],
            )
        )
        attempt.attempt = number
        return attempt

    def close(
        self, attempt: OpenAttempt, *, state: str, finished: float, wall_ms: int, compute_ms: int
    ) -> None:
        """Close from the process that ran the attempt: it has the real figures, so it always records."""
        pipe = self.r.pipeline(transaction=True)
        queue_closed_attempt(
            pipe, attempt, state=state, finished=finished, wall_ms=wall_ms, compute_ms=compute_ms
        )
        pipe.execute()

    def discard(self, attempt: OpenAttempt) -> None:
        """Forget an attempt that never ran its task function (and its number, if still the latest)."""
        self._discard(keys=[attempt_key(attempt.job_id), OPEN], args=[attempt.job_id, attempt.attempt])

    def close_if_open(self, attempt: OpenAttempt, *, state: str, finished: float) -> bool:
        """Close from elsewhere (main process, reconciler): wall time up to ``finished``, CPU unknown (0)."""
        finished = max(finished, attempt.started)
        events = usage_events(
            job_id=attempt.job_id,
            tenant_id=attempt.tenant_id,
            task=attempt.task,
            attempt=attempt.attempt,
            state=state,
            worker=attempt.worker,
            finished_at=finished,
            wall_ms=round((finished - attempt.started) * 1000),
            compute_ms=0,
            bills_job=attempt.bills_job,
        )
        return bool(self._close_if_open(keys=[OPEN, STREAM], args=[attempt.field, json.dumps(events)]))

    def latest_open(self, job_id: str) -> OpenAttempt | None:
        """The job's most recently allocated attempt, if it is still open."""
        n = self.r.hget(attempt_key(job_id), "n")
        if n is None:
            return None
        field = f"{job_id}:{int(n)}"
        # The clients decode responses to str, which redis-py's bytes | str return types cannot express.
        raw = cast(str | None, self.r.hget(OPEN, field))
        return OpenAttempt.from_record(field, raw) if raw else None

    def reconcile(self, now: float | None = None) -> int:
        """Close open attempts whose process died without reporting. Returns how many were closed as lost.

        An attempt is over when a later attempt of its job has started (the message was redelivered or
        retried; Celery runs one delivery at a time) or when it is past its deadline. Wall time is counted
        up to the later attempt's start, or up to now for a deadline.
        """
        now = time.time() if now is None else now
        closed = 0
        attempts: list[OpenAttempt] = []
        for field, raw in self.r.hscan_iter(OPEN, count=500):
            try:
                attempts.append(OpenAttempt.from_record(field, raw))
            except (ValueError, KeyError, IndexError, TypeError):
                log.error("dropping malformed open-attempt record %r", field)
                self.r.hdel(OPEN, field)
        for start in range(0, len(attempts), 500):
            chunk = attempts[start : start + 500]
            pipe = self.r.pipeline(transaction=False)
            for attempt in chunk:
                pipe.hmget(attempt_key(attempt.job_id), ["n", "t"])
            for attempt, (latest_n, latest_t) in zip(chunk, pipe.execute(), strict=True):
                n = int(latest_n) if latest_n is not None else attempt.attempt
                t = float(latest_t) if latest_t is not None else now
                finished: float | None = None
                if n > attempt.attempt and now - t >= SUPERSEDED_GRACE_S:
                    finished = min(t, now)
                elif now > attempt.deadline:
                    finished = now
                if finished is not None and self.close_if_open(attempt, state="lost", finished=finished):
                    log.warning(
                        "attempt %s of job %s (worker %s) never reported: closed as lost",
                        attempt.attempt,
                        attempt.job_id,
                        attempt.worker,
                    )
                    closed += 1
        return closed


# -- pipeline steps (the worker's attempt pipeline calls these) -------------------------------------------

_meter: Meter | None = None
_meter_pid: int | None = None


def _get_meter() -> Meter:
    global _meter, _meter_pid
    if _meter is None or _meter_pid != os.getpid():
        _meter = Meter()
        _meter_pid = os.getpid()
    return _meter


OpenReply = Callable[[Any], OpenAttempt]


def queue_open(pipe: Any, message: JobMessage, *, worker: str | None, time_limit: float) -> OpenReply | None:
    """Queue the opening of an attempt on the attempt pipeline's Redis pipeline (one EVAL: a script
    object's EVALSHA would cost a SCRIPT EXISTS round trip per pipeline). Returns what turns that
    command's reply into the :class:`OpenAttempt`; None when metering is off."""
    if not metering_enabled():
        return None
    started = time.time()
    attempt = OpenAttempt(
        job_id=message.id,
        tenant_id=message.tenant_id,
        task=message.task,
        attempt=0,
        started=started,
        worker=worker,
        pid=os.getpid(),
        deadline=started + time_limit + LOST_GRACE_S,
        first_run=message.first_run,
    )
    pipe.eval(
        _ALLOCATE,
        2,
        attempt_key(attempt.job_id),
        OPEN,
        message.attempt,
        started,
        ATTEMPT_TTL_S,
        attempt.job_id,
        attempt.record(),
    )

    def opened(reply: Any) -> OpenAttempt:
        attempt.attempt = int(reply)
        attempt.mono, attempt.cpu = time.monotonic(), time.process_time()
        return attempt

    return opened


def queue_end(
    pipe: Any,
    attempt: OpenAttempt,
    celery_state: str | None,
    *,
    ran: bool,
    retried: bool,
    wall_ms: int,
    compute_ms: int,
) -> None:
    """Queue an attempt's end on the attempt pipeline's Redis pipeline (a MULTI): its usage events,
    or, when the task function never ran, the discard of its number (see :func:`close_attempt`)."""
    if not ran:
        pipe.eval(_DISCARD, 2, attempt_key(attempt.job_id), OPEN, attempt.job_id, attempt.attempt)
        return
    finished = time.time()
    state = _end_state(attempt, celery_state, retried=retried, finished=finished)
    queue_closed_attempt(
        pipe, attempt, state=state, finished=finished, wall_ms=wall_ms, compute_ms=compute_ms
    )


def _end_state(attempt: OpenAttempt, celery_state: str | None, *, retried: bool, finished: float) -> str:
    """The state an attempt closed by its own process is billed as."""
    if retried:
        return "retried"
    if celery_state is None:  # stopped mid-task: why (one read, off the hot path)
        return stopped_state(attempt, finished, _get_meter().r)
    return _POSTRUN_STATES.get(celery_state, str(celery_state).lower())


def queue_closed_attempt(
    pipe: Any, attempt: OpenAttempt, *, state: str, finished: float, wall_ms: int, compute_ms: int
) -> None:
    """Queue the close of an attempt its own process measured (see :func:`queue_close`)."""
    events = usage_events(
        job_id=attempt.job_id,
        tenant_id=attempt.tenant_id,
        task=attempt.task,
        attempt=attempt.attempt,
        state=state,
        worker=attempt.worker,
        finished_at=finished,
        wall_ms=wall_ms,
        compute_ms=compute_ms,
        bills_job=attempt.bills_job,
    )
    queue_close(pipe, attempt, events)


def open_attempt(message: JobMessage, *, worker: str | None, time_limit: float) -> OpenAttempt | None:
    """At the start of an attempt in the process that runs it. None when metering is off or Redis is
    away (metering must never fail a tenant's task)."""
    if not metering_enabled():
        return None
    try:
        # A Redis restart is waited out, or the attempt would run unbilled.
        attempt = with_redis_retries(lambda: _get_meter().open(message, worker=worker, time_limit=time_limit))
    except redis.RedisError as error:
        log.error("usage: could not open attempt for job %s: %s", message.id, error)
        return None
    # Measured from here: the task body starts right after this step, and a wait above is ours.
    attempt.mono, attempt.cpu = time.monotonic(), time.process_time()
    return attempt


def close_attempt(
    attempt: OpenAttempt,
    celery_state: str | None,
    *,
    ran: bool,
    retried: bool,
    wall_ms: int | None = None,
    compute_ms: int | None = None,
) -> None:
    """At the end of an attempt, in the process that ran it. ``ran`` is False when the task function
    was never called (cancelled, or a replay of a finished attempt): not billable. ``retried``: the
    attempt failed and its retry was scheduled (tenantq retries end the Celery task with an Ignore).
    ``wall_ms``/``compute_ms``: the task body's own time, measured by the task wrapper around the task
    function alone; without them, the time since :func:`open_attempt`."""
    if not ran:
        try:
            _get_meter().discard(attempt)
        except redis.RedisError as exc:
            log.error(
                "usage: could not discard attempt %s of job %s: %s", attempt.attempt, attempt.job_id, exc
            )
        return
    if wall_ms is None:
        wall_ms = round((time.monotonic() - attempt.mono) * 1000)
    if compute_ms is None:
        compute_ms = round((time.process_time() - attempt.cpu) * 1000)
    finished = time.time()
    state = _end_state(attempt, celery_state, retried=retried, finished=finished)
    try:
        # A Redis restart is waited out rather than lose the real figures.
        with_redis_retries(
            lambda: _get_meter().close(
                attempt, state=state, finished=finished, wall_ms=wall_ms, compute_ms=compute_ms
            )
        )
    except redis.RedisError as error:
        # The open record stays behind, so the reconciler still bills the attempt (as lost, CPU 0).
        log.error("usage: could not close attempt %s of job %s: %s", attempt.attempt, attempt.job_id, error)


def close_from_outside(message: JobMessage, state: str) -> None:
    """Close the job's latest open attempt from another process than the one that ran it (the
    worker's main process after a hard time limit or a terminate): wall time up to now, CPU 0."""
    if not metering_enabled():
        return
    try:
        meter = _get_meter()
        attempt = meter.latest_open(message.id)
        if attempt is not None:
            meter.close_if_open(attempt, state=state, finished=time.time())
    except redis.RedisError as exc:
        log.error("usage: could not close attempt of job %s: %s", message.id, exc)
