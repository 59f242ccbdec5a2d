"""Request and response bodies of the queue API (tenant and operator) and of batch submission."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tenantq.platform.jobs.schemas import JobOut

MAX_BATCH = 1000


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Items are validated one by one (each gets its own answer), so they arrive as plain objects here.
    jobs: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"Up to {MAX_BATCH} job submissions, each shaped like POST /v1/jobs.",
    )


class BatchItemError(BaseModel):
    code: str
    message: str
    details: Any = None


class BatchItem(BaseModel):
    index: int
    status_code: int = Field(
        description="202 accepted, 200 existing job (idempotency key), or the error's status."
    )
    job: JobOut | None = None
    error: BatchItemError | None = None


class BatchOut(BaseModel):
    items: list[BatchItem]


class WaitStats(BaseModel):
    p50: float | None = Field(description="Median queue wait (enqueued -> started) of recent jobs, ms.")
    p95: float | None


class QueueOut(BaseModel):
    depth: int = Field(description="Jobs waiting in the tenant's queue.")
    running: int = Field(description="Jobs released to workers and not finished (their concurrency slots).")
    concurrency_limit: int | None
    rate_limit: float | None = Field(description="Jobs per second released to workers.")
    paused: bool
    recent_wait_ms: WaitStats


class AdminQueueOut(QueueOut):
    tenant_id: str
    tenant_name: str
    paused_reason: str | None = None
    weight: float
    max_queued: int | None
    pool: str = Field(description="Celery queue the tenant's jobs are released to.")


class AdminQueueList(BaseModel):
    items: list[AdminQueueOut]
    leader: str | None = Field(description="Instance id of the dispatcher holding the leader lock.")
    exec_queue_depth: dict[str, int]


class PurgeOut(BaseModel):
    tenant_id: str
    purged: int


class PauseOut(BaseModel):
    tenant_id: str
    paused: bool
    paused_reason: str | None = None


class PoolOut(BaseModel):
    tenant_id: str
    pool: str
