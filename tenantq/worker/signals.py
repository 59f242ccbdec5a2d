"""Task signals: the worker reports each attempt's life to SQL.

Job status in SQL is driven from here (prerun -> running, postrun -> succeeded/failed/retrying),
never by polling the result backend. Updates are conditional so a late or duplicate signal never
moves a job backwards (e.g. a cancelled job stays cancelled).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery import signals
from sqlalchemy import update

from tenantq.platform.db import dispose_engine, system_session, utcnow
from tenantq.platform.jobs.models import Job
from tenantq.platform.redis import reset_redis
from tenantq.worker.registry import REGISTRY

log = logging.getLogger("tenantq.worker")

MAX_ERROR_CHARS = 20_000


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
    now = utcnow()
    hostname = getattr(task.request, "hostname", None)
    with system_session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"], Job.status.not_in(("succeeded", "failed", "cancelled")))
            .values(status="running", attempts=Job.attempts + 1, worker=hostname, error=None)
        )
        session.execute(update(Job).where(Job.id == job["id"], Job.started_at.is_(None)).values(started_at=now))


def _format_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text[-MAX_ERROR_CHARS:]


@signals.task_postrun.connect
def on_postrun(
    task_id: str, task: Any, args: Any = None, kwargs: dict | None = None, retval: Any = None,
    state: str | None = None, **_: Any
) -> None:
    job = _job_meta(task, kwargs)
    if job is None:
        return
    now = utcnow()
    values: dict[str, Any]
    if state == "SUCCESS":
        values = {"status": "succeeded", "result": retval, "finished_at": now, "error": None}
    elif state == "RETRY":
        values = {"status": "retrying", "error": _format_error(retval.exc) if hasattr(retval, "exc") and retval.exc else str(retval)}
    elif state == "FAILURE" and isinstance(retval, BaseException):
        values = {"status": "failed", "error": _format_error(retval), "finished_at": now}
    else:
        return
    with system_session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"], Job.status.not_in(("succeeded", "failed", "cancelled")))
            .values(**values)
        )
