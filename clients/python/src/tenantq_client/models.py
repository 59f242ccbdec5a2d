"""Typed answers of the tenant API. Unknown fields are kept (``extra="allow"``), so a newer server never
breaks an older SDK; money stays exact (``Decimal``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal[
    "queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled", "rejected"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "rejected"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Attempt(Model):
    attempt: int
    status: Literal["running", "succeeded", "failed", "cancelled"]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    worker: str | None = None


class Progress(Model):
    """What the task last reported with ``ctx.progress(fraction, message)``."""

    attempt: int
    fraction: float
    message: str = ""
    at: datetime


class Job(Model):
    id: str
    task: str
    args: dict[str, Any] = Field(default_factory=dict)
    priority: int
    status: JobStatus
    result: Any = None
    result_expires_at: datetime | None = None
    result_expired: bool = False
    error: str | None = None
    attempts: int = 0
    max_retries: int = 0
    soft_time_limit: float | None = None
    time_limit: float | None = None
    cancel_requested: bool = False
    idempotency_key: str | None = None
    workflow_id: str | None = None
    step_index: int | None = None
    created_at: datetime
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_log: list[Attempt] = Field(default_factory=list)
    progress: Progress | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobPage(Model):
    items: list[Job]
    next_cursor: str | None = None


class CancelResult(Model):
    id: str
    status: JobStatus
    cancellation: Literal["dequeued", "terminated", "requested", "already_finished"]


class BatchItemError(Model):
    code: str
    message: str
    details: Any = None


class BatchItem(Model):
    index: int
    status_code: int
    job: Job | None = None
    error: BatchItemError | None = None


class TaskType(Model):
    name: str
    description: str
    args_schema: dict[str, Any]


# -- job events (GET /v1/jobs/{id}/events) ------------------------------------------------------------
class StatusEvent(Model):
    id: str
    status: JobStatus
    attempts: int


class ProgressEvent(Progress):
    id: str


class JobEvent(Model):
    """One event of a job's stream: ``kind`` is job, status, attempt or progress; exactly the matching
    field is set."""

    kind: Literal["job", "status", "attempt", "progress"]
    job: Job | None = None
    status: StatusEvent | None = None
    attempt: Attempt | None = None
    progress: ProgressEvent | None = None


# -- workflows ---------------------------------------------------------------------------------------
class StepJob(Model):
    id: str
    task: str
    status: JobStatus
    error: str | None = None


class Step(Model):
    index: int
    kind: Literal["task", "group"]
    tasks: list[str]
    status: str
    jobs: list[StepJob]


class Workflow(Model):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    current_step: int
    failed_step: int | None = None
    error: str | None = None
    result: Any = None
    created_at: datetime
    finished_at: datetime | None = None
    steps: list[Step]

    @property
    def finished(self) -> bool:
        return self.status in {"succeeded", "failed", "cancelled"}


# -- schedules ---------------------------------------------------------------------------------------
class Schedule(Model):
    id: str
    name: str
    task: str
    args: dict[str, Any]
    priority: int
    max_retries: int | None = None
    cron: str | None = None
    timezone: str
    interval_seconds: int | None = None
    enabled: bool
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    last_error: str | None = None
    runs: int
    created_at: datetime
    updated_at: datetime


class SchedulePage(Model):
    items: list[Schedule]
    next_cursor: str | None = None


# -- webhooks ----------------------------------------------------------------------------------------
class Webhook(Model):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime


class WebhookCreated(Webhook):
    secret: str = Field(description="The signing secret, shown once: keep it to verify deliveries.")


class DeliveryAttempt(Model):
    attempt: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    created_at: datetime


class Delivery(Model):
    id: str
    event_id: str
    event_type: str
    job_id: str | None = None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None = None
    created_at: datetime
    finished_at: datetime | None = None
    attempt_log: list[DeliveryAttempt]


# -- usage and invoices ------------------------------------------------------------------------------
class UsagePeriod(Model):
    start: str
    end: str


class Quota(Model):
    name: str
    used: float
    limit: float
    unit: str
    hard: bool
    resets_at: str | None = None


class Usage(Model):
    period: UsagePeriod
    quotas: list[Quota]


class InvoiceLine(Model):
    metric: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


class Invoice(Model):
    id: str
    period: str
    status: Literal["open", "paid", "void"]
    currency: str
    total: Decimal
    lines: list[InvoiceLine]
    issued_at: datetime
    paid_at: datetime | None = None
