"""Request and response bodies of the jobs API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from tenantq.core.text_checks import SafeRequest, SafeResponse
from tenantq.platform.jobs.registry import all_task_types

JobStatus = Literal[
    "queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled", "rejected"
]


def _registered_task_types(schema: dict[str, Any]) -> None:
    # Read when the OpenAPI document is built, after the entry point registered every task type.
    schema["enum"] = sorted(t.name for t in all_task_types())


# A task type's name in a request: the server accepts exactly the registered ones (422 unknown_task).
TaskName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="A registered task type (`GET /v1/task-types`), e.g. 'demo.echo'.",
        json_schema_extra=_registered_task_types,
    ),
]


class JobCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task": "demo.echo",
                    "args": {"order": 1042},
                    "priority": 5,
                    "max_retries": 3,
                    "idempotency_key": "order-1042",
                }
            ]
        },
    )

    task: TaskName
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


class JobAttemptOut(SafeResponse):
    attempt: int
    status: Literal["running", "succeeded", "failed", "cancelled", "lost"] = Field(
        description="`lost`: the worker process running it died (killed); the job ran again as the next "
        "attempt. Billed like every attempt that started (CPU 0)."
    )
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    worker: str | None = None

    model_config = ConfigDict(from_attributes=True)


class JobProgress(BaseModel):
    """What the running task last reported with ``ctx.progress(fraction, message)``."""

    attempt: int = Field(description="The attempt that reported it.")
    fraction: float = Field(ge=0, le=1, description="0 (nothing done) to 1 (all done).")
    message: str = Field(
        default="", max_length=500, description="The task's own words, e.g. 'resized 4 of 10'."
    )
    at: datetime = Field(description="When it was reported.")


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
    attempt_log: list[JobAttemptOut] = Field(default_factory=list)
    progress: JobProgress | None = Field(
        default=None,
        description="The latest progress the task reported for the current attempt (null if it reported "
        "none); kept a week after the last report.",
    )

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0192f3c4-8a1b-7d2e-9f00-5b6c7d8e9f01",
                    "task": "demo.echo",
                    "args": {"order": 1042},
                    "priority": 5,
                    "status": "succeeded",
                    "result": {"order": 1042},
                    "result_expires_at": "2026-12-07T12:00:03Z",
                    "result_expired": False,
                    "error": None,
                    "attempts": 1,
                    "max_retries": 3,
                    "soft_time_limit": None,
                    "time_limit": 300.0,
                    "cancel_requested": False,
                    "idempotency_key": "order-1042",
                    "workflow_id": None,
                    "step_index": None,
                    "created_at": "2026-11-30T12:00:00Z",
                    "run_at": None,
                    "started_at": "2026-11-30T12:00:01Z",
                    "finished_at": "2026-11-30T12:00:03Z",
                    "attempt_log": [
                        {
                            "attempt": 1,
                            "status": "succeeded",
                            "started_at": "2026-11-30T12:00:01Z",
                            "finished_at": "2026-11-30T12:00:03Z",
                            "error": None,
                            "worker": "worker-1@host",
                        }
                    ],
                }
            ]
        },
    )


class CancelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0192f3c4-8a1b-7d2e-9f00-5b6c7d8e9f01",
                    "status": "cancelled",
                    "cancellation": "dequeued",
                }
            ]
        }
    )

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
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jobs": [
                        {"task": "demo.echo", "args": {"order": 1042}},
                        {"task": "demo.echo", "args": {"order": 1043}, "priority": 2},
                    ]
                }
            ]
        },
    )

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


# --- waiting and streaming -----------------------------------------------------------------------

WAIT_MAX_SECONDS = 60
EVENTS_KEEPALIVE_SECONDS = 15


class JobStatusEvent(BaseModel):
    """Data of an ``event: status`` of ``GET /v1/jobs/{id}/events``."""

    id: str
    status: JobStatus
    attempts: int


class JobProgressEvent(JobProgress):
    """Data of an ``event: progress`` of ``GET /v1/jobs/{id}/events``."""

    id: str
