"""Celery app, task registry, routing, limits, signals and beat.

``celery -A tenantq.worker worker`` finds ``app`` here.
"""

from tenantq.worker.celery_app import app
from tenantq.worker.registry import load_task_types

load_task_types()

import tenantq.worker.signals  # noqa: E402,F401  (connects the signal receivers)
import tenantq.billing.metering  # noqa: E402,F401  (usage metering receivers)
import tenantq.billing.tasks  # noqa: E402,F401  (usage upkeep tasks + beat entries)

celery = app

__all__ = ["app", "celery"]
