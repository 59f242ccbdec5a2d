"""The Celery application every tenantq worker, beat and API process shares."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from tenantq.platform.settings import get_settings

# tenantq priorities run 0 (least urgent) .. 9 (most urgent); Redis-backed Celery treats 0 as the
# *highest*. Every publish goes through to_celery_priority so that inversion lives in one place.
PRIORITY_LEVELS = 10


def to_celery_priority(priority: int) -> int:
    return (PRIORITY_LEVELS - 1) - max(0, min(PRIORITY_LEVELS - 1, int(priority)))


SYSTEM_QUEUE = "tq.system"


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
        # Without this a worker holds a prefetched batch and queued messages bypass priority.
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        # Fresh children now and then bound the damage of leaks in tenant-supplied workloads.
        worker_max_tasks_per_child=10_000,
        # Events let `celery inspect`, `celery events` and Flower see tenantq workers unchanged.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "sep": ":",
            "queue_order_strategy": "priority",
            # Must exceed the longest time limit, or long attempts get redelivered while running.
            "visibility_timeout": 3700,
        },
        result_backend_transport_options={"visibility_timeout": 3700},
        task_default_queue=SYSTEM_QUEUE,
        task_queues=[Queue(settings.exec_queue), Queue(SYSTEM_QUEUE)],
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={},
    )
    return app


app = create_celery()
