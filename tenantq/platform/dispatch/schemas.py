"""Request and response bodies of the queue API (tenant and operator)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WaitStats(BaseModel):
    p50: float | None = Field(description="Median queue wait (enqueued -> started) of recent jobs, ms.")
    p95: float | None


class HeldOut(BaseModel):
    reason: str = Field(
        description="Why nothing is released: `compute_quota` (the hard compute quota is used up)."
    )
    message: str
    used: float = Field(description="Compute seconds used this period.")
    limit: float = Field(description="The plan's compute seconds for the period.")
    resets_at: str = Field(description="When the period ends and held jobs are released again.")


class QueueOut(BaseModel):
    depth: int = Field(description="Jobs waiting in the tenant's queue.")
    running: int = Field(description="Jobs released to workers and not finished (their concurrency slots).")
    concurrency_limit: int | None
    rate_limit: float | None = Field(description="Jobs per second released to workers.")
    paused: bool
    recent_wait_ms: WaitStats
    held: HeldOut | None = Field(
        default=None,
        description="Set while the queue is held: waiting jobs stay queued and are not started. A job "
        "already running is not stopped.",
    )


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


class PauseOut(BaseModel):
    tenant_id: str
    paused: bool
    paused_reason: str | None = None


class PoolOut(BaseModel):
    tenant_id: str
    pool: str
