"""The message a job's attempt travels in: tenant queue -> dispatcher -> Celery -> task wrapper.

JSON only. ``job`` carries what the worker needs without reading SQL first (ids, attempt number,
retry policy, limits); ``options`` are per-attempt Celery options the dispatcher's ``publish()``
forwards to ``send_task`` (the backstop hard time limit). Every attempt has its own Celery task id,
so results, events and revokes are per attempt.

On the worker the ``job`` dict is read once, into a :class:`JobMessage`; every step of the attempt
pipeline and the task wrapper use that object, and it alone says which attempt this is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantq.core.settings import get_settings
from tenantq.platform.jobs.models import Job


def attempt_task_id(job_id: str, attempt: int) -> str:
    return f"{job_id}-{attempt}"


def job_meta(job: Job, *, attempt: int, first_attempt: int, first_run: int = 1) -> dict[str, Any]:
    meta = {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "priority": job.priority,
        "max_retries": job.max_retries,
        # Attempt numbers keep counting across re-runs; the retry budget counts from first_attempt.
        "attempt": attempt,
        "first_attempt": first_attempt,
        "retry_backoff": job.retry_backoff,
        "retry_backoff_max": job.retry_backoff_max,
        "soft_time_limit": job.soft_time_limit,
        "time_limit": job.time_limit,
        "workflow_id": job.workflow_id,
        "step_index": job.step_index,
        # Unix times for the worker's wait-time metric (start minus when the job became runnable).
        "submitted_at": job.created_at.timestamp() if job.created_at else None,
        "run_at": job.run_at.timestamp() if job.run_at else None,
    }
    if first_run != 1:
        # A re-run of a job cancelled before it ever ran: this attempt is the one billed as a job.
        meta["first_run"] = first_run
    return meta


def message_for_attempt(
    task: str, args: Mapping[str, Any], meta: Mapping[str, Any], attempt: int
) -> dict[str, Any]:
    """The message for attempt number ``attempt`` of the job described by ``meta``."""
    job = {**meta, "attempt": attempt}
    # The job's limits are enforced on the task function by the wrapper (``bodyclock``); Celery only
    # gets a hard limit past them as the backstop for code that ignores the wrapper's stop. No Celery
    # soft limit: its signal could land in the platform's own bookkeeping around the function.
    options: dict[str, Any] = {}
    if job.get("time_limit"):
        options["time_limit"] = float(job["time_limit"]) + get_settings().time_limit_grace_seconds
    return {
        "task": task,
        "args": dict(args),
        "task_id": attempt_task_id(job["id"], attempt),
        "job": job,
        "options": options,
    }


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class JobMessage:
    """One attempt's message as the worker received it (Celery kwargs ``job`` and ``args``)."""

    task: str  # the task type (the Celery task name)
    id: str
    tenant_id: str
    attempt: int
    first_attempt: int  # the retry budget counts from here (a re-run starts a new budget)
    # The attempt that is billed as the job (``jobs`` usage): 1, or the re-run of a job that was
    # cancelled before it ever ran. Retries and redeliveries keep it, so they never bill it again.
    first_run: int
    priority: int
    max_retries: int
    retry_backoff: float | None
    retry_backoff_max: float | None
    soft_time_limit: float | None
    time_limit: float | None
    workflow_id: str | None
    step_index: int | None
    submitted_at: float | None  # unix seconds
    run_at: float | None  # unix seconds: countdown/eta, if any
    # Stamped by the dispatcher when it released the attempt; absent on a direct publish.
    dispatch: str | None
    cap: int | None  # the tenant's concurrency cap at release
    enqueued_at: float | None
    args: Mapping[str, Any] = field(repr=False)
    # The wire dict itself: a message sent on (re-queued at the cap, the next retry) keeps every key.
    job: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_job(cls, task: str, job: Mapping[str, Any], args: Mapping[str, Any] | None = None) -> JobMessage:
        cap = job.get("cap")
        step_index = job.get("step_index")
        return cls(
            task=task,
            id=str(job["id"]),
            tenant_id=str(job["tenant_id"]),
            attempt=int(job.get("attempt") or 1),
            first_attempt=int(job.get("first_attempt") or 1),
            first_run=int(job.get("first_run") or 1),
            priority=int(job.get("priority", 5)),
            max_retries=int(job.get("max_retries") or 0),
            retry_backoff=_float(job.get("retry_backoff")),
            retry_backoff_max=_float(job.get("retry_backoff_max")),
            soft_time_limit=_float(job.get("soft_time_limit")),
            time_limit=_float(job.get("time_limit")),
            workflow_id=job.get("workflow_id") or None,
            step_index=int(step_index) if step_index is not None else None,
            submitted_at=_float(job.get("submitted_at")),
            run_at=_float(job.get("run_at")),
            dispatch=str(job["dispatch"]) if job.get("dispatch") else None,
            cap=int(cap or 0) if "cap" in job else None,
            enqueued_at=_float(job.get("enqueued_at")) if job.get("enqueued_at") else None,
            args=args if args is not None else {},
            job=job,
        )

    @classmethod
    def from_task_kwargs(cls, task: str, kwargs: Mapping[str, Any] | None) -> JobMessage | None:
        """The message of a tenantq job attempt, or None when these kwargs are not one."""
        job = (kwargs or {}).get("job")
        if not isinstance(job, Mapping) or "id" not in job or "tenant_id" not in job:
            return None
        args = (kwargs or {}).get("args")
        return cls.from_job(task, job, args if isinstance(args, Mapping) else {})

    @property
    def retries_made(self) -> int:
        """Retries already made within this attempt's retry budget."""
        return self.attempt - self.first_attempt

    @property
    def runnable_since(self) -> float | None:
        """When the job could first have started: submission, or its countdown/eta if later."""
        if self.submitted_at is None:
            return None
        return max(self.submitted_at, self.run_at) if self.run_at is not None else self.submitted_at

    def next_attempt(self) -> dict[str, Any]:
        """The message for this job's next attempt (a retry)."""
        return message_for_attempt(self.task, self.args, self.job, self.attempt + 1)
