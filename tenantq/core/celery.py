"""The Celery application every tenantq worker, beat and API process shares."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from tenantq.core.settings import get_settings

# tenantq priorities run 0 (least urgent) .. 9 (most urgent); Redis-backed Celery treats 0 as the
# *highest*. Every publish goes through to_celery_priority so that inversion lives in one place.
PRIORITY_LEVELS = 10


def to_celery_priority(priority: int) -> int:
    return (PRIORITY_LEVELS - 1) - max(0, min(PRIORITY_LEVELS - 1, int(priority)))


SYSTEM_QUEUE = "tq.system"
# The operator's tasks (billing, webhooks, housekeeping) go to the system queue by name: task_routes, not
# a task's ``queue`` attribute (deprecated in Celery 5, ignored from 6). Tenants' task types never follow
# these routes: the dispatcher publishes each attempt with its execution queue explicit.
SYSTEM_TASK_ROUTES = ("billing.*", "jobs.*", "webhooks.*")

# The longest an attempt may run (the largest plan's max_time_limit_s).
MAX_TIME_LIMIT_S = 3600
# Redis has no real acks: a message taken but not acknowledged within visibility_timeout seconds is
# handed to another worker. It must exceed the longest time limit, or a long attempt would run twice at
# once: the default (TENANTQ_VISIBILITY_TIMEOUT_SECONDS) is MAX_TIME_LIMIT_S + 100. The chaos test lowers
# it to see a killed worker's messages redelivered within seconds.


def _restore_sweep(visibility_timeout: float) -> dict[str, int]:
    """How often workers look for messages past the visibility timeout (kombu's unacked restore).
    kombu scans every ``interval * throttle`` seconds (10 x 10 by default): fine for an hour-long
    timeout, but with a short one a dead worker's messages would wait up to 100 s more. Sweep about
    five times per timeout, at most every 100 s (the default) and at least every second.

    A sweep holds a Redis mutex that expires after 300 s; a worker SIGKILLed inside a sweep leaves it
    behind and blocks every restore until then. Negligible next to an hour-long timeout, so the
    mutex expiry is capped by the timeout too."""
    period = min(100.0, max(1.0, visibility_timeout / 5))
    interval = min(10, max(1, round(period)))
    return {
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": max(1, round(period / interval)),
        "unacked_mutex_expire": int(min(300, max(5, visibility_timeout))),
    }


def create_celery() -> Celery:
    settings = get_settings()
    app = Celery("tenantq", broker=settings.celery_broker_url, backend=settings.celery_broker_url)
    app.conf.update(
        # JSON only: tenants' arguments must never be unpickled by a worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=settings.result_expires_seconds,
        # An attempt is acknowledged only after it finishes; a worker killed mid-task has its message
        # redelivered instead of lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Without this a worker holds a prefetched batch and queued messages bypass priority; with
        # acks_late a prefetched message would also sit reserved (invisible to idle workers) behind a
        # long task. One message per free pool process keeps the dispatcher's order and fairness.
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        # Fresh children now and then bound the damage of memory leaks or global state left behind by
        # task code; every 10,000 tasks keeps the cost of forking a new child negligible per task.
        worker_max_tasks_per_child=10_000,
        # Hard limit kills the pool child (the only way to stop code stuck in C). This is the ceiling
        # for anything without a limit of its own; tenant jobs always carry a per-job hard limit
        # (bounded by the plan) in the message's options. No global soft limit: a default soft limit
        # would apply to jobs that set only a short hard one and billiard would then not enforce the
        # hard one on time.
        task_time_limit=MAX_TIME_LIMIT_S,
        # On a lost broker connection (a Redis restart) the attempts running go on. Cancelling them
        # (Celery's option) kills the child with SIGTERM, which Celery reports as a *revoke*: the job
        # was marked cancelled although nobody cancelled it, and its message acknowledged, so a Redis
        # blip ended running jobs for good (found by tests/test_chaos.py). Left running, an attempt
        # finishes and records its outcome in SQL; its unacknowledged message comes back only after
        # the visibility timeout, which exceeds every time limit, and is then refused as finished.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Events let `celery inspect`, `celery events` and Flower see tenantq workers unchanged.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        # Storing a result while Redis restarts must wait for it, not fail: a failed store ends the task
        # as an internal error after the function succeeded, so no status signal records the success,
        # and the message is acknowledged, leaving the job 'running' for good (found by test_chaos).
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        broker_transport_options={
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.visibility_timeout_seconds,
            **_restore_sweep(settings.visibility_timeout_seconds),
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        task_default_queue=SYSTEM_QUEUE,
        task_routes={pattern: {"queue": SYSTEM_QUEUE} for pattern in SYSTEM_TASK_ROUTES},
        task_queues=[Queue(settings.exec_queue), Queue(SYSTEM_QUEUE)],
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={},
    )
    return app


app = create_celery()
