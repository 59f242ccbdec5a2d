"""Task signals: the worker reports each attempt's life to SQL.

Job status and the attempt log in SQL are driven from here, never by polling the result backend:
- ``task_prerun``  (pool child) -> job running, attempt row opened;
- ``task_postrun`` (pool child) -> succeeded / failed, attempt row closed. An ``IGNORED`` state means
  the task wrapper already recorded the outcome (retry scheduled, cancelled before start);
- ``task_failure`` (main process) for a hard time limit: the child was killed, so postrun never fires;
- ``task_revoked`` (main process) for an attempt terminated by a cancellation.
The transitions themselves live in ``tenantq.platform.jobs.lifecycle``; each is conditional on the
job still being on that attempt, so late or duplicate signals never move a job backwards.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.exceptions import TimeLimitExceeded

from tenantq.core.db import dispose_engine
from tenantq.core.redis import reset_redis
from tenantq.platform.jobs import lifecycle
from tenantq.platform.jobs.registry import REGISTRY

log = logging.getLogger("tenantq.worker")


def _job_meta(task: Any, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    if task is None or getattr(task, "name", None) not in REGISTRY:
        return None
    job = (kwargs or {}).get("job")
    return job if isinstance(job, dict) and "id" in job else None


@signals.worker_process_init.connect
def _fresh_connections(**_kwargs: Any) -> None:
    # A forked pool child must not reuse the parent's pooled DB/Redis sockets.
    dispose_engine()
    reset_redis()


@signals.task_prerun.connect
def on_prerun(task_id: str, task: Any, args: Any = None, kwargs: dict | None = None, **_: Any) -> None:
    job = _job_meta(task, kwargs)
    if job is None or getattr(task.request, "tq_skip", None):  # skipped by limits.start_guard
        return
    lifecycle.attempt_started(job, task_id, getattr(task.request, "hostname", None))


@signals.task_postrun.connect
def on_postrun(
    task_id: str,
    task: Any,
    args: Any = None,
    kwargs: dict | None = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    job = _job_meta(task, kwargs)
    if job is None:
        return
    if state == "SUCCESS":
        lifecycle.attempt_succeeded(job, retval)
    elif state == "FAILURE" and isinstance(retval, BaseException):
        lifecycle.attempt_failed(job, lifecycle.describe_error(retval, job))


@signals.task_failure.connect
def on_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    kwargs: dict | None = None,
    **_: Any,
) -> None:
    # Only the hard time limit needs this receiver: every other failure reaches postrun. It may fire
    # twice for one timeout; attempt_failed is conditional, so the second is a no-op.
    if not isinstance(exception, TimeLimitExceeded):
        return
    job = _job_meta(sender, kwargs)
    if job is not None:
        lifecycle.attempt_failed(job, lifecycle.describe_error(exception, job))


@signals.task_revoked.connect
def on_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None, **_: Any
) -> None:
    if not terminated or request is None:
        return
    job = _job_meta(sender, getattr(request, "kwargs", None))
    if job is not None:
        lifecycle.attempt_terminated(job, f"terminated by cancellation (signal {signum})")
