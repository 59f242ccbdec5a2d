"""Celery app, task registry, routing, limits, signals and beat.

``celery -A tenantq.worker worker`` finds ``app`` here.
"""

from tenantq.worker.celery_app import app
from tenantq.worker.registry import load_task_types

load_task_types()

# limits first: its start guard must run before the status receivers (receivers run in connect order).
import tenantq.worker.limits  # noqa: E402,F401  (start guard, lease release and heartbeat)
import tenantq.worker.signals  # noqa: E402,F401  (connects the signal receivers)

celery = app

__all__ = ["app", "celery"]
