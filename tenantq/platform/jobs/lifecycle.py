"""Worker-side job state transitions: one function per thing that can happen to an attempt.

Called from the task signals (start, success, failure, hard time limit, termination) and from the
task wrapper (retry scheduled, cancelled before start). Every update is conditional on the job still
being on *this* attempt and not finished, so duplicate or late signals (``task_failure`` can fire
twice for a hard time limit; a redelivered message replays prerun) never move a job backwards.

Redis key owned here:
- ``tq:cancel:{job_id}``  attempt number N: attempts <= N of this job were cancelled and must never
                          start (nor be retried). Set by the cancel API before anything else, checked
                          by the task wrapper before the task function runs. Expires after
                          ``cancel_marker_ttl_seconds``.
"""

from __future__ import annotations

import logging
import traceback
from datetime import timedelta
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import Integer, String, bindparam, func, literal, null, select, text, update
from sqlalchemy.orm import Session

from tenantq.core.db import UTCDateTime, get_engine, new_id, unscoped_session, utcnow
from tenantq.core.keys import cancel_key
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.messages import message_for_attempt
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


def describe_error(exc: BaseException, meta: dict[str, Any] | None = None) -> str:
    """First line says what happened in plain words; the traceback follows for the developer."""
    meta = meta or {}
    if isinstance(exc, SoftTimeLimitExceeded):
        summary = f"SoftTimeLimitExceeded: soft time limit of {_secs(meta.get('soft_time_limit'))}s exceeded"
    elif isinstance(exc, TimeLimitExceeded):
        limit = meta.get("time_limit") or (exc.args[0] if exc.args else "?")
        summary = f"TimeLimitExceeded: hard time limit of {_secs(limit)}s exceeded; the attempt was killed"
    else:
        summary = f"{type(exc).__name__}: {exc}"
    if exc.__traceback__ is None:
        return summary[:MAX_ERROR_CHARS]
    summary = summary[:2000]
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # Keep the summary and the innermost frames (where the error was raised) if it is long.
    room = MAX_ERROR_CHARS - len(summary) - 2
    return summary + "\n\n" + (trace if len(trace) <= room else "..." + trace[-(room - 3) :])


def _secs(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "?"
    return str(int(number)) if number.is_integer() else f"{number:g}"


def _on_attempt(meta: dict[str, Any]) -> list[Any]:
    """WHERE clause: the job is still on this attempt (not a newer one) and not finished."""
    return [
        Job.id == meta["id"],
        Job.attempts == int(meta.get("attempt") or 1),
        Job.status.not_in(TERMINAL_STATUSES),
    ]


def _close_attempt(session: Session, meta: dict[str, Any], status: str, error: str | None, now) -> None:
    session.execute(
        update(JobAttempt)
        .where(
            JobAttempt.job_id == meta["id"],
            JobAttempt.attempt == int(meta.get("attempt") or 1),
            JobAttempt.status == "running",
        )
        .values(status=status, error=error, finished_at=now)
    )


def lock_workflow(session: Session, workflow_id: str) -> None:
    """Taken first, before any read, so that group members finishing at the same time on different
    workers are serialised (a row lock on PostgreSQL, the write lock on SQLite) and exactly one of
    them sees the whole group done. Everyone touching a step job and its workflow in one transaction
    locks the workflow first."""
    from tenantq.platform.workflows.models import Workflow

    session.execute(update(Workflow).where(Workflow.id == workflow_id).values(updated_at=utcnow()))


def _lock_workflow(session: Session, meta: dict[str, Any]) -> None:
    if meta.get("workflow_id"):
        lock_workflow(session, meta["workflow_id"])


# (job id, attempt) -> whether the tenant had an enabled webhook endpoint when this process committed
# the attempt's final status. The webhook receiver (``tenantq.platform.webhooks.receivers``, connected
# after the status receivers, same process) skips its own SQL round trips when there is none: most
# tenants have no webhooks, and that lookup cost a pooled connection check-out and two queries per job.
_WEBHOOKS_SEEN: dict[tuple[str, int], bool] = {}
_WEBHOOKS_SEEN_MAX = 1000  # entries the receiver never consumed (main process: hard time limits)


def _has_webhooks(tenant_id: Any) -> Any:
    from sqlalchemy import exists

    from tenantq.platform.webhooks.models import WebhookEndpoint

    return exists().where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))


def _note_webhooks(meta: dict[str, Any], present: bool) -> None:
    if len(_WEBHOOKS_SEEN) >= _WEBHOOKS_SEEN_MAX:
        _WEBHOOKS_SEEN.clear()
    _WEBHOOKS_SEEN[(meta["id"], int(meta.get("attempt") or 1))] = present


def webhooks_possible(meta: dict[str, Any]) -> bool:
    """For the webhook receiver: False only if the transaction that finished this attempt, in this
    process, saw no enabled endpoint for the tenant (so recording the event would find none either).
    True when unknown (another process finished it, or the status update failed)."""
    return _WEBHOOKS_SEEN.pop((meta.get("id"), int(meta.get("attempt") or 1)), True)


# Task ids whose start prerun refused, in this pool process: the wrapper, which runs right after
# prerun in the same process, must not run them.
_REFUSED: set[str] = set()


def attempt_started(meta: dict[str, Any], task_id: str, worker: str | None) -> bool:
    """prerun: the job is running this attempt; open (or, on redelivery, reopen) its attempt row.
    False if the job finished, was cancelled or moved on to a newer attempt: this one must not run."""
    attempt = int(meta.get("attempt") or 1)
    now = utcnow()
    move = (
        update(Job)
        .where(Job.id == meta["id"], Job.status.not_in(TERMINAL_STATUSES), Job.attempts <= attempt)
        .values(
            status="running",
            attempts=attempt,
            worker=worker,
            task_id=task_id,
            error=None,
            started_at=func.coalesce(Job.started_at, now),
        )
    )
    engine = get_engine()
    if engine.dialect.name == "postgresql":
        # One statement, so one round trip in autocommit (a transaction would add BEGIN and COMMIT):
        # the job update and the attempt row's upsert commit together or not at all, and the row is
        # only written when the job did move to this attempt.
        moved_cte = move.returning(Job.id).cte("moved")
        stmt = _attempt_upsert(
            "postgresql",
            select(
                literal(new_id(), String),
                moved_cte.c.id,
                literal(attempt, Integer),
                literal("running", String),
                literal(task_id, String),
                literal(worker, String),
                literal(now, UTCDateTime()),
                null(),
                null(),
            ),
            worker,
            now,
        ).returning(JobAttempt.id)
        with engine.connect() as conn:
            moved = conn.execution_options(isolation_level="AUTOCOMMIT").execute(stmt).first() is not None
        if not moved:
            _REFUSED.add(task_id)
        return moved
    with unscoped_session() as session:
        moved = session.execute(move).rowcount
        if not moved:
            _REFUSED.add(task_id)
            return False
        _open_attempt(session, meta["id"], attempt, task_id, worker, now)
    return True


def _upsert_insert(dialect: str) -> Any:
    """The dialect's INSERT with ON CONFLICT support (PostgreSQL and SQLite have it)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


_ATTEMPT_COLUMNS = [
    "id",
    "job_id",
    "attempt",
    "status",
    "task_id",
    "worker",
    "started_at",
    "finished_at",
    "error",
]


def _attempt_upsert(dialect: str, rows: Any, worker: str | None, now) -> Any:
    """INSERT the attempt row from ``rows`` (a SELECT of _ATTEMPT_COLUMNS); if the same attempt has a
    row already (redelivered after a worker was lost) reset it to running instead."""
    reopened = {"status": "running", "worker": worker, "started_at": now, "finished_at": None, "error": None}
    return (
        _upsert_insert(dialect)(JobAttempt)
        .from_select(_ATTEMPT_COLUMNS, rows)
        .on_conflict_do_update(index_elements=["job_id", "attempt"], set_=reopened)
    )


def _open_attempt(session: Session, job_id: str, attempt: int, task_id: str, worker: str | None, now) -> None:
    """Insert the attempt row, or reset it when the same attempt starts again (redelivered after a
    worker was lost). One INSERT .. ON CONFLICT statement where the dialect has it (PostgreSQL,
    SQLite): this runs once per attempt, and a read-then-write would cost a round trip more."""
    reopened = {"status": "running", "worker": worker, "started_at": now, "finished_at": None, "error": None}
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        stmt = _upsert_insert(dialect)(JobAttempt).values(
            id=new_id(), job_id=job_id, attempt=attempt, task_id=task_id, **reopened
        )
        session.execute(stmt.on_conflict_do_update(index_elements=["job_id", "attempt"], set_=reopened))
        return
    row = session.scalars(
        select(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
    ).first()
    if row is None:
        session.add(JobAttempt(id=new_id(), job_id=job_id, attempt=attempt, task_id=task_id, **reopened))
    else:
        for key, value in reopened.items():
            setattr(row, key, value)


def may_start(meta: dict[str, Any], task_id: str) -> bool:
    """The wrapper's gate, checked before the task function runs: prerun accepted this attempt and no
    cancellation covers it (a cancel may land after prerun, or the cancelled attempt may already have
    been in Celery's queue)."""
    if task_id in _REFUSED:
        _REFUSED.discard(task_id)
        log.info(
            "job %s attempt %s not run: the job is finished, cancelled or on a newer attempt",
            meta["id"],
            meta.get("attempt"),
        )
        return False
    if cancel_covers(meta["id"], int(meta.get("attempt") or 1)):
        cancelled_before_start(meta)
        return False
    return True


def attempt_succeeded(meta: dict[str, Any], result: Any) -> None:
    now = utcnow()
    new_jobs: list[Job] = []
    engine = get_engine()
    if engine.dialect.name == "postgresql" and not meta.get("workflow_id"):
        _succeeded_in_one_statement(engine, meta, result, now)
        return
    with unscoped_session() as session:
        _lock_workflow(session, meta)
        # Read at finish time, so the expiry follows the tenant's plan as it is now. The same query
        # tells the webhook receiver whether the tenant has any endpoint (see _note_webhooks).
        row = session.execute(
            select(Plan.result_ttl_s, _has_webhooks(Tenant.id))
            .join(Tenant, Tenant.plan_name == Plan.name)
            .where(Tenant.id == meta["tenant_id"])
        ).first()
        ttl = row[0] if row is not None else None
        if row is not None:
            _note_webhooks(meta, bool(row[1]))
        moved = session.execute(
            update(Job)
            .where(*_on_attempt(meta))
            .values(
                status="succeeded",
                result=result,
                error=None,
                finished_at=now,
                result_expires_at=now + timedelta(seconds=int(ttl)) if ttl else None,
            )
        ).rowcount
        _close_attempt(session, meta, "succeeded", None, now)
        if moved and meta.get("workflow_id"):
            from tenantq.platform.workflows import service as workflows

            new_jobs = workflows.step_job_succeeded(session, meta["workflow_id"], int(meta["step_index"]))
    if new_jobs:
        from tenantq.platform.workflows import service as workflows

        workflows.enqueue_step_jobs(new_jobs)


# attempt_succeeded below as one statement (PostgreSQL, jobs outside workflows): the plan's result TTL
# and the webhook hint are read, the job finished and the attempt row closed, all at once and in one
# round trip (autocommit; a transaction would add BEGIN and COMMIT). Data-modifying CTEs always run to
# completion, so the attempt row is closed even when the job update matches nothing, as below.
_SUCCEEDED_SQL = text("""
WITH plan_row AS (
    SELECT plan.result_ttl_s AS ttl,
           EXISTS (SELECT 1 FROM webhook_endpoint w WHERE w.tenant_id = tenant.id AND w.enabled) AS hooks
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
SELECT (SELECT count(*) FROM plan_row) AS found, (SELECT hooks FROM plan_row) AS hooks
""").bindparams(
    bindparam("result", type_=Job.__table__.c.result.type),
    bindparam("now", type_=UTCDateTime()),
    bindparam("terminal", expanding=True),
)


def _succeeded_in_one_statement(engine: Any, meta: dict[str, Any], result: Any, now) -> None:
    params = {
        "tenant_id": meta["tenant_id"],
        "result": result,
        "now": now,
        "job_id": meta["id"],
        "attempt": int(meta.get("attempt") or 1),
        "terminal": list(TERMINAL_STATUSES),
    }
    with engine.connect() as conn:
        found, hooks = (
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(_SUCCEEDED_SQL, params).one()
        )
    if found:
        _note_webhooks(meta, bool(hooks))


def attempt_failed(meta: dict[str, Any], error: str) -> None:
    """The attempt failed and will not be retried: the job is failed (the dead-letter view)."""
    now = utcnow()
    with unscoped_session() as session:
        _lock_workflow(session, meta)
        moved = session.execute(
            update(Job).where(*_on_attempt(meta)).values(status="failed", error=error, finished_at=now)
        ).rowcount
        if meta.get("tenant_id"):
            _note_webhooks(meta, bool(session.scalar(select(_has_webhooks(meta["tenant_id"])))))
        _close_attempt(session, meta, "failed", error, now)
        if moved and meta.get("workflow_id"):
            from tenantq.platform.workflows import service as workflows

            workflows.step_job_failed(
                session, meta["workflow_id"], int(meta["step_index"]), meta["id"], error
            )


def schedule_retry(
    task: str, meta: dict[str, Any], args: dict[str, Any], exc: BaseException, delay: float
) -> bool:
    """Put the next attempt on the tenant's delayed queue, then record the failed attempt and set the
    job to ``retrying``. False if the job was cancelled meanwhile (the retry is taken back).

    Redis first: a worker dying between the two steps leaves a retry that will run (and whose prerun
    moves the job on), never a job stuck in 'retrying' with nothing queued. A retry that starts
    before the SQL update below simply makes that update match nothing."""
    from tenantq.platform.dispatch.repository import TenantQueues

    attempt = int(meta.get("attempt") or 1)
    error = describe_error(exc, meta)
    now = utcnow()
    run_at = now + timedelta(seconds=delay)
    queues = TenantQueues(get_redis())
    message = message_for_attempt(task, args, meta, attempt + 1)
    queues.schedule(meta["tenant_id"], meta["id"], int(meta.get("priority", 5)), message, run_at.timestamp())
    with unscoped_session() as session:
        moved = session.execute(
            update(Job).where(*_on_attempt(meta)).values(status="retrying", error=error, run_at=run_at)
        ).rowcount
        _close_attempt(session, meta, "failed", error, now)
        if not moved:
            cancelled = session.scalar(select(Job.status).where(Job.id == meta["id"])) == "cancelled"
    if not moved:
        if cancelled:
            queues.remove(meta["tenant_id"], meta["id"])
            return False
        return True  # the retry already started and moved the job on
    log.info("job %s attempt %s failed, retry in %.2fs", meta["id"], attempt, delay)
    return True


def cancelled_before_start(meta: dict[str, Any]) -> None:
    """The wrapper found a cancellation marker: the function never ran. If prerun got in before the
    cancel request's own update, undo its 'running'."""
    now = utcnow()
    with unscoped_session() as session:
        session.execute(update(Job).where(*_on_attempt(meta)).values(status="cancelled", finished_at=now))
        _close_attempt(session, meta, "cancelled", "cancelled before it started", now)


def attempt_terminated(meta: dict[str, Any], reason: str) -> None:
    """The worker killed the attempt on a revoke(terminate=True): the cancel API asked for it."""
    now = utcnow()
    with unscoped_session() as session:
        session.execute(update(Job).where(*_on_attempt(meta)).values(status="cancelled", finished_at=now))
        _close_attempt(session, meta, "cancelled", reason, now)
