"""What ``celery -A tenantq.worker worker`` loads: the Celery app, the task types, the Celery tasks of
every area, the assembly (quota check, workflow callbacks, finish hooks) and the attempt pipeline.

The order of the attempt's steps is written in ``tenantq.worker.pipeline``, and the order of the finish
hooks in ``tenantq.assembly``: neither depends on the order of these imports.
"""

import sys
from typing import Any

from celery import signals

from tenantq.assembly import assemble
from tenantq.billing.invoicing import tasks as invoicing_tasks
from tenantq.billing.usage import tasks as usage_tasks
from tenantq.core.celery import app
from tenantq.core.settings import InsecureSettings, check_server_settings, get_settings
from tenantq.platform.jobs import tasks as jobs_tasks
from tenantq.platform.webhooks import tasks as webhooks_tasks
from tenantq.worker import builtin, demo, pipeline

# Workflow steps, beat's schedule firings and the finish hooks run in this process.
assemble()

# Task types (built-in and demo) and the Celery tasks and beat entries of each area: registered on
# ``app`` when their modules load.
TASK_TYPE_MODULES = (builtin, demo)
TASK_MODULES = (invoicing_tasks, usage_tasks, jobs_tasks, webhooks_tasks)


@signals.worker_init.connect
@signals.beat_init.connect
def refuse_insecure_settings(**_: Any) -> None:
    """``celery -A tenantq.worker worker|beat`` started directly (not through ``tenantq worker``)
    refuses a forgeable secret or a short admin token too. Celery logs and swallows a receiver's
    exception, so the refusal exits: SystemExit is not an ``Exception``."""
    try:
        check_server_settings(get_settings())
    except InsecureSettings as exc:
        sys.stderr.write(f"tenantq: {exc}\n")
        raise SystemExit(1) from None


celery = app

__all__ = ["TASK_MODULES", "TASK_TYPE_MODULES", "app", "celery", "pipeline"]
