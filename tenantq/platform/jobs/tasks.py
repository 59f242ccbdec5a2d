"""System tasks for jobs (run on the system queue, not tenant task types)."""

from __future__ import annotations

import logging

from tenantq.core.celery import SYSTEM_QUEUE, app
from tenantq.core.db import unscoped_session

log = logging.getLogger("tenantq.jobs")

PURGE_EVERY_SECONDS = 3600.0


@app.task(name="jobs.purge_expired_results", queue=SYSTEM_QUEUE)
def purge_expired_results_task() -> int:
    """Null results past their plan's expiry. The API hides them already; this frees the space."""
    # Imported here: the jobs service imports tenantq.worker, which imports this module.
    from tenantq.platform.jobs.service import purge_expired_results

    with unscoped_session() as session:
        count = purge_expired_results(session)
    if count:
        log.info("purged %s expired job results", count)
    return count


# Beat runs it hourly; a static entry, merged by any scheduler that honours app.conf.beat_schedule.
app.conf.beat_schedule.setdefault(
    "jobs.purge_expired_results",
    {
        "task": "jobs.purge_expired_results",
        "schedule": PURGE_EVERY_SECONDS,
        "options": {"queue": SYSTEM_QUEUE},
    },
)
