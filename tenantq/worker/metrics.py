"""Worker-side observability: per-attempt metrics and log lines (a step of the attempt pipeline),
worker heartbeats.

Nothing here raises: a metrics or Redis hiccup must not disturb an attempt. Keys are documented in
``tenantq.core.metrics``. The signal receivers that call these live in ``tenantq.worker.pipeline``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.worker import state as worker_state

from tenantq.core import metrics
from tenantq.core.logging import apply_formatter, reset_context, set_context
from tenantq.core.redis import get_redis, new_redis
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch import slots
from tenantq.platform.jobs.messages import JobMessage

log = logging.getLogger("tenantq.worker.jobs")


@dataclass(frozen=True)
class RunningAttempt:
    """What the metrics step keeps between an attempt's start and its end (same process)."""

    started: float  # perf_counter
    log_token: Any


def attempt_started(message: JobMessage, task_id: str, worker: str | None) -> RunningAttempt:
    tenant_id, task_name, attempt = message.tenant_id, message.task, message.attempt
    token = set_context(
        tenant_id=tenant_id, job_id=message.id, task_id=task_id, attempt=attempt, task=task_name
    )
    running = RunningAttempt(time.perf_counter(), token)
    wait_s = None
    try:
        m = metrics.get_metrics()
        label = metrics.labeler().label(tenant_id)
        m.started.labels(label, task_name).inc()
        since = message.runnable_since
        # Only the first attempt has a meaningful wait: a retry's start includes the previous run and
        # its backoff, which is not queueing.
        if since is not None and attempt == 1:
            wait_s = max(0.0, time.time() - since)
            m.wait.labels(label, task_name).observe(wait_s)
    except Exception:  # metrics must not disturb the attempt
        log.debug("prerun metrics failed", exc_info=True)
    log.info(
        "job started",
        extra={
            "event": "job.started",
            "worker": worker,
            "wait_ms": round(wait_s * 1000, 1) if wait_s is not None else None,
        },
    )
    return running


def mark_running(pipe: Any, message: JobMessage) -> None:
    """Queue the attempt's entry in the running set on the attempt pipeline's Redis pipeline."""
    pipe.hset(
        metrics.RUNNING_KEY,
        message.id,
        json.dumps({"tenant": message.tenant_id, "task": message.task, "since": time.time()}),
    )


def unmark_running(pipe: Any, message: JobMessage) -> None:
    pipe.hdel(metrics.RUNNING_KEY, message.id)


_STATE_EVENT = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}


def attempt_ended(
    message: JobMessage,
    running: RunningAttempt | None,
    celery_state: str | None,
    retval: Any,
    *,
    retried: bool,
    durable: bool = True,
) -> None:
    """``retried``: tenantq retries end the Celery task with RetryScheduled (an Ignore), not RETRY.
    ``durable`` False: the outcome reached neither SQL nor Redis; the end is logged as lost, not as
    succeeded or failed (which the job, as stored, is not)."""
    elapsed = time.perf_counter() - running.started if running is not None else None
    outcome = "retried" if retried else _STATE_EVENT.get(celery_state or "")
    lost = not durable and outcome in ("succeeded", "failed")
    try:
        m = metrics.get_metrics()
        label = metrics.labeler().label(message.tenant_id)
        if outcome is not None and not lost:
            getattr(m, outcome).labels(label, message.task).inc()
        if elapsed is not None:
            m.run.labels(label, message.task).observe(elapsed)
    except Exception:  # metrics must not disturb the attempt
        log.debug("postrun metrics failed", exc_info=True)
    level = logging.INFO if outcome == "succeeded" else logging.WARNING
    if lost:
        outcome, level = "outcome_lost", logging.ERROR
    error = None
    if outcome in ("failed", "retried"):
        exc = getattr(retval, "exc", retval)
        error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(retval)
    log.log(
        level,
        "job %s",
        outcome or (celery_state or "finished").lower(),
        extra={
            "event": f"job.{outcome or 'finished'}",
            "state": celery_state,
            "duration_ms": round(elapsed * 1000, 1) if elapsed is not None else None,
            **({"error": error} if error else {}),
        },
    )
    if running is not None:
        reset_context(running.log_token)


# -- worker heartbeat (main process) ---------------------------------------------------------------------

_heartbeat_stop = threading.Event()
_hostname: str | None = None
_consumer: Any = None  # Celery's consumer (main process): its pool size and queues


def hostname() -> str | None:
    """This worker's hostname (main process, once ready)."""
    return _hostname


def slot_taken(host: str | None) -> None:
    """Main process: a job's message was received; one pool slot is busy until its postrun ends."""
    _busy(host, 1)


def slot_freed(host: str | None) -> None:
    """Main process: an attempt whose pool process was killed (no postrun) or that was revoked before
    it reached one: its slot is free again. (A postrun frees its slot in the attempt pipeline's last
    Redis round trip.)"""
    _busy(host, -1)


def _busy(host: str | None, delta: int) -> None:
    if not host:
        return
    try:
        slots.add_busy(get_redis(), host, delta)
    except Exception:  # the count heals at the next idle heartbeat (dispatch.slots)
        log.debug("could not update the busy slots of %s", host, exc_info=True)


# Recycled pool processes leave metric files behind; fold them into the archive this often.
COMPACT_EVERY_S = 60.0


def _publish_slots(client: Any, hostname: str) -> None:
    """This worker's pool size and queues for the dispatcher (``dispatch.slots``); with no task held at
    all, its busy count is 0, which heals a count a killed pool process left behind."""
    consumer = _consumer
    pool = getattr(consumer, "pool", None)
    size = getattr(pool, "num_processes", None)
    if consumer is None or not size:
        return
    queues = list(consumer.app.amqp.queues.consume_from)
    slots.publish_pool(client, hostname, int(size), queues)
    if not worker_state.reserved_requests:
        slots.reset_busy(client, hostname)


def _heartbeat_loop(hostname: str) -> None:
    last_compact = time.monotonic()
    client = new_redis()  # its own: the main process's receivers use get_redis() meanwhile
    while not _heartbeat_stop.is_set():
        try:
            _publish_slots(client, hostname)
        except Exception:  # Redis down: the next beat retries
            log.debug("publishing free slots failed", exc_info=True)
        if time.monotonic() - last_compact >= COMPACT_EVERY_S:
            last_compact = time.monotonic()
            try:
                metrics.compact_dead_files()
            except Exception:  # never stop the heartbeat over housekeeping
                log.warning("compacting metric files failed", exc_info=True)
        try:
            now = time.time()
            pipe = client.pipeline(transaction=False)
            pipe.zadd(metrics.WORKERS_KEY, {hostname: now})
            # Forget workers that vanished (killed without shutdown) a day ago: bounded key size.
            pipe.zremrangebyscore(metrics.WORKERS_KEY, "-inf", now - 86_400)
            pipe.execute()
        except Exception:  # Redis down: the next beat retries
            log.debug("worker heartbeat failed", exc_info=True)
        _heartbeat_stop.wait(min(metrics.WORKER_HEARTBEAT_INTERVAL_S, slots.HEARTBEAT_S))


def worker_init() -> None:
    # Set the shared metrics directory in the main process before the pool forks, so every child
    # writes where this host's scrape reads.
    metrics.ensure_multiproc_dir()
    port = get_settings().worker_metrics_port
    if port:
        try:
            metrics.start_worker_metrics_server(port)
        except OSError as exc:
            log.error("worker metrics server could not listen on port %s: %s", port, exc)


def worker_ready(hostname: str | None, consumer: Any = None) -> None:
    global _hostname, _consumer
    _hostname, _consumer = hostname, consumer
    if not _hostname:
        return
    try:
        _publish_slots(get_redis(), _hostname)  # at once: the dispatcher fills to free slots from now
    except Exception:
        log.debug("publishing free slots failed", exc_info=True)
    _heartbeat_stop.clear()
    threading.Thread(target=_heartbeat_loop, args=(_hostname,), name="tenantq-heartbeat", daemon=True).start()


def worker_shutdown() -> None:
    _heartbeat_stop.set()
    if _hostname:
        try:
            get_redis().zrem(metrics.WORKERS_KEY, _hostname)
            slots.forget(get_redis(), _hostname)
        except Exception:  # the entry ages out of WORKERS_KEY within a day
            log.debug("could not deregister worker %s", _hostname, exc_info=True)


# -- Celery's own loggers get tenantq's format ---------------------------------------------------------


def setup_logger(logger: logging.Logger | None) -> None:
    if logger is not None:
        apply_formatter(logger)
