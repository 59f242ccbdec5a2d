"""Response bodies of the dashboard's own operator JSON endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Period(BaseModel):
    start: datetime
    end: datetime


class TenantOverview(BaseModel):
    id: str
    name: str
    plan: str
    status: str
    paused: bool
    paused_reason: str | None = None
    queue_depth: int
    running: int
    jobs_per_min: float
    jobs_this_period: int
    failed_this_period: int
    compute_seconds_this_period: float
    created_at: datetime


class PlanRef(BaseModel):
    name: str
    display_name: str


class ExecQueue(BaseModel):
    name: str
    depth: int


class ThroughputPoint(BaseModel):
    minute: datetime
    succeeded: int
    failed: int


class Overview(BaseModel):
    generated_at: datetime
    period: Period
    tenants: list[TenantOverview]
    truncated: bool
    plans: list[PlanRef]
    exec_queues: list[ExecQueue]
    throughput: list[ThroughputPoint]


class WorkerOut(BaseModel):
    name: str
    last_heartbeat: datetime
    heartbeat_age_s: float
    online: bool


class WorkersOut(BaseModel):
    workers: list[WorkerOut]
    running: int = 0
    error: str | None = None
