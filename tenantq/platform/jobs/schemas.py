"""Request and response bodies of the jobs API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled", "rejected"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=128, description="A registered task type, e.g. 'demo.echo'.")
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments, validated against the task type's schema.")
    priority: int = Field(default=5, ge=0, le=9, description="0 (least urgent) to 9 (most urgent).")
    countdown: float | None = Field(
        default=None, ge=0, le=366 * 24 * 3600, description="Seconds to wait before the job becomes runnable."
    )
    max_retries: int | None = Field(default=None, ge=0, le=100, description="Retries on retryable errors (bounded by plan).")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, description="Same key (per tenant) returns the same job."
    )


class JobOut(BaseModel):
    id: str
    task: str
    args: dict[str, Any]
    priority: int
    status: JobStatus
    result: Any = None
    error: str | None = None
    attempts: int
    idempotency_key: str | None = None
    created_at: datetime
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    model_config = ConfigDict(from_attributes=True)


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None


class TaskTypeOut(BaseModel):
    name: str
    description: str
    args_schema: dict[str, Any]
