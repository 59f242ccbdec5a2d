"""Job submission (one or a batch), cancellation, re-runs and result expiry. Routes call these; they
take the session and tenant explicitly. Worker-side transitions are in ``lifecycle``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import redis
from pydantic import ValidationError
from sqlalchemy import CursorResult, func, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantq.core import metrics
from tenantq.core.celery import app as celery_app
from tenantq.core.db import new_id, utcnow
from tenantq.core.errors import Conflict, InvalidInput, ServiceUnavailable, TenantqError
from tenantq.core.keys import idempotency_claim_key
from tenantq.core.periods import period_of
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch import direct
from tenantq.platform.dispatch.limits import TenantLimits, limits_for
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs import events, lifecycle, outbox
from tenantq.platform.jobs.admission import admit, release_after_commit, release_quota
from tenantq.platform.jobs.messages import job_meta, message_for_attempt
from tenantq.platform.jobs.models import RERUNNABLE_STATUSES, TERMINAL_STATUSES, WAITING_STATUSES, Job
from tenantq.platform.jobs.registry import TaskType, get_task_type
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import BatchItem, BatchItemError, JobCreate, JobOut
from tenantq.tenants.accounts.models import Tenant
from tenantq.tenants.accounts.service import EffectiveLimits, effective_limits

log = logging.getLogger("tenantq.jobs")


@dataclass(frozen=True)
class WorkflowSteps:
    """What cancelling or re-running a step job tells its workflow. Workflows sit above jobs, so each
    entry point that cancels or re-runs jobs installs theirs at assembly (``install_workflow_steps``)."""

    # (session, workflow id): lock the workflow row before its step job changes.
    lock: Callable[[Session, str], None]
    job_cancelled: Callable[[Session, Job], None]
    job_rerun: Callable[[Session, Job], None]
    # (session, workflow id, step index, job id, error): a re-run that could not be queued.
    job_failed: Callable[[Session, str, int, str, str], None]
    # Jobs of the steps not created yet that a re-run of this job would resume (counted again).
    jobs_resumed_by_rerun: Callable[[Session, Job], int] = lambda _session, _job: 0


_workflow_steps: WorkflowSteps | None = None


def install_workflow_steps(steps: WorkflowSteps) -> None:
    global _workflow_steps
    _workflow_steps = steps


def workflow_steps() -> WorkflowSteps:
    """The installed workflow callbacks; asked for before a step job changes, so a missing assembly
    fails before anything is written."""
    if _workflow_steps is None:
        raise RuntimeError("no workflow steps installed: the entry point must call install_workflow_steps()")
    return _workflow_steps


@dataclass
class SubmitResult:
    job: Job
    created: bool


def job_message(
    job: Job, *, attempt: int | None = None, first_attempt: int | None = None, first_run: int = 1
) -> dict[str, Any]:
    """What the dispatcher publishes to Celery for the job's next attempt (JSON only)."""
    attempt = attempt if attempt is not None else job.attempts + 1
    meta = job_meta(
        job,
        attempt=attempt,
        first_attempt=first_attempt if first_attempt is not None else attempt,
        first_run=first_run,
    )
    return message_for_attempt(job.task, job.args, meta, attempt)


def _same_request(job: Job, data: JobCreate) -> bool:
    return job.task == data.task and job.args == data.args and job.priority == data.priority


def _idempotency_conflict(existing: Job) -> Conflict:
    return Conflict(
        "This idempotency key was used with different parameters.",
        code="idempotency_conflict",
        details={"job_id": existing.id},
    )


def validate_submission(
    session: Session, tenant: Tenant, data: JobCreate
) -> tuple[dict[str, Any], JobPolicy]:
    """Check the request against the registry and the plan; returns (normalised args, policy)."""
    spec = get_spec(data.task)
    args = validate_args(spec, data.args)
    return args, validate_policy(session, tenant, spec, data)


def get_spec(task: str) -> TaskType:
    spec = get_task_type(task)
    if spec is None:
        raise InvalidInput(f"Unknown task type {task!r}.", code="unknown_task", details={"task": task})
    return spec


def validate_args(spec: TaskType, args: dict[str, Any], *, ignore: str | None = None) -> dict[str, Any]:
    """Validate arguments against the task type's model (422 ``invalid_args``). Errors about the key
    ``ignore`` are not counted (a workflow step's ``input`` does not exist yet)."""
    try:
        return spec.validate(args).model_dump(mode="json", exclude_unset=False)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if ignore is None or not (e["loc"] and e["loc"][0] == ignore)]
        if not errors:
            return dict(args)
        details = [{"loc": ["args", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
        raise InvalidInput(
            f"Arguments do not match the schema of {spec.name!r}.", code="invalid_args", details=details
        ) from None


@dataclass(frozen=True)
class JobPolicy:
    """What the plan (with the tenant's overrides) makes of a request's retry and time-limit fields."""

    max_retries: int
    soft_time_limit: float | None
    time_limit: float | None


def validate_policy(session: Session, tenant: Tenant, spec: TaskType, data: JobCreate) -> JobPolicy:
    """Priority, retries and time limits against the plan (422 when outside it)."""
    plan = effective_limits(session, tenant)
    if not (plan.priority_min <= data.priority <= plan.priority_max):
        raise InvalidInput(
            f"Priority {data.priority} is outside the plan's range {plan.priority_min}-{plan.priority_max}.",
            code="priority_not_allowed",
            details={"min": plan.priority_min, "max": plan.priority_max},
        )
    # The task type's default is the operator's choice, not the tenant's: clamp it, never refuse.
    max_retries = min(spec.max_retries, plan.max_retries) if data.max_retries is None else data.max_retries
    if max_retries > plan.max_retries:
        raise InvalidInput(
            f"max_retries {max_retries} exceeds the plan's {plan.max_retries}.",
            code="max_retries_not_allowed",
            details={"max": plan.max_retries},
        )
    soft, hard = resolve_time_limits(spec, plan, data.soft_time_limit, data.time_limit)
    return JobPolicy(max_retries=max_retries, soft_time_limit=soft, time_limit=hard)


def resolve_time_limits(
    spec: TaskType, plan: EffectiveLimits | None, soft: float | None, hard: float | None
) -> tuple[float | None, float | None]:
    """Effective (soft, hard) limits in seconds: the job's, else the task type's, else the plan's
    maximum as the hard limit. Anything above the plan's max_time_limit_s, or below
    ``min_time_limit_seconds`` (the floor under which a limit would stop the attempt before the task
    function got going), answers 422."""
    bound = plan.max_time_limit_s if plan is not None else None
    floor = get_settings().min_time_limit_seconds
    for name, value in (("soft_time_limit", soft), ("time_limit", hard)):
        if value is not None and bound is not None and value > bound:
            raise InvalidInput(
                f"{name} {value:g}s exceeds the plan's maximum of {bound}s.",
                code="time_limit_not_allowed",
                details={"field": name, "max": bound},
            )
        if value is not None and value < floor:
            raise InvalidInput(
                f"{name} {value:g}s is below the smallest allowed time limit of {floor:g}s.",
                code="time_limit_too_small",
                details={"field": name, "min": floor},
            )
    # The task type's defaults are the operator's choice: raised to the floor, never refused.
    hard = hard if hard is not None else _at_least(spec.time_limit, floor)
    soft = soft if soft is not None else _at_least(spec.soft_time_limit, floor)
    if bound is not None:
        hard = min(hard, bound) if hard is not None else float(bound)
        soft = min(soft, bound) if soft is not None else None
    if soft is not None and hard is not None and soft >= hard:
        raise InvalidInput(
            f"soft_time_limit ({soft:g}s) must be below time_limit ({hard:g}s).",
            code="invalid_time_limits",
            details={"soft_time_limit": soft, "time_limit": hard},
        )
    return soft, hard


def _at_least(value: float | None, floor: float) -> float | None:
    return max(value, floor) if value is not None else None


def new_job(session: Session, tenant: Tenant, data: JobCreate, *, now: datetime | None = None) -> Job:
    """Validate ``data`` and build (not add) the job row it describes."""
    _args, policy = validate_submission(session, tenant, data)
    now = now or utcnow()
    return Job(
        id=new_id(),  # known before the commit: the outbox notes it
        tenant_id=tenant.id,
        task=data.task,
        args=data.args,
        priority=data.priority,
        status="scheduled" if data.countdown else "queued",
        idempotency_key=data.idempotency_key,
        max_retries=policy.max_retries,
        retry_backoff=data.retry_backoff,
        retry_backoff_max=data.retry_backoff_max,
        soft_time_limit=policy.soft_time_limit,
        time_limit=policy.time_limit,
        created_at=now,
        run_at=now + timedelta(seconds=data.countdown) if data.countdown else None,
    )


def _key_is_live(job: Job, now: datetime) -> bool:
    return job.created_at > now - timedelta(seconds=get_settings().idempotency_retention_seconds)


def submit_job(
    session: Session, tenant: Tenant, data: JobCreate, *, client: redis.Redis | None = None
) -> SubmitResult:
    if not data.idempotency_key:
        return _submit(session, tenant, data, client=client)
    # One request at a time per idempotency key: the one holding the claim submits, concurrent
    # replays wait for its job and answer with it. A replay thus never reaches the quota: it can
    # neither use it up nor be refused by it.
    r = client or get_redis()
    claim = idempotency_claim_key(tenant.id, data.idempotency_key)
    token = new_id()
    deadline = time.monotonic() + IDEMPOTENCY_CLAIM_S
    waited = False
    try:
        while not r.set(claim, token, nx=True, px=int(IDEMPOTENCY_CLAIM_S * 1000)):
            if time.monotonic() > deadline:
                raise Conflict(
                    "Another request with this idempotency key is still in progress; retry.",
                    code="idempotency_in_progress",
                    headers={"Retry-After": "1"},
                )
            if not waited:
                # Wait without holding a database connection (and, on SQLite, a read snapshot that
                # would hide the other request's job): nothing of this request is written yet.
                session.commit()
                waited = True
            time.sleep(0.01)
    except redis.RedisError:
        raise queue_unavailable("the job was not accepted") from None
    try:
        # Holding the claim: a job committed by a request that held it before is answered as a replay.
        return _submit(session, tenant, data, client=client)
    finally:
        with contextlib.suppress(redis.RedisError):
            r.eval(_RELEASE_CLAIM, 1, claim, token)


# Delete the claim only if it is still ours (it may have expired and been taken by another request).
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# How long a submit may hold its idempotency key's claim; a replay waits at most this long.
IDEMPOTENCY_CLAIM_S = 30.0


def _submit(
    session: Session, tenant: Tenant, data: JobCreate, *, client: redis.Redis | None = None
) -> SubmitResult:
    repo = JobRepository(session, tenant.id)
    now = utcnow()
    existing = repo.by_idempotency_key(data.idempotency_key) if data.idempotency_key else None
    if existing is not None and _key_is_live(existing, now):
        if not _same_request(existing, data):
            raise _idempotency_conflict(existing)
        return SubmitResult(existing, created=False)
    job = new_job(session, tenant, data, now=now)
    admit(session, tenant, 1)
    limits = limits_for(session, tenant)  # read before the commit: the direct release needs them
    if existing is not None:
        # The key outlived its retention window: release it (the old job keeps everything but the
        # key) in the same transaction as the insert, so concurrent reusers race on the unique
        # constraint and exactly one of them gets the key.
        session.execute(
            update(Job)
            .where(Job.id == existing.id, Job.idempotency_key == data.idempotency_key)
            .values(idempotency_key=None)
        )
    repo.add(job)
    queue_client = client or get_redis()
    note_before_commit(
        session, [job], client=queue_client, quota=(tenant.id, 1, now), refused="the job was not accepted"
    )
    try:
        # Committed here rather than by the request: the job is queued only after the commit that
        # created its row, and a lost idempotency race must be seen now to answer with the winner.
        session.commit()
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race (e.g. a batch): answer with
        # its job, and give back the unit this request counted.
        session.rollback()
        release_quota(tenant.id, 1, now)
        if data.idempotency_key:
            existing = repo.by_idempotency_key(data.idempotency_key)
            if existing is not None:
                if not _same_request(existing, data):
                    raise _idempotency_conflict(existing) from None
                return SubmitResult(existing, created=False)
        raise
    try:
        enqueue(job, client=queue_client, limits=limits)
    except redis.RedisError as exc:
        # Compensate: the job was never runnable, so it must not exist either.
        log.error("enqueue failed for job %s: %s", job.id, exc)
        session.delete(job)
        session.commit()  # the error below makes the request roll back: commit the removal first
        release_quota(tenant.id, 1, now)
        raise queue_unavailable("the job was not accepted") from None
    return SubmitResult(job, created=True)


def queue_unavailable(refused: str) -> ServiceUnavailable:
    """The 503 a request gets when Redis cannot take its job (or its outbox note): ``refused`` says
    what was not done ("the job was not accepted")."""
    return ServiceUnavailable(
        f"The queue is unavailable; {refused}. Retry later.",
        code="queue_unavailable",
        headers={"Retry-After": "1"},
    )


def note_before_commit(
    session: Session,
    jobs: list[Job],
    *,
    client: redis.Redis,
    quota: tuple[str, int, datetime],
    refused: str,
) -> None:
    """The outbox's first half on a request's path (``outbox``): note ``jobs`` before the commit that
    makes them runnable; the enqueue after the commit takes the note away in its own call. If this
    process dies in between, the dispatcher's sweep queues them within seconds. A note that cannot be
    written refuses the request before anything is committed: the transaction is rolled back, the
    ``quota`` counted at admission (tenant id, jobs, counted at) given back, and the request answered
    503 ``queue_unavailable``."""
    try:
        outbox.note(client, jobs)
    except redis.RedisError as exc:
        log.error("outbox note failed for job(s) %s: %s", ", ".join(job.id for job in jobs), exc)
        session.rollback()
        release_quota(*quota)
        raise queue_unavailable(refused) from None


def enqueue(
    job: Job,
    *,
    client: redis.Redis | None = None,
    attempt: int | None = None,
    first_attempt: int | None = None,
    first_run: int = 1,
    limits: TenantLimits | None = None,
) -> None:
    """Put the job's next attempt on its tenant's queue (or the delayed set if it has a run_at), and
    take its outbox note away in the same Redis call. Given its tenant's ``limits``, an immediate job
    on an idle system is released and published at once (``dispatch.direct``)."""
    queues = TenantQueues(client or get_redis())
    message = job_message(job, attempt=attempt, first_attempt=first_attempt, first_run=first_run)
    if job.status == "scheduled" and job.run_at is not None:
        queues.schedule(job.tenant_id, job.id, job.priority, message, job.run_at.timestamp())
    elif limits is not None and (client is None or client is get_redis()) and direct.available():
        # Not with another Redis than the process's own: the publish goes to the process's broker.
        direct.enqueue_or_release(queues, limits, job.id, job.priority, message)
    else:
        queues.enqueue(job.tenant_id, job.id, job.priority, message)
    metrics.job_submitted(job.tenant_id, job.task, client=queues.r)


def _error_item(index: int, exc: TenantqError) -> BatchItem:
    return BatchItem(
        index=index,
        status_code=exc.status_code,
        error=BatchItemError(code=exc.code, message=exc.message, details=exc.details),
    )


def submit_batch(
    session: Session, tenant: Tenant, raw_jobs: list[dict[str, Any]], *, client: redis.Redis | None = None
) -> list[BatchItem]:
    """Validate each job on its own, insert the accepted ones in one transaction and enqueue them in one
    Redis call. Admission (suspension, queue bound, quotas) applies to the batch as a whole: a batch that
    would overflow the queue or the jobs quota is refused entirely (all or nothing) rather than cut at
    an arbitrary index."""
    repo = JobRepository(session, tenant.id)
    answers: dict[int, BatchItem] = {}
    accepted: list[tuple[int, JobCreate, Job]] = []
    now = utcnow()
    seen_keys: dict[str, int] = {}
    for index, raw in enumerate(raw_jobs):
        try:
            data = JobCreate.model_validate(raw)
        except ValidationError as exc:
            details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            answers[index] = BatchItem(
                index=index,
                status_code=422,
                error=BatchItemError(
                    code="validation_error",
                    message="The job does not match the JobCreate schema.",
                    details=details,
                ),
            )
            continue
        try:
            if data.idempotency_key:
                if data.idempotency_key in seen_keys:
                    raise Conflict(
                        "This idempotency key appears twice in the batch.",
                        code="idempotency_conflict",
                        details={"first_index": seen_keys[data.idempotency_key]},
                    )
                seen_keys[data.idempotency_key] = index
                existing = repo.by_idempotency_key(data.idempotency_key)
                if existing is not None:
                    if not _same_request(existing, data):
                        raise Conflict(
                            "This idempotency key was used with different parameters.",
                            code="idempotency_conflict",
                            details={"job_id": existing.id},
                        )
                    answers[index] = BatchItem(
                        index=index, status_code=200, job=JobOut.model_validate(existing)
                    )
                    continue
            # The same validation and row as POST /v1/jobs (retry policy, time limits, countdown).
            job = new_job(session, tenant, data, now=now)
        except TenantqError as exc:
            answers[index] = _error_item(index, exc)
            continue
        accepted.append((index, data, job))
    if accepted:
        admit(session, tenant, len(accepted))
        rows: list[tuple[int, Job]] = []
        for index, _data, job in accepted:
            repo.add(job)
            rows.append((index, job))
        queue_client = client or get_redis()
        note_before_commit(
            session,
            [job for _, job in rows],
            client=queue_client,
            quota=(tenant.id, len(rows), now),
            refused="no job of the batch was accepted",
        )
        try:
            # Committed here rather than by the request: the jobs are queued only after the commit
            # that created their rows, and a lost idempotency race must be seen now.
            session.commit()
        except IntegrityError:
            # A concurrent request took one of the idempotency keys: give back what the batch counted
            # and fall back to one by one, which answers each item exactly as POST /v1/jobs would.
            session.rollback()
            release_quota(tenant.id, len(rows), now)
            for index, data, _job in accepted:
                try:
                    result = submit_job(session, tenant, data, client=client)
                    answers[index] = BatchItem(
                        index=index,
                        status_code=202 if result.created else 200,
                        job=JobOut.model_validate(result.job),
                    )
                except TenantqError as exc:
                    answers[index] = _error_item(index, exc)
            return [answers[i] for i in sorted(answers)]
        try:
            enqueue_jobs([job for _, job in rows], client=queue_client)
        except redis.RedisError as exc:
            log.error("batch enqueue failed for tenant %s: %s", tenant.id, exc)
            for _, job in rows:
                session.delete(job)
            session.commit()  # the error below makes the request roll back: commit the removal first
            release_quota(tenant.id, len(rows), now)
            raise queue_unavailable("no job of the batch was accepted") from None
        for index, job in rows:
            answers[index] = BatchItem(index=index, status_code=202, job=JobOut.model_validate(job))
    return [answers[i] for i in sorted(answers)]


def enqueue_jobs(jobs: list[Job], *, client: redis.Redis | None = None) -> None:
    """Make committed jobs (first attempts) runnable: immediate ones in one Lua call per tenant, delayed
    ones in one transaction; either call takes the jobs' outbox notes away."""
    queues = TenantQueues(client or get_redis())
    by_tenant: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    delayed: list[tuple[str, str, int, dict[str, Any], float]] = []
    for job in jobs:
        if job.status == "scheduled" and job.run_at is not None:
            delayed.append((job.tenant_id, job.id, job.priority, job_message(job), job.run_at.timestamp()))
        else:
            by_tenant.setdefault(job.tenant_id, []).append((job.id, job.priority, job_message(job)))
    for tenant_id, items in by_tenant.items():
        queues.enqueue_many(tenant_id, items)
    queues.schedule_many(delayed)
    counts: dict[tuple[str, str], int] = {}
    for job in jobs:
        counts[(job.tenant_id, job.task)] = counts.get((job.tenant_id, job.task), 0) + 1
    for (tenant_id, task), count in counts.items():
        metrics.job_submitted(tenant_id, task, client=queues.r, count=count)


CancelOutcome = Literal["dequeued", "terminated", "requested", "already_finished"]


def cancel_job(
    session: Session, tenant_id: str, job_id: str, *, client: redis.Redis | None = None
) -> tuple[Job, CancelOutcome]:
    """Cancel a job; the outcome says what happened.

    - waiting (queued, scheduled, retrying): taken off the tenant's queue and marked cancelled
      ("dequeued"). The cancel marker is written first, so even an attempt the dispatcher already
      handed to Celery never starts.
    - running: killed with SIGTERM if the task type is cancellable ("terminated"), else marked
      ``cancel_requested`` ("requested"): it finishes, but is never retried.
    - finished: nothing to do ("already_finished"); not an error, so cancelling is idempotent.
    """
    client = client or get_redis()
    job = JobRepository(session, tenant_id).get(job_id)
    steps = workflow_steps() if job.workflow_id else None
    for _ in range(3):  # the job may start (or finish) under us: re-read and decide again
        if job.status in TERMINAL_STATUSES:
            return job, "already_finished"
        now = utcnow()
        if job.status in WAITING_STATUSES:
            never_ran = job.attempts == 0 and job.started_at is None
            lifecycle.mark_cancelled(job.id, job.attempts + 1, client)
            TenantQueues(client).remove(job.tenant_id, job.id)
            # An UPDATE's result is a CursorResult (with rowcount); Session.execute is typed as
            # returning Result.
            moved = cast(
                CursorResult[Any],
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.status.in_(WAITING_STATUSES))
                    .values(status="cancelled", finished_at=now, run_at=None)
                ),
            ).rowcount
            if moved and never_ran:
                # It will never run: give its unit of the jobs quota back with this commit.
                release_after_commit(session, job.tenant_id, 1, job.created_at)
            outcome: CancelOutcome = "dequeued"
        elif job.status == "running":
            lifecycle.mark_cancelled(job.id, job.attempts, client)
            spec = get_task_type(job.task)
            if spec is not None and spec.cancellable and job.task_id:
                celery_app.control.revoke(job.task_id, terminate=True, signal="SIGTERM")
                moved = cast(
                    CursorResult[Any],
                    session.execute(
                        update(Job)
                        .where(Job.id == job.id, Job.status == "running", Job.attempts == job.attempts)
                        .values(status="cancelled", finished_at=now)
                    ),
                ).rowcount
                outcome = "terminated"
            else:
                moved = cast(
                    CursorResult[Any],
                    session.execute(
                        update(Job)
                        .where(Job.id == job.id, Job.status == "running")
                        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, now))
                    ),
                ).rowcount
                outcome = "requested"
        else:  # an unknown status: refuse rather than guess
            raise Conflict(f"A {job.status} job cannot be cancelled.", code="not_cancellable")
        # Each pass commits: the worker's start and finish paths must see the cancellation now, and
        # the re-read below must see what they committed meanwhile.
        session.commit()
        session.refresh(job)
        if moved:
            if outcome != "requested":
                events.publish_status(job.tenant_id, job.id, job.status, job.attempts, client)
            if steps is not None and outcome != "requested":
                steps.job_cancelled(session, job)
            return job, outcome
    raise Conflict("The job changed state while being cancelled; try again.", code="cancel_race")


def rerun_job(session: Session, tenant: Tenant, job_id: str, *, client: redis.Redis | None = None) -> Job:
    """Run a failed or cancelled job again as a new attempt of the same job (numbers continue).
    The automatic retry budget (max_retries) starts afresh from this attempt."""
    client = client or get_redis()
    job = JobRepository(session, tenant.id).get(job_id)
    if job.status not in RERUNNABLE_STATUSES:
        raise Conflict(
            f"Only failed or cancelled jobs can be re-run; this job is {job.status}.",
            code="not_rerunnable",
            details={"status": job.status},
        )
    steps = workflow_steps() if job.workflow_id else None
    # The jobs quota counts a job once: a job that ran is counted already, one cancelled before it
    # started was given back and counts again now. Its first attempt to run is the one billed as a
    # job (``jobs`` usage), whatever its number.
    never_ran = job.attempts == 0 and job.started_at is None
    resumed = steps.jobs_resumed_by_rerun(session, job) if steps is not None else 0
    admit(session, tenant, 1, quota_jobs=int(never_ran) + resumed)
    attempt, first_run = next_attempt(job, client)
    if steps is not None and job.workflow_id:
        # Same lock order as the worker's completion path (workflow, then job): no deadlock with it.
        steps.lock(session, job.workflow_id)
    moved = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_(RERUNNABLE_STATUSES))
            .values(
                status="queued",
                error=None,
                result=None,
                result_expires_at=None,
                started_at=None,
                finished_at=None,
                run_at=None,
                cancel_requested_at=None,
            )
        ),
    ).rowcount
    if not moved:
        session.rollback()
        release_quota(tenant.id, int(never_ran) + resumed, utcnow())
        raise Conflict("The job changed state; try again.", code="not_rerunnable")
    if steps is not None:
        # Resume the workflow in the same commit, before the job can possibly finish again.
        steps.job_rerun(session, job)
    note_before_commit(
        session,
        [job],
        client=client,
        quota=(tenant.id, int(never_ran) + resumed, utcnow()),
        refused="the job was not re-run",
    )
    # Committed before the attempt is queued, so the worker finds the job queued.
    session.commit()
    session.refresh(job)
    try:
        enqueue(job, client=client, attempt=attempt, first_attempt=attempt, first_run=first_run)
    except redis.RedisError as exc:
        log.error("enqueue failed for re-run of job %s: %s", job.id, exc)
        error = "ServiceUnavailable: the re-run could not be queued"
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="failed", error=error, finished_at=utcnow())
        )
        if steps is not None and job.workflow_id:
            steps.job_failed(session, job.workflow_id, int(job.step_index or 0), job.id, error)
        session.commit()  # the error below makes the request roll back: commit the failure first
        raise queue_unavailable("the job was not re-run") from None
    events.publish_status(job.tenant_id, job.id, "queued", job.attempts, client)
    return job


def next_attempt(job: Job, client: redis.Redis | None = None) -> tuple[int, int]:
    """(attempt, first_run) of the next attempt of a job being queued (again): what a re-run enqueues
    and what the outbox sweep enqueues for a job its creator never did. An attempt cancelled before it
    started never got a number in SQL; step past it so that its cancel marker (and any copy of it
    still in Celery) cannot be confused with the new attempt. A job that never ran bills this attempt
    as the job (``first_run``); one that ran was billed already (1: never again)."""
    attempt = max(job.attempts, lifecycle.cancelled_up_to(job.id, client)) + 1
    return attempt, attempt if job.attempts == 0 else 1


def purge_queue(session: Session, tenant: Tenant, *, client: redis.Redis | None = None) -> int:
    """Drop every waiting job of the tenant from its queue; their rows become ``cancelled``, so nothing
    silently vanishes. Returns how many jobs were dropped."""
    client = client or get_redis()
    ids = TenantQueues(client).purge(tenant.id)
    now = utcnow()
    for i in range(0, len(ids), 500):  # bounded IN lists
        purged = session.execute(
            update(Job)
            .where(Job.tenant_id == tenant.id, Job.id.in_(ids[i : i + 500]), Job.status == "queued")
            .values(status="cancelled", finished_at=now, error="Purged from the queue by the operator.")
            .returning(Job.created_at, Job.attempts, Job.started_at)
        ).all()
        # Jobs that never ran give their unit of the jobs quota back, in the period that counted it.
        by_period: dict[str, list[datetime]] = {}
        for created_at, attempts, started_at in purged:
            if attempts == 0 and started_at is None:
                by_period.setdefault(period_of(created_at), []).append(created_at)
        for moments in by_period.values():
            release_after_commit(session, tenant.id, len(moments), moments[0])
    # Committed before the waiters are told, so that their re-read finds the jobs cancelled.
    session.commit()
    events.publish_statuses(tenant.id, ids, "cancelled", client)
    return len(ids)


def purge_expired_results(session: Session, *, now: datetime | None = None) -> int:
    """Drop results past their expiry (the API already hides them; this frees the space)."""
    now = now or utcnow()
    count = cast(
        CursorResult[Any],
        session.execute(
            update(Job).where(Job.result_expires_at <= now, Job.result.is_not(None)).values(result=None)
        ),
    ).rowcount
    session.commit()
    return int(count or 0)
