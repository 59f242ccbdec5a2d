"""What ``celery -A tenantq.worker worker`` loads: the Celery app, the task types, the Celery tasks of
every area, the finish hooks and the attempt pipeline.

The order of the attempt's steps is written in ``tenantq.worker.pipeline``, and the order of the finish
hooks in the list below: neither depends on the order of these imports.
"""

from tenantq.billing.invoicing import tasks as invoicing_tasks
from tenantq.billing.usage import tasks as usage_tasks
from tenantq.core.celery import app
from tenantq.platform.jobs import hooks
from tenantq.platform.jobs import tasks as jobs_tasks
from tenantq.platform.jobs.registry import load_task_types
from tenantq.platform.webhooks import tasks as webhooks_tasks
from tenantq.platform.workflows import service as workflows
from tenantq.worker import pipeline

load_task_types()

# Run after each attempt's final outcome, in this order: workflows start their next step inside the
# status transaction; webhooks record their deliveries once that transaction committed.
FINISH_HOOKS = (workflows.FINISH_HOOK, webhooks_tasks.FINISH_HOOK)
for _hook in FINISH_HOOKS:
    hooks.on_attempt_finished(_hook)

# Celery tasks and beat entries of each area: registered on ``app`` when their modules load.
TASK_MODULES = (invoicing_tasks, usage_tasks, jobs_tasks, webhooks_tasks)

celery = app

__all__ = ["FINISH_HOOKS", "TASK_MODULES", "app", "celery", "pipeline"]
