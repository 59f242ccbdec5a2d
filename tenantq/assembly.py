"""Assembly: fill the slots that lower layers leave for higher ones, in one place.

A lower layer never imports a higher one. Where it must call one, it leaves a slot and every entry
point (the API app, the worker, the CLI's roles, the tests and the bench) calls :func:`assemble` once:

- admission's quota check and release (``platform.jobs.admission``) <- ``billing.usage.quotas``
  (``check_quota``, ``release_jobs``);
- what cancelling or re-running a step job tells its workflow (``platform.jobs.service``) <- workflows;
- the finish hooks the worker's attempt pipeline runs after each final outcome, in this order:
  workflows start their next step inside the status transaction; webhooks record their deliveries
  once that transaction committed.

It also imports :mod:`tenantq.models`, so that every table is known whichever entry point runs.
"""

from __future__ import annotations

import tenantq.models  # noqa: F401  (every table: see the module)
from tenantq.billing.usage.quotas import check_quota, release_jobs
from tenantq.platform.jobs import hooks
from tenantq.platform.jobs.admission import install_quota_check
from tenantq.platform.jobs.service import WorkflowSteps, install_workflow_steps
from tenantq.platform.webhooks import tasks as webhooks_tasks
from tenantq.platform.workflows import service as workflows

FINISH_HOOKS = (workflows.FINISH_HOOK, webhooks_tasks.FINISH_HOOK)

_assembled = False


def assemble() -> None:
    global _assembled
    if _assembled:
        return
    _assembled = True
    install_quota_check(check_quota, release_jobs)
    install_workflow_steps(
        WorkflowSteps(
            lock=workflows.lock_workflow,
            job_cancelled=workflows.step_job_cancelled,
            job_rerun=workflows.step_job_rerun,
            job_failed=workflows.step_job_failed,
            jobs_resumed_by_rerun=workflows.jobs_resumed_by_rerun,
        )
    )
    for hook in FINISH_HOOKS:
        hooks.on_attempt_finished(hook)
