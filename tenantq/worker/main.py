"""Celery app, task registry, routing, limits, signals and beat.

``celery -A tenantq.worker worker`` finds ``app`` here.
"""

# limits first: its start guard must run before the status receivers (receivers run in connect order).
import tenantq.billing.invoicing.tasks  # noqa: E402,F401  (period close, Stripe sync and webhook tasks)
import tenantq.billing.usage.metering  # noqa: E402,F401  (usage metering receivers)
import tenantq.billing.usage.tasks  # noqa: E402,F401  (usage upkeep tasks + beat entries)
import tenantq.models  # noqa: F401  (every table: see the module)
import tenantq.platform.dispatch.limits  # noqa: E402,F401  (start guard, lease release and heartbeat)
import tenantq.platform.jobs.tasks  # noqa: E402,F401  (system tasks: result expiry)
import tenantq.platform.webhooks.receivers  # noqa: E402,F401  (after signals: job status is committed first)
import tenantq.worker.builtin  # noqa: F401  (registers the built-in task types)
import tenantq.worker.demo  # noqa: F401  (registers the demo task types)
import tenantq.worker.metrics  # noqa: E402,F401  (metrics, job log lines, worker heartbeat)
import tenantq.worker.signals  # noqa: E402,F401  (connects the signal receivers)
from tenantq.billing.usage.quotas import check_quota  # noqa: E402
from tenantq.core.celery import app
from tenantq.platform.jobs.admission import install_quota_check  # noqa: E402

# Workflow steps and beat's schedule firings admit jobs in this process.
install_quota_check(check_quota)

celery = app

__all__ = ["app", "celery"]
