"""Workflows: a list of steps run one after the other, each step one job (or a group of jobs).

The steps' definitions are kept on the workflow (``steps``); a step's jobs are created only when the
step becomes runnable, so a step that was never reached has no jobs.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tenantq.core.db import Base, UTCDateTime, new_id, utcnow

# queued (no step job started yet) is derived when reading; these are the stored states.
WORKFLOW_STATUSES = ("running", "succeeded", "failed", "cancelled")
WORKFLOW_TERMINAL = ("succeeded", "failed", "cancelled")


class Workflow(Base):
    __tablename__ = "workflow"
    __table_args__ = (Index("ix_workflow_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="running")
    # [{"task", "args", "priority"} | {"group": [{"task", "args", "priority"}, ...]}, ...] as submitted.
    steps: Mapped[list] = mapped_column(JSON, default=list)
    # Job ids per step, in step order and group order: [[id], [id, id, id], ...]; only reached steps.
    job_ids: Mapped[list] = mapped_column(JSON, default=list)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    failed_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def jobs_not_created(self) -> int:
        """Jobs of the steps not reached yet: counted against the jobs quota while the workflow runs
        (a workflow is admitted as all its jobs), given back when it stops."""
        return sum(len(step.get("group", [step])) for step in self.steps[len(self.job_ids) :])
