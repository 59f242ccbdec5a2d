"""Jobs: the tenant-facing source of truth for what was submitted and what happened.

A job is one submission; a ``JobAttempt`` is one execution of it. ``Job.attempts`` is the number of
the latest attempt that started (attempt numbers are 1-based and keep counting across automatic
retries and tenant re-runs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenantq.core.db import Base, UTCDateTime, new_id, utcnow

JOB_STATUSES = ("queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled", "rejected")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled", "rejected")
# Waiting in a tenant queue (or the delayed set): cancelling these removes them from Redis.
WAITING_STATUSES = ("queued", "scheduled", "retrying")
# A tenant may re-run these with POST /v1/jobs/{id}/retry.
RERUNNABLE_STATUSES = ("failed", "cancelled")

# lost: the process running it died (SIGKILL, OOM); the job ran again as its next attempt.
ATTEMPT_STATUSES = ("running", "succeeded", "failed", "cancelled", "lost")


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_job_tenant_created", "tenant_id", "created_at"),
        Index("ix_job_tenant_status", "tenant_id", "status"),
        # The running jobs, by start: what /metrics reads for jobs running past their time limit.
        Index(
            "ix_job_running_started",
            "started_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(128))
    args: Mapped[dict] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    result: Mapped[object | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    # Per-job overrides of the task type's backoff (seconds); None = the task type's.
    retry_backoff: Mapped[float | None] = mapped_column(Float, nullable=True)
    retry_backoff_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Effective limits in seconds, resolved at submission (task type / plan defaults, plan bound).
    soft_time_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    time_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Celery task id of the latest attempt that started: what a running cancellation revokes.
    task_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    workflow_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflow.id", ondelete="CASCADE"), nullable=True, index=True
    )
    step_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    result_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A running, non-cancellable job the tenant asked to cancel: it finishes, but is never retried.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    attempt_log: Mapped[list[JobAttempt]] = relationship(
        order_by="JobAttempt.attempt", cascade="all, delete-orphan", passive_deletes=True
    )

    def __init__(self, **kwargs: Any) -> None:
        # A new job has no attempts: saying so up front spares a lazy load when it is serialised.
        kwargs.setdefault("attempt_log", [])
        super().__init__(**kwargs)

    @property
    def result_expired(self) -> bool:
        return self.result_expires_at is not None and self.result_expires_at <= utcnow()

    @property
    def visible_result(self) -> object | None:
        """The result unless it expired: an expired result is reported as such, never as 'no result'."""
        return None if self.result_expired else self.result

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_requested_at is not None


class JobAttempt(Base):
    """One execution of a job, written by the worker's task signals (prerun opens, postrun closes)."""

    __tablename__ = "job_attempt"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")  # one of ATTEMPT_STATUSES
    task_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
