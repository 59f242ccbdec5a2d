"""Request and response bodies of the jobs API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from tenantq.core.text_checks import SafeRequest, SafeResponse

JobStatus = Literal[
    "queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled", "rejected"
]


class JobCreate(SafeRequest):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=128, description="A registered task type, e.g. 'demo.echo'.")
    args: dict[str, Any] = Field(
        default_factory=dict, description="Arguments, validated against the task type's schema."
    )
    priority: StrictInt = Field(default=5, ge=0, le=9, description="0 (least urgent) to 9 (most urgent).")
    countdown: StrictFloat | None = Field(
        default=None, ge=0, le=366 * 24 * 3600, description="Seconds to wait before the job becomes runnable."
    )
    max_retries: StrictInt | None = Field(
        default=None, ge=0, le=100, description="Retries on retryable errors (bounded by plan)."
    )
    retry_backoff: StrictFloat | None = Field(
        default=None,
        ge=0.1,
        le=3600,
        description="Seconds: the first retry's delay and the floor of every retry delay (default: the task "
        "type's). Later retries wait a random time between the floor and floor * 2**n, capped.",
    )
    retry_backoff_max: StrictFloat | None = Field(
        default=None,
        ge=0.1,
        le=24 * 3600,
        description="Seconds: cap of the retry delay (default: the task type's).",
    )
    soft_time_limit: StrictFloat | None = Field(
        default=None,
        gt=0,
        description="Seconds of the task function after which it gets a SoftTimeLimitExceeded error it may "
        "catch to clean up. Bounded by the plan's max_time_limit_s (422 above) and by "
        "TENANTQ_MIN_TIME_LIMIT_SECONDS (default 1 s; 422 below); must be below time_limit.",
    )
    time_limit: StrictFloat | None = Field(
        default=None,
        gt=0,
        description="Seconds of the task function after which the attempt is stopped (and killed if it "
        "does not stop). Default: the task type's, else the plan's max_time_limit_s, which also bounds it "
        "(422 above); at least TENANTQ_MIN_TIME_LIMIT_SECONDS (default 1 s; 422 below).",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Same key (per tenant, within the retention window, 24 h by default) returns the "
        "same job.",
    )

    @model_validator(mode="after")
    def _backoff_cap_above_floor(self) -> JobCreate:
        if (
            self.retry_backoff is not None
            and self.retry_backoff_max is not None
            and self.retry_backoff_max < self.retry_backoff
        ):
            raise ValueError("retry_backoff_max must be at least retry_backoff")
        return self


class AttemptOut(SafeResponse):
    attempt: int
    status: Literal["running", "succeeded", "failed", "cancelled"]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    worker: str | None = None

    model_config = ConfigDict(from_attributes=True)


class JobOut(SafeResponse):
    id: str
    task: str
    args: dict[str, Any]
    priority: int
    status: JobStatus
    result: Any = Field(
        default=None,
        validation_alias=AliasChoices("visible_result", "result"),
        description="The task's return value; null once it expired (see result_expired).",
    )
    result_expires_at: datetime | None = None
    result_expired: bool = False
    error: str | None = None
    attempts: int = Field(
        description="Number of the latest attempt that started (attempts keep counting across "
        "retries and re-runs)."
    )
    max_retries: int = 0
    soft_time_limit: float | None = None
    time_limit: float | None = None
    cancel_requested: bool = Field(
        default=False,
        description="Cancellation was asked while it ran and its task "
        "type cannot be interrupted: it finishes but is not retried.",
    )
    idempotency_key: str | None = None
    workflow_id: str | None = None
    step_index: int | None = None
    created_at: datetime
    run_at: datetime | None = Field(
        default=None, description="When a scheduled or retrying job becomes runnable."
    )
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_log: list[AttemptOut] = Field(default_factory=list)

    model_config = ConfigDict(from_attributes=True)


class CancelOut(BaseModel):
    id: str
    status: JobStatus
    cancellation: Literal["dequeued", "terminated", "requested", "already_finished"] = Field(
        description="dequeued: it was waiting and will never start; terminated: it was running and was "
        "killed; requested: it is running a task type that cannot be interrupted, it will finish but not "
        "be retried; already_finished: it had finished, nothing changed."
    )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None


class TaskTypeOut(BaseModel):
    name: str
    description: str
    args_schema: dict[str, Any]


# --- batch submission ----------------------------------------------------------------------------

MAX_BATCH = 1000


class BatchCreate(SafeRequest):
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


class PurgeOut(BaseModel):
    tenant_id: str
    purged: int
