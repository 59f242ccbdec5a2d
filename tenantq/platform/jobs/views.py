"""Jobs as the API shows them: the SQL row plus the progress its current attempt reported.

Apart from ``events`` (which the task context in ``registry`` uses to report progress) because the
response models import the registry for the task-name enum: one module may not sit on both sides.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from tenantq.platform.jobs.events import Progress, read_progress
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.schemas import JobOut, JobProgress


def progress_out(progress: Progress) -> JobProgress:
    return JobProgress(
        attempt=progress.attempt,
        fraction=progress.fraction,
        message=progress.message,
        at=datetime.fromtimestamp(progress.at, UTC),
    )


def job_views(jobs: list[Job], client: redis.Redis | None = None) -> list[JobOut]:
    """The jobs as the API shows them, each with the progress its current attempt reported (one Redis
    round trip for all of them; jobs that never started are not looked up)."""
    progress = read_progress([job.id for job in jobs if job.attempts], client)
    views = []
    for job in jobs:
        view = JobOut.model_validate(job)
        reported = progress.get(job.id)
        if reported is not None and reported.attempt == job.attempts:
            view.progress = progress_out(reported)
        views.append(view)
    return views
