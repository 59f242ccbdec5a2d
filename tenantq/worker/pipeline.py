"""The attempt pipeline: the worker reports each attempt's life through one receiver per task signal.

Each receiver reads the Celery kwargs once into a :class:`JobMessage`, then runs its steps in the order
of its list below:
- ``task_prerun``  (pool child): start guard (one Lua call), status (job running, attempt row opened:
  one SQL statement on PostgreSQL), then one Redis round trip for metering (open the attempt's usage
  record), metrics (running set), the status event for the API's waiters and the cancel marker the
  wrapper checks, then metrics (counters, log context);
- ``task_postrun`` (pool child): status (succeeded / failed, attempt row closed; the finish hooks
  that claim the job run in that transaction), metrics (counters, log line), the finish hooks'
  after-commit part (e.g. webhook deliveries), then one Redis round trip (a MULTI) for the lease
  release, the status event, metering (close: usage events of the task body's own time), metrics
  (running set) and the worker's busy slots (which wakes the dispatcher). An ``IGNORED`` state means
  the task wrapper already recorded the outcome (retry scheduled, cancelled before start) or never
  ran;
- ``task_failure`` (main process) for a hard time limit: the child was killed, so postrun never fires.
  The job's own limits stop the task function inside the child (``jobs.bodyclock``); this is the pool's
  backstop kill, ``time_limit_grace_seconds`` later, which may also have cut the attempt's start short;
- ``task_revoked`` (main process) for a revoke: the lease is freed, and an attempt terminated by a
  cancellation is closed.
Job status and the attempt log in SQL are driven from here, never by polling the result backend. Each
transition is conditional on the job still being on that attempt, so late or duplicate signals never
move a job backwards.

When a status write fails (the database is down or stalled) nothing is lost and nothing runs
unrecorded: a start that cannot be recorded is deferred (the attempt goes back to the tenant's delayed
queue and the task function does not run), and a final outcome that cannot be written goes to the
``tq:outcomes`` stream in Redis, which the dispatcher's settler applies once the database is back
(``tenantq.platform.jobs.outcomes``). The job's end is logged only once its outcome is stored.

Everything one attempt needs between its start and its end is one :class:`AttemptState`, kept per
Celery task id in this process. A step that raises is logged and the next step still runs, as with
separate receivers: a metrics or Redis hiccup never keeps a job's status from being recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
from celery import signals
from celery.exceptions import TimeLimitExceeded

from tenantq.billing.usage import metering
from tenantq.billing.usage.metering import OpenAttempt
from tenantq.core.db import dispose_engine
from tenantq.core.keys import cancel_key
from tenantq.core.redis import get_redis, reset_redis, with_redis_retries
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch import limits, slots
from tenantq.platform.dispatch.deferral import defer_attempt
from tenantq.platform.dispatch.dispatcher import publish
from tenantq.platform.jobs import events, hooks, lifecycle, outcomes
from tenantq.platform.jobs.bodyclock import BodyClock
from tenantq.platform.jobs.hooks import AttemptOutcome
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.registry import REGISTRY, NotStarted, RetryScheduled
from tenantq.worker import metrics

log = logging.getLogger("tenantq.worker")


# Start-guard verdicts under which the task function does not run and the attempt is not one ('requeue':
# a 'busy' copy that could not be sent back for later; the task wrapper rejects it back to the broker).
_NOT_STARTED = ("dup", "full", "busy", "redelivered", "requeue")


@dataclass
class AttemptState:
    """One attempt running in this process, from prerun to postrun."""

    message: JobMessage
    task_id: str
    worker: str | None
    time_limit: float  # the hard limit it runs under (or what bounds it without one)
    timelimit: Any = None  # Celery's (hard, soft) of this delivery: a re-queued copy keeps them
    queue: str | None = None  # the execution queue this delivery came from
    # The start guard's verdict: ok, unguarded, dup, busy, redelivered, full, requeue.
    guard: str | None = None
    refused: bool = False  # the status step found the job finished, cancelled or on a newer attempt
    deferred: bool = False  # the start could not be recorded (database down): back to the delayed queue
    durable: bool = True  # False only when the final outcome could be stored neither in SQL nor in Redis
    usage: OpenAttempt | None = None
    running: metrics.RunningAttempt | None = None
    # Set at the end: Celery's final state and return value, and the outcome the status step applied.
    state: str | None = None
    retval: Any = None
    outcome: AttemptOutcome | None = None
    body: BodyClock | None = None  # the task function's own clock, left on the request by the wrapper
    cancelled: int | None = None  # the job's cancel marker, read at the end of prerun (None: not read)

    @property
    def skip(self) -> str | None:
        """Why the task function must not run, if it must not."""
        if self.guard in _NOT_STARTED:
            return self.guard
        if self.deferred:
            return "deferred"
        return "refused" if self.refused else None

    @property
    def ran(self) -> bool:
        """Did the task function run? (The wrapper ends a refused attempt with NotStarted.)"""
        return not (self.state == "IGNORED" and isinstance(self.retval, NotStarted))

    @property
    def retried(self) -> bool:
        """tenantq retries end the Celery task with RetryScheduled (an Ignore), not Celery's RETRY."""
        return self.state == "IGNORED" and isinstance(self.retval, RetryScheduled)


class _Attempts:
    """The attempts running in this process, by Celery task id. The lease heartbeat thread reads it."""

    def __init__(self) -> None:
        self._items: dict[str, AttemptState] = {}
        self._lock = threading.Lock()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._items

    def add(self, state: AttemptState) -> None:
        with self._lock:
            self._items[state.task_id] = state

    def pop(self, task_id: str) -> AttemptState | None:
        with self._lock:
            return self._items.pop(task_id, None)

    def leases(self) -> list[tuple[str, str]]:
        with self._lock:
            states = list(self._items.values())
        return [
            lease for s in states if s.guard == "ok" and (lease := limits.lease_of(s.message)) is not None
        ]


ATTEMPTS = _Attempts()


def _message(task: Any, kwargs: Any) -> JobMessage | None:
    name = getattr(task, "name", None)
    if name not in REGISTRY:
        return None  # a system task (period close, webhook delivery...): not an attempt of a job
    return JobMessage.from_task_kwargs(name, kwargs if isinstance(kwargs, dict) else None)


def _hard_time_limit(task: Any) -> float:
    """The hard limit this attempt runs under; without one, the broker's visibility timeout bounds it."""
    request = getattr(task, "request", None)
    limits_ = getattr(request, "timelimit", None) or (None, None)
    hard = limits_[0] if limits_ else None
    if hard:
        return float(hard)
    conf = task.app.conf
    if conf.task_time_limit:
        return float(conf.task_time_limit)
    return float((conf.broker_transport_options or {}).get("visibility_timeout", 3600))


Step = Callable[[AttemptState], None]


def _run(steps: Sequence[Step], attempt: AttemptState) -> None:
    for step in steps:
        try:
            step(attempt)
        except Exception:
            log.exception("attempt step %s failed for job %s", step.__name__, attempt.message.id)


# -- task_prerun ---------------------------------------------------------------------------------------


def _start_guard(attempt: AttemptState) -> None:
    attempt.guard = limits.start_guard(attempt.message, attempt.task_id, attempt.timelimit)
    if attempt.guard == "ok":
        limits.ensure_lease_heartbeat(ATTEMPTS.leases)
    elif attempt.guard == "busy":
        _send_back_for_later(attempt)
    elif attempt.guard == "redelivered":
        # The process that ran this delivery before died (its lease lapsed). If metering had opened the
        # attempt it bills it as lost: record it so, and run the job as its next attempt. Otherwise
        # nothing of it counted: run it as the same attempt.
        if metering.attempt_opened(attempt.message.id, attempt.message.attempt):
            lifecycle.attempt_lost(attempt.message, attempt.task_id)
        else:
            attempt.guard = "ok"
            limits.ensure_lease_heartbeat(ATTEMPTS.leases)


def _send_back_for_later(attempt: AttemptState) -> None:
    """A second delivery of a release whose first delivery still runs (the broker restored a message
    that was not lost, e.g. after a connection loss). Running it would run the job twice; dropping it
    would lose the job if the first delivery's worker dies later. So the same message (same task id,
    same dispatch token, same limits) goes back to its execution queue due a heartbeat from now: by
    then the first delivery has ended (the copy is refused, the job being finished) or its lease has
    lapsed (the copy runs, as a redelivery after a crash would)."""
    message = limits.same_attempt(attempt.message, attempt.task_id, attempt.timelimit, keep_dispatch=True)
    # Back once the first delivery's process would have been seen dead (its liveness mark lapsed).
    message["options"]["countdown"] = float(limits.ALIVE_TTL_S + 1)
    try:
        publish(message, attempt.queue or get_settings().exec_queue)
    except Exception:
        log.exception("job %s: could not send a held-back copy back for later", attempt.message.id)
        attempt.guard = "requeue"


def _status_started(attempt: AttemptState) -> None:
    if attempt.skip:
        return
    try:
        started = lifecycle.attempt_started(attempt.message, attempt.task_id, attempt.worker, announce=False)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the attempt must not run unrecorded
        _defer_unrecorded_start(attempt, exc)
        return
    if not started:
        attempt.refused = True
        log.info(
            "job %s attempt %s not run: the job is finished, cancelled or on a newer attempt",
            attempt.message.id,
            attempt.message.attempt,
        )


def _redis_batch(build: Callable[[Any], Callable[[list[Any]], None]], transaction: bool, what: str) -> bool:
    """Run one phase's Redis work in one round trip: ``build`` queues the commands on a pipeline and
    returns what reads the replies. A Redis restart lasts about a second: wait it out (metering must
    not lose an attempt's figures), then log and give up (leases and running marks expire; an open
    usage record left behind is billed by the reconciler)."""

    def run() -> None:
        pipe = get_redis().pipeline(transaction=transaction)
        read = build(pipe)
        read(pipe.execute())

    try:
        with_redis_retries(run)
    except redis.RedisError as error:
        log.error("attempt pipeline: Redis %s failed: %s", what, error)
        return False
    return True


def _redis_started(attempt: AttemptState) -> None:
    """After the status step, one Redis round trip: open the usage record (metering), mark the attempt
    running (metrics) and read the job's cancel marker for the wrapper's gate."""
    message = attempt.message

    def build(pipe: Any) -> Callable[[list[Any]], None]:
        opened = None
        # A copy the start guard skipped is not an attempt. A refused one is opened all the same and
        # discarded at its end: its number marks an earlier attempt that never reported as superseded.
        if attempt.guard not in _NOT_STARTED and not attempt.deferred:
            opened = metering.queue_open(pipe, message, worker=attempt.worker, time_limit=attempt.time_limit)
        metrics.mark_running(pipe, message)
        if not attempt.skip:  # the job moved to this attempt: tell the API's waiters
            events.queue_status(pipe, message.tenant_id, message.id, "running", message.attempt)
        pipe.get(cancel_key(message.id))

        def read(replies: list[Any]) -> None:
            if opened is not None:
                attempt.usage = opened(replies[0])
            attempt.cancelled = int(replies[-1] or 0)

        return read

    if not _redis_batch(build, transaction=False, what="start"):
        log.error("usage: could not open attempt for job %s", message.id)


def _metrics_started(attempt: AttemptState) -> None:
    if attempt.deferred:
        return
    attempt.running = metrics.attempt_started(attempt.message, attempt.task_id, attempt.worker)


PRERUN_STEPS: tuple[Step, ...] = (
    _start_guard,  # first: a duplicate or an attempt without a slot must not touch SQL
    _status_started,  # job running, attempt row opened (or refused: the job moved on)
    _redis_started,  # the usage record opens once the attempt is known to be one; running mark
    _metrics_started,
)


@signals.task_prerun.connect
def on_prerun(task_id: str, task: Any, kwargs: Any = None, **_: Any) -> None:
    message = _message(task, kwargs)
    if message is None or task_id in ATTEMPTS:  # a duplicate prerun of the same execution: nothing new
        return
    request = task.request
    attempt = AttemptState(
        message=message,
        task_id=task_id,
        worker=getattr(request, "hostname", None),
        time_limit=_hard_time_limit(task),
        timelimit=getattr(request, "timelimit", None),
        queue=(getattr(request, "delivery_info", None) or {}).get("routing_key"),
    )
    ATTEMPTS.add(attempt)
    _run(PRERUN_STEPS, attempt)
    # The task wrapper runs next in this process, on this request: it reads what prerun decided.
    request.tq_message = message
    request.tq_skip = attempt.skip
    request.tq_cancelled = attempt.cancelled


# -- task_postrun --------------------------------------------------------------------------------------


def _status_finished(attempt: AttemptState) -> None:
    if attempt.state == "SUCCESS":
        try:
            attempt.outcome = lifecycle.attempt_succeeded(attempt.message, attempt.retval, announce=False)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the outcome must be kept
            _write_behind(attempt, "succeeded", exc, result=attempt.retval)
    elif attempt.state == "FAILURE" and isinstance(attempt.retval, BaseException):
        error = lifecycle.describe_error(attempt.retval, attempt.message)
        try:
            attempt.outcome = lifecycle.attempt_failed(attempt.message, error, announce=False)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the outcome must be kept
            _write_behind(attempt, "failed", exc, error=error)


def _metrics_finished(attempt: AttemptState) -> None:
    if attempt.deferred:
        return  # never started: nothing to count
    metrics.attempt_ended(
        attempt.message,
        attempt.running,
        attempt.state,
        attempt.retval,
        retried=attempt.retried,
        durable=attempt.durable,
    )


def _finish_hooks(attempt: AttemptState) -> None:
    if attempt.outcome is not None:
        hooks.run_after_commit(attempt.outcome)


def _redis_ended(attempt: AttemptState) -> None:
    """The end's Redis work in one round trip (a MULTI), after the status is committed: release the
    tenant's concurrency lease, tell the API's waiters the outcome, close the usage record (metering:
    the task body's own time, 0 when the function was never reached), drop the running mark (metrics)
    and free this pool process's slot for the dispatcher, waking it (``dispatch.slots``: the process
    is busy until its bookkeeping is done). Metering closes after the status, never before: a worker
    killed in between leaves the record open for the reconciler, which bills it once as lost, whereas
    a usage closed before a lost status would be billed again when the redelivered attempt succeeds.
    The lease goes after the status too: a copy of this delivery that arrives once the lease is gone
    finds the job finished (refused), never still running."""
    message, usage, body = attempt.message, attempt.usage, attempt.body

    def build(pipe: Any) -> Callable[[list[Any]], None]:
        # Every end (success, failure, retry, ignore, reject) frees the lease, also for a skipped copy;
        # not for a copy held back because its first delivery still runs: that lease is the first's.
        if attempt.guard not in ("busy", "requeue"):
            limits.queue_release(pipe, message)
        if attempt.outcome is not None:
            events.queue_status(pipe, message.tenant_id, message.id, attempt.outcome.status, message.attempt)
        if usage is not None:
            metering.queue_end(
                pipe,
                usage,
                attempt.state,
                ran=attempt.ran,
                retried=attempt.retried,
                wall_ms=body.wall_ms if body is not None else 0,
                compute_ms=body.cpu_ms if body is not None else 0,
            )
        metrics.unmark_running(pipe, message)
        if attempt.worker:
            slots.slot_freed(pipe, attempt.worker)
        return lambda _replies: None

    if not _redis_batch(build, transaction=True, what="end") and usage is not None:
        # The open record stays behind, so the reconciler still bills the attempt (as lost, CPU 0).
        log.error("usage: could not close attempt %s of job %s", usage.attempt, usage.job_id)


POSTRUN_STEPS: tuple[Step, ...] = (
    _status_finished,  # the final status is committed before anything reports it
    _metrics_finished,
    _finish_hooks,  # hooks read the committed outcome (e.g. webhooks record deliveries)
    _redis_ended,  # last: lease and usage closed after the status; this pool process takes its next job
)


@signals.task_postrun.connect
def on_postrun(
    task_id: str, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    attempt = ATTEMPTS.pop(task_id)
    if attempt is None:
        return
    attempt.state, attempt.retval = state, retval
    attempt.body = getattr(getattr(task, "request", None), "tq_body", None)
    _run(POSTRUN_STEPS, attempt)


# -- when SQL fails: defer the start, write the outcome behind -----------------------------------------

# A start that could not be recorded runs again this much later (the dispatcher releases it anew).
DEFER_START_S = 5.0


def _defer_unrecorded_start(attempt: AttemptState, exc: Exception) -> None:
    """prerun could not record the start: the task must not run unrecorded. Its slot and start record
    are given back and the same attempt goes to the tenant's delayed queue; the message is then
    acknowledged as not started (the wrapper sees ``skip``)."""
    attempt.deferred = True
    message = attempt.message
    try:
        defer_attempt(message, attempt.task_id, attempt.timelimit, DEFER_START_S)
    except Exception:
        # Neither SQL nor Redis: SQL still says queued and Redis has no trace of the job, so the
        # dispatcher's lost-job reconciler queues it again (after lost_job_grace_seconds).
        log.exception("job %s attempt %s: start not recorded and not deferred", message.id, message.attempt)
        return
    log.warning(
        "job %s attempt %s not started: its start could not be recorded (%s); runs again in %ss",
        message.id,
        message.attempt,
        type(exc).__name__,
        DEFER_START_S,
        extra={"job_id": message.id, "event": "job.start_deferred"},
    )


def _write_behind(
    attempt: AttemptState,
    status: Literal["succeeded", "failed"],
    exc: Exception,
    *,
    result: Any = None,
    error: str | None = None,
) -> None:
    """postrun could not write the outcome to SQL: keep it in Redis for the settler, before the message
    is acknowledged. The finish hooks run when it is settled, not here."""
    log.warning(
        "job %s attempt %s: outcome not written to SQL (%s: %s)",
        attempt.message.id,
        attempt.message.attempt,
        type(exc).__name__,
        exc,
    )
    attempt.durable = outcomes.record_durably(attempt.message, status, result=result, error=error)


# -- the main process's edges --------------------------------------------------------------------------


@signals.task_failure.connect
def on_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    # In the pool child a failure is followed by postrun, which has the real figures. A failure
    # without a local attempt was raised in the main process: a hard time limit killed the child. It
    # may fire twice for one timeout; every step below is conditional, so the second is a no-op.
    if task_id in ATTEMPTS:
        return
    message = _message(sender, kwargs)
    if message is None:
        return
    metrics.slot_freed(metrics.hostname())  # its pool process is gone: its postrun never freed the slot
    outcome = None
    if isinstance(exception, TimeLimitExceeded):
        error = lifecycle.describe_error(exception, message)
        try:
            # The kill may have cut the attempt's own start short: attempt_killed fails the job also
            # when its row never moved to this attempt, so no job is left queued for good.
            outcome = lifecycle.attempt_killed(message, error)
        except Exception:
            log.exception("could not record the hard time limit of job %s; kept in Redis", message.id)
            outcomes.record_durably(message, "failed", error=error)
    metering.close_from_outside(message, "failed")
    if outcome is not None:
        hooks.run_after_commit(outcome)


@signals.task_revoked.connect
def on_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None, **_: Any
) -> None:
    if request is None:
        return
    message = _message(sender, getattr(request, "kwargs", None))
    if message is None:
        return
    limits.release_lease(message)
    if not terminated:
        metrics.slot_freed(metrics.hostname())  # received, never handed to a pool process
        return  # revoked before it started: nothing ran, nothing to record or bill
    try:
        lifecycle.attempt_terminated(message, f"terminated by cancellation (signal {signum})")
    except Exception:
        log.exception("could not record the termination of job %s", message.id)
    if getattr(request, "id", None) not in ATTEMPTS:
        metering.close_from_outside(message, "cancelled")


# -- the worker process itself -------------------------------------------------------------------------


@signals.task_received.connect
def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    # Main process: a job's message was taken from the queue, so one of this worker's pool slots is
    # busy from now until the attempt's postrun ends (dispatch.slots).
    if getattr(request, "name", None) in REGISTRY:
        metrics.slot_taken(getattr(sender, "hostname", None))


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool child must not reuse the parent's pooled DB/Redis sockets.
    dispose_engine()
    reset_redis()


@signals.worker_init.connect
def _worker_init(**_: Any) -> None:
    metrics.worker_init()


@signals.worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    metrics.worker_ready(getattr(sender, "hostname", None), sender)


@signals.worker_shutdown.connect
def _worker_shutdown(**_: Any) -> None:
    metrics.worker_shutdown()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    metrics.setup_logger(logger)
