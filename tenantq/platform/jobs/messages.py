"""The message a job's attempt travels in: tenant queue -> dispatcher -> Celery -> task wrapper.

JSON only. ``job`` carries what the worker needs without reading SQL first (ids, attempt number,
retry policy, limits); ``options`` are per-attempt Celery options the dispatcher's ``publish()``
forwards to ``send_task`` (time limits). Every attempt has its own Celery task id, so results,
events and revokes are per attempt.
"""

from __future__ import annotations

from typing import Any

from tenantq.platform.jobs.models import Job


def attempt_task_id(job_id: str, attempt: int) -> str:
    return f"{job_id}-{attempt}"


def job_meta(job: Job, *, attempt: int, first_attempt: int) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "priority": job.priority,
        "max_retries": job.max_retries,
        # Attempt numbers keep counting across re-runs; the retry budget counts from first_attempt.
        "attempt": attempt,
        "first_attempt": first_attempt,
        # For readers written against the skeleton's message (attempt_base + 1 was the attempt number
        # before retries moved out of Celery); "attempt" is authoritative.
        "attempt_base": attempt - 1,
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


def message_for_attempt(
    task: str, args: dict[str, Any], meta: dict[str, Any], attempt: int
) -> dict[str, Any]:
    """The message for attempt number ``attempt`` of the job described by ``meta``."""
    meta = {**meta, "attempt": attempt, "attempt_base": attempt - 1}
    options: dict[str, Any] = {}
    if meta.get("soft_time_limit"):
        options["soft_time_limit"] = meta["soft_time_limit"]
    if meta.get("time_limit"):
        options["time_limit"] = meta["time_limit"]
    return {
        "task": task,
        "args": args,
        "task_id": attempt_task_id(meta["id"], attempt),
        "job": meta,
        "options": options,
    }
