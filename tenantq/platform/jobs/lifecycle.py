"""Worker-side job state transitions: one function per thing that can happen to an attempt.

Called from the worker's attempt pipeline (start, success, failure, hard time limit, termination)
and from the task wrapper (retry scheduled, cancelled before start). Every update is conditional on
the job still being on *this* attempt and not finished, so duplicate or late signals (``task_failure``
can fire twice for a hard time limit; a redelivered message replays prerun) never move a job backwards.

Row locks are always taken in one order, so two transitions of one job (say a hard-limit kill recorded
by the worker's main process while a late postrun finishes) wait for each other and never deadlock:
the workflow row first (a claiming finish hook's ``lock``), then the ``job`` row, then its ``job_attempt``
row. No SQL here runs under the job's time limits: they cover the task function only (``bodyclock``).

A final outcome (succeeded, failed) also runs the finish hooks that claim the message inside the same
transaction (``tenantq.platform.jobs.hooks``) and evaluates the hooks' probes in the same statement.

Redis key owned here:
- ``tq:cancel:{job_id}``  attempt number N: attempts <= N of this job were cancelled and must never
                          start (nor be retried). Set by the cancel API before anything else, checked
                          by the task wrapper before the task function runs. Expires after
                          ``cancel_marker_ttl_seconds``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import traceback
from datetime import timedelta
from typing import Any, Literal, cast

import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import (
    CursorResult,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tenantq.core.db import UTCDateTime, get_engine, is_database_outage, new_id, unscoped_session, utcnow
from tenantq.core.keys import cancel_key
from tenantq.core.redis import get_redis, with_redis_retries
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs import events, hooks
from tenantq.platform.jobs.bodyclock import HardTimeLimitExceeded
from tenantq.platform.jobs.hooks import AttemptOutcome, FinishHook
from tenantq.platform.jobs.messages import JobMessage, attempt_task_id
from tenantq.platform.jobs.models import TERMINAL_STATUSES, Job, JobAttempt
from tenantq.tenants.accounts.models import Plan, Tenant

log = logging.getLogger("tenantq.jobs.lifecycle")

MAX_ERROR_CHARS = 20_000

_RAISE_MARKER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then current = wanted end
redis.call('SET', KEYS[1], current, 'EX', tonumber(ARGV[2]))
return current
"""


def mark_cancelled(job_id: str, attempt: int, client: redis.Redis | None = None) -> int:
    """Forbid attempts <= ``attempt`` of the job from starting; the marker only ever grows."""
    client = client or get_redis()
    ttl = get_settings().cancel_marker_ttl_seconds
    return int(client.eval(_RAISE_MARKER, 1, cancel_key(job_id), attempt, ttl))


def cancelled_up_to(job_id: str, client: redis.Redis | None = None) -> int:
    return int((client or get_redis()).get(cancel_key(job_id)) or 0)


def cancel_covers(job_id: str, attempt: int) -> bool:
    return cancelled_up_to(job_id) >= attempt


def describe_error(exc: BaseException, message: JobMessage | None = None) -> str:
    """The error a tenant reads: the first line says what happened in plain words, then the traceback
    with module-relative frames (``tenantq/worker/demo.py``, not the server's install path) and the
    worker's host name masked. The full traceback goes to the worker log, for the operator."""
    if isinstance(exc, SoftTimeLimitExceeded):
        soft = message.soft_time_limit if message is not None else None
        summary = f"SoftTimeLimitExceeded: soft time limit of {_secs(soft)}s exceeded"
    elif isinstance(exc, HardTimeLimitExceeded):
        limit = (message.time_limit if message is not None else None) or (exc.args[0] if exc.args else "?")
        summary = f"TimeLimitExceeded: hard time limit of {_secs(limit)}s exceeded; the attempt was stopped"
    elif isinstance(exc, TimeLimitExceeded):
        limit = (message.time_limit if message is not None else None) or (exc.args[0] if exc.args else "?")
        summary = f"TimeLimitExceeded: hard time limit of {_secs(limit)}s exceeded; the attempt was killed"
    else:
        summary = f"{type(exc).__name__}: {exc}"
    summary = _mask_host(summary)
    if exc.__traceback__ is None:
        return summary[:MAX_ERROR_CHARS]
    log.warning(
        "attempt raised %s",
        type(exc).__name__,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"job_id": message.id if message is not None else None},
    )
    summary = summary[:2000]
    trace = _mask_host("".join(_tenant_traceback(exc)))
    # Keep the summary and the innermost frames (where the error was raised) if it is long.
    room = MAX_ERROR_CHARS - len(summary) - 2
    return summary + "\n\n" + (trace if len(trace) <= room else "..." + trace[-(room - 3) :])


def _tenant_traceback(exc: BaseException) -> list[str]:
    tb = traceback.TracebackException.from_exception(exc)
    for part in (tb, *_chained(tb)):
        for frame in part.stack:
            frame.filename = _relative_path(frame.filename)
    return list(tb.format())


def _chained(tb: traceback.TracebackException) -> list[traceback.TracebackException]:
    found: list[traceback.TracebackException] = []
    seen: set[int] = set()
    todo = [tb]
    while todo:
        current = todo.pop()
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                found.append(nxt)
                todo.append(nxt)
    return found


def _relative_path(filename: str) -> str:
    """The path below the longest ``sys.path`` entry holding it (the module's import path), else the
    bare file name: never a directory of the server."""
    if filename.startswith("<"):
        return filename  # "<string>", "<frozen ...>": no path in it
    best = ""
    for entry in sys.path:
        root = os.path.join(os.path.abspath(entry or "."), "")
        if filename.startswith(root) and len(root) > len(best):
            best = root
    return filename[len(best) :] if best else os.path.basename(filename)


def _mask_host(text: str) -> str:
    host = socket.gethostname()
    if len(host) < 3:  # too short to replace without mangling ordinary words
        return text
    return text.replace(host, "<worker-host>")


def _secs(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "?"
    return str(int(number)) if number.is_integer() else f"{number:g}"


def _on_attempt(message: JobMessage) -> list[Any]:
    """WHERE clause: the job is still on this attempt (not a newer one) and not finished."""
    return [
        Job.id == message.id,
        Job.attempts == message.attempt,
        Job.status.not_in(TERMINAL_STATUSES),
    ]


def _close_attempt(session: Session, message: JobMessage, status: str, error: str | None, now: Any) -> None:
    session.execute(
        update(JobAttempt)
        .where(
            JobAttempt.job_id == message.id,
            JobAttempt.attempt == message.attempt,
            JobAttempt.status == "running",
        )
        .values(status=status, error=error, finished_at=now)
    )


# attempt_started as one statement (PostgreSQL): move the job to this attempt (unless it finished or
# is on a newer one) and insert its attempt row from what moved, or reopen the row of the same attempt
# redelivered after a worker was lost. Both commit together, in one round trip (autocommit).
_STARTED_SQL = """
WITH moved AS (
    UPDATE job SET status = 'running', attempts = :attempt, worker = :worker, task_id = :task_id,
           error = NULL, started_at = COALESCE(started_at, :now)
    WHERE id = :job_id AND status NOT IN :terminal AND attempts <= :attempt
    RETURNING id
)
INSERT INTO job_attempt (id, job_id, attempt, status, task_id, worker, started_at, finished_at, error)
SELECT :id, moved.id, :attempt, 'running', :task_id, :worker, :now, NULL, NULL FROM moved
ON CONFLICT (job_id, attempt) DO UPDATE SET status = 'running', worker = excluded.worker,
    started_at = excluded.started_at, finished_at = NULL, error = NULL
RETURNING job_attempt.id
"""
_started_stmt: Any = None


def _started_statement() -> Any:
    global _started_stmt
    if _started_stmt is None:
        _started_stmt = text(_STARTED_SQL).bindparams(
            bindparam("now", type_=UTCDateTime()), bindparam("terminal", expanding=True)
        )
    return _started_stmt


def attempt_started(message: JobMessage, task_id: str, worker: str | None, *, announce: bool = True) -> bool:
    """prerun: the job is running this attempt; open (or, on redelivery, reopen) its attempt row.
    False if the job finished, was cancelled or moved on to a newer attempt: this one must not run.
    ``announce=False``: the caller publishes the status event itself (``events.queue_status``)."""
    attempt = message.attempt
    now = utcnow()
    engine = get_engine()
    if engine.dialect.name == "postgresql":
        # One statement, so one round trip in autocommit (a transaction would add BEGIN and COMMIT):
        # the job update and the attempt row's upsert commit together or not at all, and the row is
        # only written when the job did move to this attempt. Built once (``_STARTED_SQL``): building
        # and cache-keying the Core statement per call cost about as much CPU as the round trip.
        params = {
            "id": new_id(),
            "job_id": message.id,
            "attempt": attempt,
            "task_id": task_id,
            "worker": worker,
            "now": now,
            "terminal": list(TERMINAL_STATUSES),
        }
        with engine.connect() as conn:
            autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
            moved = autocommit.execute(_started_statement(), params).first() is not None
    else:
        move = (
            update(Job)
            .where(Job.id == message.id, Job.status.not_in(TERMINAL_STATUSES), Job.attempts <= attempt)
            .values(
                status="running",
                attempts=attempt,
                worker=worker,
                task_id=task_id,
                error=None,
                started_at=func.coalesce(Job.started_at, now),
            )
        )
        with unscoped_session() as session:
            # An UPDATE's result is a CursorResult (with rowcount); Session.execute is typed as returning
            # Result.
            moved = bool(cast(CursorResult[Any], session.execute(move)).rowcount)
            if moved:
                _open_attempt(session, message.id, attempt, task_id, worker, now)
    if moved and announce:
        _published(message, "running")
    return moved


def _published(message: JobMessage, status: str) -> None:
    """Tell the API's waiters (after the commit) that the job moved to ``status``."""
    events.publish_status(message.tenant_id, message.id, status, message.attempt)


def _upsert_insert(dialect: str) -> Any:
    """The dialect's INSERT with ON CONFLICT support (PostgreSQL and SQLite have it)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _open_attempt(
    session: Session,
    job_id: str,
    attempt: int,
    task_id: str,
    worker: str | None,
    now: Any,
    *,
    only_missing: bool = False,
) -> None:
    """Insert the attempt row, or reset it when the same attempt starts again (redelivered after a
    worker was lost). One INSERT .. ON CONFLICT statement where the dialect has it (PostgreSQL,
    SQLite): this runs once per attempt, and a read-then-write would cost a round trip more.
    ``only_missing``: leave an existing row as it is."""
    reopened = {"status": "running", "worker": worker, "started_at": now, "finished_at": None, "error": None}
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        stmt = _upsert_insert(dialect)(JobAttempt).values(
            id=new_id(), job_id=job_id, attempt=attempt, task_id=task_id, **reopened
        )
        if only_missing:
            session.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "attempt"]))
        else:
            session.execute(stmt.on_conflict_do_update(index_elements=["job_id", "attempt"], set_=reopened))
        return
    row = session.scalars(
        select(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
    ).first()
    if row is None:
        session.add(JobAttempt(id=new_id(), job_id=job_id, attempt=attempt, task_id=task_id, **reopened))
    elif not only_missing:
        for key, value in reopened.items():
            setattr(row, key, value)


def may_start(message: JobMessage, cancelled: int | None = None) -> bool:
    """The wrapper's gate, checked before the task function runs: no cancellation covers this attempt
    (a cancel may land after prerun, or the cancelled attempt may already have been in Celery's queue).
    ``cancelled``: the job's cancel marker as the attempt pipeline read it at the end of prerun (in the
    same Redis round trip as its other start work), else it is read here."""
    marker = _read_marker_patiently(message.id) if cancelled is None else cancelled
    if marker >= message.attempt:
        cancelled_before_start(message)
        return False
    return True


def _read_marker_patiently(job_id: str) -> int:
    """The cancel marker, read across a Redis restart. The pipeline reads it at the end of prerun; it is
    read here only when that round trip failed, i.e. Redis was away a moment ago: the gate waits the
    restart out rather than failing an attempt whose start is recorded. Still away after the retries:
    the error propagates and the attempt fails with it (the job's retry policy applies), as before."""
    return with_redis_retries(lambda: cancelled_up_to(job_id))


def _probe_values(row: Any, probing: list[FinishHook], offset: int) -> dict[str, bool]:
    return {hook.name: bool(row[offset + i]) for i, hook in enumerate(probing)}


def _finish_in_transaction(
    message: JobMessage,
    status: Literal["succeeded", "failed"],
    error: str | None,
    values: dict[str, Any],
    claiming: list[FinishHook],
    where: list[Any] | None = None,
    open_row: bool = False,
    announce: bool = True,
) -> AttemptOutcome:
    """Apply a final outcome in one transaction with the hooks that claim the message; then run what
    those hooks left for after the commit. ``where`` replaces "still on this attempt"; ``open_row``
    writes the attempt row first if the attempt's start never did (``attempt_killed``)."""
    now = values["finished_at"]
    probing = hooks.probing()
    after: list[Any] = []
    with unscoped_session() as session:
        for hook in claiming:
            if hook.lock is not None:
                hook.lock(session, message)
        probes: dict[str, bool] = {}
        if status == "succeeded":
            # Read at finish time, so the expiry follows the tenant's plan as it is now.
            row = session.execute(
                select(Plan.result_ttl_s, *[hook.probe(Tenant.id) for hook in probing if hook.probe])
                .join(Tenant, Tenant.plan_name == Plan.name)
                .where(Tenant.id == message.tenant_id)
            ).first()
            ttl = row[0] if row is not None else None
            if row is not None:
                probes = _probe_values(row, probing, 1)
            values["result_expires_at"] = now + timedelta(seconds=int(ttl)) if ttl else None
        where = where if where is not None else _on_attempt(message)
        moved = cast(CursorResult[Any], session.execute(update(Job).where(*where).values(**values))).rowcount
        if moved and open_row:
            _open_attempt(
                session,
                message.id,
                message.attempt,
                attempt_task_id(message.id, message.attempt),
                None,
                now,
                only_missing=True,
            )
        if status == "failed" and probing:
            row = session.execute(
                select(*[hook.probe(literal(message.tenant_id)) for hook in probing if hook.probe])
            ).one()
            probes = _probe_values(row, probing, 0)
        _close_attempt(session, message, status, error, now)
        outcome = AttemptOutcome(message, status, error, probes)
        if moved:
            after.extend(
                hook.in_transaction(session, outcome) for hook in claiming if hook.in_transaction is not None
            )
    if announce:
        _published(message, status)
    for action in after:
        if action is not None:
            action()
    return outcome


def attempt_succeeded(message: JobMessage, result: Any, *, announce: bool = True) -> AttemptOutcome:
    """``announce=False``: the caller publishes the status event itself (``events.queue_status``)."""
    now = utcnow()
    claiming = hooks.claiming(message)
    engine = get_engine()
    if engine.dialect.name == "postgresql" and not claiming:
        return _succeeded_in_one_statement(engine, message, result, now, announce)
    values = {"status": "succeeded", "result": result, "error": None, "finished_at": now}
    return _finish_in_transaction(message, "succeeded", None, values, claiming, announce=announce)


# attempt_succeeded as one statement (PostgreSQL, no hook claims the message): the plan's result TTL
# and the finish hooks' probes are read, the job finished and the attempt row closed, all at once and
# in one round trip (autocommit; a transaction would add BEGIN and COMMIT). Data-modifying CTEs always
# run to completion, so the attempt row is closed even when the job update matches nothing, as below.
# The last two columns read ``moved`` before ``closed``: the job row is locked before its attempt row,
# the order every other transition takes (PostgreSQL leaves unread CTEs' order unspecified).
# {probes} and {probe_results} list each probing hook's condition on the tenant row and its answer.
_SUCCEEDED_SQL = """
WITH plan_row AS (
    SELECT plan.result_ttl_s AS ttl{probes}
    FROM tenant JOIN plan ON plan.name = tenant.plan_name
    WHERE tenant.id = :tenant_id
), moved AS (
    UPDATE job SET status = 'succeeded', result = :result, error = NULL, finished_at = :now,
           result_expires_at = CASE WHEN COALESCE((SELECT ttl FROM plan_row), 0) <> 0
                                    THEN :now + make_interval(secs => (SELECT ttl FROM plan_row)) END
    WHERE id = :job_id AND attempts = :attempt AND status NOT IN :terminal
    RETURNING 1
), closed AS (
    UPDATE job_attempt SET status = 'succeeded', error = NULL, finished_at = :now
    WHERE job_id = :job_id AND attempt = :attempt AND status = 'running'
    RETURNING 1
)
SELECT (SELECT count(*) FROM plan_row) AS found{probe_results},
       (SELECT count(*) FROM moved) AS moved_rows, (SELECT count(*) FROM closed) AS closed_rows
"""

_succeeded_statements: dict[tuple[str, ...], Any] = {}


def _succeeded_statement(probing: list[FinishHook]) -> Any:
    """The statement for these probing hooks, built once: probes are fixed at assembly."""
    key = tuple(hook.name for hook in probing)
    stmt = _succeeded_statements.get(key)
    if stmt is None:
        dialect = postgresql.dialect()
        conditions = [
            str(
                hook.probe(literal_column("tenant.id")).compile(
                    dialect=dialect, compile_kwargs={"literal_binds": True}
                )
            )
            for hook in probing
            if hook.probe is not None
        ]
        sql = _SUCCEEDED_SQL.format(
            probes="".join(f",\n           {c} AS probe_{i}" for i, c in enumerate(conditions)),
            probe_results="".join(
                f", (SELECT probe_{i} FROM plan_row) AS probe_{i}" for i in range(len(conditions))
            ),
        )
        stmt = text(sql).bindparams(
            bindparam("result", type_=Job.__table__.c.result.type),
            bindparam("now", type_=UTCDateTime()),
            bindparam("terminal", expanding=True),
        )
        _succeeded_statements[key] = stmt
    return stmt


def _succeeded_in_one_statement(
    engine: Any, message: JobMessage, result: Any, now: Any, announce: bool
) -> AttemptOutcome:
    probing = hooks.probing()
    params = {
        "tenant_id": message.tenant_id,
        "result": result,
        "now": now,
        "job_id": message.id,
        "attempt": message.attempt,
        "terminal": list(TERMINAL_STATUSES),
    }
    with engine.connect() as conn:
        row = (
            conn.execution_options(isolation_level="AUTOCOMMIT")
            .execute(_succeeded_statement(probing), params)
            .one()
        )
    if announce:
        _published(message, "succeeded")
    return AttemptOutcome(message, "succeeded", None, _probe_values(row, probing, 1) if row[0] else {})


def attempt_failed(message: JobMessage, error: str, *, announce: bool = True) -> AttemptOutcome:
    """The attempt failed and will not be retried: the job is failed (the dead-letter view)."""
    values = {"status": "failed", "error": error, "finished_at": utcnow()}
    return _finish_in_transaction(
        message, "failed", error, values, hooks.claiming(message), announce=announce
    )


def attempt_killed(message: JobMessage, error: str) -> AttemptOutcome:
    """Worker main process: the pool killed the attempt at its backstop hard limit (the task function
    ignored the wrapper's stop, or the platform's own bookkeeping stalled past the grace). The kill may
    have cut the attempt's start short, before the job row moved to this attempt: so unlike
    :func:`attempt_failed` this also fails a job still waiting for this attempt (queued or retrying
    with an older attempt number), and writes the attempt row if its start did not. A job already
    finished, on a newer attempt, or retrying after this attempt (its retry is queued) is left alone."""
    values = {"status": "failed", "error": error, "finished_at": utcnow(), "attempts": message.attempt}
    where = [
        Job.id == message.id,
        Job.status.not_in(TERMINAL_STATUSES),
        or_(
            Job.attempts < message.attempt,
            and_(Job.attempts == message.attempt, Job.status == "running"),
        ),
    ]
    return _finish_in_transaction(
        message, "failed", error, values, hooks.claiming(message), where=where, open_row=True
    )


def schedule_retry(message: JobMessage, exc: BaseException, delay: float) -> bool:
    """Put the next attempt on the tenant's delayed queue, then record the failed attempt and set the
    job to ``retrying``. False if the job was cancelled meanwhile (the retry is taken back).

    Redis first: a worker dying between the two steps leaves a retry that will run (and whose prerun
    moves the job on), never a job stuck in 'retrying' with nothing queued. A retry that starts
    before the SQL update below simply makes that update match nothing."""
    error = describe_error(exc, message)
    now = utcnow()
    run_at = now + timedelta(seconds=delay)
    queues = TenantQueues(get_redis())
    queues.schedule(
        message.tenant_id, message.id, message.priority, message.next_attempt(), run_at.timestamp()
    )
    try:
        return _record_retry(message, queues, error, now, run_at, delay)
    except Exception as failure:
        if not is_database_outage(failure):
            raise
        # The retry is queued; the next attempt's start moves the job on (deferred until the database
        # answers). Failing this attempt instead would end the job although a retry was due.
        log.warning(
            "job %s attempt %s: retry queued, not recorded in SQL (%s)", message.id, message.attempt, failure
        )
        return True


def _record_retry(
    message: JobMessage, queues: TenantQueues, error: str, now: Any, run_at: Any, delay: float
) -> bool:
    """schedule_retry's SQL part: the job is ``retrying`` and the failed attempt closed."""
    with unscoped_session() as session:
        moved = cast(
            CursorResult[Any],
            session.execute(
                update(Job).where(*_on_attempt(message)).values(status="retrying", error=error, run_at=run_at)
            ),
        ).rowcount
        _close_attempt(session, message, "failed", error, now)
        if not moved:
            cancelled = session.scalar(select(Job.status).where(Job.id == message.id)) == "cancelled"
    if not moved:
        if cancelled:
            queues.remove(message.tenant_id, message.id)
            return False
        return True  # the retry already started and moved the job on
    _published(message, "retrying")
    log.info("job %s attempt %s failed, retry in %.2fs", message.id, message.attempt, delay)
    return True


def cancelled_before_start(message: JobMessage) -> None:
    """The wrapper found a cancellation marker: the function never ran. If prerun got in before the
    cancel request's own update, undo its 'running'."""
    now = utcnow()
    with unscoped_session() as session:
        session.execute(update(Job).where(*_on_attempt(message)).values(status="cancelled", finished_at=now))
        _close_attempt(session, message, "cancelled", "cancelled before it started", now)
    _published(message, "cancelled")


def attempt_terminated(message: JobMessage, reason: str) -> None:
    """The worker killed the attempt on a revoke(terminate=True): the cancel API asked for it."""
    now = utcnow()
    with unscoped_session() as session:
        session.execute(update(Job).where(*_on_attempt(message)).values(status="cancelled", finished_at=now))
        _close_attempt(session, message, "cancelled", reason, now)
    _published(message, "cancelled")


# -- lost attempts (kept apart from the hot path: only a redelivery after a crash runs this) -----------

LOST_ERROR = "lost: the worker process running this attempt died (killed or out of memory); the job ran again"


def attempt_lost(message: JobMessage, task_id: str, client: redis.Redis | None = None) -> None:
    """The broker redelivered an attempt whose process died (the start guard's ``redelivered``):
    record that attempt as lost and queue the job's next attempt at the head of its tenant's queue,
    instead of running the same attempt again. Metering bills the dead run as ``lost`` and the next
    one on its own, and the attempt log now shows both. The retry budget is not used by the loss."""
    now = utcnow()
    with unscoped_session() as session:
        session.execute(
            update(JobAttempt)
            .where(
                JobAttempt.job_id == message.id,
                JobAttempt.attempt == message.attempt,
                JobAttempt.status == "running",
            )
            .values(status="lost", error=LOST_ERROR, finished_at=now)
        )
    following = message.next_attempt()
    job = {k: v for k, v in following["job"].items() if k != "dispatch"}
    job["first_attempt"] = message.first_attempt + 1  # a loss is not a retry
    following["job"] = job
    TenantQueues(client or get_redis()).requeue_front(
        message.tenant_id, message.id, message.priority, following
    )
    log.warning(
        "job %s attempt %s (task %s) was lost with its worker process; queued as attempt %s",
        message.id,
        message.attempt,
        task_id,
        message.attempt + 1,
    )
