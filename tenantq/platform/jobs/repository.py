"""Tenant-scoped data access for jobs: every query of the API goes through ``JobRepository``."""

from __future__ import annotations

import builtins

from sqlalchemy import Select
from sqlalchemy.orm import joinedload, selectinload

from tenantq.core.repository import TenantRepository
from tenantq.platform.jobs.models import Job


class JobRepository(TenantRepository[Job]):
    model = Job
    not_found = "Job not found."

    def select(self) -> Select[Job]:
        # The attempt log is part of every job the API shows: load it in one extra query, not per job.
        return super().select().options(selectinload(Job.attempt_log))

    def find(self, row_id: str) -> Job | None:
        # One job (GET /v1/jobs/{id}, the hot read): its attempts come in the same query (an outer
        # join), one database round trip instead of the two of selectinload.
        query = super().select().options(joinedload(Job.attempt_log)).where(Job.id == row_id)
        return self.session.scalars(query).unique().first()

    def by_idempotency_key(self, key: str) -> Job | None:
        return self.session.scalars(self.select().where(Job.idempotency_key == key)).first()

    def list(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        query = self.select()
        if status:
            query = query.where(Job.status == status)
        if task:
            query = query.where(Job.task == task)
        return self.page(query, limit=limit, cursor=cursor)

    def many(self, job_ids: builtins.list[str]) -> dict[str, Job]:
        if not job_ids:
            return {}
        return {j.id: j for j in self.session.scalars(self.select().where(Job.id.in_(job_ids)))}
