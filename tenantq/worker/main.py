"""Celery app, task registry, routing, limits, signals and beat.

``celery -A tenantq.worker worker`` finds ``app`` here.
"""

from tenantq.core.celery import app
from tenantq.platform.jobs.registry import load_task_types

load_task_types()

# limits first: its start guard must run before the status receivers (receivers run in connect order).
# isort: off
import tenantq.platform.dispatch.limits  # noqa: E402,F401  (start guard, lease release and heartbeat)
import tenantq.worker.signals  # noqa: E402,F401  (connects the signal receivers)
import tenantq.billing.invoicing.tasks  # noqa: E402,F401  (period close, Stripe sync and webhook tasks)
import tenantq.platform.jobs.tasks  # noqa: E402,F401  (system tasks: result expiry)
import tenantq.worker.metrics  # noqa: E402,F401  (metrics, job log lines, worker heartbeat)
import tenantq.platform.webhooks.receivers  # noqa: E402,F401  (after signals: job status is committed first)
import tenantq.billing.usage.metering  # noqa: E402,F401  (usage metering receivers)
import tenantq.billing.usage.tasks  # noqa: E402,F401  (usage upkeep tasks + beat entries)
# isort: on

celery = app

__all__ = ["app", "celery"]
