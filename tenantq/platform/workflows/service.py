"""Workflows: chains of steps (a task, or a group of tasks run in parallel), run by tenantq itself.

Chaining is not Celery canvas: each step is an ordinary job of the tenant, queued on the tenant's own
queue when the previous step succeeded, so every step goes through the dispatcher's fairness, rate and
concurrency limits. Workflows subscribe to the job platform's finish hooks (``FINISH_HOOK``): the
worker's completion path runs ``step_job_succeeded`` in the same transaction that marks the job
succeeded, with the workflow row locked first, so when several members of a group finish at once
exactly one of them advances the chain.

Data flow: step N+1 gets step N's result under the argument key ``input`` (for a group: the list of
its jobs' results, in group order), if its task type can take it (an ``input`` field, or open
arguments); a task type with closed arguments just runs after the previous step. Steps after the
first are validated when the workflow is created (except ``input``, which does not exist yet) and
again, with ``input``, when they are queued: a result that does not fit fails that step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from tenantq.core.db import unscoped_session, utcnow
from tenantq.core.errors import InvalidInput
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.jobs import outbox
from tenantq.platform.jobs import service as jobs
from tenantq.platform.jobs.admission import admit, release_after_commit, release_quota
from tenantq.platform.jobs.hooks import AttemptOutcome, FinishHook
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.models import TERMINAL_STATUSES, Job
from tenantq.platform.jobs.registry import TaskType, get_task_type
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import JobCreate
from tenantq.platform.workflows.models import WORKFLOW_TERMINAL, Workflow
from tenantq.platform.workflows.repository import WorkflowRepository
from tenantq.platform.workflows.schemas import (
    StepGroup,
    StepJobOut,
    StepOut,
    StepTask,
    WorkflowCreate,
    WorkflowOut,
)
from tenantq.tenants.accounts.models import Tenant

log = logging.getLogger("tenantq.workflows")

INPUT_KEY = "input"


# --- creation ---------------------------------------------------------------------------------------


def _items(step: dict[str, Any]) -> list[dict[str, Any]]:
    return step.get("group", [step])


def takes_input(spec: TaskType) -> bool:
    """Does the task type have somewhere to receive the previous step's result? A task type with
    closed arguments and no ``input`` field still runs in order, it just does not get the result."""
    return INPUT_KEY in spec.args_model.model_fields or spec.args_model.model_config.get("extra") == "allow"


def _validate_item(
    session: Session, tenant: Tenant, index: int, pos: int | None, item: StepTask
) -> dict[str, Any]:
    where = f"steps[{index}]" + (f".group[{pos}]" if pos is not None else "")
    if index > 0 and INPUT_KEY in item.args:
        raise InvalidInput(
            f"{where}: the argument {INPUT_KEY!r} is reserved for the previous step's result.",
            code="invalid_workflow",
            details={"step": index},
        )
    data = JobCreate(
        task=item.task,
        args=item.args,
        priority=item.priority,
        max_retries=item.max_retries,
        soft_time_limit=item.soft_time_limit,
        time_limit=item.time_limit,
    )
    try:
        spec = jobs.get_spec(item.task)
        # 'input' does not exist before the previous step ran: it is checked when the step is queued.
        jobs.validate_args(spec, item.args, ignore=INPUT_KEY if index > 0 else None)
        policy = jobs.validate_policy(session, tenant, spec, data)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}", code=exc.code, details=exc.details) from None
    return {
        "task": item.task,
        "args": item.args,
        "priority": item.priority,
        "max_retries": policy.max_retries,
        "soft_time_limit": policy.soft_time_limit,
        "time_limit": policy.time_limit,
    }


def create_workflow(session: Session, tenant: Tenant, data: WorkflowCreate) -> Workflow:
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(data.steps):
        if isinstance(step, StepGroup):
            steps.append(
                {
                    "group": [
                        _validate_item(session, tenant, index, pos, t) for pos, t in enumerate(step.group)
                    ]
                }
            )
        else:
            steps.append(_validate_item(session, tenant, index, None, step))
    # Admitted as all its jobs, every step and every group member: a workflow that does not fit the
    # jobs quota is refused whole (402) rather than stopped half way.
    total = sum(len(_items(step)) for step in steps)
    admit(session, tenant, total)
    wf = WorkflowRepository(session, tenant.id).add(
        Workflow(status="running", steps=steps, job_ids=[], current_step=0)
    )
    session.flush()
    new = _create_step_jobs(session, wf, 0, None)
    counted_at = wf.created_at
    client = get_redis()
    # Noted before the commit: if this process dies before the enqueue, the outbox sweep queues them.
    jobs.note_before_commit(
        session,
        new,
        client=client,
        quota=(tenant.id, total, counted_at),
        refused="the workflow was not accepted",
    )
    # Committed here rather than by the request: jobs are queued only after the commit that created
    # their rows, or a worker could start a job whose row it cannot see yet.
    session.commit()
    try:
        jobs.enqueue_jobs(new, client=client)  # the whole first step in one Redis call
    except redis.RedisError as exc:
        log.error("enqueue failed for workflow %s: %s", wf.id, exc)
        session.delete(wf)  # cascades to its jobs: nothing of it was runnable
        session.commit()  # the error below makes the request roll back: commit the removal first
        release_quota(tenant.id, total, counted_at)
        raise jobs.queue_unavailable("the workflow was not accepted") from None
    return wf


def _create_step_jobs(session: Session, wf: Workflow, index: int, input_value: Any) -> list[Job]:
    """Add the jobs of step ``index``; returns those to enqueue. A job whose arguments (now with
    ``input``) do not validate is created failed, which fails the workflow at that step."""
    now = utcnow()
    created: list[Job] = []
    runnable: list[Job] = []
    for item in _items(wf.steps[index]):
        args = dict(item["args"])
        spec = get_task_type(item["task"])
        if index > 0 and spec is not None and takes_input(spec):
            args[INPUT_KEY] = input_value
        job = Job(
            tenant_id=wf.tenant_id,
            task=item["task"],
            args=args,
            priority=item["priority"],
            max_retries=item["max_retries"],
            soft_time_limit=item["soft_time_limit"],
            time_limit=item["time_limit"],
            workflow_id=wf.id,
            step_index=index,
            status="queued",
            created_at=now,
        )
        size = len(json.dumps(args, separators=(",", ":")).encode())
        try:
            if spec is None:
                raise ValueError(f"task type {item['task']!r} is no longer registered")
            spec.validate(args)
        except (ValidationError, ValueError) as exc:
            job.status, job.finished_at = "failed", now
            job.error = (
                "InvalidInput: the previous step's result does not fit the arguments of "
                f"{item['task']!r}: {exc}"
            )
        else:
            # A step's arguments, input included, are bounded like a request body: a group of big
            # results must not turn into one huge message.
            if size > get_settings().max_body_bytes:
                job.status, job.finished_at = "failed", now
                job.error = (
                    f"InputTooLarge: the previous step's result makes arguments of {size} bytes, more "
                    f"than the limit of {get_settings().max_body_bytes} bytes"
                )
            else:
                runnable.append(job)
        session.add(job)
        created.append(job)
    session.flush()
    wf.job_ids = [*wf.job_ids, [j.id for j in created]]
    wf.current_step = index
    failed = next((j for j in created if j.status == "failed"), None)
    if failed is not None:
        _stop(wf, "failed", index, failed.id, failed.task, failed.error or "")
        return []
    return runnable


def enqueue_step_jobs(new_jobs: list[Job]) -> None:
    """After the commit that created them: put the next step's jobs on the tenant's queue, all in one
    Redis call (which also takes their outbox notes away). If that call fails none of them is queued:
    they fail, and the workflow with them."""
    try:
        jobs.enqueue_jobs(new_jobs)
    except redis.RedisError as exc:
        log.error("could not queue workflow step jobs %s: %s", ", ".join(j.id for j in new_jobs), exc)
        error = f"ServiceUnavailable: the step could not be queued: {exc}"
        with unscoped_session() as session:
            for job in new_jobs:
                row = session.get(Job, job.id)
                if row is not None and row.status == "queued":
                    row.status, row.error, row.finished_at = "failed", error, utcnow()
                    wf = session.get(Workflow, job.workflow_id)
                    if wf is not None and wf.status == "running":
                        _stop(wf, "failed", int(job.step_index or 0), job.id, job.task, error)


# --- progress (worker side, inside the transaction that finished the job) ---------------------------


def lock_workflow(session: Session, workflow_id: str) -> None:
    """Taken first, before any read, so that group members finishing at the same time on different
    workers are serialised (a row lock on PostgreSQL, the write lock on SQLite) and exactly one of
    them sees the whole group done. Everyone touching a step job and its workflow in one transaction
    locks the workflow first."""
    session.execute(update(Workflow).where(Workflow.id == workflow_id).values(updated_at=utcnow()))


def _lock_for(session: Session, message: JobMessage) -> None:
    if message.workflow_id is not None:
        lock_workflow(session, message.workflow_id)


def _step_finished(session: Session, outcome: AttemptOutcome) -> Callable[[], None] | None:
    """The finish hook's part in the job's status transaction (the job row already moved)."""
    message = outcome.message
    if message.workflow_id is None:
        return None
    step_index = int(message.step_index or 0)
    if outcome.status == "failed":
        step_job_failed(session, message.workflow_id, step_index, message.id, outcome.error or "")
        return None
    new_jobs = step_job_succeeded(session, message.workflow_id, step_index)
    if not new_jobs:
        return None
    # Noted before this transaction commits: if the process dies before the enqueue, the outbox sweep
    # queues them. A worker cannot refuse a finished attempt, so a note that fails is only logged.
    outbox.note_quietly(get_redis(), new_jobs)
    return lambda: enqueue_step_jobs(new_jobs)


FINISH_HOOK = FinishHook(
    name="workflows",
    claims=lambda message: message.workflow_id is not None,
    lock=_lock_for,
    in_transaction=_step_finished,
)


def _stop(
    wf: Workflow, status: str, step: int | None, job_id: str | None, task: str | None, error: str
) -> None:
    # The steps it never reached will not run: give their jobs back to the quota with this commit.
    session = object_session(wf)
    if session is not None and wf.status == "running":
        release_after_commit(session, wf.tenant_id, wf.jobs_not_created(), wf.created_at)
    wf.status = status
    wf.finished_at = utcnow()
    wf.failed_step = step
    if job_id is not None:
        first_line = (error or "").strip().splitlines()[0] if (error or "").strip() else "no error recorded"
        verb = "failed" if status == "failed" else "was cancelled"
        wf.error = f"step {step} ({task}) job {job_id} {verb}: {first_line}"
    else:
        wf.error = error


def _step_jobs(session: Session, wf: Workflow, index: int) -> list[Job]:
    ids = wf.job_ids[index] if index < len(wf.job_ids) else []
    rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
    return [rows[i] for i in ids if i in rows]


def step_job_succeeded(session: Session, workflow_id: str, step_index: int) -> list[Job]:
    """A step job succeeded: if its whole step has, start the next step (returns its jobs to enqueue,
    after commit) or finish the workflow."""
    wf = session.get(Workflow, workflow_id)
    if wf is None or wf.status != "running" or wf.current_step != step_index:
        return []
    step_jobs = _step_jobs(session, wf, step_index)
    if not step_jobs or any(j.status != "succeeded" for j in step_jobs):
        return []
    results = [j.result for j in step_jobs]
    output = results if "group" in wf.steps[step_index] else results[0]
    if step_index + 1 >= len(wf.steps):
        wf.status, wf.finished_at = "succeeded", utcnow()
        return []
    return _create_step_jobs(session, wf, step_index + 1, output)


def step_job_failed(session: Session, workflow_id: str, step_index: int, job_id: str, error: str) -> None:
    wf = session.get(Workflow, workflow_id)
    if wf is None or wf.status != "running" or wf.current_step != step_index:
        return
    task = next((j.task for j in _step_jobs(session, wf, step_index) if j.id == job_id), None)
    _stop(wf, "failed", step_index, job_id, task, error)


def step_job_cancelled(session: Session, job: Job) -> None:
    """The tenant cancelled one step job directly: the chain cannot go on."""
    wf = session.get(Workflow, job.workflow_id)
    if wf is not None and wf.status == "running" and wf.current_step == job.step_index:
        _stop(wf, "cancelled", job.step_index, job.id, job.task, "cancelled by request")
        session.flush()


def _resumed_by(session: Session, job: Job) -> Workflow | None:
    """The workflow a re-run of ``job`` resumes: the job stopped it and no other job of that step is
    still failed or cancelled."""
    wf = session.get(Workflow, job.workflow_id)
    if wf is None or wf.status not in ("failed", "cancelled") or wf.failed_step != job.step_index:
        return None
    others = [j for j in _step_jobs(session, wf, wf.current_step) if j.id != job.id]
    if any(j.status in ("failed", "cancelled") for j in others):
        return None
    return wf


def jobs_resumed_by_rerun(session: Session, job: Job) -> int:
    """Jobs of the steps not reached yet that a re-run of ``job`` would resume: they were given back
    to the quota when the workflow stopped, so the re-run's admission counts them again."""
    wf = _resumed_by(session, job)
    return wf.jobs_not_created() if wf is not None else 0


def step_job_rerun(session: Session, job: Job) -> None:
    """A re-run of the job that stopped the workflow resumes the workflow, once no other job of that
    step is still failed or cancelled. Runs in the caller's transaction."""
    wf = _resumed_by(session, job)
    if wf is None:
        return
    wf.status, wf.finished_at, wf.failed_step, wf.error = "running", None, None, None


# --- tenant actions and views -----------------------------------------------------------------------


def cancel_workflow(session: Session, tenant_id: str, workflow_id: str) -> Workflow:
    """Stop the chain and cancel its unfinished step jobs. A finished workflow is left as it is."""
    repo = WorkflowRepository(session, tenant_id)
    wf = repo.get(workflow_id)
    if wf.status in WORKFLOW_TERMINAL:
        return wf
    # Stop the chain first, and commit it before touching the jobs, so that a step finishing meanwhile
    # (in a worker's transaction) does not start the next one.
    _stop(wf, "cancelled", None, None, None, "cancelled by request")
    session.commit()
    for job in _step_jobs(session, wf, wf.current_step):
        if job.status not in TERMINAL_STATUSES:
            jobs.cancel_job(session, tenant_id, job.id)
    session.refresh(wf)
    return wf


def _step_status(wf: Workflow, index: int, step_jobs: list[Job]) -> str:
    if not step_jobs:
        return "pending" if wf.status == "running" else "skipped"
    statuses = {j.status for j in step_jobs}
    for status in ("failed", "cancelled", "running", "retrying"):
        if status in statuses:
            return status
    if statuses == {"succeeded"}:
        return "succeeded"
    return "queued"


def workflow_out(session: Session, wf: Workflow) -> WorkflowOut:
    all_ids = [i for ids in wf.job_ids for i in ids]
    by_id = JobRepository(session, wf.tenant_id).many(all_ids)
    steps: list[StepOut] = []
    for index, step in enumerate(wf.steps):
        ids = wf.job_ids[index] if index < len(wf.job_ids) else []
        step_jobs = [by_id[i] for i in ids if i in by_id]
        steps.append(
            StepOut(
                index=index,
                kind="group" if "group" in step else "task",
                tasks=[item["task"] for item in _items(step)],
                status=_step_status(wf, index, step_jobs),
                jobs=[
                    StepJobOut(
                        id=j.id,
                        task=j.task,
                        status=j.status,
                        error=(j.error or "").splitlines()[0] if j.error else None,
                    )
                    for j in step_jobs
                ],
            )
        )
    status = wf.status
    if status == "running" and wf.current_step == 0 and steps[0].status == "queued":
        status = "queued"
    result = None
    if wf.status == "succeeded":
        last = [by_id[i] for i in wf.job_ids[-1] if i in by_id]
        values = [j.visible_result for j in last]
        result = values if "group" in wf.steps[-1] else (values[0] if values else None)
    return WorkflowOut(
        id=wf.id,
        status=status,
        current_step=wf.current_step,
        failed_step=wf.failed_step,
        error=wf.error,
        result=result,
        created_at=wf.created_at,
        finished_at=wf.finished_at,
        steps=steps,
    )
