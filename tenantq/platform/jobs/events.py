"""Job events: what the API's waiters (``GET /v1/jobs/{id}?wait=``, ``GET /v1/jobs/{id}/events``) hear.

Whoever changes a job's status in SQL publishes one small JSON message on the pub/sub channel
``tq:jobs:events`` *after* its commit: the worker's lifecycle (running, retrying, succeeded, failed,
cancelled) and the tenant's actions (cancel, re-run, the operator's purge). A task's
``ctx.progress(fraction, message)`` stores the latest progress in ``tq:progress:{job}`` and publishes
it in the same round trip.

Pub/sub is at most once: a message published while an API process is reconnecting is lost. Waiters
therefore treat a message only as "look again" (they re-read the job from SQL, the source of truth)
and re-read once more at their deadline; progress is kept in Redis, so a late reader still finds it.
Publishing never fails the transition that triggered it: a Redis error is logged and dropped.

Message fields: ``job`` (id), ``tenant`` (id), ``kind`` (``status`` or ``progress``), then for
``status``: ``status`` and ``attempt``; for ``progress``: ``attempt``, ``fraction``, ``message``, ``at``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from tenantq.core.keys import JOB_EVENTS, progress_key
from tenantq.core.redis import get_redis

log = logging.getLogger("tenantq.jobs.events")

# Kept a week after the last report: long enough to show the final progress of a finished job.
PROGRESS_TTL_SECONDS = 7 * 24 * 3600
MAX_PROGRESS_MESSAGE = 500


def status_message(tenant_id: str, job_id: str, status: str, attempt: int | None = None) -> str:
    return json.dumps(
        {"job": job_id, "tenant": tenant_id, "kind": "status", "status": status, "attempt": attempt},
        separators=(",", ":"),
    )


def publish_status(
    tenant_id: str, job_id: str, status: str, attempt: int | None = None, client: redis.Redis | None = None
) -> None:
    """Tell waiting API processes that the job's status changed (call after the commit)."""
    try:
        (client or get_redis()).publish(JOB_EVENTS, status_message(tenant_id, job_id, status, attempt))
    except redis.RedisError as exc:
        log.warning("could not publish the status of job %s: %s", job_id, exc)


def queue_status(pipe: Any, tenant_id: str, job_id: str, status: str, attempt: int | None = None) -> None:
    """:func:`publish_status` queued on the caller's pipeline: the worker's attempt pipeline sends it in
    the round trip its phase makes anyway (one round trip less per transition)."""
    pipe.publish(JOB_EVENTS, status_message(tenant_id, job_id, status, attempt))


def publish_statuses(
    tenant_id: str, job_ids: Iterable[str], status: str, client: redis.Redis | None = None
) -> None:
    """The same status for many jobs of one tenant, in one round trip."""
    try:
        pipe = (client or get_redis()).pipeline(transaction=False)
        for job_id in job_ids:
            pipe.publish(JOB_EVENTS, status_message(tenant_id, job_id, status))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not publish the status of %s jobs: %s", status, exc)


@dataclass(frozen=True)
class Progress:
    attempt: int
    fraction: float
    message: str
    at: float  # unix seconds

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "fraction": self.fraction, "message": self.message, "at": self.at}


def check_fraction(fraction: float) -> float:
    value = float(fraction)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"progress must be a fraction between 0 and 1, got {fraction!r}")
    return value


def report_progress(
    tenant_id: str,
    job_id: str,
    attempt: int,
    fraction: float,
    message: str = "",
    client: redis.Redis | None = None,
) -> Progress:
    """Store the attempt's latest progress and publish it: one Redis round trip. Raises ValueError for
    a fraction outside [0, 1]; a longer message is cut to MAX_PROGRESS_MESSAGE characters."""
    progress = Progress(attempt, check_fraction(fraction), str(message)[:MAX_PROGRESS_MESSAGE], time.time())
    key = progress_key(job_id)
    body = json.dumps(
        {"job": job_id, "tenant": tenant_id, "kind": "progress", **progress.as_dict()}, separators=(",", ":")
    )
    pipe = (client or get_redis()).pipeline(transaction=False)
    pipe.hset(key, mapping={k: str(v) for k, v in progress.as_dict().items()})
    pipe.expire(key, PROGRESS_TTL_SECONDS)
    pipe.publish(JOB_EVENTS, body)
    pipe.execute()
    return progress


def _parse(raw: dict[str, str]) -> Progress | None:
    try:
        return Progress(int(raw["attempt"]), float(raw["fraction"]), raw.get("message", ""), float(raw["at"]))
    except (KeyError, ValueError):
        return None


def read_progress(job_ids: list[str], client: redis.Redis | None = None) -> dict[str, Progress]:
    """The latest progress of each job that reported any (one round trip for all of them). A Redis
    error answers "no progress": it is a hint, never worth failing a read of the job for."""
    if not job_ids:
        return {}
    try:
        pipe = (client or get_redis()).pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(progress_key(job_id))
        rows = pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not read job progress: %s", exc)
        return {}
    found = {}
    for job_id, raw in zip(job_ids, rows, strict=True):
        if raw and (progress := _parse(raw)) is not None:
            found[job_id] = progress
    return found
