"""Worker-side observability: per-attempt metrics and log lines from task signals, worker heartbeats.

Receivers here run next to ``tenantq.worker.signals`` (which moves job status in SQL) and never
raise: a metrics or Redis hiccup must not disturb an attempt. Keys are documented in
``tenantq.core.metrics``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from celery import signals

from tenantq.core import metrics
from tenantq.core.logging import reset_context, set_context
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.registry import RetryScheduled
from tenantq.worker.signals import _job_meta

log = logging.getLogger("tenantq.worker.jobs")

# task id -> (perf_counter at prerun, log-context token); prerun and postrun run in the same process.
_inflight: dict[str, tuple[float, Any]] = {}


def _attempt(task: Any, job: dict[str, Any]) -> int:
    return int(job.get("attempt_base", 0)) + int(getattr(task.request, "retries", 0) or 0) + 1


def _runnable_since(job: dict[str, Any]) -> float | None:
    """When the job could first have started: submission, or its countdown/eta if later."""
    submitted = job.get("submitted_at")
    if submitted is None:
        return None
    run_at = job.get("run_at")
    return max(float(submitted), float(run_at)) if run_at is not None else float(submitted)


@signals.task_prerun.connect
def on_prerun(task_id: str, task: Any, args: Any = None, kwargs: dict | None = None, **_: Any) -> None:
    job = _job_meta(task, kwargs)
    if job is None:
        return
    tenant_id, task_name = job.get("tenant_id"), task.name
    attempt = _attempt(task, job)
    token = set_context(
        tenant_id=tenant_id, job_id=job["id"], task_id=task_id, attempt=attempt, task=task_name
    )
    _inflight[task_id] = (time.perf_counter(), token)
    wait_s = None
    try:
        m = metrics.get_metrics()
        label = metrics.labeler().label(tenant_id)
        m.started.labels(label, task_name).inc()
        since = _runnable_since(job)
        # Only the first attempt has a meaningful wait: a retry's start includes the previous run and
        # its backoff, which is not queueing.
        if since is not None and attempt == 1:
            wait_s = max(0.0, time.time() - since)
            m.wait.labels(label, task_name).observe(wait_s)
        get_redis().hset(
            metrics.RUNNING_KEY,
            job["id"],
            json.dumps({"tenant": tenant_id, "task": task_name, "since": time.time()}),
        )
    except Exception:  # noqa: BLE001
        log.debug("prerun metrics failed", exc_info=True)
    log.info(
        "job started",
        extra={
            "event": "job.started",
            "worker": getattr(task.request, "hostname", None),
            "wait_ms": round(wait_s * 1000, 1) if wait_s is not None else None,
        },
    )


_STATE_EVENT = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}


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
    started, token = _inflight.pop(task_id, (None, None))
    elapsed = time.perf_counter() - started if started is not None else None
    outcome = _STATE_EVENT.get(state or "")
    if state == "IGNORED" and isinstance(retval, RetryScheduled):
        # tenantq retries end the Celery task with RetryScheduled (an Ignore), not Celery's RETRY.
        outcome = "retried"
    try:
        m = metrics.get_metrics()
        label = metrics.labeler().label(job.get("tenant_id"))
        if outcome is not None:
            getattr(m, outcome).labels(label, task.name).inc()
        if elapsed is not None:
            m.run.labels(label, task.name).observe(elapsed)
        get_redis().hdel(metrics.RUNNING_KEY, job["id"])
    except Exception:  # noqa: BLE001
        log.debug("postrun metrics failed", exc_info=True)
    level = logging.INFO if outcome == "succeeded" else logging.WARNING
    error = None
    if outcome in ("failed", "retried"):
        exc = getattr(retval, "exc", retval)
        error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(retval)
    log.log(
        level,
        "job %s",
        outcome or (state or "finished").lower(),
        extra={
            "event": f"job.{outcome or 'finished'}",
            "state": state,
            "duration_ms": round(elapsed * 1000, 1) if elapsed is not None else None,
            **({"error": error} if error else {}),
        },
    )
    reset_context(token)


# -- worker heartbeat (main process) ---------------------------------------------------------------------

_heartbeat_stop = threading.Event()
_hostname: str | None = None


# Recycled pool processes leave metric files behind; fold them into the archive this often.
COMPACT_EVERY_S = 60.0


def _heartbeat_loop(hostname: str) -> None:
    last_compact = time.monotonic()
    while not _heartbeat_stop.is_set():
        if time.monotonic() - last_compact >= COMPACT_EVERY_S:
            last_compact = time.monotonic()
            try:
                metrics.compact_dead_files()
            except Exception:  # noqa: BLE001  (never stop the heartbeat over housekeeping)
                log.warning("compacting metric files failed", exc_info=True)
        try:
            client = get_redis()
            now = time.time()
            pipe = client.pipeline(transaction=False)
            pipe.zadd(metrics.WORKERS_KEY, {hostname: now})
            # Forget workers that vanished (killed without shutdown) a day ago: bounded key size.
            pipe.zremrangebyscore(metrics.WORKERS_KEY, "-inf", now - 86_400)
            pipe.execute()
        except Exception:  # noqa: BLE001  (Redis down: the next beat retries)
            log.debug("worker heartbeat failed", exc_info=True)
        _heartbeat_stop.wait(metrics.WORKER_HEARTBEAT_INTERVAL_S)


@signals.worker_init.connect
def on_worker_init(**_: Any) -> None:
    # Set the shared metrics directory in the main process before the pool forks, so every child
    # writes where this host's scrape reads.
    metrics.ensure_multiproc_dir()
    port = get_settings().worker_metrics_port
    if port:
        try:
            metrics.start_worker_metrics_server(port)
        except OSError as exc:
            log.error("worker metrics server could not listen on port %s: %s", port, exc)


@signals.worker_ready.connect
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _hostname
    _hostname = getattr(sender, "hostname", None)
    if not _hostname:
        return
    _heartbeat_stop.clear()
    threading.Thread(target=_heartbeat_loop, args=(_hostname,), name="tenantq-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def on_worker_shutdown(**_: Any) -> None:
    _heartbeat_stop.set()
    if _hostname:
        try:
            get_redis().zrem(metrics.WORKERS_KEY, _hostname)
        except Exception:  # noqa: BLE001
            pass


# -- Celery's own loggers get tenantq's format ---------------------------------------------------------


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    from tenantq.core.logging import apply_formatter

    if logger is not None:
        apply_formatter(logger)
