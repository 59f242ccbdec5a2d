"""Tenant-scoped data access for jobs: every query goes through ``JobRepository(session, tenant_id)``.

The tenant filter is applied in ``_scoped`` and nowhere else, so a route cannot forget it: there is
no method that reads a job without it. System code (workers, dispatcher) uses ``system_session``.
"""

from __future__ import annotations

import base64
from datetime import datetime

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, selectinload

from tenantq.core.errors import InvalidInput, NotFound
from tenantq.platform.jobs.models import Job


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), job_id
    except Exception as exc:  # noqa: BLE001 - any decoding problem is the caller's bad input
        raise InvalidInput("Invalid cursor.", code="invalid_cursor") from exc


class JobRepository:
    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self) -> Select[tuple[Job]]:
        # The attempt log is part of every job the API shows: load it in one extra query, not per job.
        return select(Job).where(Job.tenant_id == self.tenant_id).options(selectinload(Job.attempt_log))

    def get(self, job_id: str) -> Job:
        job = self.session.scalars(self._scoped().where(Job.id == job_id)).first()
        if job is None:
            raise NotFound("Job not found.", details={"id": job_id})
        return job

    def by_idempotency_key(self, key: str) -> Job | None:
        return self.session.scalars(self._scoped().where(Job.idempotency_key == key)).first()

    def list(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        query = self._scoped()
        if status:
            query = query.where(Job.status == status)
        if task:
            query = query.where(Job.task == task)
        if cursor:
            created, job_id = decode_cursor(cursor)
            query = query.where(
                or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
            )
        rows = list(
            self.session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
        )
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    def many(self, job_ids: list[str]) -> dict[str, Job]:
        if not job_ids:
            return {}
        return {j.id: j for j in self.session.scalars(self._scoped().where(Job.id.in_(job_ids)))}

    def add(self, job: Job) -> Job:
        job.tenant_id = self.tenant_id
        self.session.add(job)
        return job
